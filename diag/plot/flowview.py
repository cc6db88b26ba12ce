"""One connection as the pictures show it: each packet and the capture points it crossed.

This is the pure part of the plotting: from a ``Report`` it picks the packets of
one connection at every capture point (following the correlation's matches
through NAT, where addresses change from point to point), groups the sightings
of the same physical packet into a trip, puts every timestamp on the reference
clock, and works out what the labels say. Drawing lives in ``ladder`` and
``timeline``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from diag.capture.proto import ACK, FIN, PSH, RST, SYN
from diag.errors import DiagError
from diag.plot.lanes import order_lanes
from diag.report import Finding, PacketRef, Report

FlowSelector = Finding | PacketRef | int | str | None

_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}

_SEQ_SPACE = 1 << 32

# Zeek conn_state values of a connection that did not open and close normally: no answer (S0), rejected,
# reset by either side, or seen half-way (SH, SHR).
PROBLEM_STATES = frozenset({"S0", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR"})

# Causes in which the reset is made by a box that impersonates one of the endpoints.


@dataclass(frozen=True)
class Sighting:
    """One packet seen at one capture point."""

    lane: str
    row: Hashable  # label of the packet's row in ``report.packets``
    t: float  # seconds since the epoch, on the reference clock
    src: str  # "addr:port" as seen at this point
    dst: str


@dataclass
class PacketTrip:
    """One physical packet and the capture points it crossed, in order."""

    sightings: tuple[Sighting, ...]
    flags: int
    forward: bool  # sent in the direction of the connection's first SYN (originator to responder)
    seq: int
    ack: int
    payload_len: int
    proto: int = 6
    retransmission: bool = False
    seq_rel: int | None = None
    ack_rel: int | None = None
    finding: Finding | None = None  # set when this packet is a finding's symptom

    @property
    def start(self) -> float:
        return self.sightings[0].t

    @property
    def lanes(self) -> tuple[str, ...]:
        return tuple(s.lane for s in self.sightings)

    @property
    def is_rst(self) -> bool:
        return self.flags >= 0 and bool(self.flags & RST)

    @property
    def flag_name(self) -> str:
        """TCP flags (SYN, SYN-ACK, RST, ...), or the protocol for anything else (UDP, ICMP)."""
        if self.proto == 6 or self.flags >= 0:
            return flag_name(self.flags)
        return _PROTO_NAMES.get(self.proto, f"IP proto {self.proto}").upper()

    @property
    def label(self) -> str:
        """What the arrow says: flags, relative seq/ack, payload length."""
        parts = [self.flag_name]
        if self.seq_rel is not None:
            parts.append(f"seq={self.seq_rel}")
        if self.ack_rel is not None:
            parts.append(f"ack={self.ack_rel}")
        if self.payload_len > 0:
            parts.append(f"len={self.payload_len}")
        return " ".join(parts)

    @property
    def signature(self) -> tuple[object, ...]:
        """What makes two packets 'the same step' when looking for repeated cycles."""
        return (self.forward, self.flag_name, self.lanes, self.payload_len)


@dataclass
class FlowView:
    """Everything a picture needs about one connection."""

    lanes: list[str]  # every capture point, in drawing order
    seen: set[str]  # the points that saw at least one packet of the connection
    trips: list[PacketTrip]  # in order of first sighting, on the reference clock
    endpoints: dict[str, list[str]]  # per point: the connection's addresses as seen there
    client: str  # the connection as the client addressed it, when known
    server: str
    proto: str
    finding: Finding | None  # the finding that chose this connection (or the first about it)
    findings: list[Finding] = field(default_factory=list)  # every finding about its packets
    clock_reference: str | None = None

    @property
    def t0(self) -> float:
        return self.trips[0].start if self.trips else 0.0

    @property
    def retransmissions(self) -> int:
        return sum(trip.retransmission for trip in self.trips)


def flag_name(flags: int) -> str:
    """TCP flags the way people say them: SYN, SYN-ACK, RST, RST-ACK, FIN-ACK, PSH-ACK, ACK."""
    if flags < 0:
        return "(not TCP)"
    names = [name for bit, name in ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH")) if flags & bit]
    if flags & ACK:
        names.append("ACK")
    return "-".join(names) if names else "(no flags)"


def flow_view(report: Report, flow: FlowSelector = None) -> FlowView:
    """The connection chosen by ``flow`` (see ``select_seed``) across every capture point."""
    packets = report.packets
    if packets is None or packets.empty:
        raise DiagError("nothing to draw: the report has no packets")
    seed_row, chosen = select_seed(report, flow)

    matches = _normalise_matches(report.matches, packets.index)
    positions = _connection_positions(packets, matches, _position_of(packets.index, seed_row))
    flow_rows = _flow_table(report, positions).sort_values(["t", "position"])

    records: Records = {row: {str(k): v for k, v in values.items()}
                        for row, values in flow_rows.to_dict(orient="index").items()}
    groups = _groups(flow_rows, records, matches)
    originators = _originators(flow_rows, records, groups, chosen)
    trips = _trips(records, groups, originators)
    _number_sequence_space(trips)
    _mark_retransmissions(trips, records)

    findings = _attach_findings(report, trips)
    if chosen is None and findings:
        chosen = max(findings, key=lambda f: f.confidence)

    lanes_all = [c.name for c in report.captures] or []
    lanes_all += [str(name) for name in packets["capture"].unique() if str(name) not in lanes_all]
    forward_paths = [trip.lanes for trip in trips if trip.forward and not trip.is_rst]
    main_path = max(forward_paths, key=len) if forward_paths else (trips[0].lanes if trips else ())
    lanes = order_lanes(lanes_all, main_path, [trip.lanes for trip in trips])

    proto_number = int(flow_rows["proto"].iloc[0]) if not flow_rows.empty else -1
    client, server, proto = _describe_connection(trips, proto_number, chosen)
    return FlowView(
        lanes=lanes,
        seen={s.lane for trip in trips for s in trip.sightings},
        trips=trips,
        endpoints=_endpoints_per_lane(flow_rows, originators),
        client=client,
        server=server,
        proto=proto,
        finding=chosen,
        findings=findings,
        clock_reference=report.clock_reference,
    )


def select_seed(report: Report, flow: FlowSelector) -> tuple[Hashable, Finding | None]:
    """One packet row of the wanted connection, and the finding that named it (if any).

    ``flow`` may be a ``Finding``, a ``PacketRef``, a position in ``report.flows``,
    an endpoint ``"addr:port"`` seen in any capture, or None: the verdict's
    connection, else the first connection with a finding, else the first flow.
    """
    packets = report.packets
    if flow is None:
        flow = report.verdict
        if flow is None:
            return _first_flow_row(report), None
    if isinstance(flow, Finding):
        row = _row_of_finding(report, flow)
        return row, flow
    if isinstance(flow, PacketRef):
        return _row_of_ref(packets, flow), None
    if isinstance(flow, bool) or not isinstance(flow, int | str):
        raise DiagError(f"cannot select a connection from {flow!r}")
    if isinstance(flow, int):
        if report.flows is None or not 0 <= flow < len(report.flows):
            count = 0 if report.flows is None else len(report.flows)
            raise DiagError(f"flow {flow} does not exist (the report has {count} flows)")
        return _row_of_flow_record(report, report.flows.iloc[flow]), None
    endpoint = flow.strip()
    table = _endpoint_columns(packets)
    hits = np.flatnonzero((table["src_ep"] == endpoint).to_numpy() | (table["dst_ep"] == endpoint).to_numpy())
    if len(hits) == 0:
        raise DiagError(f"no packet to or from {endpoint} in the report")
    return packets.index[hits[0]], None


def _first_flow_row(report: Report) -> Hashable:
    flows = report.flows
    if flows is not None and not flows.empty and {"capture", "orig", "resp"} <= set(flows.columns):
        # Zeek's state says it best (a connection closed by FIN then RST is SF: fine); the resets otherwise.
        troubled = np.zeros(len(flows), dtype=bool)
        if "conn_state" in flows.columns:
            troubled = flows["conn_state"].isin(PROBLEM_STATES).to_numpy(dtype=bool)
        elif "rsts" in flows.columns:
            troubled = flows["rsts"].map(lambda value: isinstance(value, list) and bool(value)).to_numpy(dtype=bool)
        if "carrier" in flows.columns:  # a tunnel is never the connection to draw
            troubled = troubled & ~flows["carrier"].to_numpy(dtype=bool)
        first = int(np.argmax(troubled)) if troubled.any() else 0
        return _row_of_flow_record(report, flows.iloc[first])
    # No flow table: the first connection attempt (a bare SYN), else the first IP packet.
    packets = report.packets
    flags = packets["tcp_flags"].to_numpy()
    for candidates in ((flags >= 0) & ((flags & (SYN | ACK)) == SYN), packets["ip_version"].to_numpy() > 0):
        hits = np.flatnonzero(candidates)
        if len(hits):
            row: Hashable = packets.index[hits[0]]
            return row
    raise DiagError("nothing to draw: the report has no IP packets")


def _row_of_flow_record(report: Report, record: pd.Series) -> Hashable:
    packets = report.packets
    table = _endpoint_columns(packets)
    orig, resp = str(record["orig"]), str(record["resp"])
    in_capture = (packets["capture"].astype(str) == str(record["capture"])).to_numpy()
    src, dst = table["src_ep"].to_numpy(), table["dst_ep"].to_numpy()
    hits = np.flatnonzero(in_capture & (((src == orig) & (dst == resp)) | ((src == resp) & (dst == orig))))
    if len(hits) == 0:
        raise DiagError(f"no packet of flow {orig} -> {resp} in capture {record['capture']}")
    first: Hashable = packets.index[hits[0]]
    return first


def _row_of_ref(packets: pd.DataFrame, ref: PacketRef) -> Hashable:
    here = (packets["capture"].astype(str) == ref.capture).to_numpy() & (packets["index"] == ref.index).to_numpy()
    if here.sum() > 1 and "file" in packets.columns:  # a point of several files counts packets from 0 in each
        here &= (packets["file"] == ref.file).to_numpy()
    hits = np.flatnonzero(here)
    if len(hits) == 0:
        raise DiagError(f"packet {ref.index} of capture {ref.capture} is not in the report")
    first: Hashable = packets.index[hits[0]]
    return first


def _row_of_finding(report: Report, finding: Finding) -> Hashable:
    if finding.packet is not None:
        return _row_of_ref(report.packets, finding.packet)
    table = _endpoint_columns(report.packets)
    ends = {finding.client, finding.server}
    hits = np.flatnonzero(table["src_ep"].isin(ends).to_numpy() | table["dst_ep"].isin(ends).to_numpy())
    if len(hits) == 0:
        raise DiagError(f"no packet of {finding.client} -> {finding.server} in the report")
    first: Hashable = report.packets.index[hits[0]]
    return first


def _endpoint_columns(packets: pd.DataFrame) -> pd.DataFrame:
    """'addr:port' of source and destination, IPv6 in brackets as the flow table writes them
    ('[2001:db8::1]:443'); just 'addr' for packets without ports."""
    def endpoint(addr: pd.Series, port: pd.Series) -> pd.Series:
        text = addr.astype(str)
        host = text.where(~text.str.contains(":", regex=False), "[" + text + "]")
        with_port = host + ":" + port.astype(str)
        return with_port.where(port.to_numpy() >= 0, text)

    return pd.DataFrame(
        {
            "src_ep": endpoint(packets["src"], packets["sport"]),
            "dst_ep": endpoint(packets["dst"], packets["dport"]),
        },
        index=packets.index,
    )


def host_of(endpoint: str) -> str:
    """The address of an endpoint text: '[2001:db8::1]:443' -> '2001:db8::1', '192.0.2.1:80' -> '192.0.2.1'."""
    if endpoint.startswith("["):
        return endpoint[1 : endpoint.index("]")]
    if endpoint.count(":") == 1:
        return endpoint.rpartition(":")[0]
    return endpoint


def _flow_table(report: Report, positions: np.ndarray) -> pd.DataFrame:
    """The rows at ``positions`` with what the pictures need: endpoints, a connection key, corrected time."""
    packets = report.packets.iloc[positions]
    table = _endpoint_columns(packets)
    table["capture"] = packets["capture"].astype(str)
    table["proto"] = packets["proto"].to_numpy()
    low = np.where(table["src_ep"] < table["dst_ep"], table["src_ep"], table["dst_ep"])
    high = np.where(table["src_ep"] < table["dst_ep"], table["dst_ep"], table["src_ep"])
    table["conn"] = table["capture"] + "|" + table["proto"].astype(str) + "|" + low + "|" + high
    offsets = {name: offset.offset_s for name, offset in report.clock_offsets.items()}
    shift = table["capture"].map(offsets).fillna(0.0).to_numpy(dtype=float)
    table["t"] = packets["ts_ns"].to_numpy(dtype=np.int64) / 1e9 + shift
    for column in ("tcp_flags", "seq", "ack", "payload_len", "payload_digest", "ttl"):
        table[column] = packets[column].to_numpy()
    table["position"] = positions
    return table


def _address_codes(column: pd.Series, universe: pd.Index) -> np.ndarray:
    """Each row's address as its position in ``universe`` (categoricals map their categories, not every row)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        mapping = universe.get_indexer(column.cat.categories.astype(str))
        codes = column.cat.codes.to_numpy()
        return np.where(codes >= 0, mapping[codes], -1)
    return universe.get_indexer(pd.Index(column.astype(str)))


