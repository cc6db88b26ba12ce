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

from diag import unionfind
from diag.capture.addresses import endpoint_text
from diag.capture.proto import ACK, RST, SYN, TCP, UDP
from diag.compiled import compiled
from diag.correlate import Correlation
from diag.diagnose.suspects import suspect
from diag.flows.keys import read_only

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
    """Flows joined into connections: a parent array and the compiled find/union of ``diag.unionfind``."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def roots(self) -> np.ndarray:
        """Every element's root at once (pointer jumping on the parent array, no per-element calls)."""
        parent = self.parent.copy()
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand

    def union_all(self, a: np.ndarray, b: np.ndarray) -> None:
        unionfind.union_pairs(self.parent, a.astype(np.int64), b.astype(np.int64))


_HASH_MULTIPLIER = 0x5851F42D4C957F2D  # odd and below 2**63: the hash stays int64 in compiled code


@compiled
def _number_flows(point: np.ndarray, src_ep: np.ndarray, dst_ep: np.ndarray) -> np.ndarray:
    """Per row, the number of its (point, unordered endpoint pair), numbered by first appearance.

    One pass with an open-addressing hash table (linear probing, kept at most
    half full): a factorisation of the pairs would sort or hash every row
    twice, and this runs over every TCP and UDP packet of the analysis. A slot
    holds its pair and the pair's number side by side, so that a probe reads
    one cache line (the table of a busy analysis is larger than the caches).
    """
    n = len(point)
    numbers = np.empty(n, dtype=np.int64)
    size = 4096
    slots = np.full((size, 4), -1, dtype=np.int64)  # point, low, high, number (-1: an empty slot)
    count = 0
    for i in range(n):
        low, high = min(src_ep[i], dst_ep[i]), max(src_ep[i], dst_ep[i])
        p = point[i]
        h = ((p * _HASH_MULTIPLIER) ^ low) * _HASH_MULTIPLIER
        h = ((h ^ (h >> 29)) ^ high) * _HASH_MULTIPLIER
        h ^= h >> 31
        at = h & (size - 1)
        while slots[at, 3] >= 0:
            if slots[at, 0] == p and slots[at, 1] == low and slots[at, 2] == high:
                break
            at = (at + 1) & (size - 1)
        if slots[at, 3] >= 0:
            numbers[i] = slots[at, 3]
            continue
        slots[at, 0], slots[at, 1], slots[at, 2], slots[at, 3] = p, low, high, count
        numbers[i] = count
        count += 1
        if 2 * count >= size:  # half full: twice the table, every pair placed again
            old = slots
            size *= 2
            slots = np.full((size, 4), -1, dtype=np.int64)
            for k in range(len(old)):
                if old[k, 3] < 0:
                    continue
                g = ((old[k, 0] * _HASH_MULTIPLIER) ^ old[k, 1]) * _HASH_MULTIPLIER
                g = ((g ^ (g >> 29)) ^ old[k, 2]) * _HASH_MULTIPLIER
                g ^= g >> 31
                j = g & (size - 1)
                while slots[j, 3] >= 0:
                    j = (j + 1) & (size - 1)
                slots[j] = old[k]
    return numbers


def _flow_nodes(
    capture: np.ndarray, proto: np.ndarray, src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray
) -> np.ndarray:
    """Per row: the id of its per-capture flow (capture, proto, unordered endpoint pair), by first appearance."""
    # An endpoint is one integer (a missing port, -1, is 0); a point, the capture and the protocol.
    src_ep = src.astype(np.int64) * 65537 + sport.astype(np.int64) + 1
    dst_ep = dst.astype(np.int64) * 65537 + dport.astype(np.int64) + 1
    point = capture.astype(np.int64) * 65536 + proto.astype(np.int64)
    return _number_flows(read_only(point, np.int64), read_only(src_ep, np.int64), read_only(dst_ep, np.int64))


