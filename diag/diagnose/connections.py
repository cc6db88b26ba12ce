"""Connections across capture points: every copy of one TCP or UDP conversation.

At each point a conversation has its own addresses (NAT rewrote them), so a
connection is the union of per-point flows (same 5-tuple at one capture)
linked by matched packets. Each packet row then gets its role: sent by the
originator (the client) or by the responder, decided at the point that saw
the first SYN and carried to the other points through the matches.

UDP replies re-sourced by a NAT box (they arrive from an address the client
never wrote to) match nothing at the client; ``_join_resourced_replies`` links
them to the unanswered request flow they answer by the client's own port.

All of it is done on whole columns, once for every connection: a busy
capture has thousands of connections that end in a RST, and per-connection
DataFrame work (filtering, sorting, copying) would cost milliseconds each.
Python runs per connection only to make its ``Connection``, and per row only
for the few connections that no SYN or SYN-ACK orients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.capture.proto import ACK, RST, SYN, TCP, UDP
from diag.correlate import Correlation

# A re-sourced UDP reply must come this soon after the request it answers.
RESOURCED_REPLY_WINDOW_NS = 5_000_000_000

# The packet table's columns a connection's rows carry (what the diagnosis reads).
TABLE_PACKET_COLUMNS = (
    "capture", "src", "dst", "sport", "dport", "proto", "tcp_flags", "seq", "ack", "ts_ns", "ttl", "ip_id",
    "direction", "index", "file", "payload_len", "payload_digest", "outer_ttl",
)  # fmt: skip
_TEXT_COLUMNS = ("capture", "src", "dst", "direction")  # kept as codes into ``ConnectionTable.names``


@dataclass(frozen=True)
class ConnectionTable:
    """The rows of every connection built in one go, as plain columns.

    Rows are sorted by connection, then reference time, then packet position,
    so a connection is the slice ``[start, stop)`` of every column; nothing is
    filtered or copied per connection. Addresses, capture names and directions
    are integer codes into ``names`` (one shared list of texts).
    ``by_packet`` orders each connection's rows by distinct packet, then hop,
    then reference time: the order ``signals.distinct_packets`` reads them in.
    """

    names: list[str]
    columns: dict[str, np.ndarray]
    by_packet: np.ndarray

    def frame(self, start: int, stop: int) -> pd.DataFrame:
        """A connection's rows as a small DataFrame of the table's columns, texts as texts.

        Built straight from the column slices (no indexing into the packet
        table, whose ``attrs`` pandas would deep-copy on every operation).
        """
        rows = {name: values[start:stop] for name, values in self.columns.items()}
        for text in _TEXT_COLUMNS:
            rows[text] = np.array([self.names[code] for code in rows[text].tolist()], dtype=object)
        return pd.DataFrame(rows, index=rows["position"])


@dataclass
class Connection:
    """One conversation as seen at every point.

    Its rows are a slice of a shared ``ConnectionTable``; ``rows`` gives them
    as a DataFrame indexed by packet position: the packet columns the
    diagnosis reads (``TABLE_PACKET_COLUMNS``) and ``position``, ``match`` (-1
    unmatched), ``pkt`` (one id per distinct packet: a match, or a lone
    sighting), ``sighting``, ``copy`` (True for a second copy in the same
    capture), ``ts_ref`` (ns on the reference clock), ``node`` (the flow at
    one point), ``hop``, ``conn`` and ``from_orig``. ``column(name)`` reads one
    of them without building the DataFrame (the cheaper way in a loop over
    connections). ``client``/``server`` are the endpoints as the client
    addressed them; ``orig_at`` the originator's endpoint at each capture.
    """

    conn_id: int
    proto: int
    client: str
    server: str
    table: ConnectionTable = field(repr=False)
    start: int
    stop: int
    orig_at: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def captures(self) -> list[str]:
        codes = self.table.columns["capture"][self.start : self.stop]
        return [self.table.names[code] for code in dict.fromkeys(codes.tolist())]

    @cached_property
    def rows(self) -> pd.DataFrame:
        """Built on first use only: the diagnosis itself reads the columns."""
        return self.table.frame(self.start, self.stop)

    def column(self, name: str) -> np.ndarray:
        """One column of the connection's rows, in time order (a view, not a copy)."""
        return self.table.columns[name][self.start : self.stop]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def roots(self) -> np.ndarray:
        """Every element's root at once (pointer jumping on the parent array, no per-element calls)."""
        parent = np.array(self.parent, dtype=np.int64)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _flow_nodes(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: the id of its per-capture flow (capture, proto, unordered endpoint pair), by first appearance."""
    n = len(columns["src"])
    src_ep = columns["src"] * 65537 + columns["sport"].astype(np.int64) + 1
    dst_ep = columns["dst"] * 65537 + columns["dport"].astype(np.int64) + 1
    # Endpoints numbered once for both directions, so the pair is two small numbers.
    endpoint, _ = pd.factorize(np.concatenate([src_ep, dst_ep]))
    low, high = np.minimum(endpoint[:n], endpoint[n:]), np.maximum(endpoint[:n], endpoint[n:])
    point = columns["capture"] * 256 + columns["proto"].astype(np.int64)  # capture codes are few and come first
    # One integer per (point, low, high): the ranges multiplied stay far below 2**63 for any capture that
    # fits in memory. Numbered by first appearance, as a groupby with sort=False does.
    n_low = n_high = int(endpoint.max()) + 1
    if (int(point.max()) + 1) * n_low * n_high >= 2**62:
        point = pd.factorize(point)[0].astype(np.int64)
    key = (point.astype(np.int64) * n_low + low) * n_high + high
    nodes, _ = pd.factorize(key)
    numbered: np.ndarray = nodes.astype(np.int64)
    return numbered


def _in_shared_group(group: np.ndarray) -> np.ndarray:
    """Rows whose group id (>= 0) is shared with another row."""
    valid = group >= 0
    counts = np.bincount(group[valid]) if valid.any() else np.zeros(0, dtype=np.int64)
    shared = valid.copy()
    shared[valid] = counts[group[valid]] > 1
    return shared


def _union_groups(uf: _UnionFind, group: np.ndarray, node: np.ndarray) -> None:
    """Join the flows of each group (rows with one group id) into one connection."""
    if len(group) == 0:
        return
    n_nodes = int(node.max()) + 1
    pairs = np.sort(group.astype(np.int64) * n_nodes + node)  # by group, then node
    # Sorting and dropping repeats by hand: numpy's hash-based unique is several times slower here.
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    group, node = np.divmod(pairs, n_nodes)
    starts = np.r_[True, group[1:] != group[:-1]]
    first = node[np.maximum.accumulate(np.where(starts, np.arange(len(pairs)), 0))]
    joined = node != first
    # Many groups link the same two flows (every packet of a connection seen at two points): unite each pair once.
    links = np.sort(node[joined] * n_nodes + first[joined])
    links = links[np.r_[True, links[1:] != links[:-1]]] if len(links) else links
    for a, b in zip(*(part.tolist() for part in np.divmod(links, n_nodes)), strict=True):
        uf.union(a, b)


def _text_codes(column: pd.Series, positions: np.ndarray, names: dict[str, int]) -> np.ndarray:
    """The column's texts at ``positions`` as codes into ``names`` (extended as needed), without a string per row."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = [str(c) for c in column.cat.categories]
        # The last entry serves code -1 (a missing value), which pandas writes as 'nan'.
        lookup = np.array([names.setdefault(c, len(names)) for c in [*categories, "nan"]], dtype=np.int64)
        codes: np.ndarray = lookup[column.cat.codes.to_numpy()[positions]]
        return codes
    values, uniques = pd.factorize(column.iloc[positions].astype(str).to_numpy())
    lookup = np.array([names.setdefault(str(u), len(names)) for u in uniques], dtype=np.int64)
    return lookup[values]


def _take(packets: pd.DataFrame, name: str, positions: np.ndarray, names: dict[str, int]) -> np.ndarray:
    if name in _TEXT_COLUMNS:
        return _text_codes(packets[name], positions, names)
    if name == "file" and name not in packets:
        return np.zeros(len(positions), dtype=np.int16)  # a table not made by the reader: one file per point
    if name == "outer_ttl" and name not in packets:
        return np.full(len(positions), -1, dtype=np.int16)  # a table without tunnel columns: nothing tunnelled
    taken: np.ndarray = packets[name].to_numpy()[positions]
    return taken


def build_connections(packets: pd.DataFrame, corr: Correlation, suspects_only: bool = False) -> list[Connection]:
    """Every TCP and UDP connection in ``packets``, linked across points by ``corr``.

    With ``suspects_only``, connections that cannot hold a symptom (see
    ``_suspect_connections``) are left out, which keeps big captures fast.
    The work is done on whole columns (linking, orienting, choosing each
    connection's client); Python runs once per connection only to make its
    ``Connection``, and per row only for connections no SYN or SYN-ACK orients.
    """
    proto = packets["proto"].to_numpy()
    positions = np.flatnonzero(np.isin(proto, (TCP, UDP)) & (packets["ip_version"].to_numpy() > 0))
    if len(positions) == 0:
        return []
    names: dict[str, int] = {}
    columns: dict[str, np.ndarray] = {"position": positions}
    # First the columns that link flows into connections, for every row; the rest for the rows kept.
    for name in ("capture", "src", "dst", "sport", "dport", "proto", "tcp_flags", "seq", "ts_ns"):
        columns[name] = _take(packets, name, positions, names)
    match = corr.row_match[positions]
    sighting = corr.row_sighting[positions]
    # Unmatched packets get ids after every match id so ``pkt`` is unique.
    base = int(corr.row_match.max()) + 1 if len(corr.row_match) else 0
    columns["match"] = match
    columns["pkt"] = np.where(match >= 0, match, base + sighting)
    columns["sighting"] = sighting
    node = columns["node"] = _flow_nodes(columns)

    uf = _UnionFind(int(node.max()) + 1)
    # Flows sharing a matched packet are one connection, and so are flows holding copies of one
    # packet inside one capture (a box's way in and way out, NAT between them). A group of one row
    # joins nothing: only groups of several rows are sorted.
    for group in (match, sighting):
        shared = _in_shared_group(group)
        _union_groups(uf, group[shared], node[shared])
    # The joins and the choice of suspects read only handshakes, resets and datagrams: a small table.
    flags = columns["tcp_flags"]
    tcp = columns["proto"] == TCP
    telling = ~tcp | ((flags >= 0) & ((flags & (SYN | RST)) != 0))
    table = pd.DataFrame(
        {name: values[telling] for name, values in columns.items() if name not in ("position", "match")}
    )
    _join_by_client_endpoint(table, uf)
    _join_resourced_replies(table, uf)
    conn = uf.roots()[node]
    table["conn"] = conn[telling]
    if suspects_only:
        suspect = np.zeros(int(conn.max()) + 1, dtype=bool)
        suspect[_suspect_connections(table)] = True
        keep = suspect[conn]
    else:
        keep = np.ones(len(conn), dtype=bool)
    del table
    columns["conn"] = conn
    # From here on only the kept rows, once sorted: connection, reference time, position.
    rows = np.flatnonzero(keep)
    ts_ref = corr.ts_ref_ns[positions[rows]]
    order = rows[np.lexsort((positions[rows], ts_ref, conn[rows]))]
    columns = {name: values[order] for name, values in columns.items()}
    kept = columns["position"]
    # A second copy of a packet in one capture: its sighting appeared at an earlier position. (Every copy of
    # a sighting is in one flow, so of one connection: kept or left out together.)
    by_sighting = np.lexsort((kept, columns["sighting"]))
    ordered = columns["sighting"][by_sighting]
    copy = np.ones(len(kept), dtype=bool)
    copy[by_sighting[np.r_[True, ordered[1:] != ordered[:-1]]] if len(kept) else by_sighting] = False
    columns["copy"] = copy
    for name in TABLE_PACKET_COLUMNS:
        if name not in columns:
            columns[name] = _take(packets, name, kept, names)
    columns["ts_ref"] = corr.ts_ref_ns[kept]
    columns["hop"] = np.maximum(corr.row_hop[kept], 0)
    return _orient_all(columns, [name for name, _ in sorted(names.items(), key=lambda item: item[1])])


def _first_per(keys: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key, first row) for each distinct key among the rows where ``where`` holds, rows in order."""
    chosen = np.flatnonzero(where)
    unique, first = np.unique(keys[chosen], return_index=True)
    return unique, chosen[first]


def _orient_all(columns: dict[str, np.ndarray], names: list[str]) -> list[Connection]:
    """Decide who originated each connection at every point, label each row, and make the ``Connection``s.

    ``columns`` hold the rows sorted by connection, reference time and
    position. At each point (per-capture flow, ``node``) the originator is the
    source of the first SYN, else the destination of the first SYN-ACK;
    points that saw neither are oriented through the packets they share
    with oriented ones (``_orient_rest``).
    """
    n = len(columns["conn"])
    if n == 0:
        return []
    conn, node = columns["conn"], columns["node"]
    src, sport, dst, dport = columns["src"], columns["sport"], columns["dst"], columns["dport"]
    starts = np.flatnonzero(np.r_[True, conn[1:] != conn[:-1]])
    stops = np.r_[starts[1:], n]
    dense = np.cumsum(np.r_[True, conn[1:] != conn[:-1]]) - 1  # connection number per row

    flags = columns["tcp_flags"]
    handshake = np.where((columns["proto"] == TCP) & (flags >= 0), flags & (SYN | ACK | RST), -1)
    pure_syn = handshake == SYN
    synack = handshake == SYN | ACK
    n_nodes = int(node.max()) + 1
    orig_addr = np.full(n_nodes, -1, dtype=np.int64)
    orig_port = np.full(n_nodes, -1, dtype=np.int64)
    syn_nodes, syn_rows = _first_per(node, pure_syn)
    orig_addr[syn_nodes], orig_port[syn_nodes] = src[syn_rows], sport[syn_rows]
    # A SYN-ACK goes to the originator: orients a point that never saw the SYN.
    synack_nodes, synack_rows = _first_per(node, synack)
    fresh = orig_addr[synack_nodes] < 0
    synack_nodes, synack_rows = synack_nodes[fresh], synack_rows[fresh]
    orig_addr[synack_nodes], orig_port[synack_nodes] = dst[synack_rows], dport[synack_rows]
    # A connection seen as one flow at one point with neither (UDP, a capture started mid-connection):
    # the first packet's sender is the originator.
    new_node = np.r_[True, (node[1:] != node[:-1]) | (dense[1:] != dense[:-1])]
    lone = np.bincount(dense[new_node], minlength=len(starts)) == 1
    lone &= orig_addr[node[starts]] < 0
    lone_rows = starts[lone]
    orig_addr[node[lone_rows]], orig_port[node[lone_rows]] = src[lone_rows], sport[lone_rows]
    # The order the originator became known at each point: SYNs first, then SYN-ACKs, each in row order.
    event_rows = np.r_[syn_rows, synack_rows, lone_rows]
    event_rank = np.repeat(np.arange(3), [len(syn_rows), len(synack_rows), len(lone_rows)])
    event_rows = event_rows[np.lexsort((event_rows, event_rank, dense[event_rows]))]
    event_bounds = np.searchsorted(dense[event_rows], np.arange(len(starts) + 1))
    extra_events: dict[int, list[int]] = {}
    for k in np.unique(dense[orig_addr[node] < 0]).tolist():
        extra_events[k] = _orient_rest(columns, starts[k], stops[k], orig_addr, orig_port)

    from_orig = (src == orig_addr[node]) & (sport == orig_port[node])
    columns["from_orig"] = from_orig
    # The client's view: the first sighting of the first originator packet (a SYN if there is one).
    has_syn = np.zeros(len(starts), dtype=bool)
    has_syn[dense[pure_syn & from_orig]] = True
    chosen = np.where(has_syn[dense], pure_syn & from_orig, from_orig)
    kept, first_chosen = _first_per(dense, chosen)
    first_pkt = np.full(len(starts), -1, dtype=np.int64)
    first_pkt[kept] = columns["pkt"][first_chosen]
    candidates = np.flatnonzero(chosen & (columns["pkt"] == first_pkt[dense]))
    candidates = candidates[np.lexsort((candidates, columns["ts_ref"][candidates], columns["hop"][candidates],
                                        dense[candidates]))]  # fmt: skip
    _, head_at = np.unique(dense[candidates], return_index=True)
    heads = candidates[head_at]

    table = ConnectionTable(
        names=names,
        columns=columns,
        by_packet=np.lexsort((np.arange(n), columns["ts_ref"], columns["hop"], columns["pkt"], dense)),
    )
    capture = columns["capture"]
    proto = columns["proto"]
    connections = []
    for k, head in zip(kept.tolist(), heads.tolist(), strict=True):
        events = event_rows[event_bounds[k] : event_bounds[k + 1]].tolist()
        orig_at: dict[str, tuple[str, int]] = {}
        for point in [int(node[row]) for row in events] + extra_events.get(k, []):
            where = starts[k] + int(np.argmax(node[starts[k] : stops[k]] == point))
            orig_at.setdefault(names[capture[where]], (names[orig_addr[point]], int(orig_port[point])))
        connections.append(
            Connection(
                conn_id=int(conn[head]),
                proto=int(proto[head]),
                client=endpoint_text(names[src[head]], int(sport[head])),
                server=endpoint_text(names[dst[head]], int(dport[head])),
                table=table,
                start=int(starts[k]),
                stop=int(stops[k]),
                orig_at=orig_at,
            )
        )
    return connections


def _suspect_connections(table: pd.DataFrame) -> np.ndarray:
    """Connections that may hold a symptom; the rest (clean handshakes, answered datagrams) are skipped.

    TCP: a RST, a SYN sent more than once, or a SYN with no SYN-ACK anywhere.
    UDP: a point that saw only one direction, or two flows of one connection.
    """
    conn = table["conn"].to_numpy()
    flags = table["tcp_flags"].to_numpy()
    tcp = table["proto"].to_numpy() == TCP
    handshake = np.where(flags >= 0, flags & (SYN | ACK | RST), 0)
    rst = tcp & (flags >= 0) & ((flags & RST) != 0)
    syn = tcp & (handshake == SYN)
    synack = tcp & (handshake == SYN | ACK)
    suspects = set(np.unique(conn[rst]).tolist())
    syns = pd.DataFrame({"conn": conn[syn], "seq": table["seq"].to_numpy()[syn], "pkt": table["pkt"].to_numpy()[syn]})
    retried = syns.groupby(["conn", "seq"])["pkt"].nunique()
    suspects |= set(retried[retried > 1].index.get_level_values("conn").tolist())
    suspects |= set(np.setdiff1d(np.unique(conn[syn]), np.unique(conn[synack])).tolist())
    udp = ~tcp
    if udp.any():
        datagrams = table[udp]
        senders = datagrams.groupby(["conn", "capture"]).agg(senders=("src", "nunique"), flows=("node", "nunique"))
        odd = senders[(senders["senders"] < 2) | (senders["flows"] > 1)]
        suspects |= set(odd.index.get_level_values("conn").tolist())
    return np.array(sorted(suspects), dtype=np.int64)


def _join_by_client_endpoint(table: pd.DataFrame, uf: _UnionFind) -> None:
    """Link TCP flows at different points that share their client's address and port.

    With the client's address preserved through NAT (the incident's NLB), a
    point that saw only the reply side (a NAT gateway) shares no packet with
    the client's capture, but the client's endpoint is the same: the SYN's
    source at one point, the SYN-ACK's destination at the other.
    """
    flags = table["tcp_flags"].to_numpy()
    tcp = table["proto"].to_numpy() == TCP
    syn = tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN)
    synack = tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN | ACK)
    clients = pd.concat(
        [
            pd.DataFrame({"addr": table["src"][syn], "port": table["sport"][syn], "node": table["node"][syn],
                          "capture": table["capture"][syn]}),
            pd.DataFrame({"addr": table["dst"][synack], "port": table["dport"][synack],
                          "node": table["node"][synack], "capture": table["capture"][synack]}),
        ]
    ).drop_duplicates()  # fmt: skip
    clients = clients[clients["port"] >= 1024]
    # Only endpoints seen at two points or more can link anything.
    spread = clients.groupby(["addr", "port"])["capture"].transform("nunique")
    clients = clients[spread.to_numpy() > 1].copy()
    if clients.empty:
        return
    clients["root"] = [uf.find(int(n)) for n in clients["node"]]
    per_point = clients.drop_duplicates(["addr", "port", "capture", "root"])
    endpoint = per_point.groupby(["addr", "port"], sort=False)["capture"]
    # Two connections from that endpoint at one point: a reused port, leave them apart.
    single = (endpoint.transform("size") == endpoint.transform("nunique")).to_numpy()
    linked = per_point[single]
    first_root = linked.groupby(["addr", "port"], sort=False)["root"].transform("first")
    for a, b in set(zip(linked["root"].tolist(), first_root.tolist(), strict=True)):
        if a != b:
            uf.union(a, b)


def _join_resourced_replies(table: pd.DataFrame, uf: _UnionFind) -> None:
    """Link UDP flows that only send *to* a client port with that port's unanswered requests."""
    udp = table[table["proto"] == UDP]
    if udp.empty:
        return
    for _capture, rows in udp.groupby("capture", sort=False):
        # One line per flow whose packets all go one way: candidate requests and candidate replies.
        per_flow = rows.groupby("node", sort=False).agg(
            src=("src", "first"), sport=("sport", "first"), dst=("dst", "first"), dport=("dport", "first"),
            senders=("sport", "size"), first_ts=("ts_ns", "min"),
        )  # fmt: skip
        one_way = per_flow[rows.groupby("node", sort=False)[["src", "sport"]].nunique().max(axis=1) == 1]
        replies_to: dict[tuple[str, int], list[tuple[int, str, int, int]]] = {}
        for node, flow in one_way.iterrows():
            replies_to.setdefault((flow["dst"], int(flow["dport"])), []).append(
                (int(str(node)), flow["src"], int(flow["sport"]), int(flow["first_ts"]))
            )
        for node, flow in one_way.iterrows():
            client = (flow["src"], int(flow["sport"]))
            if client[1] < 1024:
                continue
            server = (flow["dst"], int(flow["dport"]))
            for other, src, sport, first_ts in replies_to.get(client, []):
                delay = first_ts - int(flow["first_ts"])
                if (src, sport) != server and 0 <= delay <= RESOURCED_REPLY_WINDOW_NS:
                    uf.union(int(str(node)), other)


