"""How fast ``diag watch`` keeps up with a stream, how soon it decides, and whether its memory stays flat.

A generated capture (``gen_capture.py``: many TCP connections, some ending in
RSTs, DNS-like UDP) is re-timed to RATE packets per second of stream time,
repeated (each pass shifted in time, its ports, sequence numbers and DNS ids
changed so that it is new connections) until SECONDS of stream time, and
written into ``diag watch --window W x=-`` through a pipe:

    .venv/bin/python bench/bench_watch.py --rate 50000 --seconds 20            # as fast as the watch reads
    .venv/bin/python bench/bench_watch.py --rate 50000 --seconds 20 --realtime # paced: each packet stamped
                                                                               # and written at its time
    .venv/bin/python bench/bench_watch.py --rate 1000 --seconds 3600           # an hour of stream time

It prints the wall time and the packets per wall-clock second the watch
took in, its CPU time and its resident memory sampled over the run (a flat
line is the point of the window), and, from its JSON lines, how many
findings it decided and the decision latency (``decided_at`` minus the RST's
capture time, meaningful with ``--realtime``, where the capture time is the
time the packet was written).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
sys.path.insert(0, str(BENCH))

from gen_capture import write_capture  # noqa: E402  (the benchmark's own generator, next to this file)

RECORD = struct.Struct("<IIII")


def records(path: Path) -> tuple[bytes, list[bytes]]:
    data = path.read_bytes()
    out, pos = [], 24
    while pos + 16 <= len(data):
        caplen = RECORD.unpack_from(data, pos)[2]
        out.append(data[pos + 16 : pos + 16 + caplen])
        pos += 16 + caplen
    return data[:24], out


def _new_pass(body: bytes, repeat: int) -> bytes:
    """The packet as it is in pass ``repeat`` over the capture: new connections, not copies of old ones.

    Both ports are XORed with the pass number (the same in both directions, so
    a connection stays whole); TCP sequence and acknowledgement numbers are
    moved by the same amount in both directions, and a UDP payload's first two
    bytes (a DNS id) XORed, so no packet of a pass is the same packet as one of
    an earlier pass to the correlation. Checksums are not checked.
    """
    sport, dport = struct.unpack_from("!HH", body, 34)
    head = body[:34] + struct.pack("!HH", sport ^ repeat, dport ^ repeat)
    if body[23] == 6:  # TCP
        seq, ack = struct.unpack_from("!II", body, 38)
        shift = repeat * 7_919_993
        return head + struct.pack("!II", (seq + shift) % 2**32, (ack + shift) % 2**32 if ack else 0) + body[46:]
    if body[23] == 17:  # UDP
        dns_id = struct.unpack_from("!H", body, 42)[0]
        return head + body[38:42] + struct.pack("!H", dns_id ^ repeat) + body[44:]
    return head + body[38:]


def forged_reset() -> list[tuple[float, bytes]]:
    """The incident's connection as the pod saw it (SYN, SYN-ACK, the NAT gateway's RST in the client's
    name, twice more), as (seconds after its first packet, frame): one capture point alone diagnoses it
    as asymmetric-return from the RST's TTL."""
    from scapy.all import rdpcap  # the benchmark's own dependency; diag does not need it

    frames = [(float(packet.time), bytes(packet)) for packet in rdpcap(str(PROJECT / "captures" / "pod-b.pcapng"))]
    frames = [(ts, frame) for ts, frame in frames if len(frame) >= 46 and frame[12:14] == b"\x08\x00"]
    return [(ts - frames[0][0], frame) for ts, frame in frames]