@compiled
def _union_by_group(
    parent: np.ndarray, group: np.ndarray, positions: np.ndarray, node: np.ndarray, first: np.ndarray
) -> None:
    """Join the flows of each group (rows with one group id >= 0) into one connection, in one pass.

    Row ``i`` is packet ``positions[i]``, of group ``group[positions[i]]`` and flow ``node[i]``; ``first``
    (-1 per group id) keeps each group's first flow, and each row's flow is united with it. The union-find
    keeps the smallest root, so the connections (and their ids) do not depend on the order of the unions:
    the same as uniting each distinct pair once, without sorting the rows by group (every packet of a
    connection seen at several points is a group).
    """
    for i in range(len(positions)):
        g = group[positions[i]]
        if g < 0:
            continue
        f = first[g]
        v = node[i]
        if f < 0:
            first[g] = v
        elif f != v and parent[f] != parent[v]:  # one parent: joined already, no need to find the roots
            unionfind.union(parent, f, v)


@compiled
def _any_repeated(group: np.ndarray, positions: np.ndarray, seen: np.ndarray) -> bool:
    """Whether two of the rows (packets ``positions``) share a group id >= 0; ``seen``: False per group id."""
    for i in range(len(positions)):
        g = group[positions[i]]
        if g < 0:
            continue
        if seen[g]:
            return True
        seen[g] = True
    return False


def _union_groups(
    uf: _UnionFind, group: np.ndarray, positions: np.ndarray, node: np.ndarray, rarely_shared: bool = False
) -> None:
    """Join the flows of each group into one connection.

    ``group``: a group id per packet of the table (-1: none), read at ``positions``, the packets of the
    rows whose flows are ``node``. With ``rarely_shared`` (groups of one row nearly always), a pass
    over one flag per group first looks for a shared one, which costs a fraction of the join.
    """
    if len(positions) == 0:
        return
    n_groups = int(group.max()) + 1
    if n_groups <= 0:
        return
    group, positions = read_only(group, np.int64), read_only(positions, np.int64)
    if rarely_shared and not _any_repeated(group, positions, np.zeros(n_groups, dtype=np.bool_)):
        return
    # Flow numbers fit in 32 bits unless there are 2**31 flows: half the memory read at random.
    first = np.full(n_groups, -1, dtype=np.int32 if len(uf.parent) < 2**31 else np.int64)
    _union_by_group(uf.parent, group, positions, read_only(node, np.int64), first)


class _PacketColumns:
    """Reads packet-table columns at chosen positions; texts as codes into one shared list of names.

    A categorical column's categories are given their codes once, and rows
    then cost one gather of the category codes; no string is made per row.
    """

    def __init__(self, packets: pd.DataFrame) -> None:
        self.packets = packets
        self.names: dict[str, int] = {}
        self._lookups: dict[str, np.ndarray] = {}

    def take(self, name: str, positions: np.ndarray) -> np.ndarray:
        packets = self.packets
        if name in _TEXT_COLUMNS:
            return self._text_codes(name, positions)
        if name == "file" and name not in packets:
            return np.zeros(len(positions), dtype=np.int16)  # a table not made by the reader: one file per point
        if name == "outer_ttl" and name not in packets:
            return np.full(len(positions), -1, dtype=np.int16)  # a table without tunnel columns: nothing tunnelled
        taken: np.ndarray = packets[name].to_numpy()[positions]
        return taken

    def ordered_names(self) -> list[str]:
        return [name for name, _ in sorted(self.names.items(), key=lambda item: item[1])]

    def _text_codes(self, name: str, positions: np.ndarray) -> np.ndarray:
        column = self.packets[name]
        names = self.names
        if isinstance(column.dtype, pd.CategoricalDtype):
            lookup = self._lookups.get(name)
            if lookup is None:
                # In bulk: iterating the categories one by one costs a microsecond each (tens of thousands
                # of addresses). The last entry serves code -1 (a missing value), which pandas writes as 'nan'.
                texts = column.cat.categories.astype(str).to_numpy(dtype=object).tolist()
                lookup = np.array([names.setdefault(text, len(names)) for text in [*texts, "nan"]], dtype=np.int64)
                self._lookups[name] = lookup
            codes: np.ndarray = lookup[column.cat.codes.to_numpy()[positions]]
            return codes
        values, uniques = pd.factorize(column.iloc[positions].astype(str).to_numpy())
        lookup = np.array([names.setdefault(str(u), len(names)) for u in uniques], dtype=np.int64)
        return lookup[values]


