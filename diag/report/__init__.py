"""The result of an analysis: its values (``model``) and their renderings (``text``, ``jsondoc``)."""

from diag.report.model import CAUSES, SCHEMA, Cause, Finding, PacketRef, Report, RuledOut
from diag.report.significance import Severity

__all__ = ["CAUSES", "SCHEMA", "Cause", "Finding", "PacketRef", "Report", "RuledOut", "Severity"]