def is_rst(frame: bytes) -> bool:
    return frame[23] == 6 and bool(frame[47] & 0x04)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50_000, help="packets per second of stream time")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of stream time")
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--packets", type=int, default=200_000, help="packets in the generated capture (repeated)")
    parser.add_argument("--realtime", action="store_true", help="write each packet at its time, stamped with it")
    parser.add_argument("--plant-every", type=float, default=5.0, metavar="SECONDS",
                        help="plant the incident's forged RST connection this often (stream time, first after 2 s)")
    args = parser.parse_args()
    plant = forged_reset()
    # (stream seconds, frame, is the plant's first RST) of every planted packet, in time order.
    planted: list[tuple[float, bytes, bool]] = []
    at = 2.0
    while at + plant[-1][0] < args.seconds:
        number = len(planted) // len(plant) + 1
        first_rst = next(offset for offset, frame in plant if is_rst(frame))
        planted += [(at + offset, _new_pass(frame, 2000 + number), offset == first_rst and is_rst(frame))
                    for offset, frame in plant]
        at += args.plant_every
    planted.sort(key=lambda item: item[0])
    planted_rsts: list[float] = []
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    capture = work / "gen.pcap"
    write_capture(capture, args.packets)
    header, bodies = records(capture)
    total = int(args.rate * args.seconds)
    out = work / "findings.jsonl"
    watch = subprocess.Popen([sys.executable, "-m", "diag.cli", "watch", "--window", str(args.window),
                              "--json-lines", str(out), "--quiet", "x=-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=PROJECT)
    assert watch.stdin is not None
    samples: list[tuple[float, int]] = []
    began = time.monotonic()

    def sample() -> None:
        while watch.poll() is None:
            samples.append((time.monotonic() - began, rss_kib(watch.pid)))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    watch.stdin.write(header)
    start_ts = time.time() if args.realtime else 1_764_257_000.0
    step = 1.0 / args.rate
    chunk = bytearray()
    written = 0
    next_plant = 0
    for number in range(total):
        ts = start_ts + number * step
        if args.realtime:
            wait = ts - time.time()
            if wait > 0.002:
                watch.stdin.write(chunk)
                chunk.clear()
                time.sleep(wait)
            ts = time.time()
        if next_plant < len(planted) and start_ts + planted[next_plant][0] <= start_ts + number * step:
            _offset, body, first_rst = planted[next_plant]
            next_plant += 1
            if first_rst:
                planted_rsts.append(round(ts, 6))
        else:
            body = bodies[number % len(bodies)]
            repeat = number // len(bodies)
            if repeat and len(body) >= 46:
                body = _new_pass(body, repeat)
        seconds = int(ts)
        chunk += RECORD.pack(seconds, int((ts - seconds) * 1e6), len(body), len(body)) + body
        if len(chunk) > 1 << 20:
            watch.stdin.write(chunk)
            chunk.clear()
        written += 1
    watch.stdin.write(chunk)
    fed = time.monotonic() - began
    watch.stdin.close()
    _pid, status, usage = os.wait4(watch.pid, 0)
    watch.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - began
    findings = [json.loads(line) for line in out.read_text().splitlines()]
    latencies = sorted(f["decided_at"] - f["packet"]["ts"] for f in findings if f["packet"])
    print(f"{written:,} packets ({args.rate:,.0f}/s of stream time for {args.seconds:g} s), window {args.window:g} s"
          f"{', real time' if args.realtime else ', as fast as read'}")
    print(f"  fed in {fed:.1f} s, done in {wall:.1f} s: {written / fed:,.0f} packets per wall second taken in")
    rss = [kib for _t, kib in samples if kib]
    if rss:
        marks = [rss[int(len(rss) * q) - 1] for q in (0.1, 0.25, 0.5, 0.75, 1.0)]
        print(f"  resident memory at 10/25/50/75/100% of the run: {', '.join(f'{k / 1024:.0f}' for k in marks)} MiB; "
              f"peak {max(rss) / 1024:.0f} MiB")
    print(f"  CPU {usage.ru_utime:.1f} s user + {usage.ru_stime:.1f} s system "
          f"({(usage.ru_utime + usage.ru_stime) / wall:.0%} of one core over the run)")
    print(f"  {len(findings)} finding(s) decided")
    # A reset's finding is decided as soon as every point caught up past it; an absence (silent-drop)
    # waits ABSENCE_SETTLE_S for a late reply by design, so the two are reported apart.
    resets = sorted(f["decided_at"] - f["packet"]["ts"] for f in findings
                    if f["packet"] and f["cause"] != "silent-drop")
    # Each planted RST's first finding (its connection may come back later with another symptom).
    first_decision: dict[float, dict[str, object]] = {}
    for finding in sorted(findings, key=lambda f: f["decided_at"]):
        for when in planted_rsts:
            if finding["packet"] and abs(finding["packet"]["ts"] - when) < 2e-6:
                first_decision.setdefault(when, finding)
    planted_lags = sorted(float(f["decided_at"]) - when for when, f in first_decision.items())  # type: ignore[arg-type]
    causes = sorted({str(f["cause"]) for f in first_decision.values()})
    print(f"  planted forged RSTs: {len(planted_rsts)}, decided: {len(planted_lags)} (as {', '.join(causes) or '-'})")
    if latencies and args.realtime:
        for label, values in (("planted forged RST", planted_lags), ("every finding", latencies),
                              ("findings on a RST", resets)):
            if values:
                print(f"  decision latency, {label} ({len(values)}): median {statistics.median(values):.3f} s, "
                      f"95% {values[max(int(len(values) * 0.95) - 1, 0)]:.3f} s, max {values[-1]:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
