"""The report written out as its ``diag.report/1`` JSON document (described in docs/analyze.md).

The document is the report's own JSON form, made by ``Report.to_json`` in
``diag.report.model`` as every value's is; here it becomes text (``dumps``)
or is written to a file in bounded memory (``write_json``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from diag.gcpause import collector_paused
from diag.report.flowcap import FLOW_LIMIT

# Callers long imported it from here; it lives with the flow rows' cap.
from diag.report.flowcap import flows_to_json as flows_to_json
from diag.report.model import finding_json

if TYPE_CHECKING:
    from diag.report.model import Report


def report_to_json(report: Report, flow_limit: int | None = FLOW_LIMIT) -> dict[str, Any]:
    """The whole document (``Report.to_json``): ``flows`` holds at most ``flow_limit`` rows (None: all)."""
    return report.to_json(flow_limit)


def dumps(report: Report, flow_limit: int | None = FLOW_LIMIT) -> str:
    """The document as text, indented by two spaces (``Report.dumps``)."""
    return report.dumps(flow_limit)


# Findings encoded at a time by ``write_json``, and where the findings go in the rest of the document.
FINDINGS_AT_ONCE = 512
_PLACE = "diag.report: the findings go here"
# The findings list sits two levels deep (the document, then the list): two steps of OPT_INDENT_2.
_FINDING_INDENT = b"    "


def write_json(report: Report, sink: BinaryIO, flow_limit: int | None = FLOW_LIMIT) -> None:
    """``dumps(report, flow_limit)`` and a newline written to ``sink``, the same bytes, in bounded memory.

    A capture with a hundred thousand findings makes a document of a quarter of a gigabyte: as one
    string (and its dicts, its bytes and its encoding on write) it took a gigabyte and more at once.
    Here the rest of the document is encoded around a placeholder and the findings are made and
    encoded ``FINDINGS_AT_ONCE`` at a time, each indented to its place in the list.
    """
    if not report.findings:
        sink.write(dumps(report, flow_limit).encode() + b"\n")
        return
    files = report.capture_files()
    with collector_paused():
        rest = orjson.dumps(report.document(flow_limit, [_PLACE]), option=orjson.OPT_INDENT_2)
    place = _FINDING_INDENT + orjson.dumps(_PLACE)
    if rest.count(place) != 1:  # a capture's name or path that spells the placeholder: the whole string
        sink.write(dumps(report, flow_limit).encode() + b"\n")
        return
    head, tail = rest.split(place)
    del rest
    sink.write(head)
    for start in range(0, len(report.findings), FINDINGS_AT_ONCE):
        with collector_paused():
            encoded = [
                orjson.dumps(finding_json(finding, files), option=orjson.OPT_INDENT_2)
                for finding in report.findings[start : start + FINDINGS_AT_ONCE]
            ]
        # Each finding's lines indented to the list's depth (JSON strings hold no raw newline), comma-separated.
        indented = [_FINDING_INDENT + one.replace(b"\n", b"\n" + _FINDING_INDENT) for one in encoded]
        sink.write((b",\n" if start else b"") + b",\n".join(indented))
    sink.write(tail + b"\n")
