"""Captures larger than the memory budget, analysed in passes over the files.

When the packets of every point would not fit in ``--max-memory``
(``diag.memory``), the files are read several times, chunk by chunk, and
nothing held grows with the number of packets, only with the connections:

1. Every file is read once; each chunk's key table
   (``diag.flows.candidates.key_table``) goes to a ``CandidateSurvey``
   (``diag.flows.candidate_stream``), which keeps per-flow counts in memory and
   spills the rows' packet keys to bucket files in a temporary directory (by
   key hash; removed whatever happens). The buckets are then worked on a few
   at a time and the candidate packets, those the correlation and the
   diagnosis can need (a few percent of a busy capture: the connections that
   ended badly, whole, and what sets the clocks), are known as sets of flows
   and keys.
2. The flow table, which counts every packet, is built in ``K`` partitions:
   each pass reads the files again and keeps the packets of the flows whose
   node hash falls in one partition (a flow's packets all share it), builds
   their flow rows, and drops the packets. The first pass also keeps the
   candidate packets. ``K`` is the smallest number of passes whose share of
   the packets fits what the budget leaves.
3. The usual correlation and diagnosis run on the candidate packets.

The rows kept are put in the order the whole table would have them (points in
order, each point's files merged as ``diag.capture.points.merge_point`` does:
by rank, or by time when they overlap), and the flow rows numbered by their
first packet in that order, so the report is the same as from one pass over
everything: the same findings, clock offsets and flow table. Only
``Report.packets`` and ``Report.matches`` hold the candidate packets instead
of all of them. A compressed file is decompressed again in every pass;
standard input cannot be read twice. A file whose first chunk holds nothing
but empty records (a zero-filled or sparse file, a gzip bomb of record
headers) is refused with the one-pass read's error: passes cannot make it a
capture.
"""

from __future__ import annotations

import ctypes
import gc
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow

from diag.analysis import report_of
from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets
from diag.capture.info import CaptureInfo
from diag.capture.points import point_info, stack_tables
from diag.capture.reader import read_capture_chunks
from diag.capture.source import STDIN_NAME, capture_size
from diag.flows import build_flows, flow_ids
from diag.flows.candidate_stream import BUCKET_BYTES_PER_ROW, SPILL, CandidateSurvey, Choice, FileOrder
from diag.flows.candidates import key_table, node_hashes
from diag.flows.table import empty_flows
from diag.memory import BYTES_PER_PACKET, MemoryBudgetError, format_size
from diag.report import Report

if TYPE_CHECKING:
    from diag.analysis import ProgressHook

# Memory per flow: its row of the flow table (about 390 bytes deep, measured) and its share of the merge
# of the partitions' rows; it also covers the survey's per-flow counts, SYNs and client endpoints.
BYTES_PER_FLOW = 500
# Memory per packet of one partition while its flow rows are built: the packet table (160 bytes deep)
# and build_flows' own (busy.pcap in one partition: 280 to 470 bytes a packet, measured).
PARTITION_BYTES_PER_PACKET = 448
# Memory per candidate packet held while the flow partitions are built (its row of the packet table).
CANDIDATE_BYTES_HELD = 192
# Packets decoded at a time: one chunk's full rows are the passes' transient memory.
CHUNK_ROWS = 1 << 17
MIN_CHUNK_ROWS = 1 << 12
# Bucket files the packet keys are spilled to: enough that one bucket is a small share of the budget.
MIN_BUCKETS, MAX_BUCKETS = 16, 4096
# Bytes of capture file per packet, at least (a 16-byte record header and a short frame): sizes the buckets.
MIN_FILE_BYTES_PER_PACKET = 64
GZIP_RATIO_GUESS = 10


@dataclass
class _File:
    """One file of one point, as the passes know it after the first."""

    number: int
    point: int
    name: str
    path: Path
    first_ts: int | None = None  # earliest and latest time of the file (all packets, before a filter)
    last_ts: int | None = None
    info: CaptureInfo | None = None
    rank: int = 0  # the file's place among its point's files (the ``file`` column)
    several: bool = False  # its point has several files
    by_time: bool = False  # ... that overlap, so they are merged by time
    rows: int = 0


def _give_back_freed_memory() -> None:
    """Return what a finished stage freed to the system (Arrow's pool and the C heap keep it otherwise).

    A pass's packets are freed when it ends, but the allocators keep the pages for reuse; what the next
    stage needs then comes on top of them in the resident size the budget is about.
    """
    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    with suppress(OSError, AttributeError):  # not glibc: its allocator decides alone
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _stage(progress: ProgressHook | None, stage: str, detail: str) -> AbstractContextManager[object]:
    return progress(stage, detail) if progress else nullcontext()


