"""A busy node's ordinary traffic, written as a pcap, to bury an incident in.

What every busy capture has: many clients talking to many servers, most
connections healthy, and thousands of ordinary resets that are nobody's
incident: a peer aborting a connection after data (an RST from the client
or from the server, with the same TTL as that host's other packets) and
SYNs to closed ports answered with RST+ACK by the server itself. Part of it
goes to the incident's own service (``SERVICE``), so the ranking cannot
single the incident out by its server alone.

Packets are packed with ``struct`` (Ethernet, IPv4 with a valid header
checksum, TCP without options); the connection plan is drawn with numpy from
a seed, so a run is reproducible. Hosts keep one TTL each (clients arrive 6
hops away, servers 1), as real senders do, so no reset here looks forged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SERVICE = ("198.18.102.10", 80)  # the pod of the reference captures
OTHER_SERVERS = tuple(f"198.18.103.{i}" for i in range(10, 40))
CLIENT_NETS = ("203.0.113.", "192.0.2.", "198.51.100.")
CLIENT_TTL, SERVER_TTL = 58, 63

SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
_ETH = bytes.fromhex("02:00:00:00:00:02 02:00:00:00:00:01 08:00".replace(":", " "))  # dst MAC, src MAC, IPv4


@dataclass(frozen=True)
class Plan:
    """How many connections of each kind the background holds."""

    healthy: int = 1200
    peer_resets_to_service: int = 900
    refused_at_service: int = 300  # SYNs to other ports of the service's host
    peer_resets_elsewhere: int = 900
    refused_elsewhere: int = 900

    @property
    def resets(self) -> int:
        to_service = self.peer_resets_to_service + self.refused_at_service
        return to_service + self.peer_resets_elsewhere + self.refused_elsewhere


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src: str, dst: str, ttl: int, ip_id: int, sport: int, dport: int, flags: int, seq: int, ack: int,
           payload: bytes = b"") -> bytes:  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 64240, 0, 0)
    total = 20 + len(tcp) + len(payload)
    addresses = bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    header = struct.pack("!BBHHHBBH", 0x45, 0, total, ip_id & 0xFFFF, 0x4000, ttl, 6, 0) + addresses
    header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
    return _ETH + header + tcp + payload


class _Host:
    """One sender: its TTL as seen at the capture point and its IP ID counter."""

    def __init__(self, address: str, ttl: int, ip_id: int) -> None:
        self.address, self.ttl, self.ip_id = address, ttl, ip_id

    def send(self, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int, payload: bytes = b"") -> bytes:
        self.ip_id += 1
        return _frame(self.address, dst, self.ttl, self.ip_id, sport, dport, flags, seq, ack, payload)


def _connection(kind: str, client: _Host, server: _Host, sport: int, dport: int, isn: int, rng: np.random.Generator
                ) -> list[bytes]:  # fmt: skip
    c, s = client, server
    cisn, sisn = isn, int(rng.integers(1, 2**31))
    syn = c.send(s.address, sport, dport, SYN, cisn, 0)
    if kind == "refused":
        return [syn, s.send(c.address, dport, sport, RST | ACK, 0, cisn + 1)]
    request = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    packets = [
        syn,
        s.send(c.address, dport, sport, SYN | ACK, sisn, cisn + 1),
        c.send(s.address, sport, dport, ACK, cisn + 1, sisn + 1),
        c.send(s.address, sport, dport, PSH | ACK, cisn + 1, sisn + 1, request),
        s.send(c.address, dport, sport, PSH | ACK, sisn + 1, cisn + 1 + len(request), response),
    ]
    cseq, sseq = cisn + 1 + len(request), sisn + 1 + len(response)
    if kind == "healthy":
        packets += [
            c.send(s.address, sport, dport, FIN | ACK, cseq, sseq),
            s.send(c.address, dport, sport, FIN | ACK, sseq, cseq + 1),
            c.send(s.address, sport, dport, ACK, cseq + 1, sseq + 1),
        ]
    elif kind == "client-abort":  # SO_LINGER 0 on the client after its answer
        packets.append(c.send(s.address, sport, dport, RST | ACK, cseq, sseq))
    else:  # "server-abort": the server closes with the request's tail unread
        packets.append(s.send(c.address, dport, sport, RST | ACK, sseq, cseq))
    return packets


def write_background(path: Path, start: float, seconds: float, plan: Plan = Plan(), seed: int = 7) -> int:
    """Write the background to a pcap at ``path``, spread over ``seconds`` from ``start``; the packet count.

    Connections start at random times and their packets follow 0.2 ms apart,
    so conversations interleave as they do on a real link.
    """
    rng = np.random.default_rng(seed)
    hosts: dict[str, _Host] = {}

    def host(address: str, ttl: int) -> _Host:
        if address not in hosts:
            hosts[address] = _Host(address, ttl, int(rng.integers(0, 60000)))
        return hosts[address]

    def client() -> _Host:
        net = CLIENT_NETS[int(rng.integers(0, len(CLIENT_NETS)))]
        return host(net + str(int(rng.integers(20, 250))), CLIENT_TTL)

    service_host, service_port = SERVICE
    jobs: list[tuple[str, str, int]] = []  # (kind, server, port)
    jobs += [("healthy", service_host, service_port)] * (plan.healthy // 2)
    jobs += [("healthy", str(rng.choice(OTHER_SERVERS)), 443) for _ in range(plan.healthy - plan.healthy // 2)]
    aborts = ("client-abort", "server-abort")
    jobs += [(aborts[i % 2], service_host, service_port) for i in range(plan.peer_resets_to_service)]
    jobs += [("refused", service_host, int(rng.choice([81, 8080, 9090]))) for _ in range(plan.refused_at_service)]
    jobs += [(aborts[i % 2], str(rng.choice(OTHER_SERVERS)), 443) for i in range(plan.peer_resets_elsewhere)]
    for _ in range(plan.refused_elsewhere):
        jobs.append(("refused", str(rng.choice(OTHER_SERVERS)), int(rng.integers(1000, 60000))))

    stamped: list[tuple[float, bytes]] = []
    used_ports: set[tuple[str, int]] = set()
    for kind, server_address, port in jobs:
        c = client()
        sport = int(rng.integers(32768, 60999))
        while (c.address, sport) in used_ports:
            sport = int(rng.integers(32768, 60999))
        used_ports.add((c.address, sport))
        server = host(server_address, SERVER_TTL)
        first = start + float(rng.random()) * seconds
        packets = _connection(kind, c, server, sport, port, int(rng.integers(1, 2**31)), rng)
        stamped += [(first + i * 0.0002, packet) for i, packet in enumerate(packets)]
    stamped.sort(key=lambda item: item[0])

    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))  # nanosecond pcap, Ethernet
        for ts, packet in stamped:
            seconds_part = int(ts)
            nanos = round((ts - seconds_part) * 1e9)
            out.write(struct.pack("<IIII", seconds_part, min(nanos, 999_999_999), len(packet), len(packet)))
            out.write(packet)
    return len(stamped)