@dataclass(frozen=True)
class PacketLinks:
    """What ``build_connections`` reads of the packet table alone, before any correlation.

    Every TCP and UDP row's flow key (``node``: capture, protocol and unordered endpoint pair, by first
    appearance) and the columns that link and orient flows. Made by ``packet_links``; ``analyze`` makes
    it on the thread that built the flow table while the correlation is still running on the other.
    """

    positions: np.ndarray  # the TCP and UDP rows of the packet table
    reader: _PacketColumns
    linking: dict[str, np.ndarray]  # capture, src, dst, sport, dport, proto of those rows (texts as codes)
    node: np.ndarray
    flags: np.ndarray


def packet_links(packets: pd.DataFrame) -> PacketLinks:
    """``PacketLinks`` of ``packets``: the part of ``build_connections`` that needs no correlation."""
    proto_all = packets["proto"].to_numpy()
    positions = np.flatnonzero(((proto_all == TCP) | (proto_all == UDP)) & (packets["ip_version"].to_numpy() > 0))
    reader = _PacketColumns(packets)
    linking = {name: reader.take(name, positions) for name in ("capture", "src", "dst", "sport", "dport", "proto")}
    node = (
        _flow_nodes(*(linking[name] for name in ("capture", "proto", "src", "dst", "sport", "dport")))
        if len(positions)
        else np.zeros(0, dtype=np.int64)
    )
    return PacketLinks(positions, reader, linking, node, packets["tcp_flags"].to_numpy()[positions])


