"""Write capture files into FIFOs (or files) slowly, record by record, in timestamp order across all of them.

Run as ``python slow_writer.py --delay SECONDS OUT=CAPTURE ...``: each OUT
gets its capture's header blocks first, then the packet records of all the
captures interleaved by timestamp, one every ``--delay`` seconds, as several
tcpdumps on one network would deliver them. pcap and pcapng files are split
into records here, by their own length fields; the timestamps come from diag's
reader, matched to records by their order.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

from diag import read_capture


def split_records(data: bytes) -> tuple[bytes, list[bytes]]:
    """(everything before the first packet record, the packet records) of a pcap or pcapng file."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        endian = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        head, records, pos = bytearray(), [], 0
        while pos + 8 <= len(data):
            block_type, length = struct.unpack_from(endian + "II", data, pos)
            block = data[pos : pos + length]
            if block_type in (2, 3, 6):
                records.append(block)
            elif not records:
                head += block
            pos += length
        return bytes(head), records
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    records, pos = [], 24
    while pos + 16 <= len(data):
        (caplen,) = struct.unpack_from(endian + "I", data, pos + 8)
        records.append(data[pos : pos + 16 + caplen])
        pos += 16 + caplen
    return data[:24], records


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("pairs", nargs="+")
    args = parser.parse_args()
    outs, heads, events = [], [], []
    for number, pair in enumerate(args.pairs):
        out, _eq, capture = pair.partition("=")
        head, records = split_records(Path(capture).read_bytes())
        stamps = read_capture(capture)["ts_ns"].to_numpy()
        assert len(stamps) == len(records), capture
        heads.append(head)
        events += [(int(ts), number, record) for ts, record in zip(stamps, records, strict=True)]
        outs.append(out)
    files = [open(out, "wb", buffering=0) for out in outs]  # noqa: SIM115 (closed below; FIFOs open in turn)
    for file, head in zip(files, heads, strict=True):
        file.write(head)
    for _ts, number, record in sorted(events, key=lambda event: (event[0], event[1])):
        files[number].write(record)
        time.sleep(args.delay)
    for file in files:
        file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
