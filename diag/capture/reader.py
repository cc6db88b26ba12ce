"""``read_capture``: a capture file in, the packet table of ``diag.capture.columns`` out."""

from __future__ import annotations

import mmap
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diag.capture import pcap, pcapng
from diag.capture.addresses import AddressColumn, categorical
from diag.capture.arrays import distinct, is_one_of
from diag.capture.columns import PACKET_COLUMNS
from diag.capture.digest import usable_cpus
from diag.capture.dissect import ADDRESS_COLUMNS, TUNNEL_NAMES, decode_batch
from diag.capture.info import CaptureInfo
from diag.capture.linktypes import SUPPORTED, linktype_name
from diag.capture.location import Location, S3Object, location_of
from diag.capture.records import Diagnostics, RecordBatch
from diag.capture.source import MADVISE, STDIN_NAME, Feed, open_capture
from diag.errors import CaptureError
from diag.memory import current_budget

if TYPE_CHECKING:  # loaded when a table is made: diag analyze reads while pandas is still being imported
    import pandas as pd

CAPTURE_SUFFIXES = (".gz", ".pcap", ".pcapng", ".cap", ".dmp")
DIRECTIONS = ["", "in", "out"]
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux's value; Python 3.11 lacks the name


def capture_stem(path: Location) -> str:
    """``pod.pcap.gz`` -> ``pod``: the default vantage name of a capture file (``-``, standard input: ``stdin``)."""
    if str(path) == STDIN_NAME:
        return "stdin"
    name = path.name
    while True:
        lowered = name.lower()
        suffix = next((s for s in CAPTURE_SUFFIXES if lowered.endswith(s) and len(name) > len(s)), None)
        if suffix is None:
            return name
        name = name[: -len(suffix)]


def read_capture(
    path: str | os.PathLike[str] | S3Object,
    name: str | None = None,
    stop: threading.Event | None = None,
    *,
    warn: bool = True,
) -> pd.DataFrame:
    """Read a pcap or pcapng file (optionally gzip-compressed) into the packet table.

    The table has exactly the columns of ``diag.capture.columns.PACKET_COLUMNS``;
    ``df.attrs["capture_info"]`` holds a ``diag.report.CaptureInfo``. Damaged or
    unsupported parts are skipped, counted and reported as ``CaptureWarning``;
    ``CaptureError`` is raised only when nothing at all can be read. Once
    ``stop`` is set (another file read at the same time failed), the read
    gives up at its next batch with ``ReadStopped``. ``warn=False``: the
    problems are only recorded in the ``CaptureInfo``, not raised as warnings.
    """
    path = location_of(path)
    name = name if name is not None else capture_stem(path)
    label = str(path)
    diagnostics = Diagnostics(label, raise_warnings=warn)
    budget = current_budget()
    read = object()  # this read, as the budget tells it from others made at the same time
    stream, compressed = open_capture(path)
    try:
        with stream:
            feed = Feed(stream, diagnostics)
            builder = TableBuilder(name, diagnostics)
            for batch in _batches(feed, path, compressed, diagnostics):
                if stop is not None and stop.is_set():
                    raise ReadStopped(f"{label}: stopped reading: another capture failed")
                expected = _expected_rows(feed, builder.rows + len(batch))
                # Before the batch is kept: a bomb stops here, not in a MemoryError or the OOM killer.
                budget.check(label, max(expected or 0, builder.rows + len(batch)), read)
                builder.add(batch, expected)
    except BaseException:
        budget.forget(read)
        raise
    budget.keep(builder.rows, read)
    table = builder.finish()
    table.attrs["capture_info"] = CaptureInfo(
        name=name,
        path=label,
        packets=len(table),
        link_type=builder.link_type_name(),
        skipped=diagnostics.skipped,
        warnings=tuple(diagnostics.messages),
        files=(label,),
    )
    return table


class ReadStopped(CaptureError):
    """A read given up because another one, made at the same time, failed (see ``read_capture``'s ``stop``)."""


