"""The same packet seen at several capture points, through NAT.

A NAT box rewrites addresses and ports but leaves most of a packet alone: TCP
sequence and acknowledgement numbers, flags, options, the payload; for UDP the
payload and (on Linux) the IPv4 identification. ``correlate`` hashes those
untouched fields into a key per packet and groups equal keys across captures,
so one *match* is one packet followed from point to point.

Steps, all vectorised over the concatenated packet table:

1. ``packet_keys``: one 64-bit key per packet from the fields NAT leaves alone
   (0 for packets that cannot be matched, such as ARP).
2. ``sightings``: inside one capture, copies of the same packet a few
   milliseconds apart are one sighting (a capture on both interfaces of a
   forwarding box, or ``-i any``, sees a forwarded packet twice).
3. Matching: the k-th sighting of a key (and IP ID) at one point is the k-th at
   every other point, so retransmissions of the same segment stay apart. A
   second pass without the IP ID catches boxes that rewrite it.
4. Clock offsets (``diag.clock``) from the matched packets, then the order of
   the points along each packet's path (TTL first: it only goes down; then the
   corrected time), the rewrites between consecutive points, and the NAT map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from diag.capture.columns import ICMP, ICMPV6, TCP, UDP
from diag.clock import estimate_offsets
from diag.report import ClockOffset

# Copies of one packet inside one capture (ingress and egress of a forwarding
# box) are microseconds apart; retransmissions are at least 200 ms apart.
DUPLICATE_WINDOW_NS = 20_000_000

# ICMP and ICMPv6 error types: their payload quotes a header NAT rewrites, so
# the payload digest is not part of their key.
_ICMP_ERRORS = (3, 4, 5, 11, 12)
_ICMPV6_ERRORS = (1, 2, 3, 4)

_MULT = np.uint64(0x9E3779B97F4A7C15)


def _mix(state: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fold one column into a running 64-bit hash (multiply-xorshift, wraps by design)."""
    state = (state ^ values.astype(np.int64).view(np.uint64)) * _MULT
    return state ^ (state >> np.uint64(29))


def packet_keys(packets: pd.DataFrame) -> np.ndarray:
    """One uint64 per packet from the fields NAT leaves alone; 0 = not matchable.

    The IP ID is deliberately left out (it is a separate matching column) so
    a box that rewrites it can still be followed.
    """
    n = len(packets)
    proto = packets["proto"].to_numpy()
    ip_version = packets["ip_version"].to_numpy()
    state = np.full(n, 0x243F6A8885A308D3, dtype=np.uint64)
    state = _mix(state, proto)
    state = _mix(state, ip_version)
    state = _mix(state, packets["frag_offset"].to_numpy())
    state = _mix(state, packets["more_fragments"].to_numpy())
    state = _mix(state, packets["payload_len"].to_numpy())

    is_tcp = proto == TCP
    is_udp = proto == UDP
    is_icmp = (proto == ICMP) | (proto == ICMPV6)
    icmp_type = packets["icmp_type"].to_numpy()
    is_error = ((proto == ICMP) & np.isin(icmp_type, _ICMP_ERRORS)) | (
        (proto == ICMPV6) & np.isin(icmp_type, _ICMPV6_ERRORS)
    )
    tcp_fields = np.zeros(n, dtype=np.uint64)
    for column in ("tcp_flags", "seq", "ack", "mss", "wscale", "sack_perm", "tsval", "tsecr"):
        tcp_fields = _mix(tcp_fields, packets[column].to_numpy())
    icmp_fields = np.zeros(n, dtype=np.uint64)
    for column in ("icmp_type", "icmp_code", "inner_proto"):
        icmp_fields = _mix(icmp_fields, packets[column].to_numpy())
    digest = packets["payload_digest"].to_numpy().astype(np.uint64)

    state = _mix(state, np.where(is_tcp, tcp_fields, 0).view(np.int64))
    state = _mix(state, np.where(is_icmp, icmp_fields, 0).view(np.int64))
    # The quoted header inside an ICMP error is rewritten by NAT: not in the key.
    state = _mix(state, np.where(is_error, np.uint64(0), digest).view(np.int64))
    # Other IP protocols (and non-first fragments) have only length and IP ID.
    other = ~(is_tcp | is_udp | is_icmp)
    state = _mix(state, np.where(other, packets["ip_len"].to_numpy(), 0))
    state[ip_version == 0] = 0
    state[state == 0] = 1  # keep 0 free as "not matchable"
    state[ip_version == 0] = 0
    return state