def _distinct_text(column: pd.Series) -> np.ndarray:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return np.asarray(column.cat.categories.astype(str))
    return np.asarray(pd.unique(column.astype(str)))


def _connection_ids(packets: pd.DataFrame) -> np.ndarray:
    """One integer per row naming its connection at its capture point: capture, protocol and both endpoints
    in either direction. Integers, not text, because a capture can hold millions of other packets."""
    universe = pd.Index(pd.unique(np.concatenate([_distinct_text(packets["src"]), _distinct_text(packets["dst"])])))
    port_room = 1 << 17  # ports (and -1 for none) fit below this
    source = _address_codes(packets["src"], universe).astype(np.int64) * port_room + packets["sport"].to_numpy() + 1
    target = _address_codes(packets["dst"], universe).astype(np.int64) * port_room + packets["dport"].to_numpy() + 1
    key = pd.DataFrame({
        "capture": pd.factorize(packets["capture"])[0],
        "proto": packets["proto"].to_numpy(),
        "low": np.minimum(source, target),
        "high": np.maximum(source, target),
    })
    return key.groupby(list(key.columns), sort=False).ngroup().to_numpy()


def _normalise_matches(matches: pd.DataFrame | None, packet_index: pd.Index) -> pd.DataFrame:
    """The correlation's ``row`` (packet row label), ``match_id`` and ``hop``, for rows still in the packet
    table (a report whose packets were filtered keeps its matches); empty when nothing was correlated."""
    columns = ["row", "match_id", "hop"]
    if matches is None or matches.empty or not set(columns) <= set(matches.columns):
        return pd.DataFrame({"row": pd.Series(dtype=object), "match_id": pd.Series(dtype="int64"),
                             "hop": pd.Series(dtype="int64")})
    kept = matches.loc[matches["row"].isin(packet_index), columns]
    return kept.reset_index(drop=True)


