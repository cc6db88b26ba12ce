"""Write a large, realistic Ethernet capture for the reader benchmark.

Many TCP connections (handshake with MSS/SACK/timestamps/window-scale
options, a request, a response of several full-sized segments, ACKs, then
FIN or now and then RST) interleaved in time, plus DNS-like UDP exchanges.
Packets are laid out with numpy in one buffer (no per-packet Python), so a
million packets take a few seconds to write.

    .venv/bin/python bench/gen_capture.py                 # 1,000,000 packets into bench/data/
    .venv/bin/python bench/gen_capture.py --packets 50000 --out /tmp/small.pcap
    .venv/bin/python bench/gen_capture.py --vxlan          # the same packets as a node's underlay sees them

``--vxlan`` wraps every frame in Ethernet, IPv4 and UDP to port 4789 with a
VXLAN header (VNI 1), as Flannel or Calico carry pod traffic between nodes;
the inner headers are those of the plain capture of the same seed (the
random payload bytes differ).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATA_DIR = Path(__file__).resolve().parent / "data"
MSS = 1448
ETH, IP, UDP_HDR = 14, 20, 8
VXLAN_HDR = 8
VXLAN_OUTER = ETH + IP + UDP_HDR + VXLAN_HDR  # bytes in front of the inner Ethernet frame
VXLAN_PORT = 4789
TCP_HDR = 32  # NOP NOP timestamps
TCP_SYN_HDR = 40  # MSS, SACK-permitted, timestamps, NOP, window scale
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10

Array = npt.NDArray[np.int64]


class Packets:
    """Column arrays describing every packet before it is laid out in bytes."""

    def __init__(self, **columns: Array) -> None:
        self.columns = columns

    def __getattr__(self, name: str) -> Array:
        return self.columns[name]

    @staticmethod
    def concat(parts: list[Packets]) -> Packets:
        return Packets(**{key: np.concatenate([part.columns[key] for part in parts]) for key in parts[0].columns})

    def take(self, order: Array) -> Packets:
        return Packets(**{key: value[order] for key, value in self.columns.items()})


def tcp_connections(count: int, rng: np.random.Generator, start_ns: int, span_ns: int) -> Packets:
    """``count`` connections: SYN, SYN-ACK, ACK, request, response segments, ACK, then FIN x3 or RST."""
    segments = rng.integers(1, 21, count)  # response segments per connection
    reset = rng.random(count) < 0.05  # the server aborts some connections
    tail = np.where(reset, 1, 3)
    per_conn = 4 + segments + 1 + tail
    conn = np.repeat(np.arange(count), per_conn)
    first = np.cumsum(per_conn) - per_conn
    slot = np.arange(len(conn)) - first[conn]  # position of the packet in its connection
    seg = segments[conn]
    response_end = 4 + seg  # slots 4 .. 4+seg-1 are response segments

    # Who sends each slot and with what flags and payload.
    from_server = (slot == 1) | ((slot >= 4) & (slot < response_end)) | ((slot == response_end + 2) & ~reset[conn])
    from_server |= (slot == response_end + 1) & reset[conn]
    flags = np.full(len(conn), ACK)
    flags[slot == 0] = SYN
    flags[slot == 1] = SYN | ACK
    flags[(slot == 3) | (slot == response_end - 1)] = PSH | ACK
    closing = (slot == response_end + 1) | (slot == response_end + 2)
    flags[closing & ~reset[conn]] = FIN | ACK
    flags[(slot == response_end + 1) & reset[conn]] = RST | ACK
    request_len = rng.integers(80, 700, count)
    last_len = rng.integers(1, MSS + 1, count)
    payload = np.zeros(len(conn), dtype=np.int64)
    payload[slot == 3] = request_len[conn[slot == 3]]
    in_response = (slot >= 4) & (slot < response_end)
    payload[in_response] = MSS
    last = slot == response_end - 1
    payload[last] = last_len[conn[last]]

    # Sequence numbers: what each side has used up before each packet (SYN and FIN count one).
    used = payload + ((flags & (SYN | FIN)) != 0)
    isn = rng.integers(0, 2**32, (count, 2))
    side = from_server.astype(np.int64)
    seq = np.zeros(len(conn), dtype=np.int64)
    ack = np.zeros(len(conn), dtype=np.int64)
    for who in (0, 1):
        sent = np.where(side == who, used, 0)
        before = np.cumsum(sent) - sent  # used by ``who`` before this packet, across all connections
        before -= before[first][conn]
        seq = np.where(side == who, isn[conn, who] + before, seq)
        ack = np.where(side != who, isn[conn, who] + before, ack)
    seq %= 2**32
    ack %= 2**32
    ack[slot == 0] = 0

    clients = rng.integers(0, 20000, count)
    servers = rng.integers(0, 64, count)
    client_ip = (10 << 24) + 256 + clients
    server_ip = (198 << 24 | 18 << 16 | 1 << 8) + servers
    sport = rng.integers(32768, 61000, count)
    dport = rng.choice(np.array([80, 443, 8080, 5432]), count)
    rtt_ns = rng.integers(200_000, 40_000_000, count)
    begin = start_ns + rng.integers(0, span_ns, count)
    ts = begin[conn] + slot * (rtt_ns[conn] // 2) + rng.integers(0, 50_000, len(conn))

    return tcp_packets(conn, from_server, ts, flags, seq, ack, payload, (client_ip, sport), (server_ip, dport))


def tcp_packets(
    conn: Array, from_server: Array, ts: Array, flags: Array, seq: Array, ack: Array, payload: Array,
    client: tuple[Array, Array], server: tuple[Array, Array],
) -> Packets:
    """Each packet of connection ``conn`` with its endpoints (address, port per connection) set by direction."""
    (client_ip, sport), (server_ip, dport) = client, server
    src = np.where(from_server, server_ip[conn], client_ip[conn])
    dst = np.where(from_server, client_ip[conn], server_ip[conn])
    return Packets(
        ts=ts,
        src=src,
        dst=dst,
        sport=np.where(from_server, dport[conn], sport[conn]),
        dport=np.where(from_server, sport[conn], dport[conn]),
        proto=np.full(len(conn), 6),
        flags=flags,
        seq=seq,
        ack=ack,
        payload=payload,
        ttl=np.where(from_server, 64, 52),
        tsval=(ts // 1_000_000) % 2**32,
    )


def udp_exchanges(count: int, rng: np.random.Generator, start_ns: int, span_ns: int) -> Packets:
    """DNS-like query and answer pairs."""
    client = (192 << 24 | 0 << 16 | 2 << 8) + rng.integers(1, 250, count)
    server = np.full(count, 198 << 24 | 51 << 16 | 100 << 8 | 53)
    sport = rng.integers(1024, 65535, count)
    begin = start_ns + rng.integers(0, span_ns, count)
    answer = begin + rng.integers(100_000, 5_000_000, count)
    zeros = np.zeros(2 * count, dtype=np.int64)
    return Packets(
        ts=np.concatenate([begin, answer]),
        src=np.concatenate([client, server]),
        dst=np.concatenate([server, client]),
        sport=np.concatenate([sport, np.full(count, 53)]),
        dport=np.concatenate([np.full(count, 53), sport]),
        proto=np.full(2 * count, 17),
        flags=zeros,
        seq=zeros,
        ack=zeros,
        payload=np.concatenate([rng.integers(28, 60, count), rng.integers(60, 400, count)]),
        ttl=np.full(2 * count, 61),
        tsval=zeros,
    )


def build(packets_wanted: int, seed: int) -> Packets:
    rng = np.random.default_rng(seed)
    start_ns = 1_764_257_000 * 10**9
    span_ns = max(packets_wanted, 1) * 20_000  # ~50k packets/s
    udp_pairs = packets_wanted // 40
    connections = max(1, (packets_wanted - 2 * udp_pairs) // 18)
    tcp = tcp_connections(connections, rng, start_ns, span_ns)
    packets = Packets.concat([tcp, udp_exchanges(udp_pairs, rng, start_ns, span_ns)])
    order = np.argsort(packets.ts, kind="stable")[:packets_wanted]
    return packets.take(order)


def layout(packets: Packets, rng: np.random.Generator, vxlan: bool = False) -> npt.NDArray[np.uint8]:
    """The pcap records (16-byte header + frame) of all packets in one byte array."""
    tcp = packets.proto == 6
    syn = tcp & ((packets.flags & SYN) != 0)
    l4_len = np.where(tcp, np.where(syn, TCP_SYN_HDR, TCP_HDR), UDP_HDR)
    inner_len = ETH + IP + l4_len + packets.payload
    frame_len = inner_len + (VXLAN_OUTER if vxlan else 0)
    record = 16 + frame_len
    start = np.cumsum(record) - record
    buffer = np.frombuffer(bytearray(rng.bytes(int(record.sum()) + 8)), dtype=np.uint8)  # random payload bytes

    def put(dtype: str, offsets: Array, values: Array | int) -> None:
        view = np.ndarray(shape=(len(buffer) - 8,), dtype=dtype, buffer=buffer, strides=(1,))
        view[offsets] = values

    seconds, nanos = np.divmod(packets.ts, 10**9)
    put("<u4", start, seconds)
    put("<u4", start + 4, nanos // 1000)
    put("<u4", start + 8, frame_len)
    put("<u4", start + 12, frame_len)
    eth = start + 16
    if vxlan:
        _put_vxlan(put, buffer, eth, packets, inner_len)
        eth = eth + VXLAN_OUTER
    put(">u4", eth, 0x02000000)  # locally administered MACs
    put(">u2", eth + 4, 0x0001)
    put(">u4", eth + 6, 0x02000000)
    put(">u2", eth + 10, 0x0002)
    put(">u2", eth + 12, 0x0800)
    ip = eth + ETH
    put(">u2", ip, 0x4500)
    put(">u2", ip + 2, IP + l4_len + packets.payload)
    put(">u2", ip + 4, np.arange(len(ip)) & 0xFFFF)
    put(">u2", ip + 6, 0x4000)
    put(">u2", ip + 8, packets.ttl << 8 | packets.proto)
    put(">u2", ip + 10, 0)
    put(">u4", ip + 12, packets.src)
    put(">u4", ip + 16, packets.dst)
    put(">u2", ip + 10, _ipv4_checksums(buffer, ip))

    l4 = ip + IP
    put(">u2", l4, packets.sport)
    put(">u2", l4 + 2, packets.dport)
    udp = ~tcp
    put(">u2", l4[udp] + 4, UDP_HDR + packets.payload[udp])
    put(">u2", l4[udp] + 6, 0)  # no UDP checksum
    t = l4[tcp]
    put(">u4", t + 4, packets.seq[tcp])
    put(">u4", t + 8, packets.ack[tcp])
    put(">u2", t + 12, (l4_len[tcp] // 4) << 12 | packets.flags[tcp])
    put(">u2", t + 14, np.where(syn[tcp], 64240, 501))
    put(">u4", t + 16, 0)  # checksum (left as offload leaves it) and urgent pointer
    options = t + 20
    is_syn = syn[tcp]
    plain = options[~is_syn]
    put(">u2", plain, 0x0101)  # NOP NOP
    put(">u2", plain + 2, 0x080A)  # timestamps
    put(">u4", plain + 4, packets.tsval[tcp][~is_syn])
    put(">u4", plain + 8, packets.tsval[tcp][~is_syn])
    handshake = options[is_syn]
    put(">u4", handshake, 0x020405B4)  # MSS 1460
    put(">u2", handshake + 4, 0x0402)  # SACK permitted
    put(">u2", handshake + 6, 0x080A)
    put(">u4", handshake + 8, packets.tsval[tcp][is_syn])
    put(">u4", handshake + 12, 0)
    put(">u4", handshake + 16, 0x01030307)  # NOP, window scale 7
    return buffer[:-8]


def _put_vxlan(put: Callable[[str, Array, Array | int], None], buffer: npt.NDArray[np.uint8], eth: Array,
               packets: Packets, inner_len: Array) -> None:  # fmt: skip
    """Outer Ethernet, IPv4, UDP and VXLAN headers at ``eth``: between 16 nodes, chosen by the inner addresses."""
    put(">u4", eth, 0x02000000)
    put(">u2", eth + 4, 0x0101)
    put(">u4", eth + 6, 0x02000000)
    put(">u2", eth + 10, 0x0102)
    put(">u2", eth + 12, 0x0800)
    ip = eth + ETH
    put(">u2", ip, 0x4500)
    put(">u2", ip + 2, IP + UDP_HDR + VXLAN_HDR + inner_len)
    put(">u2", ip + 4, (np.arange(len(ip)) * 7) & 0xFFFF)
    put(">u2", ip + 6, 0)
    put(">u2", ip + 8, 64 << 8 | 17)
    put(">u2", ip + 10, 0)
    put(">u4", ip + 12, (198 << 24 | 18 << 16) + 1 + (packets.src & 0xF))  # the nodes' underlay addresses
    put(">u4", ip + 16, (198 << 24 | 18 << 16) + 1 + (packets.dst & 0xF))
    put(">u2", ip + 10, _ipv4_checksums(buffer, ip))
    udp = ip + IP
    # The source port carries a hash of the inner flow, as the kernel's VXLAN driver does.
    put(">u2", udp, 32768 + ((packets.src ^ packets.dst ^ packets.sport ^ packets.dport) & 0x3FFF))
    put(">u2", udp + 2, VXLAN_PORT)
    put(">u2", udp + 4, UDP_HDR + VXLAN_HDR + inner_len)
    put(">u2", udp + 6, 0)
    put(">u4", udp + 8, 0x08000000)  # flags: VNI present
    put(">u4", udp + 12, 1 << 8)  # VNI 1


def _ipv4_checksums(buffer: npt.NDArray[np.uint8], ip: Array) -> Array:
    words = np.ndarray(shape=(len(buffer) - 1,), dtype=">u2", buffer=buffer, strides=(1,))
    total = np.zeros(len(ip), dtype=np.int64)
    for k in range(10):
        total += words[ip + 2 * k]
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_capture(path: Path, packets_wanted: int, seed: int = 1, vxlan: bool = False) -> int:
    """Write the capture; returns its size in bytes."""
    packets = build(packets_wanted, seed)
    body = layout(packets, np.random.default_rng(seed + 1), vxlan)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        body.tofile(out)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="number of packets (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--vxlan", action="store_true", help="wrap every frame in VXLAN (UDP 4789) between nodes")
    parser.add_argument("--out", type=Path, default=None, help="output file (default bench/data/tcp[-vxlan]-<N>.pcap)")
    args = parser.parse_args(argv)
    out = args.out or DATA_DIR / f"tcp{'-vxlan' if args.vxlan else ''}-{args.packets}.pcap"
    began = time.perf_counter()
    size = write_capture(out, args.packets, args.seed, args.vxlan)
    print(f"{out}: {args.packets:,} packets, {size / 1e6:.0f} MB in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
