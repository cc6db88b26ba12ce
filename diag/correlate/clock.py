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
import numpy.typing as npt
import pandas as pd

from diag.compiled import compiled
from diag.flows.keys import read_only

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClockOffset:
    """What to add to a capture's timestamps to put it on the reference clock."""

    offset_s: float
    uncertainty_s: float


# Assumed bound on a one-way delay when only one direction was seen.
ONE_WAY_UNCERTAINTY_S = 0.01
# Timestamps are at best nanoseconds apart; never claim better than this.
MIN_UNCERTAINTY_S = 1e-6
# The starting values of a maximum and a minimum in compiled code.
_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


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

    Inputs are one entry per sighting: its match id (-1 when not matched: the
    entry is left out), capture code, time and TTL; ``endpoints`` gives, for
    an array of entry numbers, their (src, sport, dst, dport) codes at that
    point as an n x 4 array (asked only for packets with an equal TTL at two
    points, which spares building it for every entry). Returns offsets keyed
    by capture code and a note per capture saying how its offset was obtained.

    A pair of captures whose packets all have different TTLs at the two (the
    usual case) needs only its two bounds, which one compiled pass over the
    matches takes for every pair at once; a pair with an equal TTL somewhere
    or none telling the direction is given its packets (``_directions``, as
    ``pair_directions`` gives them).
    """
    edges: dict[int, list[tuple[int, float, float, str]]] = {c: [] for c in range(n_captures)}
    slots = _match_slots(match, capture, n_captures)
    ts_ns, ttl = read_only(ts_ns, np.int64), read_only(ttl, np.int64)
    count, a_first, b_first, equal, lo_ns, hi_ns = _pair_bounds(slots, ts_ns, ttl)
    for a, b in _pairs(n_captures):
        if count[a, b] == 0:
            continue
        if equal[a, b] == 0 and (a_first[a, b] or b_first[a, b]):
            estimate = offset_from_bounds(
                int(lo_ns[a, b]) if a_first[a, b] else None, int(hi_ns[a, b]) if b_first[a, b] else None
            )
        else:
            d, direction = _directions(slots, a, b, ts_ns, ttl, endpoints)
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
    ``(a, b, d, direction)``, ``d = ts_B − ts_A`` per packet (in match order) and its direction from the
    TTLs (+1: A first, -1: B first, 0: not told by the packets; the caller decides those when no packet
    tells)."""
    slots = _match_slots(match, capture, n_captures)
    ts_ns, ttl = read_only(ts_ns, np.int64), read_only(ttl, np.int64)
    for a, b in _pairs(n_captures):
        d, direction = _directions(slots, a, b, ts_ns, ttl, endpoints)
        if len(d):
            yield a, b, d, direction


def _pairs(n_captures: int) -> Iterator[tuple[int, int]]:
    """Every pair of captures a < b, in the order the offsets are chained from (it breaks ties there)."""
    for a in range(n_captures):
        for b in range(a + 1, n_captures):
            yield a, b


def _match_slots(match: np.ndarray, capture: np.ndarray, n_captures: int) -> IntArray:
    """Per match id and capture, the entry of that match seen there, -1 when none (n_match x n_captures)."""
    return _fill_slots(read_only(match, np.int64), read_only(capture, np.int64), n_captures)


@compiled
def _fill_slots(match: IntArray, capture: IntArray, n_captures: int) -> IntArray:
    """``_match_slots``; entries with match -1 are left out (a later entry of the same match and capture
    would win, but a match has one sighting per capture)."""
    n_match = 0
    for m in match:
        n_match = max(n_match, m + 1)
    slots = np.full((n_match, n_captures), -1, dtype=np.int64)
    for i in range(len(match)):
        if match[i] >= 0:
            slots[match[i], capture[i]] = i
    return slots


@compiled
def _pair_bounds(
    slots: IntArray, ts_ns: IntArray, ttl: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Per pair of captures a < b (n_captures x n_captures arrays, read at [a, b]), over the matches seen at
    both: how many, how many passed A first by the TTL, how many B first, how many with an equal TTL; the
    largest ``−d`` of the A-first ones and the smallest of the B-first ones (``pair_offset``'s bounds), with
    ``d = ts_B − ts_A``. A bound is meaningless when its count is 0."""
    n_captures = slots.shape[1]
    shape = (n_captures, n_captures)
    count = np.zeros(shape, dtype=np.int64)
    a_first = np.zeros(shape, dtype=np.int64)
    b_first = np.zeros(shape, dtype=np.int64)
    equal = np.zeros(shape, dtype=np.int64)
    lo = np.full(shape, _INT64_MIN, dtype=np.int64)
    hi = np.full(shape, _INT64_MAX, dtype=np.int64)
    for m in range(slots.shape[0]):
        for a in range(n_captures):
            ea = slots[m, a]
            if ea < 0:
                continue
            for b in range(a + 1, n_captures):
                eb = slots[m, b]
                if eb < 0:
                    continue
                count[a, b] += 1
                minus_d = ts_ns[ea] - ts_ns[eb]
                if ttl[ea] > ttl[eb]:
                    a_first[a, b] += 1
                    lo[a, b] = max(lo[a, b], minus_d)
                elif ttl[ea] < ttl[eb]:
                    b_first[a, b] += 1
                    hi[a, b] = min(hi[a, b], minus_d)
                else:
                    equal[a, b] += 1
    return count, a_first, b_first, equal, lo, hi


def _directions(
    slots: IntArray, a: int, b: int, ts_ns: IntArray, ttl: IntArray, endpoints: Callable[[np.ndarray], np.ndarray]
) -> tuple[IntArray, np.ndarray]:
    """``d = ts_B − ts_A`` and the direction of every match seen at both a and b (``pair_directions``)."""
    both = (slots[:, a] >= 0) & (slots[:, b] >= 0)  # the matches seen at both, in match order
    at_a, at_b = slots[both, a], slots[both, b]
    d: IntArray = ts_ns[at_b] - ts_ns[at_a]
    direction = np.sign(ttl[at_a] - ttl[at_b]).astype(np.int8)
    equal = direction == 0
    if equal.any():
        direction[equal] = _equal_ttl_directions(d[equal], endpoints(at_a[equal]))
    return d, direction


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
