"""Captures larger than the memory budget, analysed in passes over the files.

When the packets of every point would not fit in ``--max-memory``
(``diag.memory``), the files are read once, chunk by chunk, and nothing held
grows with the number of packets; with ``SpilledFlows`` nothing grows with
the number of flows either, only with the connections that need diagnosing:

1. Every file is read once. Each chunk's key table
   (``diag.flows.candidates.key_table``) goes to a ``CandidateSurvey``
   (``diag.flows.candidate_stream``), which spills the rows' packet keys, each
   chunk's per-flow counts, the SYNs and the client endpoints to bucket files
   (keys by key hash, counts by flow hash); the chunk's
   packets go to *packet buckets* by the hash of their flow (a flow's packets
   all share a bucket; packets of no flow go to a bucket of their own). Both
   live in a temporary directory, removed whatever happens. The key buckets
   are then worked on a few at a time and the candidate packets, those the
   correlation and the diagnosis can need (a few percent of a busy capture:
   the connections that ended badly, whole, and what sets the clocks), are
   known as sets of flows and keys.
2. The packet buckets are read back a *partition* at a time (as many buckets
   as fit what the budget leaves): the rows are put in the whole table's
   order, the candidates among them kept, their flow rows built, and the
   packets dropped. The flow rows go to ``SpilledFlows``
   (``diag.spilled``), which writes them to disk and keeps in memory
   the problem rows, the first healthy ones and the counts the report shows,
   when the whole flow table would take more than a quarter of the budget;
   otherwise the table is read back whole at the end.
3. The usual correlation runs on the candidate packets; the diagnosis too, or,
   when its working memory for all of them would take more than a share of
   the budget, on connection partitions of them one after another
   (``diag.partitions``: whole connections), each part's findings written
   to a temporary file as it ends and read back in the whole run's order
   one at a time by the reports (``diag.spilledfindings``), so that nothing
   held grows with the findings either.

The rows kept are put in the order the whole table would have them (points in
order, each point's files merged as ``diag.capture.points.merge_point`` does:
by rank, or by time when they overlap), and the flow rows numbered by their
first packet in that order, so the report is the same as from one pass over
everything: the same findings, clock offsets and flow table. Only
``Report.packets`` and ``Report.matches`` hold the candidate packets instead
of all of them, and with a spilled flow table ``Report.flows`` holds the rows
above (``Report.flow_store`` the whole table). Standard input cannot be read
in passes (it is refused). A file whose first chunk holds nothing but empty
records (a zero-filled or sparse file, a gzip bomb of record headers) is
refused with the one-pass read's error: passes cannot make it a capture.
"""

from __future__ import annotations

import ctypes
import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow

from diag.capture.columns import PACKET_COLUMNS
from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets
from diag.capture.info import CaptureInfo
from diag.capture.location import Location
from diag.capture.points import point_info, stack_tables
from diag.capture.reader import read_capture_chunks
from diag.capture.source import STDIN_NAME, capture_size
from diag.flows import build_flows, flow_ids
from diag.flows.candidate_stream import BUCKET_BYTES_PER_ROW, SPILL, CandidateSurvey, Choice, FileOrder
from diag.flows.candidates import key_table, node_hashes
from diag.memory import BYTES_PER_PACKET, MemoryBudgetError, format_size
from diag.report import Report
from diag.scratch import spill_dir
from diag.spilled import ORDER, SpilledFlows, sorted_order
from diag.spilledfindings import FindingsWriter
from diag.stages import in_stage, report_of

if TYPE_CHECKING:
    from diag.correlate import Correlation
    from diag.report import Finding
    from diag.stages import Diagnoser, ProgressHook

