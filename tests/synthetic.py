"""Synthetic multi-point captures of every cause, built packet by packet.

The topology is the incident's: a client on the internet, an NLB that DNATs
the listener to node-a's NodePort keeping the client address, node-a that
DNATs to the pod on node-b, and a NAT gateway on the subnet's default route.
Every packet is followed along its route: each capture point records it (a
forwarding box records it on the way in and again on the way out, TTL one
lower, after its rewrite), each point has its own clock, and uncaptured
routers only lower the TTL. The result is, per point, both a packet table
(the columns of ``diag.capture.columns``) and the scapy packets, so the same
traffic can also go through pcap files and the real reader.

    client 203.0.113.10 ─ router ─ nlb 198.51.100.10:80 ─ node-a 198.18.1.10:30080 ─ node-b ─ pod 198.18.102.10:80
                                                                                        └─ natgw (default route)
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from diag.capture.columns import PACKET_COLUMNS
from diag.capture.proto import ACK, FIN, ICMP, PSH, RST, SYN, TCP, UDP

CLIENT = "203.0.113.10"
VIP = "198.51.100.10"
NODE_A = "198.18.1.10"
NODE_B = "198.18.2.10"
POD = "198.18.102.10"
NATGW_PUBLIC = "198.51.100.20"
NODE_PORT = 30080
START_NS = 1_764_257_655_000_000_000
MS = 1_000_000
ARP = -2  # Packet.proto for a non-IP frame

_DEFAULTS: dict[str, object] = {
    "index": -1, "file": 0, "ts_ns": 0, "iface": "eth0", "direction": "", "link_type": 1, "vlan": -1, "ip_version": 4,
    "src": "", "dst": "", "proto": -1, "sport": -1, "dport": -1, "ttl": -1, "ip_id": -1, "frag_offset": 0,
    "more_fragments": False, "ip_len": -1, "cap_len": 0, "wire_len": 0, "truncated": False, "tcp_flags": -1,
    "seq": -1, "ack": -1, "win": -1, "mss": -1, "wscale": -1, "sack_perm": False, "tsval": -1, "tsecr": -1,
    "payload_len": -1, "payload_digest": 0, "icmp_type": -1, "icmp_code": -1, "inner_src": "", "inner_dst": "",
    "inner_proto": -1, "inner_sport": -1, "inner_dport": -1, "tunnel": "", "tunnel_id": -1, "outer_src": "",
    "outer_dst": "", "outer_ttl": -1, "tunnel_broken": False,
}  # fmt: skip


def digest(payload: bytes) -> int:
    return 0 if not payload else int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def frame(rows: Sequence[dict[str, object]]) -> pd.DataFrame:
    """A packet table from rows that give only what differs from the defaults."""
    full = [{**_DEFAULTS, "capture": "", **row} for row in rows]
    table = pd.DataFrame(full, columns=list(PACKET_COLUMNS))
    for name, (dtype, _) in PACKET_COLUMNS.items():
        table[name] = table[name].astype(dtype)
    return table


@dataclass(frozen=True)
class Packet:
    """One IP packet as its sender built it."""

    src: str
    dst: str
    sport: int = -1
    dport: int = -1
    proto: int = TCP
    flags: int = 0
    seq: int = 0
    ack: int = 0
    win: int = 64240
    mss: int = -1
    wscale: int = -1
    sack_perm: bool = False
    payload: bytes = b""
    ttl: int = 64
    ip_id: int = 0
    icmp_type: int = -1
    icmp_code: int = -1
    inner: tuple[str, str, int, int, int] | None = None  # quoted (src, dst, proto, sport, dport)

    def row(self) -> dict[str, object]:
        if self.proto == ARP:
            return {"ip_version": 0, "cap_len": 42, "wire_len": 42}
        header = {TCP: 20 + (8 if self.mss >= 0 else 0) + (4 if self.wscale >= 0 else 0), UDP: 8, ICMP: 8}[self.proto]
        quoted = 28 if self.inner else 0
        ip_len = 20 + header + len(self.payload) + quoted
        row: dict[str, object] = {
            "src": self.src, "dst": self.dst, "proto": self.proto, "ttl": self.ttl, "ip_id": self.ip_id,
            "ip_len": ip_len, "cap_len": ip_len + 14, "wire_len": ip_len + 14,
            "payload_len": len(self.payload) + quoted, "payload_digest": digest(self.payload),
        }  # fmt: skip
        if self.proto in (TCP, UDP):
            row.update(sport=self.sport, dport=self.dport)
        if self.proto == TCP:
            row.update(tcp_flags=self.flags, seq=self.seq, ack=self.ack, win=self.win, mss=self.mss,
                       wscale=self.wscale, sack_perm=self.sack_perm)  # fmt: skip
        if self.proto == ICMP:
            row.update(icmp_type=self.icmp_type, icmp_code=self.icmp_code)
            if self.inner:
                s, d, p, sp, dp = self.inner
                row.update(inner_src=s, inner_dst=d, inner_proto=p, inner_sport=sp, inner_dport=dp,
                           payload_digest=0)  # fmt: skip
        return row

    def scapy(self) -> object:
        from scapy.layers.inet import ICMP as ScapyICMP
        from scapy.layers.inet import IP, IPerror, TCPerror, UDPerror
        from scapy.layers.inet import TCP as ScapyTCP
        from scapy.layers.inet import UDP as ScapyUDP
        from scapy.layers.l2 import ARP as ScapyARP
        from scapy.layers.l2 import Ether

        if self.proto == ARP:
            broadcast = Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff")
            return broadcast / ScapyARP(psrc="198.18.2.1", pdst="198.18.2.10")
        ip = IP(src=self.src, dst=self.dst, ttl=self.ttl, id=self.ip_id, flags="DF")
        if self.proto == TCP:
            options: list[tuple[str, object]] = []
            if self.mss >= 0:
                options.append(("MSS", self.mss))
            if self.sack_perm:
                options.append(("SAckOK", b""))
            if self.wscale >= 0:
                options.append(("WScale", self.wscale))
            layer = ScapyTCP(sport=self.sport, dport=self.dport, flags=self.flags, seq=self.seq, ack=self.ack,
                             window=self.win, options=options)  # fmt: skip
        elif self.proto == UDP:
            layer = ScapyUDP(sport=self.sport, dport=self.dport)
        else:
            layer = ScapyICMP(type=self.icmp_type, code=self.icmp_code)
            if self.inner:
                s, d, p, sp, dp = self.inner
                quoted = ScapyUDP if p == UDP else ScapyTCP
                err = UDPerror if p == UDP else TCPerror
                layer = layer / IPerror(src=s, dst=d, proto=p) / err(sport=sp, dport=dp)
                del quoted
        packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / layer
        if self.payload:
            packet = packet / self.payload
        return packet


@dataclass(frozen=True)
class Hop:
    """A capture point (or None for a router nobody captured) on a packet's route."""

    point: str | None
    delay_ns: int = 300_000  # since the previous hop
    forwards: bool = True  # a box that routes the packet on (TTL −1, egress copy recorded)
    rewrite: dict[str, object] = field(default_factory=dict)  # applied when it forwards
    last: bool = False  # the destination host: records, does not forward


