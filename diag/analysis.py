"""``analyze``: captures of the same traffic in, a ``Report`` out.

The pipeline after reading is pure: concatenate the packet tables (the
``capture`` column keeps them apart), build the flow table, correlate the
same packets across capture points, and diagnose every reset and lost reply.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pandas as pd
from pandas.api.types import union_categoricals

from diag.capture import read_capture
from diag.capture.columns import PACKET_COLUMNS
from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets, parse_filter
from diag.capture.info import CaptureInfo
from diag.capture.reader import capture_stem
from diag.capture.source import capture_size, exists_quietly
from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.errors import DiagError
from diag.flows import build_flows
from diag.report import Report

CaptureSpec = str | os.PathLike[str]

# Called as hook(stage, detail) when a stage of the analysis starts: "read"
# once per capture (detail: its name, path and size), then "flows",
# "correlate" and "diagnose" (detail: how much there is to do). The context it
# returns is held while the stage runs, so a command line can show a spinner
# or a progress line; the analysis itself never writes to a terminal.
ProgressHook = Callable[[str, str], AbstractContextManager[object]]
STAGES = ("read", "flows", "correlate", "diagnose")


def _stage(progress: ProgressHook | None, stage: str, detail: str) -> AbstractContextManager[object]:
    return progress(stage, detail) if progress else nullcontext()


def parse_capture_args(captures: Mapping[str, CaptureSpec] | Sequence[CaptureSpec]) -> list[tuple[str, Path]]:
    """(name, path) pairs from a mapping, or from ``NAME=PATH`` / ``PATH`` items.

    Without ``NAME=`` the name is the file's stem (``pod.pcap.gz`` -> ``pod``).
    An item whose text before the first '=' names an existing file is taken
    as a path, so odd file names still work. Duplicate names are an error:
    each name is one vantage point.
    """
    pairs: list[tuple[str, Path]] = []
    if isinstance(captures, Mapping):
        pairs = [(str(name), Path(path)) for name, path in captures.items()]
    else:
        for item in captures:
            text = os.fspath(item)
            name, sep, rest = text.partition("=")
            if isinstance(item, str) and sep and name and rest and not exists_quietly(Path(text)):
                pairs.append((name, Path(rest)))
            else:
                pairs.append((capture_stem(Path(text)), Path(text)))
    if not pairs:
        raise DiagError("no capture given")
    seen: dict[str, Path] = {}
    for name, capture_path in pairs:
        if not name.strip():
            raise DiagError(f"{capture_path}: empty capture name")
        if name in seen:
            raise DiagError(
                f"two captures are named {name!r} ({seen[name]} and {capture_path}); name them with NAME=PATH"
            )
        seen[name] = capture_path
    return pairs


def concat_packets(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack packet tables, keeping categorical columns categorical (a plain concat would not)."""
    if len(tables) == 1:
        return tables[0]
    columns = list(PACKET_COLUMNS)
    stacked = pd.concat([table[columns] for table in tables], ignore_index=True)
    for column, (dtype, _meaning) in PACKET_COLUMNS.items():
        if dtype == "category":
            parts = [pd.Categorical(table[column]) for table in tables]
            stacked[column] = pd.Categorical(union_categoricals(parts))
    stacked.attrs = {}
    return stacked


def read_captures(
    pairs: Sequence[tuple[str, Path]], progress: ProgressHook | None = None
) -> tuple[list[pd.DataFrame], list[CaptureInfo]]:
    """Read every capture; the reader's warnings are collected in each ``CaptureInfo``, not printed."""
    tables: list[pd.DataFrame] = []
    infos: list[CaptureInfo] = []
    for name, path in pairs:
        size = capture_size(path)
        detail = f"{name} ({path}, {size / 1e6:.{1 if size < 10e6 else 0}f} MB)" if size else f"{name} ({path})"
        with _stage(progress, "read", detail), warnings.catch_warnings():
            # The reader both records and warns; the report carries the records.
            warnings.simplefilter("ignore")
            table = read_capture(path, name=name)
        info = table.attrs.get("capture_info")
        if not isinstance(info, CaptureInfo):
            info = CaptureInfo(name=name, path=str(path), packets=len(table), link_type="")
        tables.append(table)
        infos.append(info)
    return tables, infos


def analyze(
    captures: Mapping[str, CaptureSpec] | Sequence[CaptureSpec],
    *,
    progress: ProgressHook | None = None,
    packet_filter: str | FilterNode | None = None,
) -> Report:
    """Read captures of the same traffic taken at different points and say what happened.

    ``captures`` is ``{"client": "c.pcap", "pod": "p.pcap"}`` or a list of
    paths and ``NAME=PATH`` strings. Raises ``DiagError`` (``CaptureError``)
    when a capture cannot be read at all; damaged parts are skipped and
    listed in ``report.warnings``. ``packet_filter`` (pcap-filter text such
    as ``"tcp and host 10.0.0.5"``, see ``diag.capture.filter``) keeps only the
    matching packets before flows, correlation and diagnosis see them; a bad
    expression raises ``FilterError`` before any capture is read.
    """
    tree = parse_filter(packet_filter) if isinstance(packet_filter, str) else packet_filter
    pairs = parse_capture_args(captures)
    tables, infos = read_captures(pairs, progress)
    packets = concat_packets(tables)
    if tree is not None:
        # Renumbered rows: the correlation and the plots name packets by row label, within this table only.
        packets = filter_packets(packets, tree).reset_index(drop=True)
    with _stage(progress, "flows", f"{len(packets):,} packets"):
        flows = build_flows(packets)
    with _stage(progress, "correlate", f"{len(packets):,} packets at {len(tables)} point(s)"):
        correlation = correlate(packets)
    with _stage(progress, "diagnose", f"{len(flows):,} flows"):
        findings = diagnose(packets, flows, correlation)
    return Report(
        captures=infos,
        packets=packets,
        flows=flows,
        findings=findings,
        matches=correlation.matches,
        clock_reference=correlation.reference,
        clock_offsets=dict(correlation.offsets),
        warnings=[f"{info.path}: {message}" for info in infos for message in info.warnings],
    )