# Memory per flow held in memory: its row of the flow table (about 390 bytes deep, measured) and its share
# of the merge of the partitions' rows.
BYTES_PER_FLOW = 500
# Memory per packet of one partition while its flow rows are built: the packet table (160 bytes deep)
# and build_flows' own (busy.pcap in one partition: 280 to 470 bytes a packet, measured).
PARTITION_BYTES_PER_PACKET = 448
# Memory per candidate packet held while the flow partitions are built (its row of the packet table).
CANDIDATE_BYTES_HELD = 192
# Working memory of the diagnosis per candidate packet (connection tables, signals, the findings under way:
# a peak of 73 MiB traced for busy.pcap's 40k candidates, about 1.5 KB each rounded up), and the share of the
# budget one connection partition's diagnosis may take.
DIAGNOSE_BYTES_PER_CANDIDATE = 2048
DIAGNOSE_SHARE = 8
# Packets decoded at a time: one chunk's full rows are the passes' transient memory.
CHUNK_ROWS = 1 << 17
MIN_CHUNK_ROWS = 1 << 12
# Bucket files the packet keys are spilled to: enough that one bucket is a small share of the budget.
MIN_BUCKETS, MAX_BUCKETS = 16, 4096
# Packet buckets: at most this many, and this many times as many as partitions seem needed (to group them).
MAX_PACKET_BUCKETS, PACKET_BUCKETS_PER_PARTITION = 1024, 4
# Bytes of capture file per packet, at least (a 16-byte record header and a short frame): sizes the buckets.
MIN_FILE_BYTES_PER_PACKET = 64
RECORD_HEADER_BYTES = 16
GZIP_RATIO_GUESS = 10
# Helper columns of a spilled packet: its file, its position among the file's rows, its flow's node hash.
_META = np.dtype([("file", "<i4"), ("row", "<i8"), ("node", "<u8")])


@dataclass
class _File:
    """One file of one point, as the passes know it after the first."""

    number: int
    point: int
    name: str
    path: Location
    first_ts: int | None = None  # earliest and latest time of the file (all packets, before a filter)
    last_ts: int | None = None
    info: CaptureInfo | None = None
    rank: int = 0  # the file's place among its point's files (the ``file`` column)
    several: bool = False  # its point has several files
    by_time: bool = False  # ... that overlap, so they are merged by time
    rows: int = 0