def build_connections(
    packets: pd.DataFrame, corr: Correlation, suspects_only: bool = False, links: PacketLinks | None = None
) -> list[Connection]:
    """Every TCP and UDP connection in ``packets``, linked across points by ``corr``.

    With ``suspects_only``, connections that cannot hold a symptom (see
    ``_suspect_connections``) are left out, which keeps big captures fast.
    The work is done on whole columns (linking, orienting, choosing each
    connection's client); Python runs once per connection only to make its
    ``Connection``, and per row only for connections no SYN or SYN-ACK orients.

    Every TCP/UDP row is read only for what links flows (its flow's key, its
    match and sighting); the other columns are read for the handshakes,
    resets and datagrams that decide the joins and the suspects, and for the
    rows of the connections kept. ``links``: ``packet_links(packets)``, when
    it was made ahead (made here otherwise).
    """
    if links is None:
        links = packet_links(packets)
    positions, reader, linking, node, flags = links.positions, links.reader, links.linking, links.node, links.flags
    if len(positions) == 0:
        return []
    # Unmatched packets get ids after every match id so ``pkt`` is unique.
    base = int(corr.row_match.max()) + 1 if len(corr.row_match) else 0

    def pkt(at: np.ndarray) -> np.ndarray:
        """``pkt`` of the packets at ``at`` (made only for the rows read: every row's would be millions)."""
        match = corr.row_match[at]
        ids: np.ndarray = np.where(match >= 0, match, base + corr.row_sighting[at])
        return ids

    uf = _UnionFind(int(node.max()) + 1)
    # Flows sharing a matched packet are one connection, and so are flows holding copies of one
    # packet inside one capture (a box's way in and way out, NAT between them; seldom seen).
    _union_groups(uf, corr.row_match, positions, node)
    _union_groups(uf, corr.row_sighting, positions, node, rarely_shared=True)
    # The joins and the choice of suspects read only handshakes, resets and datagrams: a small table.
    tcp = linking["proto"] == TCP
    telling = np.flatnonzero(~tcp | ((flags >= 0) & ((flags & (SYN | RST)) != 0)))
    at = positions[telling]
    table = {name: values[telling] for name, values in linking.items()}
    table |= {"tcp_flags": flags[telling], "seq": reader.take("seq", at), "ts_ns": reader.take("ts_ns", at)}
    table |= {"pkt": pkt(at), "node": node[telling]}
    _join_by_client_endpoint(table, uf)
    _join_resourced_replies(table, uf)
    # Connections are named by their smallest flow (the root); a row's is its flow's, read for the rows used.
    root = uf.roots()
    if suspects_only:
        table["conn"] = root[table["node"]]
        suspect = np.zeros(len(root), dtype=bool)
        suspect[_suspect_connections(table)] = True
        rows = np.flatnonzero(suspect[root][node])
    else:
        rows = np.arange(len(node))
    del table
    # From here on only the kept rows, once sorted: connection, reference time, position.
    conn = root[node[rows]]
    order = rows[_lex_order(conn, corr.ts_ref_ns[positions[rows]], positions[rows])]
    kept = positions[order]
    columns: dict[str, np.ndarray] = {"position": kept}
    columns |= {name: values[order] for name, values in linking.items()}
    columns["tcp_flags"] = flags[order]
    columns["seq"] = reader.take("seq", kept)
    columns["ts_ns"] = reader.take("ts_ns", kept)
    columns |= {"match": corr.row_match[kept], "pkt": pkt(kept), "sighting": corr.row_sighting[kept]}
    columns["node"] = node[order]
    columns["conn"] = root[columns["node"]]
    # A second copy of a packet in one capture: its sighting appeared at an earlier position. (Every copy of
    # a sighting is in one flow, so of one connection: kept or left out together.)
    by_sighting = _lex_order(columns["sighting"], kept)
    ordered = columns["sighting"][by_sighting]
    copy = np.ones(len(kept), dtype=bool)
    copy[by_sighting[np.r_[True, ordered[1:] != ordered[:-1]]] if len(kept) else by_sighting] = False
    columns["copy"] = copy
    for name in TABLE_PACKET_COLUMNS:
        if name not in columns:
            columns[name] = reader.take(name, kept)
    columns["ts_ref"] = corr.ts_ref_ns[kept]
    columns["hop"] = np.maximum(corr.row_hop[kept], 0)
    return _orient_all(columns, reader.ordered_names())


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
    event_rows = event_rows[_lex_order(dense[event_rows], event_rank, event_rows)]
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
    candidates = candidates[_lex_order(dense[candidates], columns["hop"][candidates], columns["ts_ref"][candidates])]
    _, head_at = np.unique(dense[candidates], return_index=True)
    heads = candidates[head_at]

    table = ConnectionTable(
        names=names,
        columns=columns,
        # Then reference time: a connection's rows are in time order already, and ties keep the row order.
        by_packet=_lex_order(dense, columns["pkt"], columns["hop"]),
    )
    # Every row of a point's flow is at that point: a node's capture is any of its rows'.
    node_capture = np.zeros(n_nodes, dtype=np.int64)
    node_capture[node] = columns["capture"]
    # Texts only for the points that orient something (a list over every node would cost more than the loop).
    event_nodes = node[event_rows]
    event_point = [names[code] for code in node_capture[event_nodes].tolist()]
    event_addr = [names[code] for code in orig_addr[event_nodes].tolist()]
    event_port = orig_port[event_nodes].tolist()
    bounds = event_bounds.tolist()
    heads_at = {name: values[heads].tolist() for name, values in (("conn", conn), ("proto", columns["proto"]),
                ("src", src), ("sport", sport), ("dst", dst), ("dport", dport))}  # fmt: skip
    starts_list, stops_list = starts.tolist(), stops.tolist()
    connections = []
    for i, k in enumerate(kept.tolist()):
        orig_at: dict[str, tuple[str, int]] = {}
        for j in range(bounds[k], bounds[k + 1]):
            orig_at.setdefault(event_point[j], (event_addr[j], event_port[j]))
        for point in extra_events.get(k, []):
            orig_at.setdefault(names[node_capture[point]], (names[orig_addr[point]], int(orig_port[point])))
        connections.append(
            Connection(
                conn_id=heads_at["conn"][i],
                proto=heads_at["proto"][i],
                client=endpoint_text(names[heads_at["src"][i]], heads_at["sport"][i]),
                server=endpoint_text(names[heads_at["dst"][i]], heads_at["dport"][i]),
                table=table,
                start=starts_list[k],
                stop=stops_list[k],
                orig_at=orig_at,
            )
        )
    return connections


# Packed sort keys stay below this, so that multiplying in the next column cannot overflow int64.
_PACKED_LIMIT = 1 << 62


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's rank among the distinct values (0, 1, ...) and how many there are: the same order, packed."""
    uniques, rank = np.unique(values, return_inverse=True)
    return rank.astype(np.int64, copy=False), len(uniques)


