"""Write 1M-packet captures for the whole-analysis benchmark: quiet, 20k-flow and busy traffic.

Each profile has about the same number of packets; what changes is how many
connections carry them and how many end badly, which is what the diagnosis
pays for:

- ``quiet``: 2,000 long TCP connections, 0.5 % aborted by the server (a RST
  after data), plus DNS-like UDP pairs;
- ``20k``: 20,000 connections, 5 % aborted (about 1,000 resets);
- ``busy``: 60,000 connections with the ordinary resets of a busy node: 4 %
  aborted by the server after data, 3 % refused (the SYN answered by RST+ACK,
  no listener) and 1 % unanswered (the SYN sent three times, one second apart).

``--points N`` writes the same traffic as N capture points (``-p0`` ... ``-pN-1``),
each one hop further along (TTL one lower) and with its own clock offset and
path delay, so the captures correlate packet by packet as a lab's hops do.

``--repeat N`` writes N blocks of the profile's traffic one after another into
each file, for captures larger than the memory that lays them out (one block
is in memory at a time): each block has connections of its own (its own random
draw, its clients moved to 10.B.0.0/16 and 192.B.0.0/16 for block B) and its
own stretch of time (``BLOCK_NS`` after the block before), so no flow repeats.

Packets are laid out with numpy (``gen_capture.layout``), no per-packet Python.

    .venv/bin/python bench/gen_busy.py                       # the three profiles into bench/data/
    .venv/bin/python bench/gen_busy.py --profile busy --points 4
    .venv/bin/python bench/gen_busy.py --profile busy --repeat 27 --out-dir bench/data/huge   # about 20 GB
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from gen_capture import (  # noqa: E402
    ACK,
    DATA_DIR,
    FIN,
    MSS,
    PSH,
    RST,
    SYN,
    Array,
    Packets,
    layout,
    tcp_packets,
    udp_exchanges,
)

START_NS = 1_764_257_000 * 10**9
SPAN_NS = 20 * 10**9
# Time from one ``--repeat`` block's start to the next: its span and the longest connection's tail (SYNs retried).
BLOCK_NS = SPAN_NS + 10 * 10**9
MAX_BLOCKS = 256  # a block's clients are 10.B.0.0/16 and 192.B.0.0/16


@dataclass(frozen=True)
class Profile:
    flows: int  # TCP connections
    aborted: float  # share aborted by the server after data
    refused: float  # share refused: SYN answered by RST+ACK
    unanswered: float  # share whose SYN is never answered


PROFILES = {
    "quiet": Profile(2_000, 0.005, 0.0, 0.0),
    "20k": Profile(20_000, 0.05, 0.0, 0.0),
    "busy": Profile(60_000, 0.04, 0.03, 0.01),
}


def fewest_tcp_packets(profile: Profile) -> int:
    """The TCP packets of the profile's connections with one response segment each, the fewest they can take.

    ``--packets`` only sizes the responses (UDP takes a twentieth of it): asked for fewer than these need,
    the capture holds these anyway (the busy profile's 60,000 connections over half a million packets).
    """
    complete = 1 - profile.aborted - profile.refused - profile.unanswered
    per_connection = 9 * complete + 7 * profile.aborted + 2 * profile.refused + 3 * profile.unanswered
    return round(profile.flows * per_connection)


def _sequence(conn: Array, first: Array, side: Array, used: Array, isn: Array) -> tuple[Array, Array]:
    """Sequence and acknowledgement numbers from what each side used up before each packet."""
    seq = np.zeros(len(conn), dtype=np.int64)
    ack = np.zeros(len(conn), dtype=np.int64)
    for who in (0, 1):
        sent = np.where(side == who, used, 0)
        before = np.cumsum(sent) - sent
        before -= before[first][conn]
        seq = np.where(side == who, isn[conn, who] + before, seq)
        ack = np.where(side != who, isn[conn, who] + before, ack)
    return seq % 2**32, ack % 2**32


def tcp_traffic(profile: Profile, packets_wanted: int, rng: np.random.Generator) -> Packets:
    """Every TCP connection of the profile, laid out as columns.

    Kinds: 0 complete (FIN both ways), 1 aborted by the server after data,
    2 refused (SYN, RST+ACK), 3 unanswered (three SYNs).
    """
    count = profile.flows
    draw = rng.random(count)
    cuts = np.cumsum([profile.aborted, profile.refused, profile.unanswered])
    kind = (np.searchsorted(cuts, draw, side="right") + 1) % 4  # below the first cut 1, ..., above the last 0
    with_data = kind <= 1
    # Response segments sized so the capture holds about ``packets_wanted`` packets (UDP takes 1/20).
    short = int((2 * (kind == 2) + 3 * (kind == 3)).sum())
    budget = packets_wanted * 19 // 20 - short - int((8 * (kind == 0) + 6 * (kind == 1)).sum())
    mean_segments = max(1, budget // max(1, int(with_data.sum())))
    segments = np.where(with_data, rng.integers(1, 2 * mean_segments, count), 0)
    per_conn = np.select([kind == 0, kind == 1, kind == 2], [8 + segments, 6 + segments, 2], 3)

    conn = np.repeat(np.arange(count), per_conn)
    first = np.cumsum(per_conn) - per_conn
    slot = np.arange(len(conn)) - first[conn]
    k = kind[conn]
    seg = segments[conn]
    end = 4 + seg  # slots 4 .. end-1: the response
    data = k <= 1

    from_server = data & ((slot == 1) | ((slot >= 4) & (slot < end)))
    from_server |= (k == 0) & (slot == end + 2)
    from_server |= (k == 1) & (slot == end + 1)
    from_server |= (k == 2) & (slot == 1)
    flags = np.full(len(conn), ACK)
    flags[slot == 0] = SYN
    flags[data & (slot == 1)] = SYN | ACK
    flags[data & ((slot == 3) | (slot == end - 1))] = PSH | ACK
    flags[(k == 0) & ((slot == end + 1) | (slot == end + 2))] = FIN | ACK
    flags[(k == 1) & (slot == end + 1)] = RST | ACK
    flags[(k == 2) & (slot == 1)] = RST | ACK
    flags[k == 3] = SYN

    payload = np.zeros(len(conn), dtype=np.int64)
    request = data & (slot == 3)
    payload[request] = rng.integers(80, 700, int(request.sum()))
    payload[data & (slot >= 4) & (slot < end)] = MSS
    last = data & (slot == end - 1)
    payload[last] = rng.integers(1, MSS + 1, int(last.sum()))

    used = payload + ((flags & (SYN | FIN)) != 0)
    isn = rng.integers(0, 2**32, (count, 2))
    seq, ack = _sequence(conn, first, from_server.astype(np.int64), used, isn)
    seq[k == 3] = isn[conn[k == 3], 0]  # a retransmitted SYN keeps its ISN
    ack[slot == 0] = 0
    ack[k == 3] = 0

    client_ip = (10 << 24) + 256 + rng.integers(0, 20_000, count)
    server_ip = (198 << 24 | 18 << 16 | 1 << 8) + rng.integers(0, 64, count)
    sport = rng.integers(32768, 61000, count)
    dport = rng.choice(np.array([80, 443, 8080, 5432]), count)
    rtt_ns = rng.integers(200_000, 40_000_000, count)
    # Data segments come close together; the handshake and close take half a round trip each.
    begin = START_NS + rng.integers(0, SPAN_NS, count)
    step = np.where((slot >= 4) & (slot < end), rng.integers(20_000, 200_000, len(conn)), rtt_ns[conn] // 2)
    step[slot == 0] = 0
    step[k == 3] = np.where(slot[k == 3] == 0, 0, 1_000_000_000)  # SYN retried every second
    elapsed = np.cumsum(step)
    ts = begin[conn] + elapsed - elapsed[first][conn]

    return tcp_packets(conn, from_server, ts, flags, seq, ack, payload, (client_ip, sport), (server_ip, dport))


def build(profile: Profile, packets_wanted: int, seed: int) -> Packets:
    rng = np.random.default_rng(seed)
    tcp = tcp_traffic(profile, packets_wanted, rng)
    udp = udp_exchanges(max(1, packets_wanted // 40), rng, START_NS, SPAN_NS)
    packets = Packets.concat([tcp, udp])
    return packets.take(np.argsort(packets.ts, kind="stable"))


def clock_of(rng: np.random.Generator) -> int:
    """A capture point's clock offset from the first point's, in nanoseconds."""
    return int(rng.integers(-3 * 10**9, 3 * 10**9))


def shifted(packets: Packets, point: int, rng: np.random.Generator, clock_ns: int) -> Packets:
    """The same packets ``point`` hops further along: one TTL lower per hop, later, on the clock ``clock_ns``."""
    if point == 0:
        return packets
    delay = point * 150_000 + rng.integers(0, 20_000, len(packets.ts))
    columns = dict(packets.columns)
    columns["ts"] = packets.ts + clock_ns + delay
    columns["ttl"] = packets.ttl - point
    return Packets(**columns)


def moved(packets: Packets, block: int) -> Packets:
    """Block ``block`` of a repeated capture: its clients (10.0.0.0/16, 192.0.0.0/16) moved to 10.B and 192.B,
    its times ``block`` blocks later; the servers stay, as a busy node's services do."""
    if block == 0:
        return packets
    columns = dict(packets.columns)
    for side in ("src", "dst"):
        address = columns[side]
        client = np.isin(address >> 24, (10, 192))
        columns[side] = np.where(client, address + (block << 16), address)
    columns["ts"] = packets.ts + block * BLOCK_NS
    return Packets(**columns)


def write_pcap(path: Path, packets: Packets, seed: int, append: bool = False) -> int:
    body = layout(packets, np.random.default_rng(seed + 1))  # same seed: same payload bytes at every point
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab" if append else "wb") as out:
        if not append:
            out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        body.tofile(out)
    return path.stat().st_size


def write_profile(
    name: str,
    packets_wanted: int,
    points: int,
    seed: int,
    out_dir: Path,
    flows: int | None = None,
    repeat: int = 1,
) -> list[Path]:
    profile = PROFILES[name]
    if flows is not None:
        profile = replace(profile, flows=flows)
    paths = [out_dir / (f"{name}.pcap" if points == 1 else f"{name}-p{point}.pcap") for point in range(points)]
    written = 0
    clocks = [0] * points  # each point's clock, drawn in the first block: a file keeps one clock throughout
    for block in range(repeat):
        block_seed = seed + 1000 * block  # block 0 is the capture written without --repeat
        packets = moved(build(profile, packets_wanted, block_seed), block)
        rng = np.random.default_rng(block_seed + 7)
        written += len(packets.ts)
        for point, path in enumerate(paths):
            if point and block == 0:
                clocks[point] = clock_of(rng)
            size = write_pcap(path, shifted(packets, point, rng, clocks[point]), block_seed, append=block > 0)
            if block == repeat - 1:
                print(f"{path}: {written:,} packets, {size / 1e6:.0f} MB")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    parser.add_argument(
        "--packets", type=int, default=1_000_000,
        help="about this many packets (default 1,000,000); never fewer than the connections take with one "
        "response segment each (busy's 60,000: about 520,000; fewer --flows for less), said when asked for fewer",
    )  # fmt: skip
    parser.add_argument("--points", type=int, default=1, help="capture points of the same traffic (default 1)")
    parser.add_argument("--flows", type=int, help="TCP connections instead of the profile's (for small test sets)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help=f"write N blocks of the traffic into each file, each with its own connections, clients and time "
        f"(at most {MAX_BLOCKS}; default 1)",
    )
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    if args.points < 1:
        parser.error("--points must be at least 1")
    if not 1 <= args.repeat <= MAX_BLOCKS:
        parser.error(f"--repeat must be from 1 to {MAX_BLOCKS}")
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    for name in names:
        profile = PROFILES[name] if args.flows is None else replace(PROFILES[name], flows=args.flows)
        tcp = fewest_tcp_packets(profile)
        if args.packets * 19 // 20 < tcp:  # what tcp_traffic leaves to TCP
            # Said before minutes of writing, not refused: the documented 10M-packet, 1.2M-flow capture is one.
            fitting = max(1, profile.flows * args.packets // (2 * tcp))
            print(
                f"gen_busy: --packets {args.packets:,} is too few for {name}'s {profile.flows:,} connections: "
                f"writing about {tcp + 2 * max(1, args.packets // 40):,} packets instead (for {args.packets:,}, "
                f"give fewer connections with --flows, e.g. --flows {fitting:,})",
                file=sys.stderr,
            )
    began = time.perf_counter()
    for name in names:
        write_profile(name, args.packets, args.points, args.seed, args.out_dir, args.flows, args.repeat)
    print(f"written in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
