"""The correlation's tables (``diag.correlate.columns``) from its sightings and path layout.

The matches table lists, match by match and point by point along the path,
every copy of each sighting; one compiled pass writes its integer columns
(positions, codes, ports, times) and flags where the endpoints differ from
the row before. Text is made only for what is distinct: rewrites (few, even
when a busy box rewrites every flow) and paths (a handful of point
sequences).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.compiled import compiled
from diag.correlate.columns import MATCH_COLUMNS, NAT_COLUMNS, PATH_COLUMNS, empty_table
from diag.correlate.paths import PathLayout
from diag.correlate.sightings import Sightings
from diag.flows.copies import mix_hash as _mix
from diag.flows.keys import read_only

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@compiled
def _match_rows(
    match_start: IntArray,
    in_order: IntArray,
    start: IntArray,
    rows_sorted: IntArray,
    first_row: IntArray,
    capture: IntArray,
    hop: IntArray,
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, BoolArray, IntArray]:
    """Per row of the matches table: position, sighting, match, hop, capture, duplicate, and the capture of
    the row before when it is the same match (-1 at a match's first row)."""
    n_matches = len(match_start) - 1
    n = 0
    for i in range(match_start[n_matches]):
        s = in_order[i]
        n += start[s + 1] - start[s]
    position = np.empty(n, dtype=np.int64)
    sighting = np.empty(n, dtype=np.int64)
    match = np.empty(n, dtype=np.int64)
    hops = np.empty(n, dtype=np.int64)
    cap = np.empty(n, dtype=np.int64)
    duplicate = np.empty(n, dtype=np.bool_)
    previous = np.empty(n, dtype=np.int64)
    out = 0
    for m in range(n_matches):
        before = -1
        for i in range(match_start[m], match_start[m + 1]):
            s = in_order[i]
            for j in range(start[s], start[s + 1]):
                p = rows_sorted[j]
                position[out], sighting[out], match[out], hops[out], cap[out] = p, s, m, hop[s], capture[s]
                duplicate[out] = p != first_row[s]
                previous[out] = before
                before = capture[s]
                out += 1
    return position, sighting, match, hops, cap, duplicate, previous


@compiled
def _gather_endpoints(
    position: IntArray, match: IntArray, records: np.ndarray, offset_ns: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, BoolArray]:
    """The packet fields at ``position`` (time on the reference clock), and whether the endpoints changed
    from the row before (same match): a copy after the previous one along the path that some box rewrote."""
    n = len(position)
    src = np.empty(n, dtype=np.int64)
    dst = np.empty(n, dtype=np.int64)
    sport = np.empty(n, dtype=np.int64)
    dport = np.empty(n, dtype=np.int64)
    ts_ref = np.empty(n, dtype=np.int64)
    ttl = np.empty(n, dtype=np.int64)
    changed = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        r = records[position[i]]
        src[i], dst[i], sport[i], dport[i] = r.src, r.dst, r.sport, r.dport
        ts_ref[i], ttl[i] = r.ts + offset_ns[r.capture], r.ttl
        if i and match[i] == match[i - 1]:
            changed[i] = (src[i], dst[i], sport[i], dport[i]) != (src[i - 1], dst[i - 1], sport[i - 1], dport[i - 1])
    return src, dst, sport, dport, ts_ref, ttl, changed


def matches_and_nat(
    packets: pd.DataFrame,
    sights: Sightings,
    layout: PathLayout,
    names: list[str],
    records: np.ndarray,
    offset_ns: IntArray,
    address_text: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The matches table and the NAT map, computed on integer codes (strings only for distinct rewrites).

    ``records`` are the packets' ``diag.correlate.records`` (``address_text``
    names their address codes), ``offset_ns`` what to add to each capture's
    times (by code) to put them on the reference clock.
    """
    position, sighting, match, hop, cap, duplicate, prev_codes = _match_rows(
        layout.match_start, layout.in_order, sights.start, sights.rows_sorted, sights.first_row, sights.capture,
        layout.hop,
    )  # fmt: skip
    if len(position) == 0:
        return empty_table(MATCH_COLUMNS), empty_table(NAT_COLUMNS)
    src, dst, sport, dport, ts_at, ttl_at, changed = _gather_endpoints(
        position, match, records, read_only(offset_ns, np.int64)
    )
    nat, translations = _rewrites(packets, position, cap, changed, names, address_text, src, dst, sport, dport)
    capture_categories = pd.Index(names)
    rows = (
        position
        if isinstance(packets.index, pd.RangeIndex) and packets.index.start == 0 and packets.index.step == 1
        else packets.index.to_numpy()[position]
    )
    categories = pd.Index(address_text)
    table = pd.DataFrame(
        {
            "row": rows,
            "capture": pd.Categorical.from_codes(cap, categories=capture_categories),
            "match_id": match,
            "hop": hop,
            "duplicate": duplicate,
            "ts_ref_ns": ts_at,
            "ttl": ttl_at,
            "src": pd.Categorical.from_codes(src, categories=categories),
            "dst": pd.Categorical.from_codes(dst, categories=categories),
            "sport": sport,
            "dport": dport,
            "prev_capture": pd.Categorical.from_codes(prev_codes + 1, categories=pd.Index(["", *names]).unique()),
            "nat": nat,
            "position": position,
            "sighting": sighting,
        },
        copy=False,  # fresh arrays: no need to copy them into one block
    )
    nat_map = pd.DataFrame(translations, columns=list(NAT_COLUMNS))
    nat_map = nat_map.sort_values(["from_capture", "to_capture", "proto", "side", "before", "after"])
    nat_map = nat_map.reset_index(drop=True)
    return table, nat_map


def _rewrites(
    packets: pd.DataFrame,
    position: IntArray,
    cap: IntArray,
    changed: BoolArray,
    names: list[str],
    address_text: np.ndarray,
    src: IntArray,
    dst: IntArray,
    sport: IntArray,
    dport: IntArray,
) -> tuple[pd.Categorical, list[tuple[str, str, int, str, str, str, int]]]:
    """Each row's rewrite against the row before (the ``nat`` column) and the distinct translations."""
    n = len(position)
    after = np.flatnonzero(changed)
    before = after - 1
    proto = packets["proto"].to_numpy()[position[after]].astype(np.int64)
    # Address code -> text; the extra last entry makes code -1 (absent) the empty string.
    address_list = [str(a) for a in address_text] + [""] if len(after) else [""]
    # A translation is one endpoint rewritten into another, per side, between two
    # points: few distinct ones even when a busy box rewrites every flow.
    translations: list[tuple[str, str, int, str, str, str, int]] = []
    side_texts: list[list[str]] = []
    side_kinds: list[np.ndarray] = []
    for side, addr, port in (("src", src, sport), ("dst", dst, dport)):
        moved = (addr[after] != addr[before]) | (port[after] != port[before])
        fields = [cap[before], cap[after], proto, addr[before], port[before], addr[after], port[after]]
        digest = np.zeros(len(after), dtype=np.uint64)
        for values in fields:
            digest = _mix(digest, values)
        kinds, uniques = pd.factorize(np.where(moved, digest, np.uint64(0)))
        counts = np.bincount(kinds, minlength=len(uniques))
        firsts = np.zeros(len(uniques), dtype=np.int64)
        firsts[kinds[::-1]] = np.arange(len(kinds))[::-1]  # the first row of each kind
        texts_here = []
        heads = np.stack(fields, axis=1)[firsts].tolist() if len(firsts) else []
        for (c0, c1, pr, a0, p0, a1, p1), count in zip(heads, counts.tolist(), strict=True):
            old, new = endpoint_text(address_list[a0], p0), endpoint_text(address_list[a1], p1)
            texts_here.append(f"{side} {old}→{new}" if old != new else "")
            if old != new:
                translations.append((names[c0], names[c1], pr, side, old, new, count))
        side_texts.append(texts_here)
        side_kinds.append(kinds.astype(np.int64))
    # Each row's text joins its two sides; built once per distinct pair.
    pair_codes, pair_uniques = pd.factorize(side_kinds[0] * (1 << 32) + side_kinds[1])
    descriptions = []
    for value in pair_uniques.tolist():
        parts = (side_texts[0][value >> 32], side_texts[1][value & 0xFFFFFFFF])
        descriptions.append(", ".join(part for part in parts if part))
    text_codes, texts = pd.factorize(pd.Index(["", *descriptions]))
    nat_codes = np.zeros(n, dtype=np.int64)
    nat_codes[after] = text_codes[pair_codes + 1]
    return pd.Categorical.from_codes(nat_codes, categories=texts), translations


@compiled
def _path_summaries(
    match_start: IntArray, in_order: IntArray, capture: IntArray, ts_first: IntArray, bits: int
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Per match: points seen, first and last capture, first and last time, and the captures along the
    path packed ``bits`` to a point (code + 1, first point lowest; 0 when they do not fit)."""
    n_matches = len(match_start) - 1
    n_points = np.empty(n_matches, dtype=np.int64)
    first_capture = np.empty(n_matches, dtype=np.int64)
    last_capture = np.empty(n_matches, dtype=np.int64)
    first_ts = np.empty(n_matches, dtype=np.int64)
    last_ts = np.empty(n_matches, dtype=np.int64)
    packed = np.zeros(n_matches, dtype=np.int64)
    for m in range(n_matches):
        begin, end = match_start[m], match_start[m + 1]
        head, tail = in_order[begin], in_order[end - 1]
        n_points[m] = end - begin
        first_capture[m], last_capture[m] = capture[head], capture[tail]
        first_ts[m], last_ts[m] = ts_first[head], ts_first[tail]
        if bits * (end - begin) <= 63:
            value = 0
            for i in range(begin, end):
                value += (capture[in_order[i]] + 1) << (bits * (i - begin))
            packed[m] = value
    return n_points, first_capture, last_capture, first_ts, last_ts, packed


def paths_table(sights: Sightings, layout: PathLayout, offset_ns: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Per match: the points in order (distinct paths are few, so each is built once).

    ``offset_ns`` puts each capture's times (by code) on the reference clock.
    """
    n_matches = len(layout.match_start) - 1
    if n_matches == 0:
        return empty_table(PATH_COLUMNS)
    bits = max(1, (len(names) + 1).bit_length())
    ts_first = read_only(sights.ts + offset_ns[sights.capture], np.int64)
    n_points, first_capture, last_capture, first_ts, last_ts, packed = _path_summaries(
        layout.match_start, layout.in_order, sights.capture, ts_first, bits
    )
    points_col = np.empty(n_matches, dtype=object)
    if bits * int(n_points.max()) <= 63:
        kinds, inverse = np.unique(packed, return_inverse=True)
        decoded = []
        for value in kinds.tolist():
            points = []
            while value:
                points.append(names[(value & ((1 << bits) - 1)) - 1])
                value >>= bits
            decoded.append(tuple(points))
        kinds_as_objects = np.empty(len(decoded), dtype=object)
        kinds_as_objects[:] = decoded  # one tuple per cell, not a 2-D array
        points_col = kinds_as_objects[inverse]
    else:
        captures = np.asarray(names, dtype=object)[sights.capture[layout.in_order]]
        bounds = layout.match_start
        points_col[:] = [tuple(captures[a:b]) for a, b in pairwise(bounds.tolist())]
    # Taken from an index of the names: the string column is built once, not per row from Python strings.
    capture_names = pd.Index(names)
    return pd.DataFrame(
        {
            "match_id": np.arange(n_matches, dtype=np.int64),
            "points": points_col,
            "n_points": n_points,
            "first_capture": capture_names.take(first_capture).array,
            "last_capture": capture_names.take(last_capture).array,
            "first_ts_ns": first_ts,
            "last_ts_ns": last_ts,
        }
    )
