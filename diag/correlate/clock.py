"""Clock offsets between capture points, from packets seen at both.

For two points A and B and the offset θ = o_B − o_A (what B's clock needs
added, relative to A's): a packet that passed A before B proves
``ts_A + o_A < ts_B + o_B``, a lower bound on θ; one that passed B first
gives an upper bound. As in NTP, the estimate is the middle of the tightest
interval and the uncertainty half its width. With packets in one direction
only, the estimate assumes the fastest packet took no time (the minimum-delay
estimate) and carries ``ONE_WAY_UNCERTAINTY_S``.

Which point a packet passed first is decided without clocks where possible:
the TTL only goes down along a path (the caller passes a rank built from the
TTL on arrival and, to break ties on one link, the TTL on leaving). When the TTL is equal at both points
(same link, or a network that does not decrement it), a flow's two directions
are paired: the direction whose packets show the larger ``ts_B − ts_A`` is the
one going A→B. Pairwise estimates are chained from the reference capture
along the most certain links (fewest accumulated uncertainty).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ClockOffset:
    """What to add to a capture's timestamps to put it on the reference clock."""

    offset_s: float
    uncertainty_s: float


# Assumed bound on a one-way delay when only one direction was seen.
ONE_WAY_UNCERTAINTY_S = 0.01
# Timestamps are at best nanoseconds apart; never claim better than this.
MIN_UNCERTAINTY_S = 1e-6


def _equal_ttl_directions(d: np.ndarray, endpoints: np.ndarray) -> np.ndarray:
    """+1 (A first), -1 (B first) or 0 (unknown) for packets with equal TTL at A and B.

    Packets are grouped by their direction as seen at A (``endpoints``: src,
    sport, dst, dport); a group and its reverse are compared: the one with the
    larger ``d`` travelled A→B.
    """
    frame = pd.DataFrame(endpoints, columns=["src", "sport", "dst", "dport"])
    frame["d"] = d
    medians = frame.groupby(["src", "sport", "dst", "dport"])["d"].median()
    mine = medians.reindex(pd.MultiIndex.from_frame(frame[["src", "sport", "dst", "dport"]])).to_numpy()
    reverse = pd.MultiIndex.from_arrays([frame["dst"], frame["dport"], frame["src"], frame["sport"]])
    theirs = medians.reindex(reverse).to_numpy()
    result = np.zeros(len(d), dtype=np.int8)
    known = ~np.isnan(theirs) & (mine != theirs)
    result[known] = np.where(mine[known] > theirs[known], 1, -1)
    return result


def pair_offset(d_ns: np.ndarray, a_first: np.ndarray, b_first: np.ndarray) -> tuple[float, float, str] | None:
    """θ = o_B − o_A in seconds, its uncertainty, and a note; None without usable packets.

    ``d_ns`` is ``ts_B − ts_A`` per packet; ``a_first``/``b_first`` mark which
    point the packet passed first.
    """
    lo_ns = int(np.max(-d_ns[a_first])) if a_first.any() else None
    hi_ns = int(np.min(-d_ns[b_first])) if b_first.any() else None
    return offset_from_bounds(lo_ns, hi_ns)


def offset_from_bounds(lo_ns: int | None, hi_ns: int | None) -> tuple[float, float, str] | None:
    """``pair_offset`` from its two bounds alone: the largest ``−d`` of the packets that passed A first
    (``lo_ns``) and the smallest of those that passed B first (``hi_ns``); None for a side without packets.

    The bounds are a maximum and a minimum, so they can be taken over parts of the packets apart and
    combined (``diag.clocks`` does, for a correlation cut into partitions on a cluster).
    """
    if lo_ns is None and hi_ns is None:
        return None
    lo = float(lo_ns) / 1e9 if lo_ns is not None else None
    hi = float(hi_ns) / 1e9 if hi_ns is not None else None
    if lo is not None and hi is not None:
        middle = (lo + hi) / 2
        half = abs(hi - lo) / 2
        note = "both directions" if hi >= lo else "both directions, bounds cross (jitter or a clock step)"
        return middle, max(half, MIN_UNCERTAINTY_S), note
    if lo is not None:
        return lo, ONE_WAY_UNCERTAINTY_S, "one direction only: minimum-delay estimate"
    assert hi is not None
    return hi, ONE_WAY_UNCERTAINTY_S, "one direction only: minimum-delay estimate"


