"""Single facts about packets of one connection, the building blocks of a verdict.

Each function answers one question (how far did this packet travel, which
point sent it, which capture is the client's own) from the rows of a
``Connection``; the cause modules combine the answers.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diag.capture.addresses import endpoint_text
from diag.capture.proto import ACK, FIN, RST, SYN
from diag.diagnose.connections import Connection
from diag.report.facts import Fact

# Initial TTLs in common use (Linux/macOS 64, Windows 128, network gear 255; 32 is rare).
INITIAL_TTLS = (32, 64, 128, 255)


def initial_ttl(ttl: int) -> int:
    """The smallest common initial TTL at or above ``ttl``."""
    for initial in INITIAL_TTLS:  # a plain loop: asked twice for every RST of a busy capture's findings
        if ttl <= initial:
            return initial
    return 255


def hops(ttl: int) -> int:
    """Routers passed since the sender, assuming a common initial TTL."""
    return initial_ttl(ttl) - ttl


# Sight and Seen are made by the ten thousand for a busy capture's findings (a few packets each, a sighting per
# point), and a frozen dataclass's __init__ costs about six times a plain one's: they are plain, with slots, and
# nothing changes them once made.
@dataclass(slots=True)
class Sight:
    """One capture point's first copy of a packet."""

    capture: str
    index: int  # 0-based position in its file; Wireshark's frame number is index + 1
    ts_ns: int
    ts_ref: int
    ttl: int
    ip_id: int
    forwarded: bool  # the same capture also shows it leaving with a lower TTL
    incoming: bool  # the link type says it was received here (Linux cooked, pcapng flags)
    src: str  # "addr:port" on arrival at this point
    dst: str
    sources: tuple[str, ...]  # every source seen on the copies here (a box's rewrite shows as two)
    file: int = 0  # which file of the capture point (its position in CaptureInfo.files)

    @property
    def src_addr(self) -> str:
        return self.src.rsplit(":", 1)[0].strip("[]") if ":" in self.src else self.src

    @property
    def dst_addr(self) -> str:
        return self.dst.rsplit(":", 1)[0].strip("[]") if ":" in self.dst else self.dst


@dataclass(slots=True)
class Seen:
    """A distinct packet of the connection and where it was seen, in path order."""

    pkt: int
    from_orig: bool
    flags: int
    seq: int
    ack: int
    payload_len: int
    digest: int  # payload digest: the same request sent again has the same one
    sights: tuple[Sight, ...]

    @property
    def first(self) -> Sight:
        return self.sights[0]

    @property
    def points(self) -> tuple[str, ...]:
        return tuple(s.capture for s in self.sights)

    def at(self, capture: str) -> Sight | None:
        return next((s for s in self.sights if s.capture == capture), None)

    @property
    def ts_ref(self) -> int:
        return self.first.ts_ref

    def has(self, flag: int) -> bool:
        return self.flags >= 0 and bool(self.flags & flag)

    @property
    def is_pure_syn(self) -> bool:
        return self.flags >= 0 and (self.flags & (SYN | ACK | RST)) == SYN

    @property
    def is_synack(self) -> bool:
        return self.flags >= 0 and (self.flags & (SYN | ACK | RST)) == SYN | ACK

    @property
    def is_rst(self) -> bool:
        return self.has(RST)

    @property
    def is_fin(self) -> bool:
        return self.has(FIN)

    @property
    def is_pure_ack(self) -> bool:
        return self.flags == ACK and self.payload_len <= 0


_SEEN_COLUMNS = (
    "pkt", "capture", "index", "ts_ns", "ts_ref", "ttl", "ip_id", "direction", "src", "sport", "dst", "dport",
    "from_orig", "tcp_flags", "seq", "ack", "payload_len", "payload_digest", "file",
)  # fmt: skip
_TEXT_COLUMNS = ("capture", "direction", "src", "dst")


def distinct_packets(conn: Connection) -> list[Seen]:
    """The connection's packets, one entry per distinct packet, in order of first sighting.

    Plain Python over the connection's rows, read from the shared connection
    table in the order it keeps for this (by packet, hop, reference time):
    no sorting or copying per connection.
    """
    table = conn.table
    chosen = table.by_packet[conn.start : conn.stop]
    names = table.names
    values = []
    for column in _SEEN_COLUMNS:
        picked = table.columns[column][chosen].tolist()
        values.append([names[code] for code in picked] if column in _TEXT_COLUMNS else picked)
    by_packet: dict[int, dict[str, list[tuple[Any, ...]]]] = {}
    for record in zip(*values, strict=True):
        by_packet.setdefault(record[0], {}).setdefault(record[1], []).append(record)
    seen = []
    for pkt, captures in by_packet.items():
        sights = []
        for capture, copies in captures.items():
            head = copies[0]
            ttls = [c[5] for c in copies]
            sights.append(
                Sight(
                    capture=capture,
                    index=head[2],
                    ts_ns=head[3],
                    ts_ref=head[4],
                    ttl=max(ttls),
                    ip_id=head[6],
                    forwarded=min(ttls) < max(ttls),
                    incoming=head[7] == "in",
                    src=endpoint_text(head[8], head[9]),
                    dst=endpoint_text(head[10], head[11]),
                    sources=tuple(dict.fromkeys(endpoint_text(c[8], c[9]) for c in copies)),
                    file=int(head[18]),
                )
            )
        head = next(iter(captures.values()))[0]
        seen.append(
            Seen(
                pkt=pkt,
                from_orig=head[12],
                flags=head[13],
                seq=head[14],
                ack=head[15],
                payload_len=head[16],
                digest=head[17],
                sights=tuple(sights),
            )
        )
    seen.sort(key=lambda p: (p.ts_ref, p.pkt))
    return seen