@dataclass
class Scenario:
    """Per-point recorded packets, each point with its own clock."""

    name: str
    expected: str
    points: tuple[str, ...]
    clock_skew_ns: dict[str, int] = field(default_factory=dict)
    recorded: dict[str, list[tuple[int, Packet, str]]] = field(default_factory=dict)
    # Subsets of points that must each give ``expected`` (others may only need "some finding").
    subsets: tuple[tuple[str, ...], ...] = ()

    def record(self, point: str, t_ns: int, packet: Packet, iface: str = "eth0") -> None:
        self.recorded.setdefault(point, []).append((t_ns, packet, iface))

    def send(self, t_ns: int, packet: Packet, route: Sequence[Hop]) -> int:
        """Follow ``packet`` along ``route`` (first hop = the sender); returns the arrival time."""
        t = t_ns
        current = packet
        for position, hop in enumerate(route):
            t += 0 if position == 0 else hop.delay_ns
            if position == 0:
                if hop.point:
                    self.record(hop.point, t, current)
                continue
            if hop.point is None:
                current = replace(current, ttl=current.ttl - 1, **hop.rewrite)  # type: ignore[arg-type]
                continue
            self.record(hop.point, t, current, "in0")
            if hop.last:
                break
            if hop.forwards:
                current = replace(current, ttl=current.ttl - 1, **hop.rewrite)  # type: ignore[arg-type]
                self.record(hop.point, t + 10_000, current, "out0")
        return t

    def entries(self, point: str) -> list[tuple[int, Packet, str]]:
        """What the point recorded, plus ARP chatter before and after so every capture spans the test."""
        everything = [t for recorded in self.recorded.values() for t, _, _ in recorded]
        chatter = [(min(everything) - 500 * MS, Packet("", "", proto=ARP), "eth0"),
                   (max(everything) + 2000 * MS, Packet("", "", proto=ARP), "eth0")]  # fmt: skip
        return sorted(self.recorded.get(point, []) + chatter, key=lambda e: e[0])

    def table(self, point: str, shift_ns: int = 0) -> pd.DataFrame:
        skew = self.clock_skew_ns.get(point, 0) + shift_ns
        entries = self.entries(point)
        rows = []
        for index, (t, packet, iface) in enumerate(entries):
            rows.append({**packet.row(), "capture": point, "index": index, "ts_ns": t + skew, "iface": iface})
        return frame(rows)

    def packets(self, points: Iterable[str] | None = None, shifts: dict[str, int] | None = None) -> pd.DataFrame:
        chosen = list(points) if points is not None else list(self.points)
        shifts = shifts or {}
        tables = [self.table(p, shifts.get(p, 0)) for p in chosen]
        table = pd.concat(tables, ignore_index=True)
        table["capture"] = table["capture"].astype("category")
        return table

    def scapy_packets(self, point: str, cooked: bool = False) -> list[object]:
        """The point's packets as scapy frames: Ethernet, or Linux cooked v2 with the direction set."""
        from scapy.layers.inet import IP
        from scapy.layers.l2 import ARP as ScapyARP
        from scapy.layers.l2 import CookedLinuxV2

        skew = self.clock_skew_ns.get(point, 0)
        out = []
        for t, packet, iface in self.entries(point):
            built = packet.scapy()
            if cooked:
                outgoing = iface != "in0"
                inner = built[IP] if built.haslayer(IP) else built[ScapyARP]  # type: ignore[attr-defined]
                ethertype = 0x0800 if built.haslayer(IP) else 0x0806  # type: ignore[attr-defined]
                built = CookedLinuxV2(proto=ethertype, ifindex=2 if outgoing else 3, lladdrtype=1,
                                      pkttype=4 if outgoing else 0, lladdrlen=6,
                                      src=b"\x02\x00\x00\x00\x00\x01\x00\x00") / inner  # fmt: skip
            built.time = (t + skew) / 1e9  # type: ignore[attr-defined]
            out.append(built)
        return out

    def write_pcaps(self, directory: Path, points: Iterable[str] | None = None, cooked: bool = False) -> list[str]:
        """One pcap per point (``NAME=PATH`` arguments for ``analyze``)."""
        from scapy.utils import wrpcap

        arguments = []
        for point in points if points is not None else self.points:
            path = directory / f"{point}.pcap"
            wrpcap(str(path), self.scapy_packets(point, cooked), linktype=276 if cooked else 1)
            arguments.append(f"{point}={path}")
        return arguments


