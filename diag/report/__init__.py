"""The result of an analysis: its values (``model``) and their renderings (``text``, ``jsondoc``)."""

from diag.report.jsondoc import SCHEMA
from diag.report.model import CAUSES, FORGED_RESET_CAUSES, Cause, Finding, PacketRef, Report, RuledOut

__all__ = ["CAUSES", "FORGED_RESET_CAUSES", "SCHEMA", "Cause", "Finding", "PacketRef", "Report", "RuledOut"]
