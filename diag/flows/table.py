"""The flow table: one row per connection per capture, summarised the way Zeek's conn.log does.

A flow is the bidirectional 5-tuple (plus the VLAN and the capture it was seen
in). ``history`` and ``conn_state`` follow Zeek's definitions so a row can be
checked against ``zeek -r capture.pcap``'s conn.log; byte counts are Zeek's too
(payload bytes from the sequence-number extent, so a retransmitted segment is
counted once).

Each flow's packets are walked in order, once, by compiled code
(``diag.flows.walk``): per packet the same steps Zeek takes (direction,
sequence numbers unwrapped across 2**32, retransmission test, history
letters, the TCP endpoint state machine of ``diag.flows.tcpstate``), per flow the
results. Flow ids come from one compiled pass over the table with a hash
table of 5-tuples (``diag.flows.keys``). Only the naming of endpoints and the
final table are built in Python, once per flow.

Where Zeek starts a new connection on a 5-tuple (a SYN after a FIN or RST,
or with a new initial sequence number; a packet after one of its timers
ended the connection) a new flow starts too; ``prev_flow``
names the flow before it on the same 5-tuple, and ``syn_retransmits`` counts
a SYN that repeats the 5-tuple's previous SYN even when it opens a new flow.
Who is the originator follows Zeek too (``diag.flows.servers``). The
remaining, deliberate differences are listed in docs/analyze.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.api.extensions import ExtensionArray

from diag.capture.addresses import endpoint_text
from diag.capture.proto import UDP
from diag.flows.carriers import carrier_flows, tunnel_parents, tunnel_rows
from diag.flows.columns import FLOW_COLUMNS
from diag.flows.copies import copy_origins
from diag.flows.keys import PORT_BITS, PORT_MASK, FlowKeys, categorical, column, read_only
from diag.flows.servers import likely_server_table
from diag.flows.tcpstate import tcp_conn_state, udp_conn_state
from diag.flows.walk import FlowSummary, group_by_flow, walk_flows
from diag.gcpause import collector_paused


def flow_ids(packets: pd.DataFrame) -> np.ndarray:
    """The flow of every packet (int64, numbered from 0 by first appearance; -1 when not TCP/UDP).

    Packets of the same bidirectional 5-tuple, VLAN and capture share an id
    until Zeek would start a new connection on it (a SYN after a FIN or RST,
    or with a new initial sequence number; a packet after one of its timers
    ended the connection); ICMP, non-IP packets and non-first fragments get
    -1. Forwarded copies of a packet get their flow's id like any other row.
    The same ids as ``build_flows``'s ``flow_id``.
    """
    keys = FlowKeys(packets)
    if keys.n_tuples == 0:
        return np.full(len(packets), -1, dtype=np.int64)
    walked = _summarise(packets, keys)
    return _numbered(walked.summary, walked.row_flows())[1]


@dataclass(frozen=True)
class _Walked:
    """The walk's summary, and what it takes to say which flow each packet-table row went to."""

    summary: FlowSummary
    order: np.ndarray  # rows grouped by 5-tuple (``group_by_flow``)
    starts: np.ndarray  # 5-tuple t's rows are ``order[starts[t]:starts[t + 1]]``, in file order
    origin: np.ndarray  # per row, the row it is a forwarded copy of, or -1
    tuple_id: np.ndarray

    def row_flows(self) -> np.ndarray:
        """Per row, its flow in walk order (-1 for rows of no flow); a forwarded copy gets its origin's flow.

        Made only when asked (tunnelled captures, ``flow_ids``): scattering a
        million ids costs more than the rest of the table's columns.
        """
        summary = self.summary
        lengths = np.diff(np.append(summary.begin, len(self.order)))
        row_flow = np.full(len(self.tuple_id), -1, dtype=np.int64)
        row_flow[self.order] = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        copies = (row_flow < 0) & (self.tuple_id >= 0) & (self.origin >= 0)
        if copies.any():
            row_flow[copies] = row_flow[self.origin[copies]]
        return row_flow

    def flows_of(self, rows: np.ndarray) -> np.ndarray:
        """``row_flows()[rows]``, each looked up in its 5-tuple's rows: a capture's few tunnel rows, for which
        the flow of every row (a scatter of millions of ids) was made and then read at a handful of places."""
        if len(rows) > _LOOKED_UP_ROWS:
            flows: np.ndarray = self.row_flows()[rows]
            return flows
        tuple_ids = self.tuple_id[rows]
        origins = self.origin[rows]
        # A forwarded copy left out of its 5-tuple's rows (group_by_flow) is in its origin's flow.
        is_copy = (tuple_ids >= 0) & (origins >= 0) & (self.tuple_id[np.maximum(origins, 0)] == tuple_ids)
        found = np.where(is_copy, origins, rows).tolist()
        flows = np.full(len(rows), -1, dtype=np.int64)
        for k, (tuple_id, row) in enumerate(zip(tuple_ids.tolist(), found, strict=True)):
            if tuple_id < 0:
                continue
            start = int(self.starts[tuple_id])
            members = self.order[start : self.starts[tuple_id + 1]]
            at = int(np.searchsorted(members, row))
            if at < len(members) and members[at] == row:
                flows[k] = int(np.searchsorted(self.summary.begin, start + at, side="right")) - 1
        return flows


