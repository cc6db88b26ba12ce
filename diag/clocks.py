"""Clock offsets for a correlation cut into partitions: per-pair delay bounds, combined, then chained.

The offset between two points comes from the packets matched at both
(``diag.correlate.clock``): the middle of the tightest interval that the
packets known to have passed A first (a lower bound each) and B first (an
upper bound each) leave. A maximum and a minimum can be taken over parts of
the packets apart, so a cluster that correlates its candidates in partitions
(``diag.cluster``) has each partition reduce its own matched packets to a
few numbers per pair of points (``clock_bounds``), combines those
(``combine_bounds``) and chains the pairs from the reference point
(``offsets_from_bounds``) exactly as one process does from every packet.

Which point a packet passed first is decided per packet by the TTL, and for
an equal TTL by the flow's two directions at A; both directions of a flow
at a point are in one partition (a partition holds whole connections), so a
partition decides its packets' directions as one process would. When no
packet of a pair tells (same link, traffic one way), one process takes the
sign of the median delay for all of them; the median's sign is decided by
how many delays are negative and, for an even count split in the middle, by
the two middle values, which are the largest negative delay and the smallest
other one: counts, a maximum and a minimum, again combinable.

A partition must count each matched packet once: it reduces only the rows
it owns, not the copies of boundary connections that every partition holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diag.correlate.clock import ClockOffset, chain_offsets, offset_from_bounds, pair_directions
from diag.correlate.match import choose_reference, sightings_across

Pair = tuple[int, int]


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True)
class PairBounds:
    """What the packets matched at points a < b say about θ = o_b − o_a, with ``d = ts_b − ts_a`` per packet."""

    lo_ns: int | None  # the largest −d of the packets that passed a first (None: none did, as far as known)
    hi_ns: int | None  # the smallest −d of those that passed b first
    count: int  # packets matched at both
    negative: int  # of them with d < 0
    largest_negative: int | None  # the largest d < 0
    smallest_rest: int | None  # the smallest d >= 0
    all_lo_ns: int  # the largest −d of every packet (the bound if all passed a first)
    all_hi_ns: int  # the smallest −d of every packet (if all passed b first)

    @classmethod
    def of(cls, d: np.ndarray, direction: np.ndarray) -> PairBounds:
        a_first, b_first, negative = direction > 0, direction < 0, d < 0
        return cls(
            lo_ns=int(np.max(-d[a_first])) if a_first.any() else None,
            hi_ns=int(np.min(-d[b_first])) if b_first.any() else None,
            count=len(d),
            negative=int(negative.sum()),
            largest_negative=int(d[negative].max()) if negative.any() else None,
            smallest_rest=int(d[~negative].min()) if (~negative).any() else None,
            all_lo_ns=int(np.max(-d)),
            all_hi_ns=int(np.min(-d)),
        )

    def combine(self, other: PairBounds) -> PairBounds:
        return PairBounds(
            lo_ns=_max(self.lo_ns, other.lo_ns),
            hi_ns=_min(self.hi_ns, other.hi_ns),
            count=self.count + other.count,
            negative=self.negative + other.negative,
            largest_negative=_max(self.largest_negative, other.largest_negative),
            smallest_rest=_min(self.smallest_rest, other.smallest_rest),
            all_lo_ns=max(self.all_lo_ns, other.all_lo_ns),
            all_hi_ns=min(self.all_hi_ns, other.all_hi_ns),
        )

    def median_not_negative(self) -> bool:
        """``np.median(d) >= 0`` over every packet of the pair, from the counts and the two middle candidates."""
        n, below = self.count, self.negative
        if n % 2:
            return below <= (n - 1) // 2
        if below != n // 2:
            return below < n // 2
        assert self.largest_negative is not None and self.smallest_rest is not None
        return (float(self.largest_negative) + float(self.smallest_rest)) / 2 >= 0

    def estimate(self) -> tuple[float, float, str] | None:
        """``pair_offset`` of every packet of the pair (``estimate_offsets`` without an order hint)."""
        if self.lo_ns is not None or self.hi_ns is not None:
            return offset_from_bounds(self.lo_ns, self.hi_ns)
        # No packet tells: all are taken to go the way the median delay says.
        if self.median_not_negative():
            return offset_from_bounds(self.all_lo_ns, None)
        return offset_from_bounds(None, self.all_hi_ns)


ClockBounds = dict[Pair, PairBounds]


def clock_bounds(packets: pd.DataFrame) -> ClockBounds:
    """Per pair of points (capture codes a < b of the ``capture`` column's categories): the bounds its matched
    packets give, as ``diag.correlate.correlate`` matches them."""
    captures = packets["capture"]
    assert isinstance(captures.dtype, pd.CategoricalDtype), "capture codes must be the points' numbers"
    capture_code = captures.cat.codes.to_numpy().astype(np.int64)
    if len(np.unique(capture_code)) < 2:
        return {}
    ts = np.asarray(packets["ts_ns"].to_numpy(), dtype=np.int64)
    ip_id = np.asarray(packets["ip_id"].to_numpy(), dtype=np.int64)
    seen = sightings_across(packets, capture_code, ts, ip_id)
    sights = seen.sights
    pairs = pair_directions(
        sights.match, sights.capture, sights.ts, seen.rank, seen.endpoints, len(captures.cat.categories)
    )
    return {(a, b): PairBounds.of(d, direction) for a, b, d, direction in pairs}


def combine_bounds(parts: Sequence[ClockBounds]) -> ClockBounds:
    """The bounds of every partition's packets together."""
    combined: ClockBounds = {}
    for part in parts:
        for pair, bounds in part.items():
            combined[pair] = combined[pair].combine(bounds) if pair in combined else bounds
    return combined


def offsets_from_bounds(
    bounds: ClockBounds, names: Sequence[str], present: Sequence[str]
) -> tuple[str | None, dict[str, ClockOffset]]:
    """The reference point and every present point's offset, as ``correlate`` gives them from all packets.

    ``names`` are the points by capture code, ``present`` those with packets, in the order they come.
    """
    reference = choose_reference(list(present))
    edges: dict[int, list[tuple[int, float, float, str]]] = {code: [] for code in range(len(names))}
    for (a, b), pair in sorted(bounds.items()):  # pairs in the order one process visits them
        estimate = pair.estimate()
        if estimate is None:
            continue
        theta, uncertainty, note = estimate
        edges[a].append((b, theta, uncertainty, note))
        edges[b].append((a, -theta, uncertainty, note))
    if len(present) < 2:
        edges = {}
    offsets, _notes = chain_offsets(edges, list(names).index(reference) if reference else 0)
    return reference, {names[code]: offset for code, offset in offsets.items() if names[code] in present}
