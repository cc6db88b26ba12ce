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

Where this differs from Zeek, on purpose:
- Zeek starts a new conn.log entry when a SYN arrives after the connection
  closed, even with the same initial sequence number. Here a SYN that repeats
  the ISN stays in the same flow (it is the same attempt, retransmitted, and
  diagnosis needs to count it: a client retransmitting its SYN after "its own"
  RST did not send that RST). A SYN with a *new* ISN does start a new flow,
  as in Zeek.
- The originator is the sender of the first SYN without ACK; with no such SYN
  and a SYN-ACK first, the receiver of that SYN-ACK (it answers a SYN the
  capture missed); otherwise the first packet's sender. Zeek reaches the same
  result for the SYN-ACK case through its list of likely server ports. When
  the originator did not send the first packet, the history starts with '^'
  as Zeek's does after flipping roles.
- Letters 'c' (bad checksum) and 'g' (content gap) are never produced: the
  packet table carries no checksum verdict, and gaps need stream reassembly.
- A capture on several interfaces of a forwarding box (or ``-i any``) sees a
  forwarded packet once per interface. Zeek counts every copy; here the later
  copies (``diag.flows.copies.forwarded_copies``) are left out of every count, so a
  router's flow reads like its endpoints' (one SYN, not one per interface).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.flows.columns import FLOW_COLUMNS
from diag.flows.copies import copy_origins
from diag.flows.keys import PORT_BITS, PORT_MASK, FlowKeys, categorical, column, read_only
from diag.flows.tcpstate import tcp_conn_state, udp_conn_state
from diag.flows.walk import FlowSummary, group_by_flow, walk_flows


def flow_ids(packets: pd.DataFrame) -> np.ndarray:
    """The flow of every packet (int64, numbered from 0 by first appearance; -1 when not TCP/UDP).

    Packets of the same bidirectional 5-tuple, VLAN and capture share an id;
    ICMP, non-IP packets and non-first fragments get -1. A SYN with a new
    initial sequence number on a 5-tuple already seen starts a new id.
    Forwarded copies of a packet get their flow's id like any other row.
    """
    return FlowKeys(packets).flow_id


def _summarise(packets: pd.DataFrame, keys: FlowKeys) -> FlowSummary:
    """Walk every flow's counted packets (``diag.flows.walk``).

    A packet a capture saw twice because it was forwarded between two of its
    interfaces counts once: later copies (``copy_origins``) are left out
    when their origin, the first copy, is in the same flow (a guard for
    captures out of time order, where a new-ISN SYN could fall in between).
    """
    origin = read_only(copy_origins(packets), np.int64)
    order, starts = group_by_flow(keys.flow_id, origin)
    return FlowSummary(
        *walk_flows(
            order,
            starts,
            keys.columns,
            column(packets, "ack", np.int64),
            column(packets, "win", np.int32),
            column(packets, "payload_len", np.int32),
            column(packets, "ts_ns", np.int64),
            column(packets, "index", np.int64),
        )
    )