# Rows ``_Walked.flows_of`` looks up one by one; beyond, the flow of every row is made and read.
_LOOKED_UP_ROWS: Final = 4096


def _summarise(packets: pd.DataFrame, keys: FlowKeys) -> _Walked:
    """Cut every 5-tuple into flows and walk their counted packets (``diag.flows.walk``).

    A packet a capture saw twice because it was forwarded between two of its
    interfaces counts once: later copies (``copy_origins``) are left out
    when their origin, the first copy, is in the same 5-tuple.
    """
    origin = read_only(copy_origins(packets), np.int64)
    order, starts = group_by_flow(keys.tuple_id, origin)
    summary = FlowSummary(
        *walk_flows(
            order,
            starts,
            keys.columns,
            column(packets, "ack", np.int64),
            column(packets, "win", np.int32),
            column(packets, "payload_len", np.int32),
            column(packets, "ip_len", np.int32),
            column(packets, "ts_ns", np.int64),
            column(packets, "index", np.int64),
            likely_server_table(),
        )
    )
    return _Walked(summary, order, starts, origin, keys.tuple_id)


def _numbered(summary: FlowSummary, row_flow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(walk position of each flow in first-appearance order, each row's flow id in that numbering or empty)."""
    by_appearance = np.argsort(summary.first_row, kind="stable")
    if row_flow is None:
        return by_appearance, np.empty(0, dtype=np.int64)
    rank = np.empty(len(by_appearance), dtype=np.int64)
    rank[by_appearance] = np.arange(len(by_appearance), dtype=np.int64)
    ids = np.where(row_flow >= 0, rank[np.maximum(row_flow, 0)], -1)
    return by_appearance, ids


def _text_column(values: np.ndarray, codes: np.ndarray | None = None) -> ExtensionArray:
    """``values[codes]`` (``values`` itself without ``codes``) as the column pandas would make of it.

    A DataFrame turns an object column of str into its string dtype one element at a time; most of the
    flow table's texts repeat (captures, protocols, states, hosts, servers), so each distinct text is
    converted once and the column is a gather of those. ``codes`` index ``values`` as numpy does.
    """
    if codes is None:
        codes, values = pd.factorize(values, use_na_sentinel=False)
    return pd.Series(values).array.take(codes)


# The dtype pandas gives a column of str (``_text_column``'s); texts made by arrow are given it as they are.
_STRING: Final = pd.Series(np.array([""], dtype=object)).dtype


def _arrow_texts(texts: pa.Array) -> ExtensionArray:
    """Texts made by arrow as the column pandas would make of the same texts (``_text_column``), without a
    Python string each: converting hundreds of thousands of them, and checking each, was most of their cost."""
    if getattr(_STRING, "storage", None) != "pyarrow":  # pandas keeps its strings otherwise: as it would
        return _text_column(np.array(texts.to_pylist(), dtype=object))
    column: ExtensionArray = pd.array(texts.cast(pa.large_string()), dtype=_STRING)
    return column


class _EndpointNames:
    """Endpoint codes as host, port and "host:port" text (IPv6 in brackets), each distinct one formatted once."""

    def __init__(self, addresses: np.ndarray) -> None:
        self.addresses = addresses
        # Each address's text up to the port: its text with port 0, less the "0".
        self.prefix = pa.array([endpoint_text(host, 0)[:-1] for host in addresses.tolist()], type=pa.large_string())

    def __call__(self, codes: np.ndarray) -> tuple[ExtensionArray, np.ndarray, ExtensionArray]:
        """(host, port, text) per code, the texts as string columns (``_text_column``)."""
        address, port = codes >> PORT_BITS, codes & PORT_MASK
        inverse, distinct = pd.factorize(codes)  # many flows share an endpoint (the server)
        hosts = self.prefix.take(pa.array(distinct >> PORT_BITS))
        ports = pa.array(distinct & PORT_MASK).cast(pa.large_string())
        text = pc.binary_join_element_wise(hosts, ports, pa.scalar("", type=pa.large_string()))
        return _text_column(self.addresses, address), port, _arrow_texts(text).take(inverse)


def _history_column(summary: FlowSummary, by_appearance: np.ndarray) -> ExtensionArray:
    """Each flow's history string, in first-appearance order, cut by arrow from the walk's one buffer of
    letters (``history_end`` the end of each flow's, in walk order)."""
    ends = np.asarray(summary.history_end, dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), ends])
    letters = np.ascontiguousarray(summary.letters, dtype=np.uint8)
    walk_order = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(letters))
    return _arrow_texts(walk_order.take(pa.array(by_appearance)))


