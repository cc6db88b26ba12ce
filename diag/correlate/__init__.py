"""Correlation: the same packet followed across capture points and NAT rewrites.

``match.correlate`` groups each packet's sightings by the fields NAT leaves
alone, ``clock`` aligns the capture points' clocks from them, and the result
is one ``Correlation`` value with the match, path and NAT tables.
"""

from diag.correlate.clock import ClockOffset
from diag.correlate.match import Correlation, correlate, describe_rewrite

__all__ = ["ClockOffset", "Correlation", "correlate", "describe_rewrite"]