def chunk_rows_for(limit: int) -> int:
    """Packets decoded at a time under a budget of ``limit`` bytes: a small share of it (512M: 58k)."""
    return int(min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, limit // (16 * BYTES_PER_PACKET))))


def _order_of(file: _File, chunk: pd.DataFrame, start: int) -> np.ndarray:
    """Per row of a chunk, its place in the whole table: (point, time or 0, rank, row), sorted as merge_point."""
    order = np.empty(len(chunk), dtype=[("point", "<i8"), ("time", "<i8"), ("rank", "<i8"), ("row", "<i8")])
    order["point"] = file.point
    order["time"] = chunk["ts_ns"].to_numpy() if file.by_time else 0
    order["rank"] = file.rank
    order["row"] = np.arange(start, start + len(chunk))
    return order


def _sorted(order: np.ndarray) -> np.ndarray:
    return np.lexsort((order["row"], order["rank"], order["time"], order["point"]))


class _Selected:
    """Rows picked from the files in one pass, with their places in the whole table."""

    def __init__(self) -> None:
        self.pieces: list[pd.DataFrame] = []
        self.orders: list[np.ndarray] = []

    def add(self, chunk: pd.DataFrame, order: np.ndarray, chosen: np.ndarray, file: _File) -> None:
        if not chosen.any() and self.pieces:
            return
        piece = chunk[chosen]
        if file.several:  # a point of several files: the file's place among them, as merge_point numbers it
            piece = piece.assign(file=np.int16(file.rank))
        self.pieces.append(piece)
        self.orders.append(order[chosen])

    def table(self) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows as one packet table in the whole table's order, and their places in it."""
        stacked = stack_tables(self.pieces)
        self.pieces = []
        order = np.concatenate(self.orders)
        self.orders = []
        sort = _sorted(order)
        if (np.diff(sort) > 0).all():  # read in order already (no point merged by time): no copy
            return stacked.reset_index(drop=True), order
        return stacked.iloc[sort].reset_index(drop=True), order[sort]


def _read_file(file: _File, limit: int, tree: FilterNode | None) -> Iterator[tuple[pd.DataFrame, int]]:
    """(chunk, position of its first row among ``file``'s filtered rows) for each chunk of the file."""
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
        yield chunk, start
        start += len(chunk)


def _first_pass(
    files: list[_File],
    limit: int,
    progress: ProgressHook | None,
    tree: FilterNode | None,
    survey: CandidateSurvey | None,
    refusal: MemoryBudgetError | None,
) -> None:
    """Read every file once into the survey (if any); set each file's times, ``CaptureInfo`` and row count."""
    for file in files:
        size = capture_size(file.path)
        detail = f"{file.name} ({file.path}, {size / 1e6:.0f} MB), pass 1" if size else f"{file.name} ({file.path})"
        with _stage(progress, "read", detail):
            for chunk, start in _read_file(file, limit, tree):
                if start == 0 and len(chunk) >= MIN_CHUNK_ROWS and not (chunk["cap_len"].to_numpy() > 0).any():
                    # Thousands of records without a byte: not traffic, and no number of passes makes it fit.
                    raise refusal or MemoryBudgetError(
                        f"{file.path}: its first {len(chunk):,} records hold no bytes at all; not analysed in passes"
                    )
                if survey is not None:
                    survey.add(key_table(chunk, file.point), file.number, start)
                file.rows = start + len(chunk)


def _order_files(files: list[_File]) -> list[FileOrder]:
    """Each file's rank among its point's files and whether they are merged by time, as merge_point decides."""
    for point in sorted({file.point for file in files}):
        members = [file for file in files if file.point == point]
        # As merge_point: files by their first time (files without one last), merged by time if they overlap.
        members.sort(key=lambda file: (file.first_ts is None, file.first_ts or 0))
        overlapping = len(members) > 1 and _overlap(members)
        for rank, file in enumerate(members):
            file.rank, file.several, file.by_time = rank, len(members) > 1, overlapping
    return [FileOrder(file.number, file.point, file.rank, file.by_time) for file in files]


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


def _buckets_for(files: Sequence[_File], limit: int) -> int:
    """How many bucket files the keys are spilled to, from the files' sizes: a bucket a small share of the budget."""
    packets = 0
    for file in files:
        size = capture_size(file.path) or 0
        packets += size * (GZIP_RATIO_GUESS if file.path.suffix == ".gz" else 1) // MIN_FILE_BYTES_PER_PACKET
    per_bucket = max(1, _bucket_rows(limit) // 4)
    return int(min(MAX_BUCKETS, max(MIN_BUCKETS, 1 << max(0, math.ceil(math.log2(max(1, packets // per_bucket)))))))


def _bucket_rows(limit: int) -> int:
    """Spilled rows worked on at once: a quarter of the budget."""
    return max(1 << 14, limit // 4 // BUCKET_BYTES_PER_ROW)


def _plan_passes(total: int, kept: int, flows: int, limit: int) -> int:
    """How many partitions the flow table is built in so that one pass's packets fit what the budget leaves.

    While the flows are built the candidates are only held (their packet table); the correlation and
    diagnosis that take ``BYTES_PER_PACKET`` of each come after the partitions are gone. A quarter of the
    budget is left to what the earlier stages leave behind (freed memory the allocator keeps).
    """
    held = kept * CANDIDATE_BYTES_HELD + flows * BYTES_PER_FLOW + chunk_rows_for(limit) * BYTES_PER_PACKET
    left = limit * 3 // 4 - held
    if left < limit // 16 or kept * BYTES_PER_PACKET + flows * BYTES_PER_FLOW > limit:
        raise MemoryBudgetError(
            f"the captures' {total:,} packets, about {kept:,} of them needed for the diagnosis, and "
            f"{flows:,} flows need more memory than the budget of {format_size(limit)} even analysed in passes "
            "(raise it with --max-memory)"
        )
    return max(1, math.ceil(total * PARTITION_BYTES_PER_PACKET / left))


def _read_pass(
    files: list[_File], limit: int, tree: FilterNode | None, partition: int, passes: int, choice: Choice | None
) -> tuple[tuple[pd.DataFrame, np.ndarray], tuple[pd.DataFrame, np.ndarray] | None]:
    """Read every file again: the packets of one partition's flows and, given the choice, the candidate packets."""
    flows = _Selected()
    candidates = _Selected()
    for file in sorted(files, key=lambda file: (file.point, file.rank)):  # the whole table's order, mostly
        for chunk, start in _read_file(file, limit, tree):
            node = node_hashes(chunk, file.point)
            order = _order_of(file, chunk, start)
            flows.add(chunk, order, (node != 0) & (node % np.uint64(passes) == np.uint64(partition)), file)
            if choice is not None:
                candidates.add(chunk, order, choice.keep(chunk, node, file.number, start), file)
    return flows.table(), candidates.table() if choice is not None else None


def _first_packets(selected: tuple[pd.DataFrame, np.ndarray]) -> np.ndarray:
    """For each flow of the table (by flow id), the whole table's place of its first packet."""
    table, order = selected
    ids = flow_ids(table)
    counted = ids >= 0
    _unique, first = np.unique(ids[counted], return_index=True)
    firsts: np.ndarray = order[np.flatnonzero(counted)[first]]
    return firsts


def _merge_flows(parts: list[tuple[np.ndarray, pd.DataFrame]]) -> pd.DataFrame:
    """The partitions' flow rows as one table, numbered by their first packet in the whole table (empties ``parts``)."""
    if not parts:
        return empty_flows()
    first = np.concatenate([order for order, _table in parts])
    merged = pd.concat([table for _order, table in parts], ignore_index=True)
    sizes = [len(table) for _order, table in parts]
    previous_parts = [table["prev_flow"].to_numpy() for _order, table in parts]
    parts.clear()  # the caller's list: the partitions' rows go before the merged rows are reordered
    if len(first) != len(merged):  # flow_ids and build_flows disagree on a table: nothing to sort by
        raise AssertionError("flow ids and flow rows differ")
    # prev_flow names a flow of the same 5-tuple, so of the same partition: its id there, renumbered like the rest.
    offsets = np.cumsum([0, *sizes])
    previous = np.concatenate(
        [np.where(ids >= 0, ids + offset, -1) for offset, ids in zip(offsets, previous_parts, strict=False)]
    )
    sort = _sorted(first)
    new_id = np.empty(len(merged), dtype=np.int64)
    new_id[sort] = np.arange(len(merged), dtype=np.int64)
    merged["prev_flow"] = np.where(previous >= 0, new_id[np.maximum(previous, 0)], -1)
    merged = merged.iloc[sort].reset_index(drop=True)
    merged["flow_id"] = np.arange(len(merged), dtype=np.int64)
    return merged


def _point_infos(files: list[_File]) -> list[CaptureInfo]:
    infos = []
    for point in sorted({file.point for file in files}):
        members = sorted((file for file in files if file.point == point), key=lambda file: file.rank)
        known = [file.info for file in members if file.info is not None]
        infos.append(point_info(members[0].name, known))
    return infos


def _files_of(pairs: Sequence[tuple[str, Path]], limit: int) -> list[_File]:
    """The files of ``pairs``, their points numbered in order; standard input refused (it cannot be read twice)."""
    for _name, path in pairs:
        if str(path) == STDIN_NAME:
            raise MemoryBudgetError(
                f"{path}: the captures need more memory than the budget of {format_size(limit)}, and standard "
                "input cannot be read more than once to analyse it in passes; save it to a file first"
            )
    point_numbers: dict[str, int] = {}
    return [
        _File(number=number, point=point_numbers.setdefault(name, len(point_numbers)), name=name, path=path)
        for number, (name, path) in enumerate(pairs)
    ]


def _flow_passes(
    files: list[_File],
    limit: int,
    progress: ProgressHook | None,
    tree: FilterNode | None,
    passes: int,
    choice: Choice | None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The flow table built in ``passes`` partitions and, given a choice, the candidate packets (read in the first)."""
    total = sum(file.rows for file in files)
    flows_parts: list[tuple[np.ndarray, pd.DataFrame]] = []
    candidates: pd.DataFrame | None = None
    for partition in range(passes):
        detail = f"pass {partition + 2} of {passes + 1}: flows of {total:,} packets"
        with _stage(progress, "flows", detail):
            in_partition, reduced = _read_pass(
                files, limit, tree, partition, passes, choice if partition == 0 else None
            )
            if reduced is not None:
                candidates = reduced[0]
            if len(in_partition[0]):
                table = build_flows(in_partition[0])
                if len(table):
                    flows_parts.append((_first_packets(in_partition), table))
                del table
            del in_partition, reduced
        _give_back_freed_memory()
    return _merge_flows(flows_parts), candidates


def flows_in_passes(
    pairs: Sequence[tuple[str, Path]],
    limit: int,
    *,
    refusal: MemoryBudgetError | None = None,
    passes: int | None = None,
) -> tuple[pd.DataFrame, list[CaptureInfo]]:
    """``build_flows`` of every point's packets, and each point's ``CaptureInfo``, within ``limit`` bytes.

    The flow table alone (``diag flows``): a first pass learns the files'
    order and sizes, then the partitions are built as in ``analyze_in_passes``.
    """
    files = _files_of(pairs, limit)
    _first_pass(files, limit, None, None, None, refusal)
    _order_files(files)
    total = sum(file.rows for file in files)
    # Without the survey the flows are not counted: a busy capture has about one per 12 packets.
    passes = passes or _plan_passes(total, 0, total // 12, limit)
    flows, _candidates = _flow_passes(files, limit, None, None, passes, None)
    return flows, _point_infos(files)


def analyze_in_passes(
    pairs: Sequence[tuple[str, Path]],
    limit: int,
    progress: ProgressHook | None = None,
    tree: FilterNode | None = None,
    passes: int | None = None,
    *,
    buckets: int | None = None,
    refusal: MemoryBudgetError | None = None,
) -> Report:
    """The ``Report`` of ``diag.analysis.analyze`` on ``pairs`` ((point name, file) pairs), within ``limit`` bytes.

    Raises ``MemoryBudgetError`` when even the passes would not fit (the
    candidate packets and the flow table are held at once), or when a point is
    standard input, which cannot be read twice; ``refusal`` (the one-pass
    read's error) when a file is no capture worth passes. ``passes`` and
    ``buckets`` fix the number of flow-table partitions and of key buckets
    instead of planning them from the budget (tests force several on small
    captures with them).
    """
    files = _files_of(pairs, limit)
    with tempfile.TemporaryDirectory(prefix="diag-keys-") as spill:
        survey = CandidateSurvey(
            Path(spill), buckets or _buckets_for(files, limit), max(1 << 12, limit // 64 // SPILL.itemsize)
        )
        _first_pass(files, limit, progress, tree, survey, refusal)
        orders = _order_files(files)
        total = sum(file.rows for file in files)
        with _stage(progress, "flows", f"candidates among {total:,} packets ({survey.spilled_rows:,} keys)"):
            choice = survey.choose(orders, _bucket_rows(limit))
        flows_seen = survey.nodes_seen
        del survey
    _give_back_freed_memory()
    passes = passes or _plan_passes(total, choice.kept_estimate, flows_seen, limit)
    flows, candidates = _flow_passes(files, limit, progress, tree, passes, choice)
    assert candidates is not None
    packets = candidates.reset_index(drop=True)
    return report_of(packets, flows, _point_infos(files), progress, packets_read=total)
