"""The same packet seen at several capture points, through NAT.

A NAT box rewrites addresses and ports but leaves most of a packet alone: TCP
sequence and acknowledgement numbers, flags, options, the payload; for UDP the
payload and (on Linux) the IPv4 identification. ``correlate`` hashes those
untouched fields into a key per packet and groups equal keys across captures,
so one *match* is one packet followed from point to point.

Steps, over the concatenated packet table (vectorised, or compiled passes where
a step visits packets in hash order):

1. ``packet_keys`` (``diag.flows.copies``): one 64-bit key per packet from the
   fields NAT leaves alone (0 for packets that cannot be matched, such as ARP).
2. ``diag.correlate.sightings``: inside one capture, copies of the same packet a few
   milliseconds apart are one sighting (a capture on both interfaces of a
   forwarding box, or ``-i any``, sees a forwarded packet twice). This is
   wider than the flow table's ``diag.flows.copies.forwarded_copies``: a copy a box
   rewrote by NAT joins the sighting too, since the rewrite is what the
   correlation wants to see.
3. Matching: the k-th sighting of a key (and IP ID) at one point is the k-th at
   every other point, so retransmissions of the same segment stay apart. A
   second pass without the IP ID catches boxes that rewrite it.
4. Clock offsets (``diag.correlate.clock``) from the matched packets, then the order of
   the points along each packet's path (``diag.correlate.paths``: TTL first, it only
   goes down, and inside a tunnel the outer TTL; then the corrected time).
5. The per-row ``matches`` table with the rewrite seen against the previous copy,
   the ``paths`` and the NAT map (``diag.correlate.tables``).

Grouping is done by putting rows in the order of their content hash once
(captures are already in time order, so equal keys come out in capture and time
order); everything after reads runs of that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.compiled import compiled
from diag.correlate.clock import ClockOffset, estimate_offsets
from diag.correlate.columns import MATCH_COLUMNS, NAT_COLUMNS, PATH_COLUMNS, empty_table
from diag.correlate.paths import lay_out_paths, path_rank
from diag.correlate.records import packet_records
from diag.correlate.sightings import Sightings, find_sightings, one_capture_sightings
from diag.correlate.tables import matches_and_nat, paths_table
from diag.flows.copies import packet_keys
from diag.flows.keys import read_only

IntArray = npt.NDArray[np.int64]


def _capture_codes(packets: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    captures = packets["capture"]
    if isinstance(captures.dtype, pd.CategoricalDtype):
        names = [str(c) for c in captures.cat.categories]
        return captures.cat.codes.to_numpy().astype(np.int64), names
    codes, uniques = pd.factorize(captures, sort=False)
    return codes.astype(np.int64), [str(u) for u in uniques]


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
    # Read-only arrays that cost no memory per packet: -1 everywhere, and the packets' own times (one clock).
    none = np.broadcast_to(np.int64(-1), (n,))
    return Correlation(
        reference=reference,
        offsets=offsets,
        row_match=none,
        row_sighting=np.arange(n, dtype=np.int64) if row_sighting is None else row_sighting,
        ts_ref_ns=read_only(packets["ts_ns"].to_numpy(), np.int64) if n else np.zeros(0, dtype=np.int64),
        row_hop=none,
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


def correlate(
    packets: pd.DataFrame,
    order_hint: Sequence[str] | None = None,
    offsets: Mapping[str, ClockOffset] | None = None,
) -> Correlation:
    """Match packets across the captures in ``packets`` (column ``capture``).

    ``order_hint`` optionally names the capture points in the order a request
    passes them (client first); it only decides the direction between two
    points when neither TTL nor traffic in both directions does. ``offsets``,
    when given, are the clock offsets to use instead of estimating them from
    these packets (a cluster estimates them once from every partition's
    packets, ``diag.clocks``, and correlates each partition with them).
    """
    return correlate_in_steps(packets, order_hint, offsets).finish()


@dataclass(frozen=True)
class CorrelationSteps:
    """``correlate``'s result in two steps: what the diagnosis reads first, the tables after.

    ``for_diagnosis`` has every per-row array (match, sighting, hop, reference time) and the clock
    offsets, and empty ``matches``, ``paths`` and ``nat_map``: the diagnosis reads nothing else, so it
    can start while ``finish`` builds the tables (on another thread: ``analyze`` does). ``finish()`` is
    the whole ``Correlation``, the same as ``correlate``'s.
    """

    for_diagnosis: Correlation
    finish: Callable[[], Correlation]


def correlate_in_steps(
    packets: pd.DataFrame,
    order_hint: Sequence[str] | None = None,
    offsets: Mapping[str, ClockOffset] | None = None,
) -> CorrelationSteps:
    """``correlate`` (same arguments) in two steps, see ``CorrelationSteps``."""
    capture_code, names = _capture_codes(packets)
    present = [names[c] for c in _in_order_of_appearance(read_only(capture_code, np.int64), len(names))]
    reference = choose_reference(present)
    if len(packets) == 0:
        return _done(_unmatched(packets, reference))
    ts = np.asarray(packets["ts_ns"].to_numpy(), dtype=np.int64)
    ip_id = np.asarray(packets["ip_id"].to_numpy(), dtype=np.int64)
    one_capture = len(present) < 2
    if one_capture:
        # Nothing to match, but copies inside the one capture are still one packet.
        return _done(
            _unmatched(packets, reference, one_capture_sightings(packet_keys(packets), ip_id, capture_code, ts))
        )

    seen = sightings_across(packets, capture_code, ts, ip_id)
    sights, rank = seen.sights, seen.rank
    hint_codes = [names.index(n) for n in order_hint if n in names] if order_hint else None
    if offsets is None:
        offsets_by_code, notes_by_code = estimate_offsets(
            match=sights.match,
            capture=sights.capture,
            ts_ns=sights.ts,
            ttl=rank,
            endpoints=seen.endpoints,
            n_captures=len(names),
            reference=names.index(reference) if reference else 0,
            order_hint=hint_codes,
        )
    else:
        offsets_by_code = {names.index(name): offset for name, offset in offsets.items() if name in names}
        notes_by_code = {}
    offsets = {names[c]: o for c, o in offsets_by_code.items() if names[c] in present}
    notes = {names[c]: note for c, note in notes_by_code.items()}
    offset_ns_by_code = np.zeros(len(names), dtype=np.int64)
    for code, o in offsets_by_code.items():
        offset_ns_by_code[code] = round(o.offset_s * 1e9)
    layout = lay_out_paths(
        sights.match, sights.capture, rank, sights.outer_ttl, sights.ts + offset_ns_by_code[sights.capture]
    )
    row_match, row_hop = _per_row(read_only(sights.row_sighting, np.int64), sights.match, layout.hop)
    rows = Correlation(
        reference=reference,
        offsets=offsets,
        row_match=row_match,
        row_sighting=sights.row_sighting,
        ts_ref_ns=_on_reference_clock(ts, capture_code, offset_ns_by_code),
        row_hop=row_hop,
        clock_notes=notes,
    )

    def finish() -> Correlation:
        matches, nat_map = matches_and_nat(
            packets, sights, layout, names, seen.records, offset_ns_by_code, seen.address_text
        )
        return replace(
            rows, matches=matches, paths=paths_table(sights, layout, offset_ns_by_code, names), nat_map=nat_map
        )

    return CorrelationSteps(rows, finish)


@compiled
def _in_order_of_appearance(codes: IntArray, n_codes: int) -> IntArray:
    """The distinct values of ``codes`` (0 .. n_codes - 1, or -1) in the order they first come."""
    seen = np.zeros(n_codes + 1, dtype=np.bool_)
    found = np.empty(n_codes + 1, dtype=np.int64)
    n_found = 0
    for code in codes:
        if not seen[code + 1]:
            seen[code + 1] = True
            found[n_found] = code
            n_found += 1
            if n_found == n_codes + 1:
                break
    return found[:n_found]


@compiled
def _per_row(row_sighting: IntArray, match: IntArray, hop: IntArray) -> tuple[IntArray, IntArray]:
    """Per packet position, the match and the hop of its sighting (-1 for the rows with a sighting of their
    own, numbered after the others: unmatchable packets)."""
    n, n_sightings = len(row_sighting), len(match)
    row_match = np.empty(n, dtype=np.int64)
    row_hop = np.empty(n, dtype=np.int64)
    for i in range(n):
        s = row_sighting[i]
        if s < n_sightings:
            row_match[i], row_hop[i] = match[s], hop[s]
        else:
            row_match[i] = row_hop[i] = -1
    return row_match, row_hop


def _on_reference_clock(ts: np.ndarray, capture_code: np.ndarray, offset_ns_by_code: IntArray) -> IntArray:
    """Every packet's time with its capture's offset added."""
    return _add_offsets(read_only(ts, np.int64), read_only(capture_code, np.int64), offset_ns_by_code)


@compiled
def _add_offsets(ts: IntArray, capture_code: IntArray, offset_ns_by_code: IntArray) -> IntArray:
    """``ts + offset_ns_by_code[capture_code]`` in one pass."""
    out = np.empty(len(ts), dtype=np.int64)
    for i in range(len(ts)):
        out[i] = ts[i] + offset_ns_by_code[capture_code[i]]
    return out


def _done(correlation: Correlation) -> CorrelationSteps:
    """Steps of a correlation that has no tables to build (one capture, or no packets)."""
    return CorrelationSteps(correlation, lambda: correlation)


@dataclass(frozen=True)
class SightingsAcross:
    """The copies of each packet across the points (sightings, matched where seen at two or more: what the
    clocks read), with what the clocks ask of them: their rank along the path and their endpoints."""

    sights: Sightings
    rank: np.ndarray  # each sighting's place along the path, from its inner and outer TTL
    records: np.ndarray  # the packets' 32-byte records the sightings were cut from
    address_text: np.ndarray  # the address strings the src/dst codes stand for
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray

    def endpoints(self, sightings: np.ndarray) -> np.ndarray:
        """The (src, sport, dst, dport) codes of the first copy of each of those sightings."""
        at = self.sights.first_row[sightings]
        return np.stack([self.src[at], self.sport[at], self.dst[at], self.dport[at]], axis=1).astype(np.int64)


def sightings_across(
    packets: pd.DataFrame, capture_code: np.ndarray, ts: np.ndarray, ip_id: np.ndarray
) -> SightingsAcross:
    """Each packet's sightings over several points: one step of ``correlate`` and of the cluster's clock bounds."""
    src, dst, address_text = _address_codes(packets)
    sport, dport = packets["sport"].to_numpy(), packets["dport"].to_numpy()
    outer_ttl = packets["outer_ttl"].to_numpy() if "outer_ttl" in packets else None
    records = packet_records(ts, capture_code, packets["ttl"].to_numpy(), outer_ttl, (src, dst, sport, dport))
    sights = find_sightings(packet_keys(packets), ip_id, capture_code, ts, records)
    return SightingsAcross(
        sights=sights,
        rank=path_rank(sights.ttl, sights.ttl_out),
        records=records,
        address_text=address_text,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
    )


def _address_codes(packets: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """src and dst as integer codes into one shared array of address strings."""
    parts = []
    for column in ("src", "dst"):
        values = packets[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            parts.append((values.cat.codes.to_numpy(), values.cat.categories.astype(str)))  # int8/16: index as they are
        else:
            codes, uniques = pd.factorize(values.astype(str))
            parts.append((codes.astype(np.int64), pd.Index(uniques).astype(str)))
    (src_codes, src_cats), (dst_codes, dst_cats) = parts
    addresses = src_cats.append(dst_cats).unique()
    src_map = np.append(addresses.get_indexer(src_cats), -1)
    dst_map = np.append(addresses.get_indexer(dst_cats), -1)
    # -1 (missing) indexes the appended -1, so absent stays absent.
    return src_map[src_codes], dst_map[dst_codes], np.asarray(addresses, dtype=object)


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