def _position_of(index: pd.Index, label: Hashable) -> int:
    """Position of a row label (the first one, should the index repeat it)."""
    location = index.get_loc(label)
    if isinstance(location, int):
        return location
    if isinstance(location, slice):
        return int(location.start or 0)
    return int(np.flatnonzero(location)[0])


def _connection_positions(packets: pd.DataFrame, matches: pd.DataFrame, seed: int) -> np.ndarray:
    """Positions of the seed's connection at every point: follow matches through NAT until nothing new joins."""
    conn_ids = _connection_ids(packets)
    match_positions = packets.index.get_indexer(pd.Index(matches["row"])) if not matches.empty else np.zeros(0, int)
    match_ids = matches["match_id"].to_numpy()
    conns = {int(conn_ids[seed])}
    while True:
        in_flow = np.isin(conn_ids, list(conns))
        ids = np.unique(match_ids[in_flow[match_positions]])
        linked = match_positions[np.isin(match_ids, ids)]
        grown = conns | {int(c) for c in np.unique(conn_ids[linked])}
        if grown == conns:
            return np.flatnonzero(in_flow)
        conns = grown


Records = dict[Hashable, dict[str, Any]]  # packet row label -> that row's values


def _groups(flow_rows: pd.DataFrame, records: Records, matches: pd.DataFrame) -> list[list[Hashable]]:
    """Rows of each physical packet, in hop order; an unmatched packet is a group of one."""
    hop_of_row: dict[Hashable, float] = {}
    group_of_row: dict[Hashable, object] = {}
    if not matches.empty:
        relevant = matches[matches["row"].isin(flow_rows.index)]
        hop_of_row = dict(zip(relevant["row"], relevant["hop"], strict=True))
        group_of_row = dict(zip(relevant["row"], relevant["match_id"], strict=True))
    groups: dict[object, list[Hashable]] = {}
    for row in flow_rows.index:
        groups.setdefault(group_of_row.get(row, ("alone", row)), []).append(row)
    return [_path_order(rows, records, hop_of_row) for rows in groups.values()]


