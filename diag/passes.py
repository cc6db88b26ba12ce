"""Captures larger than the memory budget, analysed in passes over the files.

When the packets of every point would not fit in ``--max-memory``
(``diag.memory``), the files are read several times, chunk by chunk, and no
pass holds more than a share of the packets:

1. Every file is read once and each packet leaves a few integers
   (``diag.flows.candidates.key_table``); from those of every point,
   ``candidate_rows`` picks the packets the correlation and the diagnosis can
   need (a few percent of a busy capture: the connections that ended badly,
   whole, and what sets the clocks).
2. The flow table, which counts every packet, is built in ``K`` partitions:
   each pass reads the files again and keeps the packets of the flows whose
   node hash falls in one partition (a flow's packets all share it), builds
   their flow rows, and drops the packets. The first pass also keeps the
   candidate packets. ``K`` is the smallest number of passes whose share of
   the packets fits what the budget leaves.
3. The usual correlation and diagnosis run on the candidate packets.

The rows kept are put in the order the whole table would have them (points in
order, each point's files merged as ``diag.capture.points.merge_point`` does),
and the flow rows numbered by their first packet in that order, so the report
is the same as from one pass over everything: the same findings, clock
offsets and flow table. Only ``Report.packets`` and ``Report.matches`` hold
the candidate packets instead of all of them. A compressed file is
decompressed again in every pass; standard input cannot be read twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets
from diag.capture.info import CaptureInfo
from diag.capture.points import point_info, stack_tables
from diag.capture.reader import read_capture_chunks
from diag.capture.source import STDIN_NAME, capture_size
from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.flows import build_flows, flow_ids
from diag.flows.candidates import candidate_rows, key_table
from diag.flows.table import empty_flows
from diag.memory import BYTES_PER_PACKET, MemoryBudgetError, format_size
from diag.report import Report

if TYPE_CHECKING:
    from diag.analysis import ProgressHook

# Memory per packet while the key tables of every point are held and the candidates chosen from them
# (the table's ~60 bytes and the choice's temporary columns), measured on busy.pcap; rounded up.
KEY_BYTES_PER_PACKET = 160
# Per packet between the passes: its position in the whole table, its node hash, kept or not.
RESIDENT_BYTES_PER_PACKET = 24
# Memory per flow row of the flow table being gathered (its Python strings and RST lists).
BYTES_PER_FLOW = 700
# Packets decoded at a time: one chunk's full rows are the passes' transient memory.
CHUNK_ROWS = 1 << 17
MIN_CHUNK_ROWS = 1 << 12


@dataclass
class _File:
    """One file of one point, as the passes know it after the first."""

    point: int
    name: str
    path: Path
    first_ts: int | None = None  # earliest and latest time of the file (all packets, before a filter)
    last_ts: int | None = None
    info: CaptureInfo | None = None
    rank: int = 0  # the file's place among its point's files (the ``file`` column)
    global_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    node: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _stage(progress: ProgressHook | None, stage: str, detail: str) -> AbstractContextManager[object]:
    return progress(stage, detail) if progress else nullcontext()


def chunk_rows_for(limit: int) -> int:
    """Packets decoded at a time under a budget of ``limit`` bytes: a small share of it."""
    return int(min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, limit // (8 * BYTES_PER_PACKET))))


class _Selected:
    """Rows picked from the files in one pass, in the order of the whole table, with their positions in it."""

    def __init__(self) -> None:
        self.pieces: list[pd.DataFrame] = []
        self.rows: list[np.ndarray] = []

    def add(self, chunk: pd.DataFrame, rows: np.ndarray, chosen: np.ndarray, rank: int | None) -> None:
        if not chosen.any() and self.pieces:
            return
        piece = chunk[chosen]
        if rank is not None:  # a point of several files: the file's place among them, as merge_point numbers it
            piece = piece.assign(file=np.int16(rank))
        self.pieces.append(piece)
        self.rows.append(rows[chosen])

    def table(self) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows as one packet table in the whole table's order, and their positions in it."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)
        stacked = stack_tables(self.pieces)
        order = np.argsort(rows, kind="stable")
        return stacked.iloc[order].reset_index(drop=True), rows[order]


def _read_file(file: _File, limit: int, tree: FilterNode | None) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """(chunk, that chunk's rows' positions in ``file``'s filtered rows) for each chunk of the file."""
    start = 0
    for chunk in read_capture_chunks(file.path, file.name, chunk_rows_for(limit)):
        info = chunk.attrs.get("capture_info")
        if isinstance(info, CaptureInfo):
            file.info = info
        stamps = chunk["ts_ns"].to_numpy()
        stamps = stamps[stamps >= 0]
        if len(stamps):
            low, high = int(stamps.min()), int(stamps.max())
            file.first_ts = low if file.first_ts is None else min(file.first_ts, low)
            file.last_ts = high if file.last_ts is None else max(file.last_ts, high)
        if tree is not None:
            chunk = filter_packets(chunk, tree)
        chunk.attrs = {}
        yield chunk, np.arange(start, start + len(chunk))
        start += len(chunk)


def _first_pass(files: list[_File], limit: int, progress: ProgressHook | None, tree: FilterNode | None) -> pd.DataFrame:
    """Read every file once: the key table of every point, stacked in the whole table's order.

    Sets each file's times, ``CaptureInfo``, rank among its point's files and
    the position of each of its rows in the whole table.
    """
    by_file: list[pd.DataFrame] = []
    held = 0
    for file in files:
        size = capture_size(file.path)
        detail = f"{file.name} ({file.path}, {size / 1e6:.0f} MB), pass 1" if size else f"{file.name} ({file.path})"
        parts = []
        with _stage(progress, "read", detail):
            for chunk, _rows in _read_file(file, limit, tree):
                parts.append(key_table(chunk, file.point))
                held += len(chunk)
                if held * KEY_BYTES_PER_PACKET > limit:
                    raise MemoryBudgetError(
                        f"{file.path}: more than {held:,} packets: even analysed in passes they would need about "
                        f"{format_size(held * KEY_BYTES_PER_PACKET)} of memory, over the budget of "
                        f"{format_size(limit)}; stopped reading (raise it with --max-memory)"
                    )
        by_file.append(pd.concat(parts, ignore_index=True))
    ordered: list[pd.DataFrame] = []
    base = 0
    for point in sorted({file.point for file in files}):
        members = [position for position, file in enumerate(files) if file.point == point]
        # As merge_point: files by their first time (files without one last), merged by time if they overlap.
        members.sort(key=lambda position: (files[position].first_ts is None, files[position].first_ts or 0))
        tables = [by_file[position] for position in members]
        stacked = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        order = np.arange(len(stacked))
        if len(members) > 1 and _overlap([files[position] for position in members]):
            order = np.argsort(stacked["ts_ns"].to_numpy(), kind="stable")
        position_of = np.empty(len(stacked), dtype=np.int64)
        position_of[order] = base + np.arange(len(stacked))
        offset = 0
        for rank, member in enumerate(members):
            file = files[member]
            file.rank = rank
            file.global_row = position_of[offset : offset + len(by_file[member])]
            offset += len(by_file[member])
        ordered.append(stacked.iloc[order])
        base += len(stacked)
    return pd.concat(ordered, ignore_index=True)


def _overlap(files: Sequence[_File]) -> bool:
    """Whether a file holds packets earlier than the last packet of a file before it (as merge_point asks)."""
    latest = None
    for file in files:
        if file.first_ts is None or file.last_ts is None:
            continue
        if latest is not None and file.first_ts < latest:
            return True
        latest = max(latest or 0, file.last_ts)
    return False


def _plan_passes(total: int, kept: int, limit: int) -> int:
    """How many partitions the flow table is built in so that one pass's packets fit what the budget leaves."""
    flows_guess = total // 8  # flows are held as they are made; a busy capture has one per 16 packets
    left = limit - total * RESIDENT_BYTES_PER_PACKET - kept * BYTES_PER_PACKET - flows_guess * BYTES_PER_FLOW
    if left < limit // 16:
        raise MemoryBudgetError(
            f"the captures' {total:,} packets, {kept:,} of them needed for the diagnosis, need more memory than "
            f"the budget of {format_size(limit)} even analysed in passes (raise it with --max-memory)"
        )
    return max(1, math.ceil(total * BYTES_PER_PACKET / left))


def _read_pass(
    files: list[_File], limit: int, tree: FilterNode | None, partition: int, passes: int, with_candidates: bool
) -> tuple[tuple[pd.DataFrame, np.ndarray], tuple[pd.DataFrame, np.ndarray] | None]:
    """Read every file again: the packets of one partition's flows and, when asked, the candidate packets."""
    flows = _Selected()
    candidates = _Selected()
    several = {file.point for file in files if sum(other.point == file.point for other in files) > 1}
    for file in files:
        in_partition = (file.node != 0) & (file.node % np.uint64(passes) == np.uint64(partition))
        rank = file.rank if file.point in several else None
        for chunk, rows in _read_file(file, limit, tree):
            flows.add(chunk, file.global_row[rows], in_partition[rows], rank)
            if with_candidates:
                candidates.add(chunk, file.global_row[rows], file.keep[rows], rank)
    return flows.table(), candidates.table() if with_candidates else None


def _first_rows(selected: tuple[pd.DataFrame, np.ndarray]) -> np.ndarray:
    """For each flow of the table (by flow id), the whole table's position of its first packet."""
    table, rows = selected
    ids = flow_ids(table)
    counted = ids >= 0
    _unique, first = np.unique(ids[counted], return_index=True)
    return rows[np.flatnonzero(counted)[first]]


def _merge_flows(parts: list[tuple[np.ndarray, pd.DataFrame]]) -> pd.DataFrame:
    """The partitions' flow rows as one table, numbered by their first packet in the whole table."""
    if not parts:
        return empty_flows()
    first = np.concatenate([rows for rows, _table in parts])
    merged = pd.concat([table for _rows, table in parts], ignore_index=True)
    if len(first) != len(merged):  # flow_ids and build_flows disagree on a table: nothing to sort by
        raise AssertionError("flow ids and flow rows differ")
    merged = merged.iloc[np.argsort(first, kind="stable")].reset_index(drop=True)
    merged["flow_id"] = np.arange(len(merged), dtype=np.int64)
    return merged


def _point_infos(files: list[_File]) -> list[CaptureInfo]:
    infos = []
    for point in sorted({file.point for file in files}):
        members = sorted((file for file in files if file.point == point), key=lambda file: file.rank)
        known = [file.info for file in members if file.info is not None]
        infos.append(point_info(members[0].name, known))
    return infos


def analyze_in_passes(
    pairs: Sequence[tuple[str, Path]],
    limit: int,
    progress: ProgressHook | None = None,
    tree: FilterNode | None = None,
    passes: int | None = None,
) -> Report:
    """The ``Report`` of ``diag.analysis.analyze`` on ``pairs`` ((point name, file) pairs), within ``limit`` bytes.

    Raises ``MemoryBudgetError`` when even the passes would not fit (the
    per-packet keys of every point are held at once), or when a point is
    standard input, which cannot be read twice. ``passes`` fixes the number of
    flow-table partitions instead of planning it from the budget (tests force
    several passes on small captures with it).
    """
    for _name, path in pairs:
        if str(path) == STDIN_NAME:
            raise MemoryBudgetError(
                f"{path}: the captures need more memory than the budget of {format_size(limit)}, and standard "
                "input cannot be read more than once to analyse it in passes; save it to a file first"
            )
    point_numbers: dict[str, int] = {}
    files = [
        _File(point=point_numbers.setdefault(name, len(point_numbers)), name=name, path=path) for name, path in pairs
    ]
    keys = _first_pass(files, limit, progress, tree)
    total = len(keys)
    keep = candidate_rows(keys)
    for file in files:
        file.keep = keep[file.global_row]
        file.node = keys["node"].to_numpy()[file.global_row]
    del keys, keep
    kept = int(sum(int(file.keep.sum()) for file in files))
    passes = passes or _plan_passes(total, kept, limit)
    flows_parts: list[tuple[np.ndarray, pd.DataFrame]] = []
    candidates: pd.DataFrame | None = None
    for partition in range(passes):
        detail = f"pass {partition + 1} of {passes}: flows of {total:,} packets"
        with _stage(progress, "flows", detail):
            in_partition, reduced = _read_pass(files, limit, tree, partition, passes, with_candidates=partition == 0)
            if reduced is not None:
                candidates = reduced
            if len(in_partition[0]):
                table = build_flows(in_partition[0])
                if len(table):
                    flows_parts.append((_first_rows(in_partition), table))
            del in_partition
    flows = _merge_flows(flows_parts)
    assert candidates is not None
    packets = candidates[0].reset_index(drop=True)
    infos = _point_infos(files)
    with _stage(progress, "correlate", f"{len(packets):,} of {total:,} packets at {len(infos)} point(s)"):
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