def _rst_lists(summary: FlowSummary, rank: np.ndarray) -> list[list[dict[str, object]]]:
    """Each flow's RSTs (first-appearance numbering), in file order."""
    lists: list[list[dict[str, object]]] = [[] for _ in range(len(rank))]
    for flow, index, orig in zip(
        rank[summary.rst_flow].tolist(), summary.rst_index.tolist(), summary.rst_from_orig.tolist(), strict=True
    ):
        lists[flow].append({"index": index, "from": "orig" if orig else "resp"})
    return lists


def empty_flows() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in FLOW_COLUMNS})


def build_flows(packets: pd.DataFrame, icmp: bool = False) -> pd.DataFrame:
    """One row per TCP/UDP flow per capture, with Zeek-style history, conn_state, counts and RSTs.

    The columns and their meaning are declared in ``diag.flows.columns.FLOW_COLUMNS``.

    With ``icmp``, ICMP and ICMPv6 messages make flows too, as Zeek's conn.log
    has them (``diag.flows.keys.icmp_ports``): the type and the answer type or
    code in the port columns, no history, conn_state ``OTH``. The diagnosis
    reads ICMP errors from the packets, as evidence about the flow they quote,
    and the report's flow list is about TCP and UDP: ``analyze`` leaves them out.

    A packet a capture saw twice because it was forwarded between two of the
    captured interfaces (``diag.flows.copies.forwarded_copies``) counts once, in
    every column, under its first copy.
    """
    keys = FlowKeys(packets, icmp)
    if keys.n_tuples == 0:
        return empty_flows()
    walked = _summarise(packets, keys)
    # Tens of thousands of new lists and dicts (the RST lists), none in a cycle: no full collections meanwhile.
    with collector_paused():
        return _flow_table(packets, keys, walked)