# --- routes of the incident's topology -------------------------------------------------------------


def to_pod(client_port: int, via_snat: bool = False) -> list[Hop]:
    """Client → router → NLB (DNAT to the NodePort) → node-a (DNAT to the pod) → node-b → pod."""
    node_a_rewrite: dict[str, object] = {"dst": POD, "dport": 80}
    if via_snat:
        node_a_rewrite["src"] = NODE_A
        node_a_rewrite["sport"] = client_port + 1000
    return [
        Hop("client"),
        Hop(None, 2 * MS),
        Hop("nlb", 1 * MS, rewrite={"dst": NODE_A, "dport": NODE_PORT}),
        Hop("node-a", 300_000, rewrite=node_a_rewrite),
        Hop("node-b", 200_000),
        Hop("pod", 50_000, last=True),
    ]


def back_through_nlb(client_port: int, via_snat: bool = False) -> list[Hop]:
    """The healthy return: pod → node-b → node-a (un-DNAT) → NLB (un-DNAT) → router → client."""
    node_a_rewrite: dict[str, object] = {"src": NODE_A, "sport": NODE_PORT}
    if via_snat:
        node_a_rewrite.update(dst=CLIENT, dport=client_port)
    return [
        Hop("pod"),
        Hop("node-b", 50_000),
        Hop("node-a", 200_000, rewrite=node_a_rewrite),
        Hop("nlb", 300_000, rewrite={"src": VIP, "sport": 80}),
        Hop(None, 1 * MS),
        Hop("client", 2 * MS, last=True),
    ]


