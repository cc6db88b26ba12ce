"""Diagnosis: from correlated captures to findings with a cause, evidence and fixes.

``engine`` combines the cause modules (``tcp``, ``udp``) over the connections
that ``connections`` assembles across capture points; ``signals`` holds the
single facts they stand on, ``context`` what the whole analysis knows (which
points were captured, when, in what order) and ``advice`` the fixes.
"""

from diag.diagnose.engine import diagnose

__all__ = ["diagnose"]