def _packed_key(*columns: np.ndarray) -> np.ndarray:
    """One int64 per row that orders the rows as ``columns`` do (the first the most significant).

    Each column is shifted to start at 0 and packed below the ones before it. Where packing the next
    column could overflow, the key packed so far (and, if need be, the column) is first replaced by its
    dense rank, which keeps the order.
    """
    key = np.zeros(len(columns[0]), dtype=np.int64)
    if len(key) == 0:
        return key
    span = 1  # every key is in [0, span)
    for column in columns:
        low = int(column.min())
        width = int(column.max()) - low + 1
        shifted = column.astype(np.int64) - low
        if span * width > _PACKED_LIMIT:
            key, span = _dense_rank(key)
            if span * width > _PACKED_LIMIT:
                shifted, width = _dense_rank(column)
        key = key * width + shifted
        span *= width
    return key


def _lex_order(*columns: np.ndarray) -> np.ndarray:
    """The rows in the order of ``columns`` (the first the most significant), ties in row order.

    The same permutation as ``np.lexsort(columns[::-1])``, for a fraction of its time: lexsort makes a
    stable pass per column (about 0.1 s for three int columns of 400k rows), while here the columns and
    then the row number are packed into one int64 per row, sorted once by value.
    """
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    packed = np.sort(_packed_key(*columns, np.arange(n, dtype=np.int64)))
    order: np.ndarray = (packed % n).astype(np.intp, copy=False)  # the row number is the last column
    return order


def _groups(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows grouped by equal ``columns``: an order of the rows, and where each group starts in it.

    Groups come in key order; inside a group the rows are in no particular order (one unstable sort).
    """
    key = _packed_key(*columns)
    order = np.argsort(key)
    ordered = key[order]
    return order, np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(key) else order


def _varies(value: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group of ``_groups``: whether ``value`` differs between its rows (more than one distinct value)."""
    if len(starts) == 0:
        return np.zeros(0, dtype=bool)
    ordered = value[order]
    varies: np.ndarray = np.minimum.reduceat(ordered, starts) != np.maximum.reduceat(ordered, starts)
    return varies


def _suspect_connections(table: dict[str, np.ndarray]) -> np.ndarray:
    """Connections that may hold a symptom; the rest (clean handshakes, answered datagrams) are skipped.

    TCP: a RST, a SYN sent more than once, or a SYN with no SYN-ACK anywhere.
    UDP: a point that saw only one direction, or two flows of one connection.
    The signs are found here, per connection; ``suspects.suspect`` is the predicate.
    """
    conn = table["conn"]
    flags = table["tcp_flags"]
    tcp = table["proto"] == TCP
    handshake = np.where(flags >= 0, flags & (SYN | ACK | RST), 0)
    rst = tcp & (flags >= 0) & ((flags & RST) != 0)
    syn = np.flatnonzero(tcp & (handshake == SYN))
    synack = tcp & (handshake == SYN | ACK)
    n = int(conn.max()) + 1 if len(conn) else 0

    def having(units: np.ndarray) -> np.ndarray:
        marked = np.zeros(n, dtype=bool)
        marked[units] = True
        return marked

    # The same SYN (sequence number) as two distinct packets: sent again.
    syn_conn = conn[syn]
    order, starts = _groups(syn_conn, table["seq"][syn])
    retried = having(syn_conn[order[starts]][_varies(table["pkt"][syn], order, starts)])
    one_way, split = having(conn[:0]), having(conn[:0])
    udp = np.flatnonzero(~tcp)
    if len(udp):
        # Per connection and point: one sender only, or more than one flow.
        udp_conn = conn[udp]
        order, starts = _groups(udp_conn, table["capture"][udp])
        heads = udp_conn[order[starts]]
        one_way = having(heads[~_varies(table["src"][udp], order, starts)])
        split = having(heads[_varies(table["node"][udp], order, starts)])
    unanswered = having(conn[syn]) & ~having(conn[synack])
    chosen = suspect(having(conn[rst]), retried, split, unanswered, one_way)
    return np.flatnonzero(chosen).astype(np.int64)


def _join_by_client_endpoint(table: dict[str, np.ndarray], uf: _UnionFind) -> None:
    """Link TCP flows at different points that share their client's address and port.

    With the client's address preserved through NAT (the incident's NLB), a
    point that saw only the reply side (a NAT gateway) shares no packet with
    the client's capture, but the client's endpoint is the same: the SYN's
    source at one point, the SYN-ACK's destination at the other.
    """
    capture = table["capture"]
    if len(capture) == 0 or (capture == capture[0]).all():
        return  # one point: nothing to link across points
    flags = table["tcp_flags"]
    tcp = table["proto"] == TCP
    syn = np.flatnonzero(tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN))
    synack = np.flatnonzero(tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN | ACK))
    addr = np.r_[table["src"][syn], table["dst"][synack]].astype(np.int64)
    port = np.r_[table["sport"][syn], table["dport"][synack]].astype(np.int64)
    node = np.r_[table["node"][syn], table["node"][synack]]
    point = np.r_[capture[syn], capture[synack]].astype(np.int64)
    client = port >= 1024
    endpoint = (addr * 65536 + port)[client]  # ports fit in 16 bits
    node, point = node[client], point[client]
    if len(endpoint) == 0:
        return
    root = uf.roots()[node]
    # One sort groups the rows by endpoint, then point; each (endpoint, point) group is reduced to the
    # smallest and largest root it holds, each endpoint to the groups of its points.
    order = _lex_order(endpoint, point)
    endpoint, point, root = endpoint[order], point[order], root[order]
    new_endpoint = np.r_[True, endpoint[1:] != endpoint[:-1]]
    group_starts = np.flatnonzero(new_endpoint | np.r_[True, point[1:] != point[:-1]])
    low, high = np.minimum.reduceat(root, group_starts), np.maximum.reduceat(root, group_starts)
    first_group = np.flatnonzero(new_endpoint[group_starts])  # each endpoint's first (endpoint, point) group
    group_endpoint = np.cumsum(new_endpoint[group_starts]) - 1
    # Two connections from one endpoint at one point (two roots there) are a reused port: such an endpoint
    # links nothing. Otherwise every root of the endpoint joins its smallest (an endpoint seen at one point
    # only has just the one root).
    single = np.logical_and.reduceat(low == high, first_group)
    smallest = np.minimum.reduceat(low, first_group)[group_endpoint]
    joined = single[group_endpoint] & (low != smallest)
    uf.union_all(low[joined], smallest[joined])  # the roots stay the smallest whatever the order