def estimate_offsets(
    match: np.ndarray,
    capture: np.ndarray,
    ts_ns: np.ndarray,
    ttl: np.ndarray,
    endpoints: Callable[[np.ndarray], np.ndarray],
    n_captures: int,
    reference: int,
    order_hint: Sequence[int] | None = None,
) -> tuple[dict[int, ClockOffset], dict[int, str]]:
    """Offsets of every capture reachable from ``reference`` through matched packets.

    Inputs are one entry per sighting of a matched packet: its match id,
    capture code, time and TTL; ``endpoints`` gives, for an array of entry
    numbers, their (src, sport, dst, dport) codes at that point as an n x 4
    array (asked only for packets with an equal TTL at two points, which
    spares building it for every entry). Returns offsets keyed by capture code and a note per capture
    saying how its offset was obtained.
    """
    edges: dict[int, list[tuple[int, float, float, str]]] = {c: [] for c in range(n_captures)}
    for a, b, d, direction in pair_directions(match, capture, ts_ns, ttl, endpoints, n_captures):
        if not (direction != 0).any():
            direction[:] = _fallback_direction(a, b, d, order_hint)
        estimate = pair_offset(d, direction > 0, direction < 0)
        if estimate is None:
            continue
        theta, uncertainty, note = estimate
        edges[a].append((b, theta, uncertainty, note))
        edges[b].append((a, -theta, uncertainty, note))
    return chain_offsets(edges, reference)


def pair_directions(
    match: np.ndarray,
    capture: np.ndarray,
    ts_ns: np.ndarray,
    ttl: np.ndarray,
    endpoints: Callable[[np.ndarray], np.ndarray],
    n_captures: int,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """For each pair of captures a < b with matched packets at both (inputs as ``estimate_offsets``'s):
    ``(a, b, d, direction)``, ``d = ts_B − ts_A`` per packet and its direction from the TTLs (+1: A first,
    -1: B first, 0: not told by the packets; the caller decides those when no packet tells)."""
    if len(match) == 0:
        return
    n_match = int(match.max()) + 1
    present = np.zeros((n_captures, n_match), dtype=bool)
    wide_ts = np.zeros((n_captures, n_match), dtype=np.int64)
    wide_ttl = np.zeros((n_captures, n_match), dtype=np.int64)
    wide_entry = np.zeros((n_captures, n_match), dtype=np.int64)
    present[capture, match] = True
    wide_ts[capture, match] = ts_ns
    wide_ttl[capture, match] = ttl
    wide_entry[capture, match] = np.arange(len(match))
    for a in range(n_captures):
        for b in range(a + 1, n_captures):
            both = present[a] & present[b]
            if not both.any():
                continue
            d = wide_ts[b, both] - wide_ts[a, both]
            ttl_a, ttl_b = wide_ttl[a, both], wide_ttl[b, both]
            direction = np.sign(ttl_a - ttl_b).astype(np.int8)
            equal = direction == 0
            if equal.any():
                direction[equal] = _equal_ttl_directions(d[equal], endpoints(wide_entry[a, both][equal]))
            yield a, b, d, direction


def chain_offsets(
    edges: dict[int, list[tuple[int, float, float, str]]], reference: int
) -> tuple[dict[int, ClockOffset], dict[int, str]]:
    """Offsets of every capture reachable from ``reference`` along the most certain chain of pairwise
    estimates (Dijkstra on summed uncertainty); ``edges[a]`` lists ``(b, θ = o_B − o_A, uncertainty, note)``."""
    offsets: dict[int, ClockOffset] = {reference: ClockOffset(0.0, 0.0)}
    notes: dict[int, str] = {reference: "reference clock"}
    best: dict[int, float] = {reference: 0.0}
    queue: list[tuple[float, int]] = [(0.0, reference)]
    while queue:
        spent, node = heapq.heappop(queue)
        if spent > best.get(node, float("inf")):
            continue
        for other, theta, uncertainty, note in edges.get(node, []):
            total = spent + uncertainty
            if total < best.get(other, float("inf")):
                best[other] = total
                offsets[other] = ClockOffset(offsets[node].offset_s + theta, total)
                notes[other] = note
                heapq.heappush(queue, (total, other))
    return offsets, notes


def _fallback_direction(a: int, b: int, d: np.ndarray, order_hint: Sequence[int] | None) -> int:
    """Direction when nothing in the packets tells: the hint, else the smaller apparent delay."""
    if order_hint and a in order_hint and b in order_hint:
        return 1 if order_hint.index(a) < order_hint.index(b) else -1
    # Assume the clocks are closer together than the packets' travel time.
    return 1 if float(np.median(d)) >= 0 else -1