def read_capture_chunks(
    path: str | os.PathLike[str] | S3Object, name: str, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """``read_capture`` in pieces of about ``chunk_rows`` packets each, for a capture larger than memory.

    Each piece is a packet table of its own (``index`` still counts from the
    file's start); the last one, possibly empty, carries the whole file's
    ``CaptureInfo`` in ``attrs["capture_info"]``. No memory budget is checked:
    the caller decides how many rows it keeps. A compressed file is
    decompressed again on every read.
    """
    path = location_of(path)
    diagnostics = Diagnostics(str(path))
    stream, compressed = open_capture(path)
    skipped_link_types: Counter[int] = Counter()
    seen_link_types: set[int] = set()
    rows = 0
    with stream:
        feed = Feed(stream, diagnostics)
        builder = TableBuilder(name, diagnostics)
        for whole in _batches(feed, path, compressed, diagnostics):
            for batch in _pieces(whole, chunk_rows):
                builder.add(batch, max(chunk_rows, builder.rows + len(batch)))
                if builder.rows >= chunk_rows:
                    skipped_link_types.update(builder.skipped_link_types)
                    builder.skipped_link_types.clear()  # warned about once, at the end
                    seen_link_types |= builder.seen_link_types
                    rows += builder.rows
                    yield builder.finish()
                    builder = TableBuilder(name, diagnostics)
    builder.skipped_link_types.update(skipped_link_types)
    builder.seen_link_types |= seen_link_types
    rows += builder.rows
    last = builder.finish()
    last.attrs["capture_info"] = CaptureInfo(
        name=name,
        path=diagnostics.path,
        packets=rows,
        link_type=builder.link_type_name(),
        skipped=diagnostics.skipped,
        warnings=tuple(diagnostics.messages),
        files=(diagnostics.path,),
    )
    yield last


def _pieces(batch: RecordBatch, rows: int) -> Iterator[RecordBatch]:
    """``batch`` in pieces of at most ``rows`` records: a window of tiny records decodes a chunk at a time."""
    if len(batch) <= rows:
        yield batch
        return
    for start in range(0, len(batch), rows):
        yield _select(batch, slice(start, start + rows))  # views of the batch's arrays, not copies


def _batches(feed: Feed, path: Location, compressed: bool, diagnostics: Diagnostics) -> Iterator[RecordBatch]:
    what = "gzip-compressed file" if compressed else "file"
    magic = feed.read_exact(4)
    if not magic:
        if diagnostics.messages:
            raise CaptureError(f"{diagnostics.path}: cannot be read: {diagnostics.messages[-1]}")
        if str(path) == STDIN_NAME:  # `diag analyze pcap - < x`: no file to look at, a pipe that gave nothing
            raise CaptureError(f"{diagnostics.path}: standard input is empty (no capture was piped in)")
        raise CaptureError(f"{diagnostics.path}: the {what} is empty, not a capture")
    yield from format_batches(feed, magic, diagnostics.path, diagnostics, f"the {what}")


def format_batches(
    feed: Feed, magic: bytes, path: str | Path, diagnostics: Diagnostics, what: str
) -> Iterator[RecordBatch]:
    """The batches of a pcap or pcapng capture whose first four bytes (``magic``) were read from ``feed``.

    ``what`` names the input in the error for anything else ('the file', 'the stream').
    """
    if magic in pcap.MAGICS:
        header = magic + feed.read_exact(pcap.FILE_HEADER_LEN - 4)
        if len(header) < pcap.FILE_HEADER_LEN:
            raise CaptureError(f"{path}: the pcap file header is cut short ({len(header)} of 24 bytes)")
        yield from pcap.read_pcap(feed, header, diagnostics)
    elif magic == pcapng.SHB_TYPE:
        yield from pcapng.read_pcapng(feed, magic, diagnostics, path)
    else:
        raise CaptureError(f"{path}: not a pcap or pcapng capture ({what} starts with bytes {magic.hex(' ')})")


def _expected_rows(feed: Feed, rows_so_far: int) -> int | None:
    """How many packets the whole file probably holds, judged from the part read so far (files and S3 objects
    of known size; None for a compressed stream or a pipe)."""
    if not feed.size or not feed.bytes_read:
        return None
    return int(rows_so_far * feed.size / feed.bytes_read * 1.02) + 1024


class TableBuilder:
    """Collects decoded batches into the final columns and assembles the DataFrame.

    Each batch is written straight into arrays of the columns' final dtypes,
    sized from an estimate of the file's packet count (and grown when the
    estimate falls short), rather than kept as parts and concatenated: one
    copy of the packet table instead of two.
    """

    def __init__(self, name: str, diagnostics: Diagnostics) -> None:
        self.name = name
        self.diagnostics = diagnostics
        self.columns: dict[str, np.ndarray] = {}
        self.capacity = 0
        self.addresses = {column: AddressColumn() for column in ADDRESS_COLUMNS}
        self.rows = 0
        self.skipped_link_types: Counter[int] = Counter()
        self.seen_link_types: set[int] = set()
        self.any_ifindex = False  # an SLL2 packet named its interface: the iface column needs every row

    def add(self, batch: RecordBatch, expected_rows: int | None = None) -> None:
        interfaces = self.diagnostics.interfaces
        iface_link = np.array([iface.link_type for iface in interfaces], dtype=np.int64)
        link = iface_link[batch.iface]
        self.seen_link_types.update(int(value) for value in distinct(link))
        supported = is_one_of(link, tuple(sorted(SUPPORTED)))
        if not supported.all():
            for value, count in zip(*np.unique(link[~supported], return_counts=True), strict=True):
                self.skipped_link_types[int(value)] += int(count)
            batch = _select(batch, supported)
            link = link[supported]
        if not len(batch):
            return
        decoded = decode_batch(batch, interfaces, self.addresses, self.rows)
        part = decoded.columns
        self.any_ifindex = self.any_ifindex or bool((part["ifindex"] >= 0).any())
        part["index"] = batch.index
        part["ts_ns"] = batch.ts_ns
        part["iface_id"] = batch.iface
        part["direction"] = decoded.direction
        part["link_type"] = link
        part["cap_len"] = batch.cap_len
        part["wire_len"] = batch.wire_len
        part["payload_digest"] = decoded.payload_digest
        stop = self.rows + len(batch)
        self._reserve(part, stop, expected_rows)
        for column, values in part.items():
            self.columns[column][self.rows : stop] = values  # narrowed to the column's dtype by the copy
        self.rows = stop

    def _reserve(self, part: dict[str, np.ndarray], needed: int, expected_rows: int | None) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, expected_rows or 0, self.capacity * 3 // 2)
        for column, values in part.items():
            grown = np.empty(capacity, dtype=_stored_dtype(column, values))
            if column in self.columns:
                grown[: self.rows] = self.columns[column][: self.rows]
            self.columns[column] = grown
        self.capacity = capacity
        if expected_rows:  # a sized file's or S3 object's estimate: the rows will be written, so their pages are wanted
            _map_pages_ahead(list(self.columns.values()), self.rows, min(capacity, expected_rows))

    def link_type_name(self) -> str:
        seen = self.seen_link_types or {iface.link_type for iface in self.diagnostics.interfaces}
        names = {linktype_name(value) for value in seen}
        if len(names) == 1:
            return names.pop()
        return "mixed" if names else ""

    def finish(self) -> pd.DataFrame:
        import pandas as pd

        for link_type, count in sorted(self.skipped_link_types.items()):
            self.diagnostics.warn(
                f"{count} packet(s) on link type {linktype_name(link_type)} ({link_type}) skipped: "
                "diag decodes only Ethernet, Linux cooked (SLL, SLL2), raw IP and loopback captures",
                skipped=count,
            )
        count = self.rows

        def joined(column: str, dtype: str) -> np.ndarray:
            if column not in self.columns:
                return np.zeros(0, dtype=dtype)
            values = self.columns[column][:count]
            # An estimate well above the packets read leaves a tail never written: do not keep it.
            return values.copy() if self.capacity > count * 5 // 4 + 1024 else values

        data: dict[str, object] = {}
        for column, (dtype, _meaning) in PACKET_COLUMNS.items():
            if column == "capture":
                data[column] = categorical(np.zeros(count, dtype=np.int8), [self.name])
            elif column == "iface":
                data[column] = self._iface_column()
            elif column == "direction":
                data[column] = categorical(joined("direction", "int8"), DIRECTIONS)
            elif column == "tunnel":
                data[column] = categorical(joined("tunnel", "int8"), TUNNEL_NAMES)
            elif column == "file":  # one file; diag.capture.points numbers the files of a point
                data[column] = np.zeros(count, dtype=dtype)
            elif column in ADDRESS_COLUMNS:
                data[column] = self.addresses[column].to_categorical(count)
            else:
                data[column] = joined(column, dtype)
        return pd.DataFrame(data, copy=False)

    def _iface_column(self) -> pd.Categorical[str]:
        """pcapng interface names (or ids), replaced by ``if<N>`` where SLL2 names the interface."""
        names = [iface.name for iface in self.diagnostics.interfaces]
        if not self.rows:
            return categorical(np.zeros(0, dtype=np.int32), sorted(set(names)) or [""])
        categories = sorted(set(names))
        if len(categories) == 1 and not self.any_ifindex:  # one interface name: nothing to look up
            return categorical(np.zeros(self.rows, dtype=np.int32), categories)
        iface_id = self.columns["iface_id"][: self.rows]
        ifindex = self.columns["ifindex"][: self.rows]
        position = {value: code for code, value in enumerate(categories)}
        name_codes = np.array([position[value] for value in names], dtype=np.int32)
        codes = name_codes[iface_id]
        sll2 = ifindex >= 0
        if sll2.any():
            distinct, inverse = np.unique(ifindex[sll2], return_inverse=True)
            for position_in_distinct, value in enumerate(distinct):
                label = f"if{value}"
                if label not in position:
                    position[label] = len(categories)
                    categories.append(label)
                codes[np.flatnonzero(sll2)[inverse == position_in_distinct]] = position[label]
        return categorical(codes, categories)


def _map_pages_ahead(columns: list[np.ndarray], first_row: int, last_row: int) -> None:
    """Have the kernel set up the memory of rows ``[first_row, last_row)`` of ``columns`` on a helper thread.

    The packet table's columns are new memory, and the kernel maps each page of it on the first write:
    about 38,000 page faults for a million packets, taken one by one on the reading thread as the
    batches are copied in (a quarter of that thread's CPU time on a loaded machine). One
    ``madvise(MADV_POPULATE_WRITE)`` per column (Linux 5.14+) maps them in bulk on another CPU
    instead, ahead of the rows being written; the contents are untouched, so it makes no difference
    whether the reading thread gets to a page first. Nothing happens on one CPU, off Linux or on an
    older kernel (the writes fault the pages in as before).
    """
    if MADVISE is None or usable_cpus() < 2 or last_row <= first_row:
        return
    page = mmap.PAGESIZE

    def populate() -> None:
        for column in columns:
            start = column.ctypes.data + first_row * column.itemsize
            start -= start % page
            stop = column.ctypes.data + last_row * column.itemsize
            if MADVISE(start, stop - start, MADV_POPULATE_WRITE) != 0:
                return  # refused (an older kernel): the writes map the pages as they come

    threading.Thread(target=populate, name="diag-table-pages", daemon=True).start()


def _stored_dtype(column: str, values: np.ndarray) -> np.dtype[Any]:
    """The final dtype of a packet-table column; helper columns (iface_id, ifindex) keep their own."""
    if column in ("direction", "tunnel"):
        return np.dtype(np.int8)
    final = PACKET_COLUMNS.get(column, ("", ""))[0]
    if final in ("", "category"):
        return values.dtype
    return np.dtype(final)


def _select(batch: RecordBatch, keep: np.ndarray | slice) -> RecordBatch:
    return RecordBatch(
        view=batch.view,
        data_off=batch.data_off[keep],
        cap_len=batch.cap_len[keep],
        wire_len=batch.wire_len[keep],
        ts_ns=batch.ts_ns[keep],
        iface=batch.iface[keep],
        direction=batch.direction[keep],
        index=batch.index[keep],
    )