def generated_at(packet: Seen) -> str | None:
    """The capture point that sent this packet, when it was captured there.

    The first point on the path made it if the TTL there is an initial TTL,
    the link type does not say it was received there, and that point does not
    also show it leaving with a lower TTL (a box that forwards a packet shows
    both copies; the sender shows one).
    """
    first = packet.first
    if hops(first.ttl) == 0 and not first.forwarded and not first.incoming:
        return first.capture
    return None


def arrived_from_neighbour(packet: Seen) -> str | None:
    """The capture point a packet reached straight from the device that made it, when received there.

    An initial TTL where the link type says the packet was received means no
    router lay between: a device on that point's link made it.
    """
    first = packet.first
    if hops(first.ttl) == 0 and not first.forwarded and first.incoming:
        return first.capture
    return None


def endpoint_capture(packets: list[Seen], from_orig: bool) -> str | None:
    """The capture taken on the host of one side (its packets start there with an initial TTL)."""
    votes: Counter[str] = Counter()
    for packet in packets:
        if packet.from_orig == from_orig and not packet.is_rst:
            maker = generated_at(packet)
            if maker:
                votes[maker] += 1
    return votes.most_common(1)[0][0] if votes else None


def usual_hops(packets: list[Seen], from_orig: bool, capture: str) -> int | None:
    """How many routers one side's ordinary (non-RST) packets have passed when seen at ``capture``."""
    counts: Counter[int] = Counter()
    for packet in packets:
        if packet.from_orig == from_orig and not packet.is_rst:
            sight = packet.at(capture)
            if sight:
                counts[hops(sight.ttl)] += 1
    return counts.most_common(1)[0][0] if counts else None


def usual_ttl(packets: list[Seen], from_orig: bool, capture: str) -> int | None:
    counts: Counter[int] = Counter()
    for packet in packets:
        if packet.from_orig == from_orig and not packet.is_rst:
            sight = packet.at(capture)
            if sight:
                counts[sight.ttl] += 1
    return counts.most_common(1)[0][0] if counts else None


def ttl_mismatch(packets: list[Seen], suspect: Seen) -> list[Fact]:
    """``ttl-hops`` facts where the suspect's TTL says another distance than its claimed sender's packets."""
    facts = []
    side = "client" if suspect.from_orig else "server"
    for sight in suspect.sights:
        usual = usual_ttl(packets, suspect.from_orig, sight.capture)
        if usual is None:
            continue
        if hops(usual) != hops(sight.ttl):
            facts.append(
                Fact.of(
                    "ttl-hops",
                    point=sight.capture,
                    side=side,
                    rst_ttl=sight.ttl,
                    rst_hops=hops(sight.ttl),
                    claimed_ttl=usual,
                    claimed_hops=hops(usual),
                )
            )
    return facts


def ttl_consistent(packets: list[Seen], suspect: Seen) -> bool:
    """Some point saw the suspect and the claimed sender's packets at the same distance."""
    for sight in suspect.sights:
        usual = usual_hops(packets, suspect.from_orig, sight.capture)
        if usual is not None and usual == hops(sight.ttl):
            return True
    return False


def shared_subnet(a: str, b: str) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) both addresses are in, the usual subnet of one link; None if they differ.

    Hosts of one subnet reach each other without a router, so a packet one of
    them sends arrives at the other with its initial TTL.
    """
    try:
        first, second = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return None
    if first.version != second.version:
        return None
    network = ipaddress.ip_network(f"{first}/{24 if first.version == 4 else 64}", strict=False)
    return str(network) if second in network else None


def covers(spans: dict[str, tuple[int, int]], capture: str, ts_ref: int) -> bool:
    """The capture was running at that (reference-clock) time."""
    span = spans.get(capture)
    return span is not None and span[0] <= ts_ref <= span[1]


def after_at(packets: list[Seen], capture: str, since: Sight, predicate: Callable[[Seen], bool]) -> list[Seen]:
    """Packets seen at ``capture`` after ``since`` (same clock, no correction needed) matching ``predicate``."""
    chosen = []
    for packet in packets:
        sight = packet.at(capture)
        if sight and sight.ts_ns > since.ts_ns and predicate(packet):
            chosen.append(packet)
    return chosen


def ms(ns: int | float) -> str:
    """A duration for people: microseconds below a millisecond."""
    return f"{ns / 1e3:.0f} µs" if abs(ns) < 1_000_000 else f"{ns / 1e6:.1f} ms"


def where(sight: Sight) -> str:
    """'pod frame 13' style packet reference: Wireshark's 1-based frame number, which is what people search for."""
    return f"{sight.capture} frame {sight.index + 1}"