def _join_resourced_replies(table: dict[str, np.ndarray], uf: _UnionFind) -> None:
    """Link UDP flows that only send *to* a client port with that port's unanswered requests."""
    udp = np.flatnonzero(table["proto"] == UDP)
    if len(udp) == 0:
        return
    column = {name: table[name][udp] for name in ("node", "capture", "src", "sport", "dst", "dport", "ts_ns")}
    # Rows grouped by flow, in table order inside each: one line per flow whose packets all go one way
    # (candidate requests and candidate replies), with its first packet's endpoints.
    order = np.argsort(column["node"], kind="stable")
    node = column["node"][order]
    new_flow = np.r_[True, node[1:] != node[:-1]]
    starts = np.flatnonzero(new_flow)
    heads = order[starts]
    flow_of = np.cumsum(new_flow) - 1
    src, sport = column["src"][order], column["sport"][order]
    same_sender = (src == src[starts][flow_of]) & (sport == sport[starts][flow_of])
    one_way = np.logical_and.reduceat(same_sender, starts)
    flows = pd.DataFrame({name: values[heads] for name, values in column.items() if name != "ts_ns"})
    flows["first_ts"] = np.minimum.reduceat(column["ts_ns"][order], starts)
    flows = flows[one_way]
    requests = flows[flows["sport"] >= 1024]
    pairs = requests.merge(
        flows, left_on=["capture", "src", "sport"], right_on=["capture", "dst", "dport"], suffixes=("", "_reply")
    )
    delay = pairs["first_ts_reply"].to_numpy() - pairs["first_ts"].to_numpy()
    resourced = (pairs["src_reply"].to_numpy() != pairs["dst"].to_numpy()) | (
        pairs["sport_reply"].to_numpy() != pairs["dport"].to_numpy()
    )
    joined = resourced & (delay >= 0) & (delay <= RESOURCED_REPLY_WINDOW_NS)
    uf.union_all(pairs["node"].to_numpy()[joined], pairs["node_reply"].to_numpy()[joined])


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
