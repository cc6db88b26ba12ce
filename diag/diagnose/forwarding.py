"""What a capture point shows of its own forwarding, and the path a packet took through the points.

A box that forwards shows each packet it passes twice: arriving, and leaving
with one TTL less. A NAT box shows the rewrite between the two copies, so one
capture on a forwarding node says where the packet went next (DNAT) and
whether the answer can find its way back (the source kept or replaced).

A packet can pass one point twice (node-a -> vpc-router -> node-b: the
router routes it in, node-a sends it back out through the router). The
correlation keeps one sighting per point; the copies' TTLs still order every
pass, so ``path_points`` lists such a point twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.diagnose.connections import Connection
from diag.diagnose.signals import Seen, hops


@dataclass(frozen=True)
class Handoff:
    """One packet's way into and out of a forwarding capture point, as the copies there show it."""

    capture: str
    arrived_src: str  # addresses and ports as "addr:port"
    arrived_dst: str
    left_src: str
    left_dst: str
    ttl_in: int
    ttl_out: int

    @property
    def dnat(self) -> bool:
        return self.arrived_dst != self.left_dst

    @property
    def source_kept(self) -> bool:
        """The sender's address goes on unchanged (no SNAT): the answer goes to it, not back to this box."""
        return _address(self.arrived_src) == _address(self.left_src)

    @property
    def arrived_src_addr(self) -> str:
        return _address(self.arrived_src)

    @property
    def left_dst_addr(self) -> str:
        return _address(self.left_dst)


def _address(endpoint: str) -> str:
    return endpoint.rsplit(":", 1)[0].strip("[]")


def _copies(conn: Connection, packet: Seen, capture: str | None = None) -> pd.DataFrame:
    rows = conn.rows
    chosen = rows["pkt"].to_numpy() == packet.pkt
    if capture is not None:
        chosen &= rows["capture"].astype(str).to_numpy() == capture
    copies: pd.DataFrame = rows[chosen]
    return copies


def handoff(conn: Connection, packet: Seen, capture: str) -> Handoff | None:
    """How ``capture`` passed ``packet`` on; None when it shows no copy leaving with a lower TTL."""
    sight = packet.at(capture)
    if sight is None or not sight.forwarded:
        return None  # decided from the sighting alone: the connection's rows are only read for a forwarder
    copies = _copies(conn, packet, capture)
    if len(copies) < 2:
        return None
    ttl = copies["ttl"].to_numpy()
    if ttl.min() == ttl.max():
        return None  # the same packet twice at one TTL (two taps on one link): not forwarded here
    ordered = copies.sort_values("ts_ns", kind="stable")
    arrived = ordered[ordered["ttl"] == ttl.max()].iloc[0]
    left = ordered[ordered["ttl"] == ttl.min()].iloc[-1]
    return Handoff(
        capture=capture,
        arrived_src=endpoint_text(str(arrived["src"]), int(arrived["sport"])),
        arrived_dst=endpoint_text(str(arrived["dst"]), int(arrived["dport"])),
        left_src=endpoint_text(str(left["src"]), int(left["sport"])),
        left_dst=endpoint_text(str(left["dst"]), int(left["dport"])),
        ttl_in=int(ttl.max()),
        ttl_out=int(ttl.min()),
    )


def path_points(conn: Connection, packet: Seen) -> tuple[str, ...]:
    """The points ``packet`` passed, in order, a point passed twice listed twice.

    Every copy at every point is a way in or a way out of that point. The TTL
    only goes down along the way, and a box's way out has the same TTL as the
    next box's way in, so ordering every copy by TTL, ways out first, gives
    the passes in order with no clock involved; consecutive copies at one
    point are one pass. Falls back to the sightings' order when the copies
    say nothing more.
    """
    if not any(sight.forwarded for sight in packet.sights):
        return packet.points  # no point sent it on, so none can have seen it twice
    copies = _copies(conn, packet)
    if len(copies) <= len(packet.sights):
        return packet.points
    keyed = []
    for capture, group in copies.groupby(copies["capture"].astype(str), sort=False):
        group = group.sort_values("ts_ns", kind="stable")
        first_point = str(capture) == packet.points[0]
        ways = _ways(group["ttl"].astype(int).tolist(), group["direction"].astype(str).tolist(), first_point)
        for (ttl, out), ts_ref in zip(ways, group["ts_ref"].astype(int).tolist(), strict=True):
            keyed.append((-ttl, 0 if out else 1, ts_ref, str(capture)))
    keyed.sort()
    points: list[str] = []
    for *_, capture in keyed:
        if not points or points[-1] != capture:
            points.append(capture)
    if points[0] != packet.points[0] or set(points) != set(packet.points):
        return packet.points
    return tuple(points)


def _ways(ttls: list[int], directions: list[str], first_point: bool) -> list[tuple[int, bool]]:
    """(TTL, is a way out) for one point's copies of a packet, in that point's time order.

    The link type says so where it records a direction (Linux cooked,
    pcapng flags); otherwise a copy one TTL below the way in before it is its
    way out, and a lone copy is a way out only where the packet starts (its
    sender) with an initial TTL.
    """
    if all(d in ("in", "out") for d in directions):
        return [(ttl, d == "out") for ttl, d in zip(ttls, directions, strict=True)]
    if len(ttls) == 1:
        return [(ttls[0], first_point and hops(ttls[0]) == 0)]
    ways = []
    way_in: int | None = None
    for ttl in ttls:
        out = way_in is not None and ttl == way_in - 1
        ways.append((ttl, out))
        way_in = None if out else ttl
    return ways