def pod_to_natgw() -> list[Hop]:
    """The broken return: the pod's reply to the client address takes node-b's default route."""
    return [Hop("pod"), Hop("node-b", 50_000), Hop("natgw", 400_000, last=True)]


def natgw_to_pod() -> list[Hop]:
    return [Hop("natgw"), Hop("node-b", 400_000), Hop("pod", 50_000, last=True)]


SKEWS = {"client": 0, "nlb": 3 * MS, "node-a": -2 * MS, "node-b": 5 * MS, "pod": 5 * MS, "natgw": -7 * MS}
ALL_POINTS = ("client", "nlb", "node-a", "node-b", "pod", "natgw")
_ids = itertools.count(0x1000)


def _syn(port: int, isn: int, ip_id: int) -> Packet:
    return Packet(CLIENT, VIP, port, 80, flags=SYN, seq=isn, ack=0, mss=1460, wscale=7, sack_perm=True, ip_id=ip_id)


# --- scenarios ---------------------------------------------------------------------------------------


def incident(retries: int = 4) -> Scenario:
    """The NLB / NAT gateway incident: the NAT gateway resets the pod's SYN-ACK as the client."""
    sc = Scenario("incident", "asymmetric-return", ALL_POINTS, dict(SKEWS))
    port, isn = 38622, 1_000_000
    for attempt in range(retries):
        t = START_NS + attempt * 1000 * MS
        arrival = sc.send(t, _syn(port, isn, 0x4000 + attempt), to_pod(port))
        server_isn = 5_000_000 + attempt * 7919
        synack = Packet(POD, CLIENT, 80, port, flags=SYN | ACK, seq=server_isn, ack=isn + 1, mss=1460, wscale=7,
                        sack_perm=True, ip_id=0)  # fmt: skip
        at_natgw = sc.send(arrival + 100_000, synack, pod_to_natgw())
        reset = Packet(CLIENT, POD, port, 80, flags=RST, seq=isn + 1, ack=0, ip_id=0, win=0)
        sc.send(at_natgw + 20_000, reset, natgw_to_pod())
    sc.subsets = (
        ALL_POINTS,
        ("pod",),
        ("node-b", "pod"),
        ("client", "pod"),
        ("client", "node-b", "pod"),
        ("client", "nlb", "node-a", "node-b", "pod"),
        ("node-b", "natgw"),
    )
    return sc


def _handshake_and_data(
    sc: Scenario, t: int, port: int, isn: int, server_isn: int, exchanges: int, gap_ns: int = 50 * MS
) -> tuple[int, int, int, int]:
    """A healthy handshake and request/response exchanges; returns (time, client seq, server seq, ip id)."""
    ip_id = 0x2000 + port % 1000
    arrival = sc.send(t, _syn(port, isn, ip_id), to_pod(port))
    synack = Packet(POD, CLIENT, 80, port, flags=SYN | ACK, seq=server_isn, ack=isn + 1, mss=1460, wscale=7,
                    sack_perm=True, ip_id=0)  # fmt: skip
    t = sc.send(arrival + 100_000, synack, back_through_nlb(port))
    cseq, sseq = isn + 1, server_isn + 1
    server_id = 0x7000 + port % 1000
    ip_id += 1
    t = sc.send(t + 50_000, Packet(CLIENT, VIP, port, 80, flags=ACK, seq=cseq, ack=sseq, ip_id=ip_id), to_pod(port))
    for exchange in range(exchanges):
        request = f"GET /{exchange} HTTP/1.1\r\nHost: lab\r\n\r\n".encode()
        ip_id += 1
        t = sc.send(t + gap_ns, Packet(CLIENT, VIP, port, 80, flags=PSH | ACK, seq=cseq, ack=sseq,
                                       payload=request, ip_id=ip_id), to_pod(port))  # fmt: skip
        cseq += len(request)
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        server_id += 1
        t = sc.send(t + 200_000, Packet(POD, CLIENT, 80, port, flags=PSH | ACK, seq=sseq, ack=cseq,
                                        payload=response, ip_id=server_id), back_through_nlb(port))  # fmt: skip
        sseq += len(response)
        ip_id += 1
        t = sc.send(t + 50_000, Packet(CLIENT, VIP, port, 80, flags=ACK, seq=cseq, ack=sseq, ip_id=ip_id),
                    to_pod(port))  # fmt: skip
    return t, cseq, sseq, ip_id