def _flow_table(packets: pd.DataFrame, keys: FlowKeys, walked: _Walked) -> pd.DataFrame:
    """The walk's results as ``FLOW_COLUMNS``, with each flow's endpoints, history and RSTs as Python objects."""
    summary = walked.summary
    # Which flow each row went to matters only for tunnel packets (the usual capture has none): the other
    # rows' ids stay -1.
    tunnelled = np.flatnonzero(tunnel_rows(packets))
    has_tunnels = len(tunnelled) > 0
    by_appearance, _ = _numbered(summary)
    n_flows = len(by_appearance)
    rank = np.empty(n_flows, dtype=np.int64)
    rank[by_appearance] = np.arange(n_flows, dtype=np.int64)
    row_ids = np.full(len(packets), -1, dtype=np.int64) if has_tunnels else np.empty(0, dtype=np.int64)
    if has_tunnels:
        walk_flow = walked.flows_of(tunnelled)
        row_ids[tunnelled] = np.where(walk_flow >= 0, rank[np.maximum(walk_flow, 0)], -1)
    first_row = summary.first_row[by_appearance]
    is_tcp = summary.is_tcp[by_appearance]
    capture = categorical(packets["capture"])
    capture_names = np.asarray(capture.categories.astype(str), dtype=object)
    names = _EndpointNames(keys.addresses)
    orig_h, orig_p, orig_text = names(summary.originator[by_appearance])
    resp_h, resp_p, resp_text = names(summary.responder[by_appearance])
    packet_counts, sizes, ip_sizes = (
        summary.packets[by_appearance],
        summary.sizes[by_appearance],
        summary.ip_sizes[by_appearance],
    )
    orig_pkts, resp_pkts = packet_counts[:, 0], packet_counts[:, 1]
    orig_bytes, resp_bytes = sizes[:, 0], sizes[:, 1]
    histories = _history_column(summary, by_appearance)
    states = summary.states[by_appearance]
    is_udp = keys.columns.proto[first_row] == UDP
    conn_state = np.where(
        is_tcp,
        tcp_conn_state(states[:, 0], states[:, 1], orig_bytes, resp_bytes, histories),
        np.where(is_udp, udp_conn_state(orig_pkts, resp_pkts), "OTH"),  # Zeek's state of any other transport
    )
    previous = summary.previous[by_appearance]
    proto = np.where(is_tcp, "tcp", np.where(is_udp, "udp", "icmp")).astype(object)
    return pd.DataFrame(
        {
            "flow_id": np.arange(n_flows, dtype=np.int64),
            "capture": _text_column(capture_names, np.asarray(capture.codes)[first_row]),
            "proto": _text_column(proto),
            "orig": orig_text,
            "resp": resp_text,
            "orig_h": orig_h,
            "orig_p": orig_p.astype(np.int64),
            "resp_h": resp_h,
            "resp_p": resp_p.astype(np.int64),
            "vlan": packets["vlan"].to_numpy()[first_row].astype(np.int64),
            "history": histories,
            "conn_state": _text_column(conn_state),
            "orig_pkts": orig_pkts,
            "resp_pkts": resp_pkts,
            "orig_bytes": orig_bytes,
            "resp_bytes": resp_bytes,
            "orig_ip_bytes": ip_sizes[:, 0],
            "resp_ip_bytes": ip_sizes[:, 1],
            "first_ts": summary.first_ts_ns[by_appearance] / 1e9,
            "last_ts": summary.last_ts_ns[by_appearance] / 1e9,
            "syn_retransmits": summary.syn_retransmits[by_appearance],
            "retransmits": summary.retransmits[by_appearance],
            "missed_bytes": summary.missed_bytes[by_appearance],
            "rsts": _rst_lists(summary, rank),
            "first_index": packets["index"].to_numpy()[first_row].astype(np.int64),
            "prev_flow": np.where(previous >= 0, rank[np.maximum(previous, 0)], -1),
            "tunnel_parents": _text_column(
                tunnel_parents(packets, row_ids, n_flows) if has_tunnels else np.full(n_flows, "", dtype=object)
            ),
            "carrier": carrier_flows(packets, row_ids if has_tunnels else None, n_flows, proto, orig_p, resp_p),
        },
        columns=list(FLOW_COLUMNS),
    )
