"""Sightings and matches: one packet at one point (its copies there collapsed), then across points.

Rows are put in content order (the 64-bit hash of the fields NAT leaves
alone, mixed with the IP ID), capture and time order kept inside equal
contents. Hashes are spread evenly, so their top bits deal the rows into
buckets of a few each, in their order (a counting sort), and each bucket is
sorted by insertion: the same order as a stable sort of the hashes
themselves, which would have to merge millions of random 64-bit values.

One compiled pass over the rows in that order then cuts runs (one content at
one capture) into sightings (copies within ``DUPLICATE_WINDOW_NS`` of each
other) and numbers each sighting's occurrence inside its run; a second one
pairs the k-th occurrence of a content at every point into a match. Packets
left unmatched are tried again without the IP ID (a box on the path may
rewrite it). Ids follow the content hash's order, so they do not depend on
the order in which the captures were given.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from diag.compiled import compiled
from diag.flows.copies import DUPLICATE_WINDOW_NS
from diag.flows.copies import mix_hash as _mix
from diag.flows.keys import read_only

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Sightings:
    """Per sighting (one packet seen at one point, copies collapsed), in content order: its rows and facts."""

    first_row: IntArray  # packet position of the earliest copy
    capture: IntArray
    ts: IntArray
    ttl: IntArray  # highest TTL among the copies (the way in)
    ttl_out: IntArray  # lowest TTL among the copies (the way out, when the point forwarded it)
    outer_ttl: IntArray  # highest outer TTL among the copies that came in a tunnel, -1 when none did
    match: IntArray  # -1 when seen at one point only
    row_sighting: IntArray  # per packet position: its sighting (unmatchable rows get their own, after)
    rows_sorted: IntArray  # matchable positions, grouped by sighting, copies in time order
    start: IntArray  # per sighting, where its rows begin in ``rows_sorted`` (one extra entry: the end)


def by_capture_then_time(capture: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by capture, then time; cheap when each capture is already in time order."""
    captures_in_order, times_in_order = _in_order(read_only(capture, np.int64), read_only(ts, np.int64))
    if captures_in_order and times_in_order:
        return np.arange(len(capture))  # the usual case: captures one after the other, each in time order
    if captures_in_order:  # only times step back: the captures' stable sort would leave every row in place
        order, c, t = np.arange(len(capture)), capture, ts
    else:
        order = np.argsort(capture.astype(np.int16), kind="stable")  # radix sort on small ints
        c, t = capture[order], ts[order]
    late = np.flatnonzero((c[1:] == c[:-1]) & (t[1:] < t[:-1]))
    if len(late):
        # Some capture is out of time order (a merged ring buffer, a host's clock step):
        # sort the times inside each such capture alone; they are nearly in order,
        # which the stable sort (timsort) handles in close to one pass.
        bounds = [*np.flatnonzero(starts(c)).tolist(), len(c)]
        for start, end in pairwise(bounds):
            first_late = np.searchsorted(late, start)
            if first_late < len(late) and late[first_late] < end - 1:  # this capture has a step back
                block = order[start:end]
                order[start:end] = block[np.argsort(t[start:end], kind="stable")]
    return order


@compiled
def _in_order(capture: IntArray, ts: IntArray) -> tuple[bool, bool]:
    """Whether the capture codes never go down, and whether the times never go back inside one capture."""
    captures_in_order = times_in_order = True
    for i in range(1, len(capture)):
        if capture[i] < capture[i - 1]:
            captures_in_order = False
        elif capture[i] == capture[i - 1] and ts[i] < ts[i - 1]:
            times_in_order = False
    return captures_in_order, times_in_order