def _give_back_freed_memory() -> None:
    """Return what a finished stage freed to the system (Arrow's pool and the C heap keep it otherwise).

    A partition's packets are freed when it ends, but the allocators keep the pages for reuse; what the next
    stage needs then comes on top of them in the resident size the budget is about.
    """
    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    with suppress(OSError, AttributeError):  # not glibc: its allocator decides alone
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def chunk_rows_for(limit: int) -> int:
    """Packets decoded at a time under a budget of ``limit`` bytes: a small share of it (512M: 58k)."""
    return int(min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, limit // (16 * BYTES_PER_PACKET))))


class _PacketBuckets:
    """The packets of pass 1 in bucket files by their flow's node hash; packets of no flow in one more bucket.

    Columnar and raw: a chunk's rows of one bucket are one record of the bucket's file, each column's
    values one after the other (a categorical column as codes into a dictionary this object grows over
    the whole pass, so the records of many chunks stack without joining dictionaries), then ``_META``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.buckets = 0  # decided by ``open`` once the first chunk tells how large packets are
        self.rows: list[int] = []
        self._records: list[list[int]] = []  # per bucket: the rows of each record, in file order
        self._columns: list[tuple[str, np.dtype[Any]]] = []
        self._dictionaries: dict[str, pd.Index] = {}

    def open(self, buckets: int, chunk: pd.DataFrame) -> None:
        self.buckets = buckets
        self.rows = [0] * (buckets + 1)
        self._records = [[] for _ in range(buckets + 1)]
        for column in chunk.columns:
            dtype = chunk[column].dtype
            if isinstance(dtype, pd.CategoricalDtype):
                self._dictionaries[str(column)] = dtype.categories[:0]
                self._columns.append((str(column), np.dtype(np.int32)))
            else:
                self._columns.append((str(column), chunk[column].to_numpy().dtype))

    @property
    def nodeless(self) -> int:
        """The bucket of the packets of no flow (neither TCP nor UDP)."""
        return self.buckets

    def _path(self, bucket: int) -> Path:
        return self.directory / f"packets-{bucket:05d}.bin"

    def _codes(self, column: str, values: pd.Series) -> np.ndarray:
        """A categorical column's values as codes into the pass's dictionary of that column (grown as needed)."""
        categories = values.cat.categories
        known = self._dictionaries[column]
        found = known.get_indexer(categories)
        if (found < 0).any():
            known = known.append(categories[found < 0])
            self._dictionaries[column] = known
            found = known.get_indexer(categories)
        codes = values.cat.codes.to_numpy()
        return np.where(codes >= 0, found[np.maximum(codes, 0)], -1).astype(np.int32)

    def add(self, chunk: pd.DataFrame, node: np.ndarray, file: int, start: int) -> None:
        meta = np.empty(len(chunk), dtype=_META)
        meta["file"], meta["row"], meta["node"] = file, np.arange(start, start + len(chunk)), node
        bucket = np.where(node != 0, (node % np.uint64(self.buckets)).astype(np.int64), self.nodeless)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 2))
        columns = [
            self._codes(name, chunk[name]) if name in self._dictionaries else chunk[name].to_numpy()
            for name, _dtype in self._columns
        ]
        columns = [np.ascontiguousarray(values[order]) for values in (*columns, meta)]
        for number in range(self.buckets + 1):
            low, high = int(bounds[number]), int(bounds[number + 1])
            if high > low:
                with open(self._path(number), "ab") as out:
                    out.write(b"".join(values[low:high].tobytes() for values in columns))
                self._records[number].append(high - low)
                self.rows[number] += high - low

    def read(self, buckets: Sequence[int]) -> tuple[pd.DataFrame, np.ndarray] | None:
        """The packets of some buckets as one packet table and its ``_META`` (the buckets' files removed after)."""
        parts: list[list[np.ndarray]] = [[] for _ in range(len(self._columns) + 1)]
        dtypes = [dtype for _name, dtype in self._columns] + [_META]
        for bucket in buckets:
            path = self._path(bucket)
            if not self._records or not self._records[bucket]:
                continue
            data = path.read_bytes()
            offset = 0
            for rows in self._records[bucket]:
                for index, dtype in enumerate(dtypes):
                    parts[index].append(np.frombuffer(data, dtype=dtype, count=rows, offset=offset))
                    offset += rows * dtype.itemsize
            del data
            path.unlink()
        if not parts[0]:
            return None
        values = [np.concatenate(column) for column in parts]
        del parts
        table = pd.DataFrame(
            {
                name: pd.Categorical.from_codes(column, dtype=pd.CategoricalDtype(self._dictionaries[name]))
                if name in self._dictionaries
                else column
                for (name, _dtype), column in zip(self._columns, values, strict=False)
            },
            copy=False,
        )
        return table, values[-1]


def _packet_buckets_for(files: Sequence[_File], chunk: pd.DataFrame, limit: int) -> int:
    """How many packet buckets, from the files' sizes and the first chunk's packet sizes: several per partition."""
    stored = chunk["cap_len"].to_numpy()
    per_packet = max(MIN_FILE_BYTES_PER_PACKET, int(stored.mean()) + RECORD_HEADER_BYTES if len(stored) else 0)
    packets = 0
    for file in files:
        size = capture_size(file.path) or 0
        packets += size * (GZIP_RATIO_GUESS if file.path.suffix == ".gz" else 1) // per_packet
    partitions = packets * PARTITION_BYTES_PER_PACKET / max(1, limit // 2)
    wanted = max(1, math.ceil(partitions * PACKET_BUCKETS_PER_PARTITION))
    return int(min(MAX_PACKET_BUCKETS, 1 << math.ceil(math.log2(wanted))))


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
    packets: _PacketBuckets,
    refusal: MemoryBudgetError | None,
    buckets: int | None,
) -> None:
    """Read every file once into the survey (if any) and the packet buckets; set each file's times, info, rows."""
    for file in files:
        size = capture_size(file.path)
        detail = f"{file.name} ({file.path}, {size / 1e6:.0f} MB), pass 1" if size else f"{file.name} ({file.path})"
        with in_stage(progress, "read", detail):
            for chunk, start in _read_file(file, limit, tree):
                if start == 0 and len(chunk) >= MIN_CHUNK_ROWS and not (chunk["cap_len"].to_numpy() > 0).any():
                    # Thousands of records without a byte: not traffic, and no number of passes makes it fit.
                    raise refusal or MemoryBudgetError(
                        f"{file.path}: its first {len(chunk):,} records hold no bytes at all; not analysed in passes"
                    )
                if not packets.buckets:
                    packets.open(buckets or _packet_buckets_for(files, chunk, limit), chunk)
                if survey is not None:
                    keys = key_table(chunk, file.point)
                    survey.add(keys, file.number, start)
                    node = keys["node"].to_numpy()
                    del keys
                else:
                    node = node_hashes(chunk, file.point)
                packets.add(chunk, node, file.number, start)
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


def _partition_rows(total: int, kept: int, flows_held: int, limit: int) -> int:
    """How many packets one partition may hold so that its flow rows are built within what the budget leaves.

    While the flows are built the candidates and the flows kept in memory are only held; the correlation
    and diagnosis that take ``BYTES_PER_PACKET`` of each candidate come after the partitions are gone. A
    quarter of the budget is left to what the earlier stages leave behind (freed memory the allocator keeps).
    """
    left = _partition_room(kept, flows_held, limit)
    if left is None:
        # Without candidates (``diag flows`` builds the flow table alone) there is no diagnosis to name.
        held_text = (
            f", about {kept:,} of them needed for the diagnosis, and {flows_held:,} flows held"
            if kept
            else f" and their flow table (about {flows_held:,} flows)"
        )
        # The first budget in powers of two this estimate lets through: where to start, not a promise (the
        # stages after the partitions are estimated when they come).
        budgets = (1 << exponent for exponent in range(max(20, limit.bit_length()), 48))
        enough = next((budget for budget in budgets if _partition_room(kept, flows_held, budget) is not None), None)
        hint = "raise it with --max-memory"
        if enough is not None:  # written as the option takes it: 64M, 2G
            hint = (
                f"at least --max-memory {enough >> 30}G"
                if enough >= 1 << 30
                else f"at least --max-memory {enough >> 20}M"
            )
        raise MemoryBudgetError(
            f"the captures' {total:,} packets{held_text} need more memory than the budget of "
            f"{format_size(limit)} even analysed in passes ({hint})"
        )
    return max(1, left // PARTITION_BYTES_PER_PACKET)


def _partition_room(kept: int, flows_held: int, limit: int) -> int | None:
    """The bytes of ``limit`` left to build the partitions' flow rows once the candidates and flows kept are
    held, or None when too little is left (or the candidates alone would not fit)."""
    held = kept * CANDIDATE_BYTES_HELD + flows_held * BYTES_PER_FLOW + chunk_rows_for(limit) * BYTES_PER_PACKET
    left = limit * 3 // 4 - held
    if left < limit // 16 or kept * BYTES_PER_PACKET + flows_held * BYTES_PER_FLOW > limit:
        return None
    return left


def _partitions(rows: Sequence[int], most: int, count: int | None) -> list[list[int]]:
    """The packet buckets grouped into partitions of consecutive buckets, ``most`` rows at most each (a bucket
    larger than that alone); given ``count``, at most that many partitions of about equal rows."""
    if count is not None:
        most = max(1, math.ceil(sum(rows) / max(1, count)))
    groups: list[list[int]] = [[]]
    held = 0
    for bucket, size in enumerate(rows):
        if groups[-1] and held + size > most and (count is None or len(groups) < count):
            groups.append([])
            held = 0
        groups[-1].append(bucket)
        held += size
    return groups


class _Order:
    """Per file number, what places a row in the whole table (its point, rank, several files, merged by time)."""

    def __init__(self, files: Sequence[_File]) -> None:
        size = max((file.number for file in files), default=-1) + 1
        self.point = np.zeros(size, dtype=np.int64)
        self.rank = np.zeros(size, dtype=np.int64)
        self.several = np.zeros(size, dtype=bool)
        self.by_time = np.zeros(size, dtype=bool)
        for file in files:
            self.point[file.number], self.rank[file.number] = file.point, file.rank
            self.several[file.number], self.by_time[file.number] = file.several, file.by_time

    def placed(self, table: pd.DataFrame, meta: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """The rows in the whole table's order, their ``_META`` and places; the ``file`` column as merge_point's."""
        file = meta["file"].astype(np.int64)
        order = np.empty(len(table), dtype=ORDER)
        order["point"] = self.point[file]
        order["time"] = np.where(self.by_time[file], table["ts_ns"].to_numpy(), 0)
        order["rank"] = self.rank[file]
        order["row"] = meta["row"]
        sort = sorted_order(order)
        if not (np.diff(sort) > 0).all():
            table, meta, order, file = table.iloc[sort], meta[sort], order[sort], file[sort]
        table = table.reset_index(drop=True)
        if self.several[file].any():  # a point of several files: the file's place among them, as merge_point
            table["file"] = np.where(self.several[file], self.rank[file], table["file"].to_numpy()).astype(np.int16)
        return table, meta, order


def _first_packets(table: pd.DataFrame, order: np.ndarray) -> np.ndarray:
    """For each flow of the table (by flow id), the whole table's place of its first packet."""
    ids = flow_ids(table)
    counted = ids >= 0
    _unique, first = np.unique(ids[counted], return_index=True)
    firsts: np.ndarray = order[np.flatnonzero(counted)[first]]
    return firsts


def _point_infos(files: list[_File]) -> list[CaptureInfo]:
    infos = []
    for point in sorted({file.point for file in files}):
        members = sorted((file for file in files if file.point == point), key=lambda file: file.rank)
        known = [file.info for file in members if file.info is not None]
        infos.append(point_info(members[0].name, known))
    return infos


def _files_of(pairs: Sequence[tuple[str, Location]], limit: int) -> list[_File]:
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


class _Candidates:
    """The candidate packets picked from the partitions, with their places in the whole table."""

    def __init__(self) -> None:
        self.pieces: list[pd.DataFrame] = []
        self.orders: list[np.ndarray] = []

    def add(self, table: pd.DataFrame, order: np.ndarray, chosen: np.ndarray) -> None:
        if chosen.any() or not self.pieces:  # one piece at least, for the columns
            self.pieces.append(table[chosen])
            self.orders.append(order[chosen])

    def table(self) -> pd.DataFrame:
        if not self.pieces:  # no file held a single record
            return pd.DataFrame({name: pd.Series(dtype=dtype) for name, (dtype, _meaning) in PACKET_COLUMNS.items()})
        stacked = stack_tables(self.pieces)
        order = np.concatenate(self.orders)
        self.pieces, self.orders = [], []
        return stacked.iloc[sorted_order(order)].reset_index(drop=True)


def _flow_partitions(
    packets: _PacketBuckets,
    groups: list[list[int]],
    placing: _Order,
    progress: ProgressHook | None,
    store: SpilledFlows,
    choice: Choice | None,
) -> pd.DataFrame | None:
    """Each partition's flow rows into ``store`` and, given a choice, the candidate packets (in the whole order)."""
    candidates = _Candidates()
    for number, group in enumerate(groups):
        rows = sum(packets.rows[bucket] for bucket in group)
        with in_stage(progress, "flows", f"partition {number + 1} of {len(groups)}: flows of {rows:,} packets"):
            read = packets.read(group)
            if read is not None:
                table, meta, order = placing.placed(*read)
                del read
                if choice is not None:
                    candidates.add(table, order, choice.keep_rows(table, meta["node"], meta["file"], meta["row"]))
                flows = build_flows(table)
                if len(flows):
                    store.add(flows, _first_packets(table, order))
                del table, meta, order, flows
        _give_back_freed_memory()
    if choice is None:
        return None
    read = packets.read([packets.nodeless])  # packets of no flow: candidates or nothing
    if read is not None:
        table, meta, order = placing.placed(*read)
        candidates.add(table, order, choice.keep_rows(table, meta["node"], meta["file"], meta["row"]))
    return candidates.table()


def diagnosis_parts(candidates: int, limit: int) -> int:
    """Connection partitions the candidates are diagnosed in, one after another: one if their diagnosis fits
    a ``DIAGNOSE_SHARE``-th of the budget, else enough that each part's does."""
    return max(1, math.ceil(candidates * DIAGNOSE_BYTES_PER_CANDIDATE / max(1, limit // DIAGNOSE_SHARE)))


def _diagnoser(parts: int) -> Diagnoser | None:
    """``diag.stages.report_of``'s diagnosis in ``parts`` connection partitions one at a time (None: whole)."""
    if parts <= 1:
        return None

    def diagnose_in_parts(packets: pd.DataFrame, corr: Correlation) -> Sequence[Finding]:
        from diag.partitions import cut_part, diagnose_part, partition_rows

        # Each part's findings go to disk as it ends (diag.spilledfindings): only one part's are objects at a time.
        found = FindingsWriter()
        try:
            for rows in partition_rows(packets, corr, parts):
                part, part_corr = cut_part(packets, corr, rows)
                diagnosed = diagnose_part(part, part_corr, rows)
                found.add(diagnosed.findings, diagnosed.order)
                del part, part_corr, diagnosed
            return found.finish()
        except BaseException:
            found.close()
            raise

    return diagnose_in_parts


def _flows_of(store: SpilledFlows, spill: bool) -> tuple[pd.DataFrame, SpilledFlows | None]:
    """The report's flows: the rows the store kept (the store stays, on disk), or the whole table (store closed)."""
    kept = store.finish()
    if spill:
        return kept, store
    del kept
    whole = store.load()
    store.close()
    return whole, None


def flows_in_passes(
    pairs: Sequence[tuple[str, Location]],
    limit: int,
    *,
    refusal: MemoryBudgetError | None = None,
    passes: int | None = None,
) -> tuple[pd.DataFrame, list[CaptureInfo]]:
    """``build_flows`` of every point's packets, and each point's ``CaptureInfo``, within ``limit`` bytes.

    The flow table alone (``diag flows``): one pass over the files into the
    packet buckets, then the partitions built as in ``analyze_in_passes``. The
    whole table is returned, so it must fit in memory.
    """
    files = _files_of(pairs, limit)
    with spill_dir("diag-packets-") as spill:
        packets = _PacketBuckets(Path(spill))
        _first_pass(files, limit, None, None, None, packets, refusal, passes and passes * PACKET_BUCKETS_PER_PARTITION)
        _order_files(files)
        total = sum(file.rows for file in files)
        # The flows are not counted without the survey: a busy capture has about one per 12 packets.
        most = _partition_rows(total, 0, total // 12, limit)
        groups = _partitions(packets.rows[: packets.buckets], most, passes)
        store = SpilledFlows()
        try:
            _flow_partitions(packets, groups, _Order(files), None, store, None)
            flows, _store = _flows_of(store, spill=False)
        finally:
            store.close()
    return flows, _point_infos(files)


def analyze_in_passes(
    pairs: Sequence[tuple[str, Location]],
    limit: int,
    progress: ProgressHook | None = None,
    tree: FilterNode | None = None,
    passes: int | None = None,
    *,
    buckets: int | None = None,
    refusal: MemoryBudgetError | None = None,
    spill_flows: bool | None = None,
    diagnose_parts: int | None = None,
) -> Report:
    """The ``Report`` of ``diag.analysis.analyze`` on ``pairs`` ((point name, file) pairs), within ``limit`` bytes.

    Raises ``MemoryBudgetError`` when even the passes would not fit (the
    candidate packets and the flows that need diagnosing are held at once), or
    when a point is standard input, which cannot be read twice; ``refusal``
    (the one-pass read's error) when a file is no capture worth passes.
    ``passes`` and ``buckets`` fix the number of flow-table partitions and of
    key (and packet) buckets instead of planning them from the budget;
    ``spill_flows`` keeps the flow table on disk (``Report.flow_store``) or
    not, instead of deciding from its size (tests force all three on small
    captures); ``diagnose_parts`` the connection partitions the diagnosis
    runs in (``diagnosis_parts`` decides from the candidates otherwise).
    """
    files = _files_of(pairs, limit)
    store = SpilledFlows(piece_rows=min(1 << 13, max(1 << 10, limit // 64 // BYTES_PER_FLOW)))
    try:
        with spill_dir("diag-keys-") as spill:
            survey = CandidateSurvey(
                Path(spill), buckets or _buckets_for(files, limit), max(1 << 12, limit // 64 // SPILL.itemsize)
            )
            packets = _PacketBuckets(Path(spill))
            packet_buckets = buckets or (passes and passes * PACKET_BUCKETS_PER_PARTITION)
            _first_pass(files, limit, progress, tree, survey, packets, refusal, packet_buckets)
            orders = _order_files(files)
            total = sum(file.rows for file in files)
            with in_stage(progress, "flows", f"candidates among {total:,} packets ({survey.spilled_rows:,} keys)"):
                choice = survey.choose(orders, _bucket_rows(limit))
            flows_seen = survey.nodes_seen
            del survey
            _give_back_freed_memory()
            if spill_flows is None:
                spill_flows = flows_seen * BYTES_PER_FLOW > limit // 4
            held = len(choice.nodes) if spill_flows else flows_seen
            most = _partition_rows(total, choice.kept_estimate, held, limit)
            groups = _partitions(packets.rows[: packets.buckets], most, passes)
            candidates = _flow_partitions(packets, groups, _Order(files), progress, store, choice)
        assert candidates is not None
        flows, kept_store = _flows_of(store, spill_flows)
        _give_back_freed_memory()
        diagnoser = _diagnoser(diagnose_parts or diagnosis_parts(len(candidates), limit))
        report = report_of(candidates, flows, _point_infos(files), progress, diagnoser, packets_read=total)
    except BaseException:
        store.close()
        raise
    if kept_store is None:
        return report
    return replace(report, flow_digest=kept_store.digest(), flow_store=kept_store)
