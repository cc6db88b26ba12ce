"""The classic libpcap file format: a 24-byte file header, then records.

Each record is a 16-byte header (seconds, micro- or nanoseconds, captured
length, original length) and the packet bytes. Finding where records start is
inherently sequential, so that walk is a compiled loop that only reads each
record's captured length; every other header field is then read for all
records at once.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from diag.capture.bytesview import ByteView, IntArray
from diag.capture.linktypes import linktype_name
from diag.capture.records import DIR_UNKNOWN, Diagnostics, Interface, RecordBatch
from diag.capture.source import Feed
from diag.compiled import compiled

FILE_HEADER_LEN = 24

# A captured length above this is not a packet but a damaged header (libpcap
# itself refuses anything above 256 KiB for most link types; D-Bus allows 128 MiB).
MAX_CAPLEN = 0x08000000


class PcapFormat(NamedTuple):
    big_endian: bool
    nanoseconds: bool
    record_header_len: int  # 24 in Alexey Kuznetzov's modified format, else 16


MAGICS: dict[bytes, PcapFormat] = {
    b"\xd4\xc3\xb2\xa1": PcapFormat(False, False, 16),
    b"\xa1\xb2\xc3\xd4": PcapFormat(True, False, 16),
    b"\x4d\x3c\xb2\xa1": PcapFormat(False, True, 16),
    b"\xa1\xb2\x3c\x4d": PcapFormat(True, True, 16),
    b"\x34\xcd\xb2\xa1": PcapFormat(False, False, 24),
    b"\xa1\xb2\xcd\x34": PcapFormat(True, False, 24),
}


def walk_records(view: ByteView, start: int, fmt: PcapFormat) -> tuple[IntArray, int, int | None]:
    """Offsets of the complete records in ``view``'s bytes from ``start`` on.

    Returns (offsets, offset where the walk stopped, the absurd captured
    length that stopped it or None when it stopped for lack of bytes).
    """
    header_len = fmt.record_header_len
    candidates = _chain_lengths(view.u8_view, view.length, start, header_len, fmt.big_endian)
    # The loop chained the captured lengths, so all but the last are the gaps between records.
    caplen = np.empty(len(candidates), dtype=np.int64)
    caplen[:-1] = np.diff(candidates) - header_len
    caplen[-1:] = view.u32(candidates[-1:] + 8, fmt.big_endian)
    usable = (candidates + header_len + caplen <= view.length) & (caplen <= MAX_CAPLEN)
    count = int(np.argmin(usable)) if not usable.all() else len(candidates)
    if count == len(candidates):  # cannot happen: the walk always ends past the data
        return candidates, int(candidates[-1]) if count else start, None
    stop = int(candidates[count])
    absurd = int(caplen[count]) if caplen[count] > MAX_CAPLEN else None
    return candidates[:count], stop, absurd


def read_pcap(feed: Feed, header: bytes, diagnostics: Diagnostics) -> Iterator[RecordBatch]:
    """Batches of packets of a pcap file whose 24-byte header has been read already."""
    fmt = MAGICS[header[:4]]
    endian = ">" if fmt.big_endian else "<"
    _major, _minor, _zone, _sigfigs, _snaplen, link_field = struct.unpack(endian + "HHiIII", header[4:24])
    link_type = link_field & 0x03FFFFFF  # the high bits carry the FCS length, not the link type
    diagnostics.interfaces.append(Interface(link_type=link_type, name="0", tsresol=9 if fmt.nanoseconds else 6))
    frac_to_ns = 1 if fmt.nanoseconds else 1000

    carry: bytes = b""
    records_seen = 0
    bad_fractions = 0
    while True:
        buffer, length = feed.next_buffer(carry)
        view = ByteView(buffer, length)
        offsets, stop, absurd = walk_records(view, 0, fmt)
        if len(offsets):
            batch, bad = _batch(view, offsets, fmt, frac_to_ns, records_seen)
            bad_fractions += bad
            yield batch
            records_seen += len(offsets)
        carry = bytes(buffer[stop:length])
        # Records are numbered from 1 in what is said, as Wireshark numbers frames and the report quotes them:
        # after N whole packets, the damaged one is record N + 1 (frame N + 1 to tshark).
        if absurd is not None:
            diagnostics.warn(
                f"record {records_seen + 1} claims {absurd} captured bytes, which no {linktype_name(link_type)} "
                f"packet has: the file is damaged there and its remaining {len(carry)}+ bytes are skipped",
                skipped=1,
            )
            break
        if feed.eof:
            if carry:
                diagnostics.warn(
                    f"the file ends inside record {records_seen + 1} ({len(carry)} bytes of it present): "
                    "that last packet is skipped",
                    skipped=1,
                )
            break
    if bad_fractions:
        diagnostics.warn(
            f"{bad_fractions} record(s) have a sub-second timestamp field of a second or more; "
            "it was added to the seconds as it stands"
        )


def _batch(
    view: ByteView, starts: IntArray, fmt: PcapFormat, frac_to_ns: int, first_index: int
) -> tuple[RecordBatch, int]:
    """The records at ``starts``, and how many carry an out-of-range sub-second field."""
    big = fmt.big_endian
    headers = view.headers(starts, fmt.record_header_len)
    seconds = headers.u32(0, big)
    fraction = headers.u32(4, big)
    count = len(starts)
    bad_fractions = int(np.count_nonzero(fraction * frac_to_ns >= 1_000_000_000))
    batch = RecordBatch(
        view=view,
        data_off=starts + fmt.record_header_len,
        cap_len=headers.u32(8, big),
        wire_len=headers.u32(12, big),
        ts_ns=seconds * 1_000_000_000 + fraction * frac_to_ns,
        iface=np.zeros(count, dtype=np.int64),
        direction=np.full(count, DIR_UNKNOWN, dtype=np.int64),
        index=np.arange(first_index, first_index + count, dtype=np.int64),
    )
    return batch, bad_fractions


@compiled
def _chain_lengths(data: npt.NDArray[np.uint8], length: int, start: int, header_len: int, big_endian: bool) -> IntArray:
    """Record offsets from ``start``, each found from the previous one's captured length.

    The last offset is the first whose captured-length field is not wholly in
    ``data[:length]``: the walk always ends past the complete records, and
    the caller decides which of them are complete and sane.
    """
    offsets = np.empty(max(length - start, 0) // header_len + 2, dtype=np.int64)
    count = 0
    offset = start
    while True:
        offsets[count] = offset
        count += 1
        field = offset + 8
        if field + 4 > length:
            return offsets[:count]
        caplen = 0
        for byte in range(4):
            caplen = (caplen << 8) | int(data[field + (byte if big_endian else 3 - byte)])
        offset += header_len + caplen