def starts(*columns: np.ndarray) -> np.ndarray:
    """True where any of the (sorted) columns changes: the first row of each run."""
    n = len(columns[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for column in columns:
            new[1:] |= column[1:] != column[:-1]
    return new


def _stable_argsort_few_ties(values: np.ndarray) -> IntArray:
    """``np.argsort(values, kind="stable")`` for values that are nearly all distinct.

    An unstable sort is several times faster than the stable one on 64-bit
    hashes; the few runs of equal values are then put back in position order
    with a second sort over them alone.
    """
    order: IntArray = np.argsort(values)
    ordered = values[order]
    equal = ordered[1:] == ordered[:-1]
    if equal.any():
        tied = np.zeros(len(order), dtype=bool)
        tied[1:] |= equal
        tied[:-1] |= equal
        at = np.flatnonzero(tied)
        run_start = np.ones(len(at), dtype=bool)
        run_start[1:] = ~equal[at[1:] - 1]
        positions = order[at]
        order[at] = positions[np.argsort(np.cumsum(run_start) * len(order) + positions)]
    return order


def content_order(content: np.ndarray, rows: IntArray) -> tuple[IntArray, BoolArray]:
    """``rows`` ordered as by ``np.argsort(content, kind="stable")``, and True where a content starts.

    ``content`` is a 64-bit hash, its values spread evenly: the top bits put
    the rows in buckets of a few (a counting sort, which keeps their order),
    and each bucket is sorted alone.
    """
    bits = min(max(len(content).bit_length() - 3, 1), 24)  # about 8 rows a bucket
    counts = np.zeros((1 << bits) + 1, dtype=np.int32 if len(content) < 2**31 else np.int64)
    return _bucket_sort(read_only(content, np.uint64), rows, bits, counts)


# A bucket up to this size is sorted by insertion; a larger one (hashes not spread after all) by a merge sort.
_INSERTION_SORT_MOST = 64


@compiled
def _bucket_sort(
    content: npt.NDArray[np.uint64], rows: IntArray, bits: int, first: np.ndarray
) -> tuple[IntArray, BoolArray]:
    """``content_order`` with buckets of the top ``bits`` bits; ``first`` is zeros, one more than buckets."""
    n = len(content)
    shift = np.uint64(64 - bits)
    n_buckets = len(first) - 1
    for i in range(n):
        first[np.int64(content[i] >> shift) + 1] += 1
    for b in range(n_buckets):
        first[b + 1] += first[b]
    values = np.empty(n, dtype=np.uint64)
    ordered = np.empty(n, dtype=np.int64)
    fill = first[:n_buckets].copy()
    for i in range(n):
        value = content[i]
        bucket = np.int64(value >> shift)
        at = fill[bucket]
        values[at], ordered[at] = value, rows[i]
        fill[bucket] = at + 1
    for b in range(n_buckets):
        begin, end = first[b], first[b + 1]
        if end - begin > _INSERTION_SORT_MOST:
            by_value = np.argsort(values[begin:end], kind="mergesort")  # stable
            ordered[begin:end] = ordered[begin:end][by_value]
            values[begin:end] = values[begin:end][by_value]
            continue
        for i in range(begin + 1, end):
            value, row = values[i], ordered[i]
            j = i - 1
            while j >= begin and values[j] > value:  # strictly greater: equal contents keep their order
                values[j + 1], ordered[j + 1] = values[j], ordered[j]
                j -= 1
            values[j + 1], ordered[j + 1] = value, row
    new_content = np.empty(n, dtype=np.bool_)
    for i in range(n):
        new_content[i] = i == 0 or values[i] != values[i - 1]
    return ordered, new_content


@compiled
def _cut_sightings(
    rows: IntArray, new_content: BoolArray, records: np.ndarray, window_ns: int, row_sighting: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Sightings of ``rows`` (in content order, ``new_content`` where a content starts): a new one where
    the content or the capture changes, or after a gap longer than the window.

    Returns per sighting: where its rows start (plus the end), first row,
    capture, time, highest and lowest TTL, highest outer TTL, its occurrence inside its run (one
    content at one capture) and its content's number. Each row's sighting is
    written to ``row_sighting`` at the row's position.
    """
    n = len(rows)
    start = np.empty(n + 1, dtype=np.int64)
    first_row = np.empty(n, dtype=np.int64)
    sight_capture = np.empty(n, dtype=np.int64)
    sight_ts = np.empty(n, dtype=np.int64)
    ttl_in = np.empty(n, dtype=np.int64)
    ttl_out = np.empty(n, dtype=np.int64)
    outer_in = np.empty(n, dtype=np.int64)
    occurrence = np.empty(n, dtype=np.int64)
    sight_content = np.empty(n, dtype=np.int64)
    s = k = -1
    prev_c = prev_t = occ = 0
    for i in range(n):
        r = rows[i]
        record = records[r]
        c, t, tt, outer = int(record.capture), int(record.ts), int(record.ttl), int(record.outer_ttl)
        k += new_content[i]
        new_run = new_content[i] or c != prev_c
        if new_run or t - prev_t > window_ns:
            s += 1
            occ = 0 if new_run else occ + 1
            start[s] = i
            first_row[s], sight_capture[s], sight_ts[s] = r, c, t
            ttl_in[s] = tt
            ttl_out[s] = tt
            outer_in[s] = outer
            occurrence[s], sight_content[s] = occ, k
        else:
            ttl_in[s] = max(ttl_in[s], tt)
            ttl_out[s] = min(ttl_out[s], tt)
            outer_in[s] = max(outer_in[s], outer)
        row_sighting[r] = s
        prev_c, prev_t = c, t
    m = s + 1
    start[m] = n
    return (
        start[: m + 1], first_row[:m], sight_capture[:m], sight_ts[:m], ttl_in[:m], ttl_out[:m], outer_in[:m],
        occurrence[:m], sight_content[:m],
    )  # fmt: skip


@compiled
def _number_lone_rows(key: npt.NDArray[np.uint64], row_sighting: IntArray, first: int) -> None:
    """The unmatchable rows (key 0) each their own sighting, numbered from ``first`` in position order."""
    for i in range(len(key)):
        if key[i] == 0:
            row_sighting[i] = first
            first += 1


@compiled
def _pair_occurrences(content: IntArray, occurrence: IntArray) -> IntArray:
    """Match id per sighting (in content order): the same content's k-th occurrence at two points or
    more is one match, numbered by (content, occurrence); -1 when seen at one point only.

    Inside one content each capture has each occurrence once, so the number
    of sightings of an occurrence is its number of points.
    """
    n = len(content)
    match = np.full(n, -1, dtype=np.int64)
    most = 0
    for i in range(n):
        most = max(most, occurrence[i])
    seen = np.zeros(most + 1, dtype=np.int64)
    ids = np.empty(most + 1, dtype=np.int64)
    next_id = 0
    begin = 0
    while begin < n:
        end, top = begin, 0
        while end < n and content[end] == content[begin]:
            top = max(top, occurrence[end])
            seen[occurrence[end]] += 1
            end += 1
        for o in range(top + 1):
            ids[o] = next_id if seen[o] >= 2 else -1
            next_id += seen[o] >= 2
            seen[o] = 0
        for i in range(begin, end):
            match[i] = ids[occurrence[i]]
        begin = end
    return match


def _rank_in_run(new_item: np.ndarray, new_run: np.ndarray) -> np.ndarray:
    """0-based rank of each item inside its run (both flags mark first rows, in sorted order)."""
    count = np.cumsum(new_item)
    run_first = np.flatnonzero(new_run)[np.cumsum(new_run) - 1]
    rank: np.ndarray = count - count[run_first]
    return rank


def _group_matches(group_run: np.ndarray, occurrence: np.ndarray) -> np.ndarray:
    """Match id per item: same run and same occurrence, seen at two points or more; else -1."""
    composite = group_run * (int(occurrence.max()) + 1) + occurrence if len(occurrence) else occurrence
    order = np.argsort(composite, kind="stable")
    new = starts(composite[order])
    group = np.cumsum(new) - 1
    sizes = np.bincount(group)
    matched = sizes >= 2
    ids = np.where(matched, np.cumsum(matched) - 1, -1)
    result = np.empty(len(order), dtype=np.int64)
    result[order] = ids[group]
    return result


def _match_without_ip_id(
    key: np.ndarray, first_row: IntArray, capture: IntArray, ts: IntArray, match: IntArray
) -> None:
    """Second pass, in place: sightings left unmatched, paired on the key alone (a box may rewrite the IP ID)."""
    left = np.flatnonzero(match < 0)
    if len(left) == 0:
        return
    k = key[first_row[left]]
    order = np.lexsort((ts[left], capture[left], k))
    left = left[order]
    k = k[order]
    new_k = starts(k)
    new_run = new_k | starts(capture[left])
    occurrence = _rank_in_run(np.ones(len(left), dtype=bool), new_run)
    again = _group_matches(np.cumsum(new_k) - 1, occurrence)
    found = again >= 0
    match[left[found]] = again[found] + (int(match.max()) + 1)


@compiled
def _cut_copies(rows: IntArray, new_content: BoolArray, ts: IntArray, window_ns: int, row_sighting: IntArray) -> int:
    """``_cut_sightings``'s sighting per row for one capture, which is all a single capture needs: the rows'
    times are read from their own column, without the records and the per-sighting facts. Each row's
    sighting is written to ``row_sighting`` at the row's position; returns how many sightings there are."""
    s = -1
    prev_t = 0
    for i in range(len(rows)):
        r = rows[i]
        t = ts[r]
        if new_content[i] or t - prev_t > window_ns:
            s += 1
        row_sighting[r] = s
        prev_t = t
    return s + 1


def one_capture_sightings(key: np.ndarray, ip_id: np.ndarray, capture: np.ndarray, ts: np.ndarray) -> IntArray:
    """Per packet position, its sighting when every packet is from one capture: ``find_sightings``'s
    ``row_sighting`` with the same numbering, at a fraction of its time and memory (nothing can match)."""
    base = by_capture_then_time(capture, ts)
    rows = read_only(base[key[base] != 0], np.int64)
    content = _mix(key[rows], ip_id[rows])
    # Nearly every content is distinct in one capture (only a packet's copies repeat
    # it): sorting the hashes themselves is cheaper than numbering them first.
    order = _stable_argsort_few_ties(content)
    rows_sorted = read_only(rows[order], np.int64)
    row_sighting = np.empty(len(key), dtype=np.int64)
    n_sightings = _cut_copies(
        rows_sorted, starts(content[order]), read_only(ts, np.int64), DUPLICATE_WINDOW_NS, row_sighting
    )
    _number_lone_rows(read_only(key, np.uint64), row_sighting, n_sightings)
    return row_sighting


def find_sightings(
    key: np.ndarray, ip_id: np.ndarray, capture: np.ndarray, ts: np.ndarray, records: np.ndarray
) -> Sightings:
    """Every matchable row's sighting across several captures, and every sighting's match.

    ``key`` is ``diag.flows.copies.packet_keys`` (0: not matchable); ``ip_id``,
    ``capture`` (codes) and ``ts`` are columns of the packet table, and
    ``records`` its rows' ``diag.correlate.records``. A single capture has
    nothing to match: ``one_capture_sightings`` only collapses its copies.
    """
    base = by_capture_then_time(capture, ts)
    rows = read_only(base[key[base] != 0], np.int64)
    content = _mix(key[rows], ip_id[rows])
    rows_sorted, new_content = content_order(content, rows)
    rows_sorted = read_only(rows_sorted, np.int64)
    row_sighting = np.empty(len(key), dtype=np.int64)
    start, first_row, sight_capture, sight_ts, ttl_in, ttl_out, outer_in, occurrence, content_number = _cut_sightings(
        rows_sorted, new_content, records, DUPLICATE_WINDOW_NS, row_sighting
    )
    key = read_only(key, np.uint64)
    _number_lone_rows(key, row_sighting, len(first_row))
    match = _pair_occurrences(content_number, occurrence)
    _match_without_ip_id(key, first_row, sight_capture, sight_ts, match)
    return Sightings(
        first_row=first_row,
        capture=sight_capture,
        ts=sight_ts,
        ttl=ttl_in,
        ttl_out=ttl_out,
        outer_ttl=outer_in,
        match=match,
        row_sighting=row_sighting,
        rows_sorted=rows_sorted,
        start=start,
    )