def _path_order(rows: list[Hashable], records: Records, hop_of_row: dict[Hashable, float]) -> list[Hashable]:
    """The copies of one packet in the order it passed them.

    The correlation gives each capture point one hop, but a packet can pass a
    point twice (node-a to node-b through the VPC router, then the VPC router
    again towards the NLB), and that point's copies then straddle another
    point's. The TTL sorts them without trusting clocks: it only goes down
    along the path. Two copies with the same TTL are the two ends of one link;
    the one at the point the packet is already at is its way out, so it comes
    first. Without a TTL (not IP), the hop order and the corrected time decide.
    """
    by_hop = sorted(rows, key=lambda r: (hop_of_row.get(r, 0), records[r]["t"]))
    if any(int(records[r]["ttl"]) < 0 for r in rows):
        return by_hop
    ordered: list[Hashable] = []
    for ttl in sorted({int(records[r]["ttl"]) for r in rows}, reverse=True):
        same_ttl = [r for r in by_hop if int(records[r]["ttl"]) == ttl]
        here = records[ordered[-1]]["capture"] if ordered else None
        ordered += [r for r in same_ttl if records[r]["capture"] == here]
        ordered += [r for r in same_ttl if records[r]["capture"] != here]
    return ordered


def _originators(
    flow_rows: pd.DataFrame, records: Records, groups: list[list[Hashable]], chosen: Finding | None
) -> dict[str, str]:
    """Per connection key (one per point and NAT view), the endpoint that opened the connection.

    Where a point saw the first bare SYN, its sender; elsewhere the direction is
    carried over from a point that knows it through a packet both saw (a NAT
    gateway that only saw the reply still learns which side is the client).
    """
    result: dict[str, str] = {}
    for conn, rows in flow_rows.groupby("conn", sort=False):
        flags = rows["tcp_flags"].to_numpy()
        bare_syn = (flags >= 0) & ((flags & (SYN | ACK)) == SYN)
        if bare_syn.any():
            result[str(conn)] = str(rows["src_ep"].to_numpy()[np.argmax(bare_syn)])
    for _ in range(len(groups) + 1):
        learned = False
        for group in groups:
            known = next((r for r in group if records[r]["conn"] in result), None)
            if known is None:
                continue
            forward = records[known]["src_ep"] == result[records[known]["conn"]]
            for row in group:
                conn = str(records[row]["conn"])
                if conn not in result:
                    result[conn] = str(records[row]["src_ep" if forward else "dst_ep"])
                    learned = True
        if not learned:
            break
    for conn, rows in flow_rows.groupby("conn", sort=False):
        if str(conn) in result:
            continue
        ends = set(rows["src_ep"]) | set(rows["dst_ep"])
        known_client = chosen is not None and chosen.client in ends
        result[str(conn)] = chosen.client if chosen is not None and known_client else str(rows["src_ep"].iloc[0])
    return result