def _orient_rest(
    columns: dict[str, np.ndarray], start: int, stop: int, orig_addr: np.ndarray, orig_port: np.ndarray
) -> list[int]:
    """Orient the points of one connection that saw no SYN and no SYN-ACK; returns them in the order oriented.

    A packet also seen at an oriented point tells its direction; a flow that
    involves an originator endpoint known at the same capture is oriented by
    it; failing both, the first packet's sender is the originator. Plain
    Python over the connection's rows: only such connections come here.
    """
    nodes = columns["node"][start:stop].tolist()
    pkts = columns["pkt"][start:stop].tolist()
    captures = columns["capture"][start:stop].tolist()
    src_ep = list(zip(columns["src"][start:stop].tolist(), columns["sport"][start:stop].tolist(), strict=True))
    dst_ep = list(zip(columns["dst"][start:stop].tolist(), columns["dport"][start:stop].tolist(), strict=True))
    orig_at: dict[int, tuple[int, int]] = {
        n: (int(orig_addr[n]), int(orig_port[n])) for n in dict.fromkeys(nodes) if orig_addr[n] >= 0
    }
    added: list[int] = []

    def orient(node: int, endpoint: tuple[int, int]) -> None:
        orig_at[node] = endpoint
        added.append(node)

    def propagate() -> None:
        changed = True
        while changed:
            changed = False
            known: dict[int, bool] = {}
            for i, (node, pkt) in enumerate(zip(nodes, pkts, strict=True)):
                if node in orig_at:
                    known.setdefault(pkt, src_ep[i] == orig_at[node])
            for i, (node, pkt) in enumerate(zip(nodes, pkts, strict=True)):
                if node not in orig_at and pkt in known:
                    orient(node, src_ep[i] if known[pkt] else dst_ep[i])
                    changed = True

    def share_known_endpoint() -> None:
        """A flow at a point that involves an originator endpoint known there is oriented by it."""
        known = {(captures[i], orig_at[n]) for i, n in enumerate(nodes) if n in orig_at}
        for i, n in enumerate(nodes):
            if n in orig_at:
                continue
            if (captures[i], src_ep[i]) in known:
                orient(n, src_ep[i])
            elif (captures[i], dst_ep[i]) in known:
                orient(n, dst_ep[i])

    propagate()
    share_known_endpoint()
    propagate()
    # No SYN anywhere: the first packet's sender is the originator.
    while any(n not in orig_at for n in nodes):
        first = next(i for i, n in enumerate(nodes) if n not in orig_at)
        orient(nodes[first], src_ep[first])
        propagate()
        share_known_endpoint()
    for node in added:
        orig_addr[node], orig_port[node] = orig_at[node]
    return added
