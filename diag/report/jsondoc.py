"""The report as a ``diag.report/1`` JSON document (described in docs/analyze.md)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import orjson
import pandas as pd

from diag.gcpause import collector_paused
from diag.report.flowcap import FLOW_LIMIT, cap_flows
from diag.report.model import Cause

if TYPE_CHECKING:
    from diag.report.model import Finding, Report

SCHEMA = "diag.report/1"


def verdict_json(verdict: Finding | None) -> dict[str, Any]:
    if verdict is None:
        return {"cause": str(Cause.HEALTHY), "confidence": 1.0, "summary": "no resets or lost replies found"}
    return {"cause": str(verdict.cause), "confidence": round(verdict.confidence, 3), "summary": verdict.summary}


def report_to_json(report: Report, flow_limit: int | None = FLOW_LIMIT) -> dict[str, Any]:
    """The whole document: every finding, and ``groups`` counting them by cause and service.

    ``groups`` come most significant first; their ``examples`` are indices into ``findings``.
    ``flows`` holds at most ``flow_limit`` rows (None: all; see ``diag.report.flowcap``).
    """
    files = _files(report)
    findings = [_finding_json(finding, files) for finding in report.findings]
    return _document(report, flow_limit, findings)


def _document(report: Report, flow_limit: int | None, findings: list[Any]) -> dict[str, Any]:
    """``report_to_json``'s document with ``findings`` as its findings."""
    flows, flows_left_out = cap_flows(report.flows, flow_limit)
    if report.flow_digest is not None:
        # Only the rows this cap shows came back from where the flow tables are (diag.report.flowdigest).
        if flow_limit != report.flow_digest.limit:
            raise ValueError(f"this report holds the flow rows of a cap of {report.flow_digest.limit}, not every flow")
        flows_left_out = report.flow_digest.flows - len(flows)
    return {
        "schema": SCHEMA,
        "verdict": verdict_json(report.verdict),
        "findings": findings,
        "groups": [group.to_json() for group in report.groups],
        "captures": [
            {"name": c.name, "path": c.path, "packets": c.packets, "link_type": c.link_type, "skipped": c.skipped}
            for c in report.captures
        ],
        "flows": flows_to_json(flows),
        "flows_truncated": flows_left_out,
        "clock": {
            "reference": report.clock_reference,
            "offsets": {name: asdict(o) for name, o in report.clock_offsets.items()},
        },
        "warnings": list(report.warnings),
    }


def _files(report: Report) -> dict[str, tuple[str, ...]]:
    """Each capture point's files (to name a finding's packet's file when its point has several)."""
    files: dict[str, tuple[str, ...]] = {}
    for capture in report.captures:
        files.setdefault(capture.name, capture.files)  # the first of a name, as a search in order finds
    return files


def _finding_json(finding: Finding, files: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A finding's JSON, its packet's file named from its point's files (``_files``)."""
    return finding.to_json(files.get(finding.packet.capture, ()) if finding.packet else ())


def dumps(report: Report, flow_limit: int | None = FLOW_LIMIT) -> str:
    # orjson: the standard library's encoder falls back to pure Python as soon as it indents, which cost
    # seconds on a busy capture's tens of thousands of flows; the document is the same, key order included.
    with collector_paused():  # tens of thousands of dicts, none in a cycle (see diag.gcpause)
        return orjson.dumps(report_to_json(report, flow_limit), option=orjson.OPT_INDENT_2).decode()


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
    files = _files(report)
    with collector_paused():
        rest = orjson.dumps(_document(report, flow_limit, [_PLACE]), option=orjson.OPT_INDENT_2)
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
                orjson.dumps(_finding_json(finding, files), option=orjson.OPT_INDENT_2)
                for finding in report.findings[start : start + FINDINGS_AT_ONCE]
            ]
        # Each finding's lines indented to the list's depth (JSON strings hold no raw newline), comma-separated.
        indented = [_FINDING_INDENT + one.replace(b"\n", b"\n" + _FINDING_INDENT) for one in encoded]
        sink.write((b",\n" if start else b"") + b",\n".join(indented))
    sink.write(tail + b"\n")


def _plain(value: Any) -> Any:
    """numpy scalars and NaN into JSON-safe Python values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cell(value: Any) -> Any:
    """One cell of an object column: lists and dicts (``rsts``) as they are, anything else made plain."""
    return value if isinstance(value, list | dict) else _plain(value)


def _column_values(flows: pd.DataFrame, position: int) -> list[Any]:
    """Column ``position`` of ``flows`` as JSON-ready Python values, one per row.

    Whole columns at once: numpy's ``tolist`` makes Python ints, floats and
    bools in C, so only object columns (lists) and missing values are looked
    at cell by cell. Anything else (an extension dtype) goes through pandas'
    own row conversion, as the whole table once did.
    """
    series = flows.iloc[:, position]
    numpy_dtype = isinstance(series.dtype, np.dtype)  # not a nullable extension type such as Int64
    kind = series.dtype.kind
    if numpy_dtype and kind in "iub":
        return list(series.to_numpy().tolist())
    if numpy_dtype and kind == "f":
        values = series.to_numpy().tolist()
        return [None if value != value else value for value in values] if series.hasnans else list(values)
    if isinstance(series.dtype, pd.StringDtype) and not series.hasnans:
        return list(series.tolist())  # text without gaps: Python strings already
    if numpy_dtype and kind == "O":
        return [_cell(value) for value in series.tolist()]
    return [_cell(value) for row in series.to_frame().to_dict(orient="records") for value in row.values()]


def flows_to_json(flows: pd.DataFrame) -> list[dict[str, Any]]:
    """Flow rows as JSON objects; list-valued cells (``rsts``) pass through, an untagged ``vlan`` (-1) is null.

    Built column by column and zipped into rows: converting the table row by
    row (``DataFrame.to_dict``) cost most of the document's time on tens of
    thousands of flows.
    """
    if flows is None or flows.empty:
        return []
    names = [str(name) for name in flows.columns]
    columns = [_column_values(flows, position) for position in range(len(names))]
    for name, values in zip(names, columns, strict=True):
        if name == "vlan":
            values[:] = [None if value == -1 else value for value in values]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
