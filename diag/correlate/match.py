"""The same packet seen at several capture points, through NAT.

A NAT box rewrites addresses and ports but leaves most of a packet alone: TCP
sequence and acknowledgement numbers, flags, options, the payload; for UDP the
payload and (on Linux) the IPv4 identification. ``correlate`` hashes those
untouched fields into a key per packet and groups equal keys across captures,
so one *match* is one packet followed from point to point.

Steps, all vectorised over the concatenated packet table:

1. ``packet_keys`` (``diag.flows.copies``): one 64-bit key per packet from the
   fields NAT leaves alone (0 for packets that cannot be matched, such as ARP).
2. ``sightings``: inside one capture, copies of the same packet a few
   milliseconds apart are one sighting (a capture on both interfaces of a
   forwarding box, or ``-i any``, sees a forwarded packet twice). This is
   wider than the flow table's ``diag.flows.copies.forwarded_copies``: a copy a box
   rewrote by NAT joins the sighting too, since the rewrite is what the
   correlation wants to see.
3. Matching: the k-th sighting of a key (and IP ID) at one point is the k-th at
   every other point, so retransmissions of the same segment stay apart. A
   second pass without the IP ID catches boxes that rewrite it.
4. Clock offsets (``diag.correlate.clock``) from the matched packets, then the order of
   the points along each packet's path (TTL first: it only goes down; then the
   corrected time).
5. The per-row ``matches`` table with the rewrite seen
   against the previous copy, the ``paths`` and the NAT map.

Grouping is done by sorting once on a content hash (captures are already in
time order, so equal keys come out in capture and time order) rather than with
hash joins; regrouping afterwards works on nearly sorted arrays, which is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.correlate.clock import ClockOffset, estimate_offsets
from diag.correlate.columns import MATCH_COLUMNS, NAT_COLUMNS, PATH_COLUMNS, empty_table
from diag.flows.copies import DUPLICATE_WINDOW_NS, packet_keys
from diag.flows.copies import mix_hash as _mix


def _capture_codes(packets: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    captures = packets["capture"]
    if isinstance(captures.dtype, pd.CategoricalDtype):
        names = [str(c) for c in captures.cat.categories]
        return captures.cat.codes.to_numpy().astype(np.int64), names
    codes, uniques = pd.factorize(captures, sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def _by_capture_then_time(capture: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by capture, then time; cheap when each capture is already in time order."""
    same = capture[1:] == capture[:-1]
    if np.all(capture[1:] >= capture[:-1]) and not np.any(same & (ts[1:] < ts[:-1])):
        return np.arange(len(capture))  # the usual case: captures one after the other, each in time order
    order = np.argsort(capture.astype(np.int16), kind="stable")  # radix sort on small ints
    c, t = capture[order], ts[order]
    late = np.flatnonzero((c[1:] == c[:-1]) & (t[1:] < t[:-1]))
    if len(late):
        # Some capture is out of time order (a merged ring buffer, a host's clock step):
        # sort the times inside each such capture alone; they are nearly in order,
        # which the stable sort (timsort) handles in close to one pass.
        bounds = [*np.flatnonzero(_starts(c)).tolist(), len(c)]
        for start, end in pairwise(bounds):
            first_late = np.searchsorted(late, start)
            if first_late < len(late) and late[first_late] < end - 1:  # this capture has a step back
                block = order[start:end]
                order[start:end] = block[np.argsort(t[start:end], kind="stable")]
    return order


