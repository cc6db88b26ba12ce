"""The pcapng format: sections of blocks, interfaces described in-band.

A file is one or more sections, each opened by a Section Header Block that
also fixes the byte order of its blocks. Interface Description Blocks give
each interface its link type, name and timestamp resolution; packets come in
Enhanced Packet Blocks (EPB), Simple Packet Blocks (SPB, no timestamp) or the
obsolete Packet Blocks (PB). The block walk is sequential: a compiled loop
skims the runs of ordinary blocks (packets, statistics, comments) and stops
at anything that needs a decision (a section or interface block, a length
that cannot be right); the packet blocks it finds are then decoded for the
whole buffer at once.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from diag.capture.bytesview import Buffer, ByteView, IntArray, read_only
from diag.capture.records import DIR_IN, DIR_OUT, DIR_UNKNOWN, Diagnostics, Interface, RecordBatch
from diag.capture.source import Feed
from diag.compiled import compiled
from diag.errors import CaptureError

SHB_TYPE = b"\x0a\x0d\x0d\x0a"
SHB = 0x0A0D0D0A
IDB, PB, SPB, EPB = 1, 2, 3, 6
PACKET_BLOCKS = (EPB, SPB, PB)
BYTE_ORDER_MAGIC_BIG = b"\x1a\x2b\x3c\x4d"
BYTE_ORDER_MAGIC_LITTLE = b"\x4d\x3c\x2b\x1a"
MAX_BLOCK = 0x08000000  # larger blocks are damaged length fields, not packets
MAX_TS_OFFSET_S = 1 << 33  # some 270 years: anything larger is a damaged option

OPT_END = 0
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
OPT_EPB_FLAGS = 2


@dataclass
class Section:
    big_endian: bool
    first_iface: int  # index in Diagnostics.interfaces of this section's interface 0
    iface_count: int = 0

    @property
    def endian(self) -> str:
        return ">" if self.big_endian else "<"


def _byte_order(magic: bytes) -> bool | None:
    """True for big-endian, False for little-endian, None when it is not a byte-order magic."""
    if magic == BYTE_ORDER_MAGIC_BIG:
        return True
    if magic == BYTE_ORDER_MAGIC_LITTLE:
        return False
    return None


def read_pcapng(feed: Feed, magic: bytes, diagnostics: Diagnostics, path: str | Path) -> Iterator[RecordBatch]:
    head = magic + feed.read_exact(8)
    if len(head) < 12:
        raise CaptureError(f"{path}: the pcapng section header is cut short ({len(head)} bytes)")
    if _byte_order(head[8:12]) is None:
        raise CaptureError(f"{path}: a pcapng section header with an invalid byte-order magic; not a capture")
    walker = BlockWalker(diagnostics)
    carry: bytes = head
    while True:
        buffer, length = feed.next_buffer(carry)
        pos = 0
        while True:
            packets, pos, status = walker.walk(buffer, pos, length)
            if packets:
                yield walker.batch(buffer, length, packets)
            if status != "section":
                break
        if status == "damaged":
            return
        carry = bytes(buffer[pos:length])
        if feed.eof:
            if carry:
                diagnostics.warn(
                    f"the file ends inside a block ({len(carry)} bytes of it present): that block is skipped",
                    skipped=1 if walker.is_packet_block(carry) else 0,
                )
            return


class BlockWalker:
    """Walks blocks, keeping the current section and interfaces, and decodes packet blocks."""

    def __init__(self, diagnostics: Diagnostics) -> None:
        self.diagnostics = diagnostics
        self.section: Section | None = None
        self.records = 0  # packet blocks seen so far: the next packet's index

    def is_packet_block(self, data: bytes) -> bool:
        if self.section is None or len(data) < 4:
            return False
        (block_type,) = struct.unpack_from(self.section.endian + "I", data, 0)
        return block_type in PACKET_BLOCKS

    def walk(self, buffer: Buffer, pos: int, end: int) -> tuple[list[int], int, str]:
        """Packet block offsets from ``pos`` on.

        Returns (offsets, where the walk stopped, why): "more" when the
        buffer ran out, "section" at a new section header (packets before it
        are returned first, since the byte order may change), "damaged" at a
        block whose length cannot be right.
        """
        packets: list[int] = []
        section = self.section
        header = struct.Struct((section.endian if section else "<") + "II").unpack_from
        data = read_only(np.frombuffer(buffer, dtype=np.uint8))  # one compiled version for every buffer
        while pos + 12 <= end:
            if section is not None:
                found, pos = _skim_blocks(data, pos, end, section.big_endian)
                packets.extend(found.tolist())
                if pos + 12 > end:
                    break
            block_type, block_len = header(buffer, pos)
            if block_type == SHB or section is None:
                if packets:
                    return packets, pos, "section"
                big = _byte_order(bytes(buffer[pos + 8 : pos + 12]))
                if block_type != SHB or big is None:
                    self._damaged(pos, end, "is neither a block of the current section nor a section header")
                    return packets, pos, "damaged"
                (block_len,) = struct.unpack_from(">I" if big else "<I", buffer, pos + 4)
                if not self._length_ok(block_len, pos, end, minimum=28):
                    return packets, pos, "damaged"
                if pos + block_len > end:
                    break
                section = self.section = Section(big_endian=big, first_iface=len(self.diagnostics.interfaces))
                header = struct.Struct(section.endian + "II").unpack_from
                pos += block_len
                continue
            if not self._length_ok(block_len, pos, end):
                return packets, pos, "damaged"
            if pos + block_len > end:
                break
            if block_type in (EPB, SPB, PB):
                packets.append(pos)
            elif block_type == IDB:
                self._add_interface(buffer, pos, block_len, section)
            pos += block_len
        return packets, pos, "more"

    def _length_ok(self, block_len: int, pos: int, end: int, minimum: int = 12) -> bool:
        if block_len < minimum or block_len % 4 or block_len > MAX_BLOCK:
            self._damaged(pos, end, f"claims an impossible length of {block_len} bytes")
            return False
        return True

    def _damaged(self, pos: int, end: int, why: str) -> None:
        self.diagnostics.warn(
            f"the block after packet {self.records} {why}: the file is damaged there and "
            f"the rest of it ({end - pos}+ bytes) is skipped",
            skipped=1,
        )

    def _add_interface(self, buffer: Buffer, pos: int, block_len: int, section: Section) -> None:
        endian = section.endian
        if block_len < 20:
            self.diagnostics.warn("an interface description block is too short; its interface is kept as Ethernet")
            link_type = 1
        else:
            (link_type,) = struct.unpack_from(endian + "H", buffer, pos + 8)
        interface = Interface(link_type=link_type, name=str(section.iface_count))
        option = pos + 16
        stop = pos + block_len - 4
        while option + 4 <= stop:
            code, length = struct.unpack_from(endian + "HH", buffer, option)
            value = bytes(buffer[option + 4 : option + 4 + length])
            if code == OPT_END or option + 4 + length > stop:
                break
            if code == OPT_IF_NAME and value:
                interface.name = value.split(b"\x00", 1)[0].decode("utf-8", "replace")
            elif code == OPT_IF_TSRESOL and length >= 1:
                interface.tsresol = value[0]
            elif code == OPT_IF_TSOFFSET and length == 8:
                (interface.ts_offset_s,) = struct.unpack(endian + "q", value)
            option += 4 + ((length + 3) & ~3)
        if abs(interface.ts_offset_s) > MAX_TS_OFFSET_S:
            self.diagnostics.warn(
                f"interface {interface.name} declares a timestamp offset of {interface.ts_offset_s} s; it is ignored"
            )
            interface.ts_offset_s = 0
        if not _resolution_ok(interface.tsresol):
            self.diagnostics.warn(
                f"interface {interface.name} declares an unusable timestamp resolution ({interface.tsresol}); "
                "microseconds are assumed"
            )
            interface.tsresol = 6
        self.diagnostics.interfaces.append(interface)
        section.iface_count += 1

    def batch(self, buffer: Buffer, length: int, offsets: list[int]) -> RecordBatch:
        """Decode the packet blocks at ``offsets`` (all of the current section)."""
        assert self.section is not None
        section = self.section
        big = section.big_endian
        view = ByteView(buffer, length)
        pos = np.array(offsets, dtype=np.int64)
        count = len(pos)
        index = np.arange(self.records, self.records + count, dtype=np.int64)
        self.records += count
        block_type = view.u32(pos, big)
        block_len = view.u32(pos + 4, big)
        simple = block_type == SPB
        obsolete = block_type == PB

        # EPB and PB share a layout, except that PB's interface id is 16 bits.
        local_iface = np.where(obsolete, view.u16(pos + 8, big), view.u32(pos + 8, big))
        local_iface[simple] = 0
        units = (view.u32(pos + 12, big).astype(np.uint64) << np.uint64(32)) | view.u32(pos + 16, big).astype(np.uint64)
        cap_len = view.u32(pos + 20, big)
        wire_len = view.u32(pos + 24, big)
        data_off = pos + 28
        # SPB: original length, then the data; what was captured is what the block holds.
        wire_len[simple] = view.u32(pos[simple] + 8, big)
        cap_len[simple] = np.minimum(wire_len[simple], block_len[simple] - 16)
        data_off[simple] = pos[simple] + 12

        # A block shorter than its type's fixed fields (an SPB of 12 bytes, an EPB under 32) has no
        # packet in it: its "captured length" would be negative, and its fields belong to the next block.
        minimum = np.where(simple, 16, 32)
        short = block_len < minimum
        if short.any():
            count_short = int(short.sum())
            self.diagnostics.warn(
                f"{count_short} packet block(s) are shorter than their type's fixed fields "
                "(an SPB needs 16 bytes, an EPB or PB 32) and are skipped",
                skipped=count_short,
            )
        valid = ~short & (cap_len <= block_len - minimum) & (local_iface < section.iface_count)
        if not (valid | short).all():
            bad = int((~valid & ~short).sum())
            self.diagnostics.warn(
                f"{bad} packet block(s) are damaged (a length larger than the block, or an interface "
                "the section never described) and are skipped",
                skipped=bad,
            )
        iface = local_iface + section.first_iface
        ts_ns = np.full(count, -1, dtype=np.int64)  # SPB carries no timestamp
        stamped = valid & ~simple
        for interface_index in np.unique(iface[stamped]):
            rows = stamped & (iface == interface_index)
            ts_ns[rows] = _timestamp_ns(units[rows], self.diagnostics.interfaces[int(interface_index)])

        direction = np.full(count, DIR_UNKNOWN, dtype=np.int64)
        options = np.flatnonzero(valid & ~simple)
        option_start = data_off[options] + ((cap_len[options] + 3) & ~3)
        option_stop = pos[options] + block_len[options] - 4
        flags = _packet_flags(view, options, option_start, option_stop, big)
        inbound, outbound = (flags & 3) == 1, (flags & 3) == 2
        direction[options[inbound]] = DIR_IN
        direction[options[outbound]] = DIR_OUT

        return RecordBatch(
            view=view,
            data_off=data_off[valid],
            cap_len=cap_len[valid],
            wire_len=wire_len[valid],
            ts_ns=ts_ns[valid],
            iface=iface[valid],
            direction=direction[valid],
            index=index[valid],
        )


@compiled
def _skim_blocks(data: npt.NDArray[np.uint8], pos: int, end: int, big_endian: bool) -> tuple[IntArray, int]:
    """Offsets of the packet blocks in the run of ordinary blocks at ``pos``, and where the run ends.

    A run ends where ``BlockWalker.walk`` must decide: at a section or
    interface description block, at a length it rejects, at a block that
    does not fit in ``data[:end]``, or at the end of the data.
    """
    offsets = np.empty(max(end - pos, 0) // 12 + 1, dtype=np.int64)
    count = 0
    while pos + 12 <= end:
        block_type = _u32(data, pos, big_endian)
        block_len = _u32(data, pos + 4, big_endian)
        if block_type in (SHB, IDB):
            break
        if block_len < 12 or block_len % 4 or block_len > MAX_BLOCK or pos + block_len > end:
            break
        if block_type in (EPB, SPB, PB):
            offsets[count] = pos
            count += 1
        pos += block_len
    return offsets[:count], pos


@compiled
def _u32(data: npt.NDArray[np.uint8], at: int, big_endian: bool) -> int:
    value = 0
    for byte in range(4):
        value = (value << 8) | int(data[at + (byte if big_endian else 3 - byte)])
    return value


def _packet_flags(view: ByteView, rows: IntArray, start: IntArray, stop: IntArray, big: bool) -> IntArray:
    """The epb_flags option value of each packet block, 0 when absent.

    Writers that set flags usually put them first, which is read for all
    blocks at once; the few blocks with other options first are walked one by one.
    """
    flags = np.zeros(len(rows), dtype=np.int64)
    has_options = start + 8 <= stop
    code = np.where(has_options, view.u16(start, big), OPT_END)
    length = view.u16(start + 2, big)
    first = has_options & (code == OPT_EPB_FLAGS) & (length == 4)
    flags[first] = view.u32(start[first] + 4, big)
    endian = ">" if big else "<"
    for row in np.flatnonzero(has_options & ~first & (code != OPT_END)):
        option, end = int(start[row]), int(stop[row])
        while option + 4 <= end:
            option_code, option_len = struct.unpack_from(endian + "HH", view.data, option)
            if option_code == OPT_END:
                break
            if option_code == OPT_EPB_FLAGS and option_len == 4 and option + 8 <= end:
                (flags[row],) = struct.unpack_from(endian + "I", view.data, option + 4)
                break
            option += 4 + ((option_len + 3) & ~3)
    return flags


def _resolution_ok(tsresol: int) -> bool:
    return tsresol & 0x7F <= (63 if tsresol & 0x80 else 18)


def _timestamp_ns(units: np.ndarray, interface: Interface) -> IntArray:
    """Timestamp units of one interface to ns since the epoch (if_tsresol, if_tsoffset applied)."""
    tsresol = interface.tsresol
    if tsresol & 0x80:
        shift = tsresol & 0x7F
        seconds = units >> np.uint64(shift)
        fraction = units & np.uint64((1 << shift) - 1)
        if shift > 32:  # keep fraction * 1e9 inside 64 bits
            fraction = fraction >> np.uint64(shift - 32)
            shift = 32
        nanoseconds = seconds * np.uint64(1_000_000_000) + ((fraction * np.uint64(1_000_000_000)) >> np.uint64(shift))
    elif tsresol <= 9:
        nanoseconds = units * np.uint64(10 ** (9 - tsresol))
    else:
        nanoseconds = units // np.uint64(10 ** (tsresol - 9))
    return nanoseconds.astype(np.int64) + interface.ts_offset_s * 1_000_000_000