def _trips(records: Records, groups: list[list[Hashable]], originators: dict[str, str]) -> list[PacketTrip]:
    """One trip per physical packet, in order of first sighting."""
    trips = []
    for ordered in groups:
        sightings: list[Sighting] = []
        for row in ordered:
            lane = str(records[row]["capture"])
            if sightings and sightings[-1].lane == lane:
                continue  # the same point saw it twice (in and out interface): one sighting
            sightings.append(
                Sighting(
                    lane, row, float(records[row]["t"]),
                    str(records[row]["src_ep"]), str(records[row]["dst_ep"]),
                )
            )
        first = ordered[0]
        conn = str(records[first]["conn"])
        trips.append(
            PacketTrip(
                sightings=tuple(sightings),
                flags=int(records[first]["tcp_flags"]),
                forward=sightings[0].src == originators.get(conn),
                seq=int(records[first]["seq"]),
                ack=int(records[first]["ack"]),
                payload_len=max(int(records[first]["payload_len"]), 0),
                proto=int(records[first]["proto"]),
            )
        )
    trips.sort(key=lambda trip: trip.start)
    return trips


def _number_sequence_space(trips: list[PacketTrip]) -> None:
    """Relative seq/ack like Wireshark's, counted from each side's latest SYN."""
    isn: dict[bool, int] = {}
    for trip in trips:
        if trip.flags < 0:
            continue
        if trip.flags & SYN:
            isn[trip.forward] = trip.seq
        if trip.forward in isn:
            trip.seq_rel = (trip.seq - isn[trip.forward]) % _SEQ_SPACE
        if trip.flags & ACK and (not trip.forward) in isn:
            trip.ack_rel = (trip.ack - isn[not trip.forward]) % _SEQ_SPACE