def healthy(background: bool = True) -> Scenario:
    """Two clean connections (FIN teardown, and RST right after the FINs), DNS, ARP and another flow."""
    sc = Scenario("healthy", "healthy", ALL_POINTS, dict(SKEWS))
    t, cseq, sseq, ip_id = _handshake_and_data(sc, START_NS, 41000, 3_000_000, 9_000_000, exchanges=3)
    t = sc.send(t + 10 * MS, Packet(CLIENT, VIP, 41000, 80, flags=FIN | ACK, seq=cseq, ack=sseq, ip_id=ip_id + 1),
                to_pod(41000))  # fmt: skip
    t = sc.send(t + 100_000, Packet(POD, CLIENT, 80, 41000, flags=FIN | ACK, seq=sseq, ack=cseq + 1, ip_id=0x7100),
                back_through_nlb(41000))  # fmt: skip
    sc.send(t + 50_000, Packet(CLIENT, VIP, 41000, 80, flags=ACK, seq=cseq + 1, ack=sseq + 1, ip_id=ip_id + 2),
            to_pod(41000))  # fmt: skip
    # A second connection that ends the way some stacks do: FIN both ways, then a RST.
    t, cseq, sseq, ip_id = _handshake_and_data(sc, START_NS + 400 * MS, 41001, 3_500_000, 9_500_000, exchanges=1)
    t = sc.send(t + 5 * MS, Packet(POD, CLIENT, 80, 41001, flags=FIN | ACK, seq=sseq, ack=cseq, ip_id=0x7200),
                back_through_nlb(41001))  # fmt: skip
    t = sc.send(t + 50_000, Packet(CLIENT, VIP, 41001, 80, flags=FIN | ACK, seq=cseq, ack=sseq + 1, ip_id=ip_id + 1),
                to_pod(41001))  # fmt: skip
    sc.send(t + 50_000, Packet(CLIENT, VIP, 41001, 80, flags=RST | ACK, seq=cseq + 1, ack=sseq + 1,
                               ip_id=ip_id + 2), to_pod(41001))  # fmt: skip
    if background:
        add_background(sc, START_NS + 100 * MS)
    sc.subsets = (ALL_POINTS, ("client",), ("pod",), ("node-b", "pod"), ("client", "pod"))
    return sc