class _EndpointNames:
    """Endpoint codes as host, port and "host:port" text (IPv6 in brackets), each distinct one formatted once."""

    def __init__(self, addresses: np.ndarray) -> None:
        self.addresses = addresses
        # Each address's text up to the port: its text with port 0, less the "0".
        self.prefix = [endpoint_text(host, 0)[:-1] for host in addresses.tolist()]

    def __call__(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(host, port, text) per code."""
        address, port = codes >> PORT_BITS, codes & PORT_MASK
        inverse, distinct = pd.factorize(codes)  # many flows share an endpoint (the server)
        prefix = self.prefix
        pairs = zip((distinct >> PORT_BITS).tolist(), (distinct & PORT_MASK).tolist(), strict=True)
        text = [prefix[host] + str(number) for host, number in pairs]
        return self.addresses[address], port, np.array(text, dtype=object)[inverse]


def _histories(summary: FlowSummary) -> np.ndarray:
    """Each flow's history string, cut from the walk's one buffer of letters."""
    text = summary.letters.tobytes().decode("ascii")
    ends = summary.history_end.tolist()
    return np.array([text[b:e] for b, e in zip([0, *ends[:-1]], ends, strict=True)], dtype=object)


def _rst_lists(summary: FlowSummary, n_flows: int) -> list[list[dict[str, object]]]:
    lists: list[list[dict[str, object]]] = [[] for _ in range(n_flows)]
    for flow, index, orig in zip(
        summary.rst_flow.tolist(), summary.rst_index.tolist(), summary.rst_from_orig.tolist(), strict=True
    ):
        lists[flow].append({"index": index, "from": "orig" if orig else "resp"})
    return lists


def empty_flows() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in FLOW_COLUMNS})


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while the table's per-flow objects are made.

    Tens of thousands of new lists and dicts (the RST lists) trigger full
    collections that scan every object of the process, tens of milliseconds
    each; none of these objects can form a cycle.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_flows(packets: pd.DataFrame) -> pd.DataFrame:
    """One row per TCP/UDP flow per capture, with Zeek-style history, conn_state, counts and RSTs.

    The columns and their meaning are declared in ``diag.flows.columns.FLOW_COLUMNS``.

    A packet a capture saw twice because it was forwarded between two of the
    captured interfaces (``diag.flows.copies.forwarded_copies``) counts once, in
    every column, under its first copy.
    """
    keys = FlowKeys(packets)
    if keys.n_flows == 0:
        return empty_flows()
    summary = _summarise(packets, keys)
    with _collector_paused():
        return _flow_table(packets, keys, summary)


def _flow_table(packets: pd.DataFrame, keys: FlowKeys, summary: FlowSummary) -> pd.DataFrame:
    """The walk's results as ``FLOW_COLUMNS``, with each flow's endpoints, history and RSTs as Python objects."""
    n_flows = len(summary.first_row)
    first_row = summary.first_row
    capture = categorical(packets["capture"])
    capture_names = np.asarray(capture.categories.astype(str), dtype=object)
    names = _EndpointNames(keys.addresses)
    orig_h, orig_p, orig_text = names(summary.originator)
    resp_h, resp_p, resp_text = names(summary.responder)
    orig_pkts, resp_pkts = summary.packets[:, 0], summary.packets[:, 1]
    orig_bytes, resp_bytes = summary.sizes[:, 0], summary.sizes[:, 1]
    conn_state = np.where(
        summary.is_tcp,
        tcp_conn_state(summary.states[:, 0], summary.states[:, 1], orig_bytes, resp_bytes),
        udp_conn_state(orig_pkts, resp_pkts),
    )
    return pd.DataFrame(
        {
            "flow_id": np.arange(n_flows, dtype=np.int64),
            "capture": capture_names[np.asarray(capture.codes)[first_row]],
            "proto": np.where(summary.is_tcp, "tcp", "udp").astype(object),
            "orig": orig_text,
            "resp": resp_text,
            "orig_h": orig_h,
            "orig_p": orig_p.astype(np.int64),
            "resp_h": resp_h,
            "resp_p": resp_p.astype(np.int64),
            "vlan": packets["vlan"].to_numpy()[first_row].astype(np.int64),
            "history": _histories(summary),
            "conn_state": conn_state,
            "orig_pkts": orig_pkts,
            "resp_pkts": resp_pkts,
            "orig_bytes": orig_bytes,
            "resp_bytes": resp_bytes,
            "first_ts": summary.first_ts_ns / 1e9,
            "last_ts": summary.last_ts_ns / 1e9,
            "syn_retransmits": summary.syn_retransmits,
            "retransmits": summary.retransmits,
            "rsts": _rst_lists(summary, n_flows),
            "first_index": packets["index"].to_numpy()[first_row].astype(np.int64),
        },
        columns=list(FLOW_COLUMNS),
    )