def _mark_retransmissions(trips: list[PacketTrip], records: Records) -> None:
    """A packet that takes sequence space (SYN, FIN, data) a second time is a retransmission."""
    sent: set[tuple[object, ...]] = set()
    for trip in trips:
        if trip.flags < 0 or not (trip.flags & (SYN | FIN) or trip.payload_len > 0):
            continue
        digest = int(records[trip.sightings[0].row]["payload_digest"])
        key = (trip.forward, trip.flags & (SYN | FIN | RST | ACK), trip.seq, trip.payload_len, digest)
        trip.retransmission = key in sent
        sent.add(key)


def _attach_findings(report: Report, trips: list[PacketTrip]) -> list[Finding]:
    trip_of_row = {s.row: trip for trip in trips for s in trip.sightings}
    attached = []
    for finding in report.findings:
        if finding.packet is None:
            continue
        try:
            row = _row_of_ref(report.packets, finding.packet)
        except DiagError:
            continue
        trip = trip_of_row.get(row)
        if trip is not None:
            trip.finding = finding if trip.finding is None else trip.finding
            attached.append(finding)
    return attached


def _describe_connection(trips: list[PacketTrip], proto: int, chosen: Finding | None) -> tuple[str, str, str]:
    """Client and server as the client addressed them: the first request where it was first seen."""
    if chosen is not None:
        return chosen.client, chosen.server, chosen.proto
    if not trips:
        return "", "", ""
    first = next((trip for trip in trips if trip.forward), trips[0])
    sighting = first.sightings[0]
    client, server = (sighting.src, sighting.dst) if first.forward else (sighting.dst, sighting.src)
    return client, server, _PROTO_NAMES.get(proto, str(proto))


def _endpoints_per_lane(flow_rows: pd.DataFrame, originators: dict[str, str]) -> dict[str, list[str]]:
    """'client-side ⇄ server-side' addresses of the connection at each point (NAT shows up here)."""
    result: dict[str, list[str]] = {}
    for conn, rows in flow_rows.groupby("conn", sort=False):
        lane = str(rows["capture"].iloc[0])
        orig = originators.get(str(conn), str(rows["src_ep"].iloc[0]))
        other = next((ep for ep in pd.unique(pd.concat([rows["src_ep"], rows["dst_ep"]])) if ep != orig), "?")
        result.setdefault(lane, []).append(f"{orig} ⇄ {other}")
    return result