def _capture_codes(packets: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    captures = packets["capture"]
    if isinstance(captures.dtype, pd.CategoricalDtype):
        names = [str(c) for c in captures.cat.categories]
        return captures.cat.codes.to_numpy().astype(np.int64), names
    codes, uniques = pd.factorize(captures, sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


def _sightings(capture: np.ndarray, key: np.ndarray, ip_id: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Sighting number per row: copies of one packet inside one capture share it."""
    order = np.lexsort((ts, ip_id, key, capture))
    c, k, i, t = capture[order], key[order], ip_id[order], ts[order]
    new = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        same = (c[1:] == c[:-1]) & (k[1:] == k[:-1]) & (i[1:] == i[:-1])
        new[1:] = ~(same & (t[1:] - t[:-1] <= DUPLICATE_WINDOW_NS))
    sighting_sorted = np.cumsum(new) - 1
    sighting = np.empty(len(order), dtype=np.int64)
    sighting[order] = sighting_sorted
    return sighting


def _occurrence_groups(sight: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Group id per sighting: same ``by`` columns and same rank in time at its capture."""
    ranked = sight.sort_values("ts")
    occurrence = ranked.groupby(["capture", *by], sort=False).cumcount()
    occurrence = occurrence.reindex(sight.index)
    keys = [sight[c].to_numpy() for c in by] + [occurrence.to_numpy()]
    frame = pd.DataFrame({str(i): k for i, k in enumerate(keys)})
    return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy()


def _match_sightings(sight: pd.DataFrame) -> np.ndarray:
    """Match id per sighting (-1 when seen at one point only)."""
    match = np.full(len(sight), -1, dtype=np.int64)
    # Pass 1: content key and IP ID.
    group = _occurrence_groups(sight, ["key", "ip_id"])
    spread = pd.Series(sight["capture"].to_numpy()).groupby(group).transform("nunique").to_numpy()
    matched = spread > 1
    _, match_ids = np.unique(group[matched], return_inverse=True)
    match[matched] = match_ids
    next_id = int(match_ids.max()) + 1 if len(match_ids) else 0
    # Pass 2: what is left, without the IP ID (a box on the path rewrote it).
    rest = sight[~matched]
    if len(rest):
        group2 = _occurrence_groups(rest, ["key"])
        spread2 = pd.Series(rest["capture"].to_numpy()).groupby(group2).transform("nunique").to_numpy()
        matched2 = spread2 > 1
        if matched2.any():
            _, ids2 = np.unique(group2[matched2], return_inverse=True)
            rest_positions = np.flatnonzero(~matched)
            match[rest_positions[matched2]] = ids2 + next_id
    return match


@dataclass
class Correlation:
    """What ``correlate`` found; see the module docstring.

    ``matches``: one row per packet row of a matched packet (``row`` is the
    packet table's row label), with ``match_id``, ``hop`` (0 = first point on
    the path), ``duplicate`` (an extra copy inside the same capture), the
    addresses and ports seen there and, against the previous point, ``nat``
    (the rewrite, '' when none).
    ``paths``: per ``match_id``, the points in order and first/last seen.
    ``offsets``: per capture, what to add to its timestamps to be on the
    reference capture's clock (the reference itself is 0 ± 0).
    ``nat_map``: the distinct translations seen between consecutive points.
    ``row_match``/``row_sighting``: per packet position (not label), the match
    id (-1 when not matched) and the sighting id, for the diagnosis.
    """

    matches: pd.DataFrame
    paths: pd.DataFrame
    reference: str | None
    offsets: dict[str, ClockOffset]
    nat_map: pd.DataFrame
    row_match: np.ndarray
    row_sighting: np.ndarray
    ts_ref_ns: np.ndarray
    clock_notes: dict[str, str] = field(default_factory=dict)

    def offset_ns(self, capture: str) -> int:
        offset = self.offsets.get(capture)
        return 0 if offset is None else round(offset.offset_s * 1e9)


def _empty_correlation(packets: pd.DataFrame, reference: str | None) -> Correlation:
    n = len(packets)
    offsets = {reference: ClockOffset(0.0, 0.0)} if reference else {}
    return Correlation(
        matches=pd.DataFrame(columns=list(_MATCH_COLUMNS)),
        paths=pd.DataFrame(columns=list(_PATH_COLUMNS)),
        reference=reference,
        offsets=offsets,
        nat_map=pd.DataFrame(columns=list(_NAT_COLUMNS)),
        row_match=np.full(n, -1, dtype=np.int64),
        row_sighting=np.arange(n, dtype=np.int64),
        ts_ref_ns=packets["ts_ns"].to_numpy().astype(np.int64) if n else np.zeros(0, dtype=np.int64),
    )


_MATCH_COLUMNS = (
    "row", "capture", "match_id", "hop", "duplicate", "ts_ref_ns", "ttl",
    "src", "dst", "sport", "dport", "prev_capture", "nat",
)  # fmt: skip
_PATH_COLUMNS = ("match_id", "points", "n_points", "first_capture", "last_capture", "first_ts_ns", "last_ts_ns")
_NAT_COLUMNS = ("from_capture", "to_capture", "proto", "before", "after", "packets")


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
    if len(packets) == 0 or len(present) < 2:
        return _empty_correlation(packets, reference)

    ts = packets["ts_ns"].to_numpy().astype(np.int64)
    ttl = packets["ttl"].to_numpy().astype(np.int64)
    ip_id = packets["ip_id"].to_numpy().astype(np.int64)
    key = packet_keys(packets)
    matchable = key != 0

    row_sighting = _sightings(capture_code, key, ip_id, ts)
    rows = np.flatnonzero(matchable)
    # One line per sighting: its first row (earliest copy, highest TTL).
    first_row = pd.Series(rows).groupby(row_sighting[rows]).first()
    sight = pd.DataFrame(
        {
            "sighting": first_row.index.to_numpy(),
            "row": first_row.to_numpy(),
        }
    )
    sight["capture"] = capture_code[sight["row"]]
    sight["key"] = key[sight["row"]]
    sight["ip_id"] = ip_id[sight["row"]]
    sight["ts"] = ts[sight["row"]]
    sight["ttl"] = pd.Series(ttl[rows]).groupby(row_sighting[rows]).max().reindex(sight["sighting"]).to_numpy()
    sight["match"] = _match_sightings(sight)

    row_match = np.full(len(packets), -1, dtype=np.int64)
    sighting_match = np.full(int(row_sighting.max()) + 1, -1, dtype=np.int64)
    sighting_match[sight["sighting"].to_numpy()] = sight["match"].to_numpy()
    row_match[rows] = sighting_match[row_sighting[rows]]

    matched = sight[sight["match"] >= 0]
    hint_codes = [names.index(n) for n in order_hint if n in names] if order_hint else None
    offsets_by_code, notes_by_code = estimate_offsets(
        match=matched["match"].to_numpy(),
        capture=matched["capture"].to_numpy(),
        ts_ns=matched["ts"].to_numpy(),
        ttl=matched["ttl"].to_numpy(),
        flow_direction=_direction_hash(packets, matched["row"].to_numpy()),
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

    matches = _matches_table(packets, row_match, row_sighting, capture_code, names, ts_ref, ttl)
    paths = _paths_table(matches)
    nat_map = _nat_map(matches, packets)
    return Correlation(
        matches=matches,
        paths=paths,
        reference=reference,
        offsets=offsets,
        nat_map=nat_map,
        row_match=row_match,
        row_sighting=row_sighting,
        ts_ref_ns=ts_ref,
        clock_notes=notes,
    )


def _direction_hash(packets: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """A hash of (src, sport, dst, dport) as seen at the point, and of the reverse.

    Returns an (n, 2) array: column 0 this packet's direction, column 1 the
    reverse direction, so the clock estimate can pair a flow's two directions.
    """
    sub = packets.iloc[rows]
    src = pd.util.hash_array(sub["src"].astype(str).to_numpy())
    dst = pd.util.hash_array(sub["dst"].astype(str).to_numpy())
    sport = sub["sport"].to_numpy().astype(np.int64)
    dport = sub["dport"].to_numpy().astype(np.int64)
    seed = np.zeros(len(rows), dtype=np.uint64)
    forward = _mix(_mix(_mix(_mix(seed, src.view(np.int64)), sport), dst.view(np.int64)), dport)
    reverse = _mix(_mix(_mix(_mix(seed, dst.view(np.int64)), dport), src.view(np.int64)), sport)
    return np.stack([forward, reverse], axis=1)


def _matches_table(
    packets: pd.DataFrame,
    row_match: np.ndarray,
    row_sighting: np.ndarray,
    capture_code: np.ndarray,
    names: list[str],
    ts_ref: np.ndarray,
    ttl: np.ndarray,
) -> pd.DataFrame:
    positions = np.flatnonzero(row_match >= 0)
    if len(positions) == 0:
        return pd.DataFrame(columns=list(_MATCH_COLUMNS))
    sub = packets.iloc[positions]
    table = pd.DataFrame(
        {
            "row": packets.index.to_numpy()[positions],
            "position": positions,
            "capture_code": capture_code[positions],
            "match_id": row_match[positions],
            "sighting": row_sighting[positions],
            "ts_ref_ns": ts_ref[positions],
            "ttl": ttl[positions],
            "src": sub["src"].astype(str).to_numpy(),
            "dst": sub["dst"].astype(str).to_numpy(),
            "sport": sub["sport"].to_numpy(),
            "dport": sub["dport"].to_numpy(),
        }
    )
    # Path order: TTL only goes down along a path; equal TTLs fall back to the
    # corrected time. Copies inside one capture sort right after their first.
    table["sighting_ttl"] = table.groupby("sighting")["ttl"].transform("max")
    table["sighting_ts"] = table.groupby("sighting")["ts_ref_ns"].transform("min")
    table = table.sort_values(
        ["match_id", "sighting_ttl", "sighting_ts", "sighting", "ts_ref_ns"],
        ascending=[True, False, True, True, True],
        kind="stable",
    )
    table["duplicate"] = table.duplicated("sighting")
    firsts = table[~table["duplicate"]]
    hop = firsts.groupby("match_id").cumcount()
    table["hop"] = hop.reindex(table.index).groupby(table["sighting"]).transform("first").astype(np.int64)
    # Rewrite against the previous copy along the path: a copy inside the same
    # capture (a box's egress after its ingress) shows what that box rewrote.
    prev = table.groupby("match_id")[["capture_code", "src", "dst", "sport", "dport"]].shift(1)
    table["prev_capture"] = ""
    table["nat"] = ""
    has_prev = prev["capture_code"].notna().to_numpy()
    idx = table.index[has_prev]
    if len(idx):
        p = prev.loc[idx]
        cur = table.loc[idx]
        table.loc[idx, "prev_capture"] = [names[int(c)] for c in p["capture_code"]]
        table.loc[idx, "nat"] = [
            describe_rewrite(ps, pd_, int(psp), int(pdp), cs, cd, int(csp), int(cdp))
            for ps, pd_, psp, pdp, cs, cd, csp, cdp in zip(
                p["src"],
                p["dst"],
                p["sport"],
                p["dport"],
                cur["src"],
                cur["dst"],
                cur["sport"],
                cur["dport"],
                strict=True,
            )
        ]
    table["capture"] = [names[c] for c in table["capture_code"]]
    table = table.sort_values(["match_id", "hop", "ts_ref_ns"], kind="stable").reset_index(drop=True)
    return table[[*_MATCH_COLUMNS, "position", "sighting"]]


def _endpoint(addr: str, port: int) -> str:
    if port < 0:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def describe_rewrite(
    src0: str, dst0: str, sport0: int, dport0: int, src1: str, dst1: str, sport1: int, dport1: int
) -> str:
    """'' when nothing changed, else e.g. 'dst 198.51.100.10:80→198.18.1.10:30080'."""
    parts = []
    if (src0, sport0) != (src1, sport1):
        parts.append(f"src {_endpoint(src0, sport0)}→{_endpoint(src1, sport1)}")
    if (dst0, dport0) != (dst1, dport1):
        parts.append(f"dst {_endpoint(dst0, dport0)}→{_endpoint(dst1, dport1)}")
    return ", ".join(parts)


def _paths_table(matches: pd.DataFrame) -> pd.DataFrame:
    if matches.empty:
        return pd.DataFrame(columns=list(_PATH_COLUMNS))
    firsts = matches[~matches["duplicate"]]
    grouped = firsts.groupby("match_id", sort=True)
    paths = pd.DataFrame(
        {
            "points": grouped["capture"].agg(tuple),
            "n_points": grouped.size(),
            "first_capture": grouped["capture"].first(),
            "last_capture": grouped["capture"].last(),
            "first_ts_ns": grouped["ts_ref_ns"].first(),
            "last_ts_ns": grouped["ts_ref_ns"].last(),
        }
    )
    paths.index.name = "match_id"
    return paths.reset_index()


def _nat_map(matches: pd.DataFrame, packets: pd.DataFrame) -> pd.DataFrame:
    """Distinct rewrites between consecutive copies (same capture = inside that box)."""
    if matches.empty:
        return pd.DataFrame(columns=list(_NAT_COLUMNS))
    ordered = matches.sort_values(["match_id", "hop", "ts_ref_ns"], kind="stable")
    before = ordered.groupby("match_id")[["src", "dst", "sport", "dport"]].shift(1)
    rewritten = (ordered["nat"] != "").to_numpy()
    if not rewritten.any():
        return pd.DataFrame(columns=list(_NAT_COLUMNS))
    after = ordered[rewritten]
    before = before[rewritten]
    proto = packets["proto"].to_numpy()[after["position"].to_numpy()]
    table = pd.DataFrame(
        {
            "from_capture": after["prev_capture"].to_numpy(),
            "to_capture": after["capture"].to_numpy(),
            "proto": proto,
            "before": [
                f"{_endpoint(s, int(sp))}→{_endpoint(d, int(dp))}"
                for s, sp, d, dp in zip(before["src"], before["sport"], before["dst"], before["dport"], strict=True)
            ],
            "after": [
                f"{_endpoint(s, int(sp))}→{_endpoint(d, int(dp))}"
                for s, sp, d, dp in zip(after["src"], after["sport"], after["dst"], after["dport"], strict=True)
            ],
        }
    )
    counted = table.groupby(["from_capture", "to_capture", "proto", "before", "after"], sort=True).size()
    return counted.rename("packets").reset_index()
