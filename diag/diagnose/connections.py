"""Connections across capture points: every copy of one TCP or UDP conversation.

At each point a conversation has its own addresses (NAT rewrote them), so a
connection is the union of per-point flows (same 5-tuple at one capture)
linked by matched packets. Each packet row then gets its role: sent by the
originator (the client) or by the responder, decided at the point that saw
the first SYN and carried to the other points through the matches.

UDP replies re-sourced by a NAT box (they arrive from an address the client
never wrote to) match nothing at the client; ``_join_resourced_replies`` links
them to the unanswered request flow they answer by the client's own port.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.capture.proto import ACK, RST, SYN, TCP, UDP
from diag.correlate import Correlation

# A re-sourced UDP reply must come this soon after the request it answers.
RESOURCED_REPLY_WINDOW_NS = 5_000_000_000


@dataclass
class Connection:
    """One conversation as seen at every point.

    ``rows`` is a slice of the packet table (positions kept in ``position``)
    with extra columns: ``match`` (-1 unmatched), ``pkt`` (one id per distinct
    packet: a match, or a lone sighting), ``copy`` (True for a second copy in
    the same capture), ``ts_ref`` (ns on the reference clock), ``from_orig``.
    ``client``/``server`` are the endpoints as the client addressed them.
    """

    conn_id: int
    proto: int
    rows: pd.DataFrame
    client: str
    server: str
    orig_at: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def captures(self) -> list[str]:
        return list(dict.fromkeys(self.rows["capture"].astype(str)))



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

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _flow_nodes(table: pd.DataFrame) -> np.ndarray:
    """Per row: the id of its per-capture flow (capture, proto, unordered endpoint pair)."""
    addr_codes, _ = pd.factorize(
        np.concatenate([table["src"].astype(str).to_numpy(), table["dst"].astype(str).to_numpy()])
    )
    n = len(table)
    src_ep = addr_codes[:n].astype(np.int64) * 65537 + table["sport"].to_numpy().astype(np.int64) + 1
    dst_ep = addr_codes[n:].astype(np.int64) * 65537 + table["dport"].to_numpy().astype(np.int64) + 1
    low, high = np.minimum(src_ep, dst_ep), np.maximum(src_ep, dst_ep)
    keys = pd.DataFrame(
        {"c": table["capture"].astype(str).to_numpy(), "p": table["proto"].to_numpy(), "l": low, "h": high}
    )
    return keys.groupby(["c", "p", "l", "h"], sort=False).ngroup().to_numpy()


def build_connections(packets: pd.DataFrame, corr: Correlation, suspects_only: bool = False) -> list[Connection]:
    """Every TCP and UDP connection in ``packets``, linked across points by ``corr``.

    With ``suspects_only``, connections that cannot hold a symptom (see
    ``_suspect_connections``) are left out, which keeps big captures fast.
    """
    proto = packets["proto"].to_numpy()
    positions = np.flatnonzero(np.isin(proto, (TCP, UDP)) & (packets["ip_version"].to_numpy() > 0))
    if len(positions) == 0:
        return []
    table = packets.iloc[positions].copy()
    table["position"] = positions
    table["capture"] = table["capture"].astype(str)
    table["src"] = table["src"].astype(str)
    table["dst"] = table["dst"].astype(str)
    table["match"] = corr.row_match[positions]
    sighting = corr.row_sighting[positions]
    # Unmatched packets get ids after every match id so ``pkt`` is unique.
    base = int(corr.row_match.max()) + 1 if len(corr.row_match) else 0
    table["pkt"] = np.where(table["match"] >= 0, table["match"], base + sighting)
    table["sighting"] = sighting
    table["copy"] = pd.Series(sighting, index=table.index).duplicated().to_numpy()
    table["ts_ref"] = corr.ts_ref_ns[positions]
    table["node"] = _flow_nodes(table)
    table["hop"] = np.maximum(corr.row_hop[positions], 0)

    uf = _UnionFind(int(table["node"].max()) + 1)
    linked = table[table["match"] >= 0][["match", "node"]].drop_duplicates()
    firsts = linked.groupby("match")["node"].transform("first")
    for a, b in set(zip(linked["node"].tolist(), firsts.tolist(), strict=True)):
        if a != b:
            uf.union(a, b)
    # Copies of one packet inside one capture (a box's way in and way out, NAT
    # between them) belong to the same connection too.
    copies = table[["sighting", "node"]].drop_duplicates()
    first_node = copies.groupby("sighting")["node"].transform("first")
    for a, b in set(zip(copies["node"].tolist(), first_node.tolist(), strict=True)):
        if a != b:
            uf.union(a, b)
    _join_by_client_endpoint(table, uf)
    _join_resourced_replies(table, uf)
    roots = np.array([uf.find(n) for n in range(len(uf.parent))], dtype=np.int64)
    table["conn"] = roots[table["node"].to_numpy()]
    if suspects_only:
        table = table[table["conn"].isin(_suspect_connections(table))]

    connections = []
    for conn_id, rows in table.groupby("conn", sort=True):
        rows = rows.sort_values(["ts_ref", "position"], kind="stable")
        connection = _orient(int(str(conn_id)), rows)
        if connection is not None:
            connections.append(connection)
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
    for _, group in clients.groupby(["addr", "port"], sort=False):
        per_point = group.drop_duplicates(["capture", "root"])
        if per_point["capture"].duplicated().any():
            continue  # two connections from that endpoint at one point: a reused port, leave them apart
        roots = per_point["root"].tolist()
        for other in roots[1:]:
            uf.union(roots[0], other)


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


def _orient(conn_id: int, rows: pd.DataFrame) -> Connection | None:
    """Decide who originated the connection at every point and label each row."""
    proto = int(rows["proto"].iloc[0])
    flags = rows["tcp_flags"].to_numpy()
    src_ep = list(zip(rows["src"], rows["sport"].astype(int), strict=True))
    orig_at: dict[int, tuple[str, int]] = {}  # node -> originator endpoint there

    pure_syn = (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN) if proto == TCP else np.zeros(len(rows), bool)
    nodes = rows["node"].to_numpy()
    for i in np.flatnonzero(pure_syn):
        orig_at.setdefault(int(nodes[i]), src_ep[i])
    if proto == TCP:
        # A SYN-ACK goes to the originator: orients a point that never saw the SYN.
        synack = (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN | ACK)
        for i in np.flatnonzero(synack):
            orig_at.setdefault(int(nodes[i]), (rows["dst"].iloc[i], int(rows["dport"].iloc[i])))

    def propagate() -> None:
        changed = True
        while changed:
            changed = False
            known: dict[int, bool] = {}
            for i, (node, pkt) in enumerate(zip(nodes.tolist(), rows["pkt"].tolist(), strict=True)):
                if node in orig_at:
                    known.setdefault(pkt, src_ep[i] == orig_at[node])
            for i, (node, pkt) in enumerate(zip(nodes.tolist(), rows["pkt"].tolist(), strict=True)):
                if node not in orig_at and pkt in known:
                    dst = (rows["dst"].iloc[i], int(rows["dport"].iloc[i]))
                    orig_at[node] = src_ep[i] if known[pkt] else dst
                    changed = True

    propagate()
    captures = rows["capture"].tolist()
    dst_ep = list(zip(rows["dst"], rows["dport"].astype(int), strict=True))

    def share_known_endpoint() -> None:
        """A flow at a point that involves an originator endpoint known there is oriented by it."""
        known = {(captures[i], orig_at[int(n)]) for i, n in enumerate(nodes) if int(n) in orig_at}
        for i, n in enumerate(nodes):
            if int(n) in orig_at:
                continue
            if (captures[i], src_ep[i]) in known:
                orig_at[int(n)] = src_ep[i]
            elif (captures[i], dst_ep[i]) in known:
                orig_at[int(n)] = dst_ep[i]

    share_known_endpoint()
    propagate()
    # No SYN anywhere: the first packet's sender is the originator.
    while any(int(n) not in orig_at for n in nodes):
        first = next(i for i, n in enumerate(nodes) if int(n) not in orig_at)
        orig_at[int(nodes[first])] = src_ep[first]
        propagate()
        share_known_endpoint()

    rows = rows.copy()
    rows["from_orig"] = [src_ep[i] == orig_at[int(n)] for i, n in enumerate(nodes)]
    # The client's view: the first sighting of the first originator packet.
    orig_rows = rows[rows["from_orig"]]
    first_syn = rows[pure_syn & rows["from_orig"].to_numpy()]
    chosen = first_syn if len(first_syn) else orig_rows
    if chosen.empty:
        return None
    first_pkt = chosen["pkt"].iloc[0]
    head = chosen[chosen["pkt"] == first_pkt].sort_values(["hop", "ts_ref"], kind="stable").iloc[0]
    orig_by_capture: dict[str, tuple[str, int]] = {}
    for node, endpoint in orig_at.items():
        capture = rows.loc[rows["node"] == node, "capture"].iloc[0]
        orig_by_capture.setdefault(str(capture), endpoint)
    return Connection(
        conn_id=conn_id,
        proto=proto,
        rows=rows,
        client=endpoint_text(str(head["src"]), int(head["sport"])),
        server=endpoint_text(str(head["dst"]), int(head["dport"])),
        orig_at=orig_by_capture,
    )