def add_background(sc: Scenario, t: int) -> None:
    """DNS from the pod to a resolver, ARP on node-b, and an unrelated healthy flow at the client."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03lab\x00\x00\x01\x00\x01"
    resolver = "198.18.0.2"
    sc.send(t, Packet(POD, resolver, 53000, 53, proto=UDP, payload=query, ip_id=0x5100),
            [Hop("pod"), Hop("node-b", 50_000), Hop(None, 200_000, last=True)])  # fmt: skip
    answer = query[:2] + b"\x81\x80" + query[4:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6\x12\x00\x01"
    sc.send(t + 1 * MS, Packet(resolver, POD, 53, 53000, proto=UDP, payload=answer, ip_id=0x6100, ttl=64),
            [Hop(None), Hop("node-b", 200_000), Hop("pod", 50_000, last=True)])  # fmt: skip
    sc.record("node-b", t + 3 * MS, Packet("", "", proto=ARP))
    other = "192.0.2.80"
    for k, (flags, src, dst, sp, dp, seq, ack) in enumerate(
        [
            (SYN, CLIENT, other, 50000, 443, 100, 0),
            (SYN | ACK, other, CLIENT, 443, 50000, 900, 101),
            (ACK, CLIENT, other, 50000, 443, 101, 901),
            (FIN | ACK, CLIENT, other, 50000, 443, 101, 901),
            (FIN | ACK, other, CLIENT, 443, 50000, 901, 102),
            (ACK, CLIENT, other, 50000, 443, 102, 902),
        ]
    ):
        ttl = 64 if src == CLIENT else 55
        sc.record("client", t + k * 5 * MS, Packet(src, dst, sp, dp, flags=flags, seq=seq, ack=ack, ttl=ttl,
                                                   ip_id=0x300 + k))  # fmt: skip


def port_closed() -> Scenario:
    """No listener on the pod: its kernel answers the SYN with RST+ACK (the return path is fixed by SNAT)."""
    sc = Scenario("port-closed", "port-closed", ALL_POINTS, dict(SKEWS))
    port, isn = 42000, 4_000_000
    arrival = sc.send(START_NS, _syn(port, isn, 0x2222), to_pod(port, via_snat=True))
    reset = Packet(POD, NODE_A, 80, port + 1000, flags=RST | ACK, seq=0, ack=isn + 1, ip_id=0, win=0)
    sc.send(arrival + 40_000, reset, back_through_nlb(port, via_snat=True))
    sc.subsets = (ALL_POINTS, ("client", "pod"), ("pod",), ("client", "node-a", "node-b", "pod"))
    return sc


def policy_reject() -> Scenario:
    """A firewall on node-a rejects the SYN with a RST that claims to come from the service."""
    sc = Scenario("policy-reject", "policy-reject", ALL_POINTS, dict(SKEWS))
    port, isn = 43000, 4_100_000
    route = to_pod(port)[:4]
    route[-1] = Hop("node-a", 300_000, last=True)
    arrival = sc.send(START_NS, _syn(port, isn, 0x2300), route)
    reset = Packet(NODE_A, CLIENT, NODE_PORT, port, flags=RST | ACK, seq=0, ack=isn + 1, ip_id=0, win=0)
    sc.send(arrival + 30_000, reset, [Hop("node-a"), Hop("nlb", 300_000, rewrite={"src": VIP, "sport": 80}),
                                      Hop(None, 1 * MS), Hop("client", 2 * MS, last=True)])  # fmt: skip
    sc.subsets = (ALL_POINTS, ("client", "pod"), ("client", "node-a", "node-b", "pod"), ("node-a", "pod"))
    return sc


def peer_reset() -> Scenario:
    """The pod's application aborts an established connection (SO_LINGER 0): a genuine RST."""
    sc = Scenario("peer-reset", "peer-reset", ALL_POINTS, dict(SKEWS))
    port = 44000
    t, cseq, sseq, _ = _handshake_and_data(sc, START_NS, port, 4_200_000, 8_200_000, exchanges=2)
    # Return path through node-a needs SNAT in reality; here the route models the fixed setup.
    sc.send(t + 5 * MS, Packet(POD, CLIENT, 80, port, flags=RST | ACK, seq=sseq, ack=cseq, ip_id=0x7300),
            back_through_nlb(port))  # fmt: skip
    sc.subsets = (ALL_POINTS, ("client",), ("pod",), ("client", "pod"))
    return sc


def idle_timeout() -> Scenario:
    """The NLB forgets an idle flow; the client's next request draws a RST from it, as the service."""
    sc = Scenario("idle-timeout", "idle-timeout", ALL_POINTS, dict(SKEWS))
    port = 45000
    t, cseq, sseq, ip_id = _handshake_and_data(sc, START_NS, port, 4_300_000, 8_300_000, exchanges=1)
    request = b"GET /late HTTP/1.1\r\nHost: lab\r\n\r\n"
    late = Packet(CLIENT, VIP, port, 80, flags=PSH | ACK, seq=cseq, ack=sseq, payload=request, ip_id=ip_id + 1)
    arrival = sc.send(t + 40_000 * MS, late, [*to_pod(port)[:3], Hop("nlb", 1 * MS, last=True)])
    reset = Packet(VIP, CLIENT, 80, port, flags=RST, seq=sseq, ack=0, ip_id=0, win=0)
    sc.send(arrival + 20_000, reset, [Hop("nlb"), Hop(None, 1 * MS), Hop("client", 2 * MS, last=True)])
    sc.subsets = (ALL_POINTS, ("client",), ("client", "pod"), ("client", "nlb"))
    return sc


