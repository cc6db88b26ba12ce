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

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.correlate.paths import tunnel_order
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
    point are one pass. Inside a tunnel the carried packet's TTL stays the
    same from box to box and the outer header's goes down instead: copies of
    one TTL that all came tunnelled are ordered by their outer TTL, the rule
    the correlation orders its paths by (``correlate.paths.tunnel_order``).
    Falls back to the sightings' order when the copies say nothing more.
    """
    if not any(sight.forwarded for sight in packet.sights):
        return packet.points  # no point sent it on, so none can have seen it twice
    copies = _copies(conn, packet)
    if len(copies) <= len(packet.sights):
        return packet.points
    ttl = copies["ttl"].to_numpy().astype(np.int64)
    outer = copies["outer_ttl"].to_numpy().astype(np.int64)
    tunnel = tunnel_order(ttl, outer)
    capture = copies["capture"].astype(str).to_numpy()
    ts_ref = copies["ts_ref"].to_numpy().astype(np.int64)
    ts = copies["ts_ns"].to_numpy()
    direction = copies["direction"].astype(str).to_numpy()
    keyed = []
    for name in dict.fromkeys(capture.tolist()):
        rows = np.flatnonzero(capture == name)
        rows = rows[np.argsort(ts[rows], kind="stable")]
        first_point = name == packet.points[0]
        ways = _ways([(int(ttl[r]), int(outer[r])) for r in rows], direction[rows].tolist(), first_point)
        for r, out in zip(rows.tolist(), ways, strict=True):
            keyed.append((-int(ttl[r]), -int(tunnel[r]), 0 if out else 1, int(ts_ref[r]), name))
    keyed.sort()
    points: list[str] = []
    for *_, name in keyed:
        if not points or points[-1] != name:
            points.append(name)
    if points[0] != packet.points[0] or set(points) != set(packet.points):
        return packet.points
    return tuple(points)


def _ways(ttls: list[tuple[int, int]], directions: list[str], first_point: bool) -> list[bool]:
    """Whether each of one point's copies of a packet is a way out, the copies in that point's time order.

    ``ttls`` are (TTL, outer TTL or -1 when not tunnelled). The link type says
    so where it records a direction (Linux cooked, pcapng flags); otherwise a
    copy one hop below the way in before it is its way out (one TTL less, or
    inside a tunnel the same TTL under an outer TTL one less), and a lone copy
    is a way out only where the packet starts (its sender) with an initial TTL.
    """
    if all(d in ("in", "out") for d in directions):
        return [d == "out" for d in directions]
    if len(ttls) == 1:
        return [first_point and hops(ttls[0][0]) == 0]
    ways = []
    way_in: tuple[int, int] | None = None
    for ttl, outer in ttls:
        out = way_in is not None and _one_hop_on(way_in, (ttl, outer))
        ways.append(out)
        way_in = None if out else (ttl, outer)
    return ways


def _one_hop_on(way_in: tuple[int, int], copy: tuple[int, int]) -> bool:
    """``copy`` is ``way_in`` sent on by one router: its TTL one less, or in a tunnel the outer TTL one less."""
    (ttl_in, outer_in), (ttl, outer) = way_in, copy
    if ttl == ttl_in - 1:
        return True
    return ttl == ttl_in and outer_in >= 0 and outer == outer_in - 1
