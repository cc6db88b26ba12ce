"""The order of the points along each matched packet's path.

The TTL on arrival only goes down along a path, so a higher TTL is earlier;
between two points on one link (same arrival TTL) the one that forwarded the
packet on (its copies' lowest TTL, the way out) is later. ``path_rank`` packs
both into one number. Inside a tunnel (VXLAN between nodes) the carried
packet's TTL does not change from point to point, but the outer header's
does: among points of equal rank that all saw the packet tunnelled, a higher
outer TTL is earlier. Remaining ties fall back to the time on the reference
clock, then to the capture order.

A sighting's hop is the number of sightings of the same match that come
before it. Matches are few points each (one sighting per capture), so one
compiled pass compares each match's sightings pairwise and lists them in
path order: the layout the matches and paths tables are written in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from diag.compiled import compiled
from diag.flows.keys import read_only

IntArray = npt.NDArray[np.int64]


def path_rank(ttl_in: np.ndarray, ttl_out: np.ndarray) -> IntArray:
    """Higher is earlier on the path: the TTL on arrival first, then (same link) the TTL on leaving."""
    rank: IntArray = ttl_in.astype(np.int64) * 256 + ttl_out
    return rank


class PathLayout(NamedTuple):
    """Matched sightings grouped by match, each match's in path order."""

    hop: IntArray  # per sighting: its place on its packet's path, -1 when not matched
    match_start: IntArray  # per match, where its sightings begin in ``in_order`` (one extra entry: the end)
    in_order: IntArray  # sighting numbers, match by match, each match's in path order


def tunnel_order(rank: np.ndarray, outer_ttl: np.ndarray) -> IntArray:
    """Per item, its outer TTL where every item of the same ``rank`` came in a tunnel, else -1.

    The order inside one rank (higher first) the tunnel gives, by the rule
    below: the correlation applies it to the sightings of each match, the
    diagnosis to the copies of one packet (``diagnose.forwarding``).
    """
    n = len(rank)
    out = np.full(n, -1, dtype=np.int64)
    _tunnel_ranks(np.arange(n, dtype=np.int64), 0, n, read_only(rank, np.int64), read_only(outer_ttl, np.int64), out)
    return out


@compiled
def _tunnel_ranks(members: IntArray, begin: int, end: int, rank: IntArray, outer_ttl: IntArray, out: IntArray) -> None:
    """Per member of one match (``members[begin:end]``, written to ``out[0 : end - begin]`` in that order),
    its outer TTL where every member of the same rank came in a tunnel, else -1.

    Inside a tunnel the carried packet's TTL stays the same, so the outer one
    orders the points there. Between a bare copy and a tunnelled one of the
    same rank it says nothing (the bare one may be before the tunnel or after
    it), so a rank holding both leaves the order to the clocks, as without
    tunnels; the order stays one total order either way.
    """
    for i in range(begin, end):
        a = members[i]
        usable = outer_ttl[a] >= 0
        for j in range(begin, end):
            if rank[members[j]] == rank[a] and outer_ttl[members[j]] < 0:
                usable = False
        out[i - begin] = outer_ttl[a] if usable else -1


@compiled
def _lay_out(
    match: IntArray, capture: IntArray, rank: IntArray, outer_ttl: IntArray, ts_ref: IntArray, n_matches: int
) -> tuple[IntArray, IntArray, IntArray]:
    """(hop per sighting, where each match's sightings start, the sightings in path order); see ``lay_out_paths``."""
    n = len(match)
    match_start = np.zeros(n_matches + 1, dtype=np.int64)
    for s in range(n):
        if match[s] >= 0:
            match_start[match[s] + 1] += 1
    for m in range(n_matches):
        match_start[m + 1] += match_start[m]
    members = np.empty(match_start[n_matches], dtype=np.int64)
    filled = match_start[:n_matches].copy()
    for s in range(n):
        m = match[s]
        if m >= 0:
            members[filled[m]] = s
            filled[m] += 1
    hop = np.full(n, -1, dtype=np.int64)
    in_order = np.empty_like(members)
    most = 0
    for m in range(n_matches):
        most = max(most, match_start[m + 1] - match_start[m])
    tunnel = np.empty(most, dtype=np.int64)  # one match's, by its members' order
    for m in range(n_matches):
        begin, end = match_start[m], match_start[m + 1]
        _tunnel_ranks(members, begin, end, rank, outer_ttl, tunnel)
        for i in range(begin, end):
            a = members[i]
            tunnel_a = tunnel[i - begin]
            before = 0
            for j in range(begin, end):
                b = members[j]
                tunnel_b = tunnel[j - begin]
                if j == i or rank[b] < rank[a] or (rank[b] == rank[a] and tunnel_b < tunnel_a):
                    continue
                if (
                    rank[b] > rank[a]
                    or tunnel_b > tunnel_a
                    or ts_ref[b] < ts_ref[a]
                    or (ts_ref[b] == ts_ref[a] and capture[b] < capture[a])
                ):
                    before += 1
            hop[a] = before
            in_order[begin + before] = a
    return hop, match_start, in_order


def lay_out_paths(
    match: np.ndarray, capture: np.ndarray, rank: np.ndarray, outer_ttl: np.ndarray, ts_ref: np.ndarray
) -> PathLayout:
    """Per sighting (all of them, -1 in ``match`` when unmatched): hops and the sightings match by match.

    ``rank`` is ``path_rank`` of each sighting, ``outer_ttl`` the outer TTL
    it came in with through a tunnel (-1 when bare), ``ts_ref`` the time of
    its first copy on the reference clock.
    """
    n_matches = int(match.max()) + 1 if len(match) else 0
    hop, match_start, in_order = _lay_out(
        read_only(match, np.int64), read_only(capture, np.int64), read_only(rank, np.int64),
        read_only(outer_ttl, np.int64), read_only(ts_ref, np.int64), n_matches,
    )  # fmt: skip
    return PathLayout(hop=hop, match_start=match_start, in_order=in_order)