def injected_reset() -> Scenario:
    """An on-path box races a RST as the server into a live transfer; the real data keeps coming."""
    sc = Scenario("injected-reset", "injected-reset", ALL_POINTS, dict(SKEWS))
    port = 46000
    t, cseq, sseq, ip_id = _handshake_and_data(sc, START_NS, port, 4_400_000, 8_400_000, exchanges=1)
    request = b"GET /big HTTP/1.1\r\nHost: lab\r\n\r\n"
    t = sc.send(t + 10 * MS, Packet(CLIENT, VIP, port, 80, flags=PSH | ACK, seq=cseq, ack=sseq, payload=request,
                                    ip_id=ip_id + 1), to_pod(port))  # fmt: skip
    cseq += len(request)
    # The injector sits one router away from the client and answers the request at once.
    sc.send(t - 3 * MS + 100_000, Packet(VIP, CLIENT, 80, port, flags=RST | ACK, seq=sseq, ack=cseq, ip_id=0x1,
                                         win=0, ttl=64),
            [Hop(None), Hop(None, 500_000), Hop("client", 500_000, last=True)])  # fmt: skip
    for k in range(3):
        chunk = bytes([65 + k]) * 1000
        arrival = sc.send(t + 200_000 + k * 100_000, Packet(POD, CLIENT, 80, port, flags=PSH | ACK, seq=sseq,
                                                            ack=cseq, payload=chunk, ip_id=0x7400 + k),
                          back_through_nlb(port))  # fmt: skip
        sseq += len(chunk)
        if k == 0:
            # The client's stack dropped the connection at the RST: it answers the real data with a bare RST.
            sc.send(arrival + 20_000, Packet(CLIENT, VIP, port, 80, flags=RST, seq=cseq, ack=0, ip_id=0, win=0),
                    to_pod(port))  # fmt: skip
    sc.subsets = (ALL_POINTS, ("client",), ("client", "pod"))
    return sc


def tuple_reuse() -> Scenario:
    """A new SYN on a 4-tuple the pod still holds: challenge ACK, the client's RST, then a new handshake."""
    sc = Scenario("tuple-reuse", "tuple-reuse", ALL_POINTS, dict(SKEWS))
    port = 47000
    t, cseq, sseq, _ = _handshake_and_data(sc, START_NS, port, 4_500_000, 8_500_000, exchanges=1)
    # The client lost the old connection without a FIN (rebooted, or its NAT reused the port).
    new_isn = 77_000_000
    t = START_NS + 5000 * MS
    arrival = sc.send(t, _syn(port, new_isn, 0x2600), to_pod(port))
    challenge = Packet(POD, CLIENT, 80, port, flags=ACK, seq=sseq, ack=cseq, ip_id=0x7500)
    t = sc.send(arrival + 30_000, challenge, back_through_nlb(port))
    reset = Packet(CLIENT, VIP, port, 80, flags=RST, seq=cseq, ack=0, ip_id=0, win=0)
    sc.send(t + 20_000, reset, to_pod(port))
    arrival = sc.send(t + 1000 * MS, _syn(port, new_isn, 0x2601), to_pod(port))
    synack = Packet(POD, CLIENT, 80, port, flags=SYN | ACK, seq=12_345_678, ack=new_isn + 1, mss=1460, wscale=7,
                    sack_perm=True, ip_id=0)  # fmt: skip
    t = sc.send(arrival + 100_000, synack, back_through_nlb(port))
    sc.send(t + 50_000, Packet(CLIENT, VIP, port, 80, flags=ACK, seq=new_isn + 1, ack=12_345_679, ip_id=0x2602),
            to_pod(port))  # fmt: skip
    sc.subsets = (ALL_POINTS, ("client",), ("pod",), ("client", "pod"))
    return sc


def silent_drop() -> Scenario:
    """node-a drops the SYN (a DROP rule): no answer, no RST, the client retries."""
    sc = Scenario("silent-drop", "silent-drop", ALL_POINTS, dict(SKEWS))
    port, isn = 48000, 4_600_000
    for attempt in range(3):
        route = to_pod(port)[:4]
        route[-1] = Hop("node-a", 300_000, last=True)
        sc.send(START_NS + attempt * 1000 * MS, _syn(port, isn, 0x2700 + attempt), route)
    sc.subsets = (ALL_POINTS, ("client",), ("client", "pod"), ("client", "node-a", "pod"))
    return sc