def _starts(*columns: np.ndarray) -> np.ndarray:
    """True where any of the (sorted) columns changes: the first row of each run."""
    n = len(columns[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
        for column in columns:
            new[1:] |= column[1:] != column[:-1]
    return new


def _rank_in_run(new_item: np.ndarray, new_run: np.ndarray) -> np.ndarray:
    """0-based rank of each item inside its run (both flags mark first rows, in sorted order)."""
    count = np.cumsum(new_item)
    run_first = np.flatnonzero(new_run)[np.cumsum(new_run) - 1]
    rank: np.ndarray = count - count[run_first]
    return rank


def _group_matches(group_run: np.ndarray, occurrence: np.ndarray) -> np.ndarray:
    """Match id per sighting: same run and same occurrence, seen at two points or more; else -1.

    Inside one run each capture has each occurrence once, so a group's size
    is its number of points.
    """
    composite = group_run * (int(occurrence.max()) + 1) + occurrence if len(occurrence) else occurrence
    order = np.argsort(composite, kind="stable")  # nearly sorted already: cheap
    new = _starts(composite[order])
    group = np.cumsum(new) - 1
    sizes = np.bincount(group)
    matched = sizes >= 2
    ids = np.where(matched, np.cumsum(matched) - 1, -1)
    result = np.empty(len(order), dtype=np.int64)
    result[order] = ids[group]
    return result


@dataclass(frozen=True)
class _Sightings:
    """Per sighting (one packet seen at one point, copies collapsed): its rows and facts."""

    first_row: np.ndarray  # packet position of the earliest copy
    capture: np.ndarray
    ts: np.ndarray
    ttl: np.ndarray  # highest TTL among the copies (the way in)
    ttl_out: np.ndarray  # lowest TTL among the copies (the way out, when the point forwarded it)
    match: np.ndarray  # -1 when seen at one point only
    row_sighting: np.ndarray  # per packet position: its sighting (unmatchable rows get their own)
    rows_sorted: np.ndarray  # matchable positions, grouped by sighting, copies in time order


def _stable_argsort_few_ties(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` for values that are nearly all distinct.

    An unstable sort is several times faster than the stable one on 64-bit
    hashes; the few runs of equal values are then put back in position order
    with a second sort over them alone.
    """
    order: np.ndarray = np.argsort(values)
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


def _sorted_sightings(
    key: np.ndarray, ip_id: np.ndarray, capture: np.ndarray, ts: np.ndarray, one_capture: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Matchable rows grouped by content, then capture and time; where keys, runs and sightings start.

    A run is one key at one capture; a sighting a run's copies within the
    duplicate window of each other.
    """
    base = _by_capture_then_time(capture, ts)
    rows = base[key[base] != 0]
    content = _mix(key[rows], ip_id[rows])
    # Stays in capture, time order inside a key. In one capture equal contents are
    # only a packet's copies (few); across points every matched packet repeats.
    order = _stable_argsort_few_ties(content) if one_capture else np.argsort(content, kind="stable")
    rows, content = rows[order], content[order]
    t = ts[rows]
    new_key = _starts(content)
    new_run = new_key if one_capture else new_key | _starts(capture[rows])
    gap = np.zeros(len(rows), dtype=bool)
    gap[1:] = (t[1:] - t[:-1]) > DUPLICATE_WINDOW_NS
    return rows, new_key, new_run, new_run | gap


def _row_sightings(key: np.ndarray, rows: np.ndarray, new_sighting: np.ndarray) -> np.ndarray:
    """Per packet position: its sighting, numbered in sorted order; unmatchable rows get their own after."""
    row_sighting = np.empty(len(key), dtype=np.int64)
    sighting = np.cumsum(new_sighting)
    sighting -= 1
    row_sighting[rows] = sighting
    lone = np.flatnonzero(key == 0)
    row_sighting[lone] = (int(sighting[-1]) + 1 if len(sighting) else 0) + np.arange(len(lone))
    return row_sighting


def _find_sightings(
    key: np.ndarray, ip_id: np.ndarray, capture: np.ndarray, ts: np.ndarray, ttl: np.ndarray
) -> _Sightings:
    rows, new_key, new_run, new_sighting = _sorted_sightings(key, ip_id, capture, ts, one_capture=False)
    c, t = capture[rows], ts[rows]
    first = np.flatnonzero(new_sighting)
    occurrence = _rank_in_run(new_sighting, new_run)[first]
    key_run = (np.cumsum(new_key) - 1)[first]
    match = _group_matches(key_run, occurrence)

    first_row = rows[first]
    sight_ts = t[first]
    sight_capture = c[first]
    left = np.flatnonzero(match < 0)
    if len(left):
        # Second pass without the IP ID: a box on the path may rewrite it.
        k = key[first_row[left]]
        order2 = np.lexsort((sight_ts[left], sight_capture[left], k))
        left = left[order2]
        k = k[order2]
        new_k = _starts(k)
        new_run2 = new_k | _starts(sight_capture[left])
        occurrence2 = _rank_in_run(np.ones(len(left), dtype=bool), new_run2)
        match2 = _group_matches(np.cumsum(new_k) - 1, occurrence2)
        found = match2 >= 0
        match[left[found]] = match2[found] + (int(match.max()) + 1)

    row_sighting = _row_sightings(key, rows, new_sighting)
    ttl_rows = ttl[rows]
    if len(first) == len(rows):  # no copies inside any capture: one row per sighting
        ttl_in = ttl_out = ttl_rows
    else:
        ttl_in, ttl_out = np.maximum.reduceat(ttl_rows, first), np.minimum.reduceat(ttl_rows, first)
    return _Sightings(
        first_row=first_row,
        capture=sight_capture,
        ts=sight_ts,
        ttl=ttl_in,
        ttl_out=ttl_out,
        match=match,
        row_sighting=row_sighting,
        rows_sorted=rows,
    )


@dataclass(frozen=True)
class Correlation:
    """What ``correlate`` found; see the module docstring.

    ``matches``, ``paths`` and ``nat_map`` are the tables whose columns
    ``diag.correlate.columns`` declares: one row per sighting of a matched
    packet, one per matched packet's path, one per distinct translation seen
    between consecutive points.
    ``offsets``: per capture, what to add to its timestamps to be on the
    reference capture's clock (the reference itself is 0 ± 0).
    ``row_match``/``row_sighting``/``row_hop``: per packet position (not
    label), the match id (-1 when not matched), the sighting id and the hop
    (-1 when not matched), for the diagnosis.
    """

    reference: str | None
    offsets: dict[str, ClockOffset]
    row_match: np.ndarray
    row_sighting: np.ndarray
    ts_ref_ns: np.ndarray
    row_hop: np.ndarray
    matches: pd.DataFrame = field(default_factory=lambda: empty_table(MATCH_COLUMNS), repr=False)
    paths: pd.DataFrame = field(default_factory=lambda: empty_table(PATH_COLUMNS), repr=False)
    nat_map: pd.DataFrame = field(default_factory=lambda: empty_table(NAT_COLUMNS), repr=False)
    clock_notes: dict[str, str] = field(default_factory=dict)

    def offset_ns(self, capture: str) -> int:
        offset = self.offsets.get(capture)
        return 0 if offset is None else round(offset.offset_s * 1e9)


def _unmatched(packets: pd.DataFrame, reference: str | None, row_sighting: np.ndarray | None = None) -> Correlation:
    """Nothing matched across points: every packet (or each given sighting) stands alone."""
    n = len(packets)
    offsets = {reference: ClockOffset(0.0, 0.0)} if reference else {}
    return Correlation(
        reference=reference,
        offsets=offsets,
        row_match=np.full(n, -1, dtype=np.int64),
        row_sighting=np.arange(n, dtype=np.int64) if row_sighting is None else row_sighting,
        ts_ref_ns=packets["ts_ns"].to_numpy().astype(np.int64) if n else np.zeros(0, dtype=np.int64),
        row_hop=np.full(n, -1, dtype=np.int64),
    )


def choose_reference(names: Sequence[str]) -> str | None:
    """The client's clock if there is a client capture, else the first capture's."""
    if not names:
        return None
    for name in names:
        if name == "client":
            return name
    for name in names:
        if name.startswith("client"):
            return name
    return names[0]


def correlate(packets: pd.DataFrame, order_hint: Sequence[str] | None = None) -> Correlation:
    """Match packets across the captures in ``packets`` (column ``capture``).

    ``order_hint`` optionally names the capture points in the order a request
    passes them (client first); it only decides the direction between two
    points when neither TTL nor traffic in both directions does.
    """
    capture_code, names = _capture_codes(packets)
    present = [names[c] for c in pd.unique(capture_code)] if len(packets) else []
    reference = choose_reference(present)
    if len(packets) == 0:
        return _unmatched(packets, reference)
    if len(present) < 2:
        # Nothing to match, but copies inside the one capture are still one packet.
        ts = packets["ts_ns"].to_numpy().astype(np.int64)
        ip_id = packets["ip_id"].to_numpy().astype(np.int64)
        key = packet_keys(packets)
        rows, _, _, new_sighting = _sorted_sightings(key, ip_id, capture_code, ts, one_capture=True)
        return _unmatched(packets, reference, _row_sightings(key, rows, new_sighting))

    ts = packets["ts_ns"].to_numpy().astype(np.int64)
    ttl = packets["ttl"].to_numpy().astype(np.int64)
    ip_id = packets["ip_id"].to_numpy().astype(np.int64)
    sights = _find_sightings(packet_keys(packets), ip_id, capture_code, ts, ttl)
    lone = len(sights.row_sighting) - len(sights.rows_sorted)
    sighting_match = np.concatenate([sights.match, np.full(lone, -1, dtype=np.int64)])
    row_match = sighting_match[sights.row_sighting]

    matched = np.flatnonzero(sights.match >= 0)
    addresses = _address_codes(packets)
    sport = packets["sport"].to_numpy().astype(np.int64)
    dport = packets["dport"].to_numpy().astype(np.int64)
    rows = sights.first_row[matched]
    # Order along a path: the TTL on arrival only goes down; between two points on
    # one link (same arrival TTL) the one that forwarded the packet on is later.
    path_rank = sights.ttl[matched] * 256 + sights.ttl_out[matched]

    def endpoints(entries: np.ndarray) -> np.ndarray:
        at = rows[entries]
        return np.stack([addresses[0][at], sport[at], addresses[1][at], dport[at]], axis=1)

    hint_codes = [names.index(n) for n in order_hint if n in names] if order_hint else None
    offsets_by_code, notes_by_code = estimate_offsets(
        match=sights.match[matched],
        capture=sights.capture[matched],
        ts_ns=sights.ts[matched],
        ttl=path_rank,
        endpoints=endpoints,
        n_captures=len(names),
        reference=names.index(reference) if reference else 0,
        order_hint=hint_codes,
    )
    offsets = {names[c]: o for c, o in offsets_by_code.items() if names[c] in present}
    notes = {names[c]: note for c, note in notes_by_code.items()}
    offset_ns_by_code = np.zeros(len(names), dtype=np.int64)
    for code, o in offsets_by_code.items():
        offset_ns_by_code[code] = round(o.offset_s * 1e9)
    ts_ref = ts + offset_ns_by_code[capture_code]

    hop = np.full(len(sights.match), -1, dtype=np.int64)
    hop[matched] = _hop_order(sights.match[matched], sights.capture[matched], path_rank, ts_ref[rows], len(names))
    hop_by_sighting = np.concatenate([hop, np.full(lone, -1, dtype=np.int64)])

    matches, nat_map = _matches_table(packets, sights, hop, names, ts_ref, ttl, addresses, sport, dport)
    return Correlation(
        reference=reference,
        offsets=offsets,
        row_match=row_match,
        row_sighting=sights.row_sighting,
        ts_ref_ns=ts_ref,
        row_hop=hop_by_sighting[sights.row_sighting],
        matches=matches,
        paths=_paths_table(matches, names),
        nat_map=nat_map,
        clock_notes=notes,
    )


def _address_codes(packets: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """src and dst as integer codes into one shared array of address strings."""
    parts = []
    for column in ("src", "dst"):
        values = packets[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            parts.append((values.cat.codes.to_numpy().astype(np.int64), values.cat.categories.astype(str)))
        else:
            codes, uniques = pd.factorize(values.astype(str))
            parts.append((codes.astype(np.int64), pd.Index(uniques).astype(str)))
    (src_codes, src_cats), (dst_codes, dst_cats) = parts
    addresses = src_cats.append(dst_cats).unique()
    src_map = np.append(addresses.get_indexer(src_cats), -1)
    dst_map = np.append(addresses.get_indexer(dst_cats), -1)
    # -1 (missing) indexes the appended -1, so absent stays absent.
    return src_map[src_codes], dst_map[dst_codes], np.asarray(addresses, dtype=object)


def _hop_order(
    match: np.ndarray, capture: np.ndarray, rank: np.ndarray, ts_ref: np.ndarray, n_captures: int
) -> np.ndarray:
    """Position of each sighting along its packet's path.

    ``rank`` orders by TTL (it only goes down along a path, so higher is
    earlier; see ``correlate``); equal ranks fall back to the corrected time,
    then to the capture order. A sighting's
    hop is the number of sightings of the same match that come before it.
    """
    n_match = int(match.max()) + 1 if len(match) else 0
    present = np.zeros((n_captures, n_match), dtype=bool)
    wide_ttl = np.zeros((n_captures, n_match), dtype=np.int64)
    wide_ts = np.zeros((n_captures, n_match), dtype=np.int64)
    present[capture, match] = True
    wide_ttl[capture, match] = rank
    wide_ts[capture, match] = ts_ref
    hop = np.zeros(len(match), dtype=np.int64)
    for other in range(n_captures):
        if not present[other].any():
            continue
        # One point's row at a time: a 1-D gather, no flat index to compute per element.
        o_present = present[other][match]
        o_ttl = wide_ttl[other][match]
        o_ts = wide_ts[other][match]
        earlier = (o_ttl > rank) | ((o_ttl == rank) & ((o_ts < ts_ref) | ((o_ts == ts_ref) & (other < capture))))
        hop += o_present & earlier
    return hop


def _matches_table(
    packets: pd.DataFrame,
    sights: _Sightings,
    hop_of_sighting: np.ndarray,
    names: list[str],
    ts_ref: np.ndarray,
    ttl: np.ndarray,
    addresses: tuple[np.ndarray, np.ndarray, np.ndarray],
    sport_all: np.ndarray,
    dport_all: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The matches table and the NAT map, computed on integer codes (strings only for distinct rewrites)."""
    sighting_all = sights.row_sighting[sights.rows_sorted]
    keep = sights.match[sighting_all] >= 0
    positions = sights.rows_sorted[keep]
    if len(positions) == 0:
        return empty_table(MATCH_COLUMNS), empty_table(NAT_COLUMNS)
    sighting = sighting_all[keep]
    match = sights.match[sighting]
    hop = hop_of_sighting[sighting]
    # Rows come grouped by sighting (copies in time order) and roughly by match: nearly sorted.
    order = np.argsort(match * (len(names) + 1) + hop, kind="stable")
    positions, sighting, match, hop = positions[order], sighting[order], match[order], hop[order]
    src_all, dst_all, address_text = addresses
    n = len(positions)
    same_match = np.zeros(n, dtype=bool)
    same_match[1:] = match[1:] == match[:-1]
    duplicate = positions != sights.first_row[sighting]
    cap = sights.capture[sighting]
    src, dst = src_all[positions], dst_all[positions]
    sport, dport = sport_all[positions], dport_all[positions]
    # Rewrite against the previous copy along the path: a copy inside the same
    # capture (a box's egress after its ingress) shows what that box rewrote.
    changed = np.zeros(n, dtype=bool)
    changed[1:] = same_match[1:] & (
        (src[1:] != src[:-1]) | (dst[1:] != dst[:-1]) | (sport[1:] != sport[:-1]) | (dport[1:] != dport[:-1])
    )
    after = np.flatnonzero(changed)
    before = after - 1
    proto = packets["proto"].to_numpy()[positions[after]].astype(np.int64)
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
    nat = pd.Categorical.from_codes(nat_codes, categories=texts)
    capture_categories = pd.Index(names)
    prev_codes = np.full(n, -1, dtype=np.int64)
    prev_codes[1:] = np.where(same_match[1:], cap[:-1], -1)
    rows = (
        positions
        if isinstance(packets.index, pd.RangeIndex) and packets.index.start == 0 and packets.index.step == 1
        else packets.index.to_numpy()[positions]
    )

    categories = pd.Index(address_text)
    table = pd.DataFrame(
        {
            "row": rows,
            "capture": pd.Categorical.from_codes(cap, categories=capture_categories),
            "match_id": match,
            "hop": hop,
            "duplicate": duplicate,
            "ts_ref_ns": ts_ref[positions],
            "ttl": ttl[positions],
            "src": pd.Categorical.from_codes(src, categories=categories),
            "dst": pd.Categorical.from_codes(dst, categories=categories),
            "sport": sport,
            "dport": dport,
            "prev_capture": pd.Categorical.from_codes(prev_codes + 1, categories=pd.Index(["", *names]).unique()),
            "nat": nat,
            "position": positions,
            "sighting": sighting,
        },
        copy=False,  # fresh arrays: no need to copy them into one block
    )
    nat_map = pd.DataFrame(translations, columns=list(NAT_COLUMNS))
    nat_map = nat_map.sort_values(["from_capture", "to_capture", "proto", "side", "before", "after"])
    nat_map = nat_map.reset_index(drop=True)
    return table, nat_map


def describe_rewrite(
    src0: str, dst0: str, sport0: int, dport0: int, src1: str, dst1: str, sport1: int, dport1: int
) -> str:
    """'' when nothing changed, else e.g. 'dst 198.51.100.10:80→198.18.1.10:30080'."""
    parts = []
    if (src0, sport0) != (src1, sport1):
        parts.append(f"src {endpoint_text(src0, sport0)}→{endpoint_text(src1, sport1)}")
    if (dst0, dport0) != (dst1, dport1):
        parts.append(f"dst {endpoint_text(dst0, dport0)}→{endpoint_text(dst1, dport1)}")
    return ", ".join(parts)


def _paths_table(matches: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per match: the points in order (distinct paths are few, so each is built once)."""
    if matches.empty:
        return empty_table(PATH_COLUMNS)
    # Columns taken apart rather than the whole table filtered: only four are read.
    first = ~matches["duplicate"].to_numpy()
    match = matches["match_id"].to_numpy()[first]
    code = matches["capture"].cat.codes.to_numpy()[first].astype(np.int64)  # categories are ``names``
    ts = matches["ts_ref_ns"].to_numpy()[first]
    new = np.ones(len(match), dtype=bool)
    new[1:] = match[1:] != match[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(match)) - 1
    n_points = ends - starts + 1
    bits = max(1, (len(names) + 1).bit_length())
    if bits * int(n_points.max()) <= 63:
        hop = matches["hop"].to_numpy()[first].astype(np.int64)
        packed = np.add.reduceat((code + 1) << (bits * hop), starts)
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
        captures = np.asarray(names, dtype=object)[code]
        points_col = np.empty(len(starts), dtype=object)
        points_col[:] = [tuple(captures[a : b + 1]) for a, b in zip(starts, ends, strict=True)]
    # Taken from an index of the names: the string column is built once, not per row from Python strings.
    capture_names = pd.Index(names)
    return pd.DataFrame(
        {
            "match_id": match[starts],
            "points": points_col,
            "n_points": n_points,
            "first_capture": capture_names.take(code[starts]).array,
            "last_capture": capture_names.take(code[ends]).array,
            "first_ts_ns": ts[starts],
            "last_ts_ns": ts[ends],
        }
    )
