"""Merge per-interface pcap files into one pcapng that keeps each interface's name.

tcpdump captures one interface per process and writes classic pcap, which has
no place for an interface name; ``mergecap`` would merge the files but under a
single unnamed interface. A capture point with several interfaces (a router,
a node) is more useful as one file in which every packet says which interface
it crossed, so this module writes the pcapng itself: one Interface Description
Block per source file (``if_name``, nanosecond ``if_tsresol``) and the packets
of all files in timestamp order.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from diag.errors import CaptureError

_PCAP_MAGICS = {
    0xA1B2C3D4: 1_000,  # microsecond timestamps: multiply the fraction by 1000
    0xA1B23C4D: 1,  # nanosecond timestamps
}

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END = 0
_OPT_IF_NAME = 2
_OPT_IF_TSRESOL = 9


@dataclass(frozen=True)
class PcapFile:
    """What a classic pcap header says, and where its records start."""

    path: Path
    endian: str  # "<" or ">"
    ns_per_tick: int
    link_type: int
    snaplen: int


def _open_pcap(path: Path) -> PcapFile:
    header = _read_head(path)
    if len(header) < 24:
        raise CaptureError(f"{path}: too short to be a pcap file ({len(header)} bytes)")
    for endian in ("<", ">"):
        (magic,) = struct.unpack(endian + "I", header[:4])
        if magic in _PCAP_MAGICS:
            _, _, _, _, snaplen, link_type = struct.unpack(endian + "HHiIII", header[4:24])
            return PcapFile(path, endian, _PCAP_MAGICS[magic], link_type & 0x0FFFFFFF, snaplen)
    raise CaptureError(f"{path}: not a classic pcap file (bad magic)")


def _read_head(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(24)


def _records(pcap: PcapFile, interface_id: int) -> Iterator[tuple[int, int, bytes, int]]:
    """(timestamp ns, interface id, captured bytes, original length) for each record.

    A record cut short by a capture that was stopped mid-write is dropped, not
    an error: tcpdump stopped by a signal can leave one.
    """
    data = pcap.path.read_bytes()
    offset = 24
    record = struct.Struct(pcap.endian + "IIII")
    while offset + 16 <= len(data):
        seconds, fraction, cap_len, orig_len = record.unpack_from(data, offset)
        offset += 16
        if offset + cap_len > len(data):
            break
        ts_ns = seconds * 1_000_000_000 + fraction * pcap.ns_per_tick
        yield ts_ns, interface_id, data[offset : offset + cap_len], orig_len
        offset += cap_len


def _option(code: int, value: bytes) -> bytes:
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack("<HH", code, len(value)) + value + padding


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def merge_to_pcapng(sources: Sequence[tuple[str, Path]], destination: Path) -> int:
    """Write ``destination`` as pcapng from ``(interface name, pcap path)`` pairs; return the packet count.

    Packets are ordered by timestamp across interfaces (ties keep the order of
    ``sources``), and every packet keeps its original and captured lengths.
    """
    pcaps = [_open_pcap(path) for _, path in sources]
    count = 0
    with destination.open("wb") as out:
        section = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _option(_OPT_END, b"")
        out.write(_block(_SHB, section))
        for (name, _), pcap in zip(sources, pcaps, strict=True):
            options = _option(_OPT_IF_NAME, name.encode()) + _option(_OPT_IF_TSRESOL, bytes([9]))
            options += _option(_OPT_END, b"")
            out.write(_block(_IDB, struct.pack("<HHI", pcap.link_type, 0, pcap.snaplen) + options))
        streams = [_records(pcap, interface_id) for interface_id, pcap in enumerate(pcaps)]
        for ts_ns, interface_id, packet, orig_len in heapq.merge(*streams, key=lambda r: (r[0], r[1])):
            body = struct.pack("<IIIII", interface_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(packet), orig_len)
            out.write(_block(_EPB, body + packet + b"\x00" * (-len(packet) % 4)))
            count += 1
    return count