def udp_asymmetric(retries: int = 3) -> Scenario:
    """UDP through the TCP_UDP listener: the pod's answer leaves by the NAT gateway and comes back re-sourced."""
    sc = Scenario("udp-asymmetric", "asymmetric-return", ALL_POINTS, dict(SKEWS))
    port = 51000
    for attempt in range(retries):
        t = START_NS + attempt * 1000 * MS
        query = b"\xab\xcd" + bytes([attempt]) + b"\x00query-lab"
        request = Packet(CLIENT, VIP, port, 80, proto=UDP, payload=query, ip_id=0x4100 + attempt)
        arrival = sc.send(t, request, to_pod(port))
        answer = Packet(POD, CLIENT, 80, port, proto=UDP, payload=b"answer" + query, ip_id=0x8100 + attempt)
        route = [
            Hop("pod"),
            Hop("node-b", 50_000),
            Hop("natgw", 400_000, rewrite={"src": NATGW_PUBLIC, "sport": 61000 + attempt}),
            Hop(None, 1 * MS),
            Hop("client", 2 * MS, last=True),
        ]
        t = sc.send(arrival + 100_000, answer, route)
        unreachable = Packet(CLIENT, NATGW_PUBLIC, proto=ICMP, icmp_type=3, icmp_code=3, ip_id=0x4200 + attempt,
                             inner=(NATGW_PUBLIC, CLIENT, UDP, 61000 + attempt, port))  # fmt: skip
        sc.record("client", t + 30_000, unreachable)
    sc.subsets = (ALL_POINTS, ("client",), ("client", "pod"), ("pod", "natgw"))
    return sc


def udp_silent_drop() -> Scenario:
    """UDP requests reach the pod; its answers vanish after node-b with no other trace."""
    sc = Scenario("udp-silent-drop", "silent-drop", ALL_POINTS, dict(SKEWS))
    port = 52000
    for attempt in range(3):
        t = START_NS + attempt * 1000 * MS
        query = b"\x11\x22\x00query"  # a retry resends the same request
        arrival = sc.send(t, Packet(CLIENT, VIP, port, 80, proto=UDP, payload=query, ip_id=0x4300 + attempt),
                          to_pod(port))  # fmt: skip
        answer = Packet(POD, CLIENT, 80, port, proto=UDP, payload=b"re" + query, ip_id=0x8300 + attempt)
        sc.send(arrival + 100_000, answer, [Hop("pod"), Hop("node-b", 50_000, last=True)])
    sc.subsets = (ALL_POINTS, ("client",), ("client", "pod"))
    return sc


def udp_port_closed() -> Scenario:
    """UDP to a port nothing listens on at the pod: its kernel answers each request with ICMP port unreachable.

    node-a SNATs (kube-proxy), so the error comes back through node-a and the
    NLB, which translate the quoted request back as well as the outer header.
    """
    sc = Scenario("udp-port-closed", "port-closed", ALL_POINTS, dict(SKEWS))
    port = 53000
    for attempt in range(3):
        t = START_NS + attempt * 1000 * MS
        request = Packet(CLIENT, VIP, port, 80, proto=UDP, payload=b"\x33\x44\x00query", ip_id=0x4500 + attempt)
        arrival = sc.send(t, request, to_pod(port, via_snat=True))
        refusal = Packet(POD, NODE_A, proto=ICMP, icmp_type=3, icmp_code=3, ip_id=0x8500 + attempt,
                         inner=(NODE_A, POD, UDP, port + 1000, 80))  # fmt: skip
        route = [
            Hop("pod"),
            Hop("node-b", 50_000),
            Hop(
                "node-a",
                200_000,
                rewrite={"src": NODE_A, "dst": CLIENT, "inner": (CLIENT, NODE_A, UDP, port, NODE_PORT)},
            ),
            Hop("nlb", 300_000, rewrite={"src": VIP, "inner": (CLIENT, VIP, UDP, port, 80)}),
            Hop(None, 1 * MS),
            Hop("client", 2 * MS, last=True),
        ]
        sc.send(arrival + 60_000, refusal, route)
    sc.subsets = (ALL_POINTS, ("client",), ("pod",), ("client", "pod"), ("node-a",), ("nlb",))
    return sc


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "incident": incident,
    "healthy": healthy,
    "port-closed": port_closed,
    "policy-reject": policy_reject,
    "peer-reset": peer_reset,
    "idle-timeout": idle_timeout,
    "injected-reset": injected_reset,
    "tuple-reuse": tuple_reuse,
    "silent-drop": silent_drop,
    "udp-asymmetric": udp_asymmetric,
    "udp-silent-drop": udp_silent_drop,
    "udp-port-closed": udp_port_closed,
}


def shifted(points: Sequence[str], seed: int = 7) -> dict[str, int]:
    """Clock shifts of a few seconds per point (deterministic)."""
    rng = np.random.default_rng(seed)
    return {p: int(rng.integers(-5_000, 5_000)) * MS for p in points}
