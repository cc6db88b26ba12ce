"""The flow table: one row per connection per capture, summarised the way Zeek's conn.log does.

A flow is the bidirectional 5-tuple (plus the VLAN and the capture it was seen
in). ``history`` and ``conn_state`` follow Zeek's definitions so a row can be
checked against ``zeek -r capture.pcap``'s conn.log; byte counts are Zeek's too
(payload bytes from the sequence-number extent, so a retransmitted segment is
counted once).

Everything is vectorised over the packet table. The one loop is the TCP
endpoint state machine that yields ``conn_state``: it walks the *rank* of the
state-changing packets inside each flow (first packet, second, ...) and
updates every flow at once, so it runs as many times as the busiest flow has
SYN/FIN/RST packets, not once per packet.

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
  copies (``diag.copies.forwarded_copies``) are left out of every count, so a
  router's flow reads like its endpoints' (one SYN, not one per interface).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd

from diag.capture.columns import ACK, FIN, RST, SYN, TCP, UDP
from diag.copies import copy_origins
from diag.report import endpoint_text

FLOW_COLUMNS: Final[tuple[str, ...]] = (
    "flow_id",
    "capture",
    "proto",
    "orig",
    "resp",
    "orig_h",
    "orig_p",
    "resp_h",
    "resp_p",
    "vlan",
    "history",
    "conn_state",
    "orig_pkts",
    "resp_pkts",
    "orig_bytes",
    "resp_bytes",
    "first_ts",
    "last_ts",
    "syn_retransmits",
    "retransmits",
    "rsts",
    "first_index",
)

# Zeek's TCP endpoint states (TCP_ENDPOINT_*).
INACTIVE: Final = 0
SYN_SENT: Final = 1
SYN_ACK_SENT: Final = 2
PARTIAL: Final = 3
ESTABLISHED: Final = 4
CLOSED: Final = 5
RESET: Final = 6

_PORT_BITS = 16
_SEQ_SPACE = 1 << 32


# --------------------------------------------------------------------------- flow keys


def _categorical(column: pd.Series) -> pd.Categorical[Any]:
    """The column as a Categorical (free for the reader's categorical columns)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return pd.Categorical(column)
    return pd.Categorical(column.astype(str))


def _shared_address_codes(src: pd.Series, dst: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source and destination addresses as integer codes into one shared list of addresses."""
    src_cat, dst_cat = _categorical(src), _categorical(dst)
    addresses = pd.Index(src_cat.categories.astype(str)).union(pd.Index(dst_cat.categories.astype(str)))

    def codes(cat: pd.Categorical[Any]) -> np.ndarray:
        to_shared = addresses.get_indexer(cat.categories.astype(str)).astype(np.int64)
        raw = np.asarray(cat.codes, dtype=np.int64)
        if len(to_shared) == 0:
            return np.full(len(raw), -1, dtype=np.int64)
        return np.where(raw >= 0, to_shared[np.maximum(raw, 0)], -1)

    return codes(src_cat), codes(dst_cat), np.asarray(addresses, dtype=object)


def _dense_codes(*columns: np.ndarray) -> np.ndarray:
    """One dense int64 id per distinct combination of non-negative int columns, numbered by first appearance.

    Columns are folded pairwise into one integer while it fits in 62 bits;
    only when it would not is the running key renumbered (``factorize``).
    """
    combined = columns[0].astype(np.int64)
    for column in columns[1:]:
        width = int(column.max(initial=0)) + 1
        if (int(combined.max(initial=0)) + 1) * width >= 1 << 62:
            combined = pd.factorize(combined, sort=False)[0].astype(np.int64)
            if (int(combined.max(initial=0)) + 1) * width >= 1 << 62:
                column = pd.factorize(column, sort=False)[0].astype(np.int64)
                width = int(column.max(initial=0)) + 1
        combined = combined * width + column
    return pd.factorize(combined, sort=False)[0].astype(np.int64)


class _FlowKeys:
    """Per-packet flow id plus the endpoint codes ``build_flows`` needs to name the ends."""

    def __init__(self, packets: pd.DataFrame) -> None:
        n = len(packets)
        self.flow_id = np.full(n, -1, dtype=np.int64)
        src, dst, self.addresses = _shared_address_codes(packets["src"], packets["dst"])
        proto = packets["proto"].to_numpy(dtype=np.int64)
        sport = packets["sport"].to_numpy(dtype=np.int64)
        dport = packets["dport"].to_numpy(dtype=np.int64)
        eligible = (
            ((proto == TCP) | (proto == UDP))
            & (sport >= 0)
            & (dport >= 0)
            & (src >= 0)
            & (dst >= 0)
            & (packets["frag_offset"].to_numpy() == 0)
        )
        self.rows = np.flatnonzero(eligible)
        # An endpoint is address and port in one integer; the flow key orders
        # the two endpoints so both directions share it.
        self.src_endpoint = (src << _PORT_BITS) | np.maximum(sport, 0)
        self.dst_endpoint = (dst << _PORT_BITS) | np.maximum(dport, 0)
        if len(self.rows) == 0:
            return
        s, d = self.src_endpoint[self.rows], self.dst_endpoint[self.rows]
        low, high = np.minimum(s, d), np.maximum(s, d)
        capture = np.asarray(_categorical(packets["capture"]).codes, dtype=np.int64)[self.rows]
        vlan = packets["vlan"].to_numpy()[self.rows].astype(np.int64) + 1  # -1 (untagged) -> 0
        context = _dense_codes(capture, vlan, (proto[self.rows] == UDP).astype(np.int64))
        tuple_id = _dense_codes(context, low, high)
        epoch = self._reuse_epochs(packets, tuple_id)
        self.flow_id[self.rows] = tuple_id if not epoch.any() else _dense_codes(tuple_id, epoch)

    def _reuse_epochs(self, packets: pd.DataFrame, tuple_id: np.ndarray) -> np.ndarray:
        """Count, per 5-tuple, the SYNs that carry a new initial sequence number: each starts a new flow."""
        rows = self.rows
        flags = packets["tcp_flags"].to_numpy(dtype=np.int64)[rows]
        proto = packets["proto"].to_numpy(dtype=np.int64)[rows]
        pure_syn = (proto == TCP) & ((flags & (SYN | ACK)) == SYN)
        if not pure_syn.any():
            return np.zeros(len(rows), dtype=np.int64)
        syn_at = np.flatnonzero(pure_syn)
        syn_seq = pd.Series(packets["seq"].to_numpy(dtype=np.int64)[rows][syn_at])
        previous = syn_seq.groupby(tuple_id[syn_at]).shift()
        new_isn = (previous.notna() & (previous.to_numpy() != syn_seq.to_numpy())).to_numpy()
        if not new_isn.any():
            return np.zeros(len(rows), dtype=np.int64)
        marks = np.zeros(len(rows), dtype=np.int64)
        marks[syn_at[new_isn]] = 1
        return pd.Series(marks).groupby(tuple_id).cumsum().to_numpy()


def flow_ids(packets: pd.DataFrame) -> np.ndarray:
    """The flow of every packet (int64, numbered from 0 by first appearance; -1 when not TCP/UDP).

    Packets of the same bidirectional 5-tuple, VLAN and capture share an id;
    ICMP, non-IP packets and non-first fragments get -1. A SYN with a new
    initial sequence number on a 5-tuple already seen starts a new id.
    Forwarded copies of a packet get their flow's id like any other row.
    """
    return _FlowKeys(packets).flow_id


def _counted_rows(packets: pd.DataFrame, keys: _FlowKeys) -> np.ndarray:
    """The flow rows to count: all but the later copies of a packet forwarded inside the capture.

    A copy keeps its flow id (``flow_ids``) but adds nothing to the counts;
    its origin, the first copy, stands for the packet (its index is the one
    a RST is reported under).
    """
    origin = copy_origins(packets)[keys.rows]
    is_copy = origin >= 0
    # Only a copy in the same flow as its origin is collapsed (a guard for
    # captures out of time order, where a new-ISN SYN could fall in between).
    is_copy[is_copy] = keys.flow_id[origin[is_copy]] == keys.flow_id[keys.rows[is_copy]]
    return keys.rows[~is_copy]


# --------------------------------------------------------------------------- grouped helpers


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative int64 keys, as 16-bit radix passes.

    numpy sorts 16-bit integers with a radix sort, so two or three passes
    over 16-bit digits beat one comparison sort of the int64 keys severalfold.
    """
    top = int(keys.max(initial=0))
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while top >> shift:
        digit = ((keys[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


def _exclusive_count_before(flow_start_of_row: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For rows sorted by flow: how many earlier rows of the same flow have ``mask`` set."""
    running = np.cumsum(mask, dtype=np.int64) - mask
    return running - running[flow_start_of_row]


def _first_per_key(mask: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Rows where ``mask`` is set for the first time for their key (rows in time order)."""
    out = np.zeros(len(mask), dtype=bool)
    at = np.flatnonzero(mask)
    if len(at):
        out[at[~pd.Series(key[at]).duplicated().to_numpy()]] = True
    return out


def _changed_per_key(mask: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Rows where ``mask`` is set and ``value`` differs from the previous masked row of the same key."""
    out = np.zeros(len(mask), dtype=bool)
    at = np.flatnonzero(mask)
    if len(at):
        order = stable_order(key[at])
        k, v = key[at][order], value[at][order]
        new = np.ones(len(at), dtype=bool)
        new[1:] = (k[1:] != k[:-1]) | (v[1:] != v[:-1])
        out[at[order]] = new
    return out


def _powers_of_ten_per_key(mask: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Rows that are the 1st, 10th, 100th ... masked row of their key (Zeek's scaled history letters)."""
    out = np.zeros(len(mask), dtype=bool)
    at = np.flatnonzero(mask)
    if len(at):
        order = stable_order(key[at])
        k = key[at][order]
        position = np.arange(len(k))
        group_start = np.ones(len(k), dtype=bool)
        group_start[1:] = k[1:] != k[:-1]
        occurrence = position - np.maximum.accumulate(np.where(group_start, position, 0)) + 1
        out[at[order]] = np.isin(occurrence, 10 ** np.arange(19, dtype=np.int64))
    return out


def _signed_seq_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` in 32-bit sequence space, as a signed number (RFC 1982 style)."""
    difference = (a - b) & (_SEQ_SPACE - 1)
    return difference - ((difference >> 31) << 32)  # bit operations: much cheaper than % on int64


# --------------------------------------------------------------------------- the table


class _Packets:
    """The counted packets' columns as numpy arrays, sorted by flow then file order."""

    def __init__(self, packets: pd.DataFrame, keys: _FlowKeys, counted: np.ndarray) -> None:
        order = stable_order(keys.flow_id[counted])
        rows = counted[order]
        self.rows = rows
        self.flow = keys.flow_id[rows]
        self.n_flows = int(self.flow[-1]) + 1
        self.starts = np.searchsorted(self.flow, np.arange(self.n_flows))
        self.counts = np.diff(np.append(self.starts, len(rows)))
        self.flow_start_of_row = self.starts[self.flow]

        def column(name: str) -> np.ndarray:
            return packets[name].to_numpy()[rows].astype(np.int64)

        self.proto = column("proto")
        self.flags = np.maximum(column("tcp_flags"), 0)
        self.seq = column("seq")
        self.ack = column("ack")
        self.win = column("win")
        self.payload = np.maximum(column("payload_len"), 0)
        self.ts_ns = column("ts_ns")
        self.index = column("index")
        self.vlan = column("vlan")
        self.src_endpoint = keys.src_endpoint[rows]
        self.dst_endpoint = keys.dst_endpoint[rows]
        capture = _categorical(packets["capture"])
        names = np.asarray(capture.categories.astype(str), dtype=object)
        self.capture_at_start = names[np.asarray(capture.codes, dtype=np.int64)[rows[self.starts]]]
        self.syn = (self.flags & SYN) != 0
        self.fin = (self.flags & FIN) != 0
        self.rst = (self.flags & RST) != 0
        self.has_ack = (self.flags & ACK) != 0
        self.is_tcp = self.proto == TCP


def _originators(p: _Packets) -> tuple[np.ndarray, np.ndarray]:
    """(originator endpoint per flow, whether the originator did not send the flow's first packet)."""
    n = len(p.flow)
    position = np.arange(n)
    pure_syn = p.is_tcp & ((p.flags & (SYN | ACK)) == SYN)
    first_syn = np.minimum.reduceat(np.where(pure_syn, position, n), p.starts)
    first_endpoint = p.src_endpoint[p.starts]
    originator = np.where(first_syn < n, p.src_endpoint[np.minimum(first_syn, n - 1)], first_endpoint)
    # No SYN at all but a SYN-ACK first: it answers a SYN we did not capture.
    first_is_synack = p.is_tcp[p.starts] & ((p.flags[p.starts] & (SYN | ACK | RST | FIN)) == (SYN | ACK))
    answered = (first_syn >= n) & first_is_synack
    originator = np.where(answered, p.dst_endpoint[p.starts], originator)
    return originator, originator != first_endpoint


class _Directions:
    """Per-packet facts that depend on the direction: who sent it, and sequence numbers unwrapped."""

    def __init__(self, p: _Packets, is_orig: np.ndarray) -> None:
        self.is_orig = is_orig
        self.side = (~is_orig).astype(np.int64)  # 0 originator, 1 responder
        self.key = p.flow * 2 + self.side  # one key per (flow, direction)
        # Rows grouped by (flow, direction), time order kept inside each group:
        # rows are already grouped by flow, so each row's place follows from
        # how many rows of its direction came before it in its flow.
        n = len(p.flow)
        orig_before = _exclusive_count_before(p.flow_start_of_row, is_orig)
        resp_before = np.arange(n) - p.flow_start_of_row - orig_before
        orig_in_flow = np.add.reduceat(is_orig.astype(np.int64), p.starts)
        place = np.where(
            is_orig, p.flow_start_of_row + orig_before, p.flow_start_of_row + orig_in_flow[p.flow] + resp_before
        )
        self.order = np.empty(n, dtype=np.int64)
        self.order[place] = np.arange(n)
        k = self.key[self.order]
        self.group_start = np.ones(len(k), dtype=bool)
        self.group_start[1:] = k[1:] != k[:-1]
        # Unwrapped sequence numbers: the first of a direction as is, then
        # the signed 32-bit steps between consecutive packets of it.
        seq = p.seq[self.order]
        step = np.zeros(len(seq), dtype=np.int64)
        step[1:] = _signed_seq_delta(seq[1:], seq[:-1])
        step[self.group_start] = 0
        group_id = np.cumsum(self.group_start) - 1
        base = seq[self.group_start][group_id]
        cumulative = np.cumsum(step)
        unwrapped_sorted = base + cumulative - cumulative[np.flatnonzero(self.group_start)][group_id]
        self.seq_unwrapped = np.empty(len(seq), dtype=np.int64)
        self.seq_unwrapped[self.order] = unwrapped_sorted
        self.group_of_sorted = group_id


def _retransmissions_and_sizes(
    p: _Packets, d: _Directions, own_rst_before: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Zeek's retransmission test per packet, and payload bytes per (flow, side) from sequence space.

    Zeek keeps the highest sequence number each endpoint reached ("last_seq");
    a packet with payload that does not go past it is a retransmission. RSTs
    and anything sent after the endpoint's own RST do not move last_seq.
    """
    seg_len = p.payload + p.syn + p.fin - np.where(p.rst, p.payload, 0)
    end = d.seq_unwrapped + seg_len
    o = d.order
    first_in_group = np.flatnonzero(d.group_start)
    group = d.group_of_sorted
    first_row = o[first_in_group]  # original positions of each direction's first packet
    # Zeek's initial last_seq: past the SYN, or the first segment's start.
    initial = np.where(p.syn[first_row], end[first_row], d.seq_unwrapped[first_row])
    start_seq = np.where(p.syn[first_row], d.seq_unwrapped[first_row], d.seq_unwrapped[first_row] - 1)
    moves = ~p.rst & ~own_rst_before
    contribution = pd.Series(np.where(moves[o], end[o], np.iinfo(np.int64).min))
    running = contribution.groupby(group).cummax().to_numpy()
    before = np.empty(len(o), dtype=np.int64)
    before[1:] = running[:-1]
    before[d.group_start] = np.iinfo(np.int64).min
    last_seq_before = np.maximum(before, initial[group])
    is_retransmission_sorted = (
        (p.payload[o] > 0)
        & (end[o] <= last_seq_before)
        & ~own_rst_before[o]
        # A FIN right after the SYN may legitimately not advance (Zeek's >2 GB case).
        & ~(p.fin[o] & (last_seq_before == start_seq[group] + 1))
    )
    retransmission = np.empty(len(o), dtype=bool)
    retransmission[o] = is_retransmission_sorted

    last_seq = np.maximum(
        np.maximum.reduceat(np.where(moves[o], end[o], np.iinfo(np.int64).min), first_in_group), initial
    )
    # The peer's acknowledgements (not in RSTs) also bound what was sent.
    group_key = d.key[first_row]
    acked = _highest_ack(p, d, group_key, last_seq, first_row)
    extent = np.maximum(last_seq, acked) - start_seq
    fins = np.add.reduceat(p.fin[o].astype(np.int64), first_in_group)
    size = np.where(extent > 0, extent - 1, 0)
    size = np.where((fins > 0) & (size > 0), size - 1, size)
    sizes = np.zeros(p.n_flows * 2, dtype=np.int64)
    sizes[group_key] = size
    return retransmission, sizes.reshape(p.n_flows, 2)


def _highest_ack(
    p: _Packets, d: _Directions, group_key: np.ndarray, last_seq: np.ndarray, first_row: np.ndarray
) -> np.ndarray:
    """Per (flow, side) group: the highest acknowledgement the peer sent after the side's first packet."""
    lookup = np.full(p.n_flows * 2, -1, dtype=np.int64)
    lookup[group_key] = np.arange(len(group_key))
    target = lookup[p.flow * 2 + (1 - d.side)]  # the direction each ACK acknowledges
    usable = p.has_ack & ~p.rst & (target >= 0)
    usable &= np.arange(len(p.flow)) > np.where(target >= 0, first_row[np.maximum(target, 0)], 0)
    result = np.full(len(group_key), np.iinfo(np.int64).min, dtype=np.int64)
    at = np.flatnonzero(usable)
    if len(at):
        t = target[at]
        reference = last_seq[t]
        unwrapped = reference + _signed_seq_delta(p.ack[at], reference & (_SEQ_SPACE - 1))
        np.maximum.at(result, t, unwrapped)
    return result


def _history(
    p: _Packets,
    d: _Directions,
    retransmission: np.ndarray,
    flipped: np.ndarray,
    own_rst_before: np.ndarray,
    peer_closed: np.ndarray,
) -> np.ndarray:
    """Zeek's history string per flow (upper case: originator, lower case: responder)."""
    tcp = p.is_tcp
    bits = p.syn.astype(np.int64) + p.fin + p.rst
    key = d.key
    letters: list[tuple[np.ndarray, np.ndarray, int]] = []  # (rows, letter per row, order inside a packet)

    def add(mask: np.ndarray, letter: np.ndarray | str, sub: int) -> None:
        at = np.flatnonzero(mask)
        codes = np.full(len(at), ord(letter)) if isinstance(letter, str) else letter[at]
        letters.append((at, codes, sub))

    add(_first_per_key(tcp & (bits > 1) & p.fin & p.rst, key), "I", 0)
    add(_first_per_key(tcp & (bits > 1) & ~(p.fin & p.rst), key), "Q", 0)
    syn_only = tcp & (bits == 1) & p.syn
    syn_letter = np.where(p.has_ack, ord("H"), ord("S"))
    add(_changed_per_key(syn_only, key, p.seq), syn_letter, 0)
    add(_changed_per_key(tcp & (bits == 1) & p.fin, key, (p.seq + p.payload) & (_SEQ_SPACE - 1)), "F", 0)
    add(_changed_per_key(tcp & (bits == 1) & p.rst, key, p.seq), "R", 0)
    add(_first_per_key(tcp & (bits == 0) & (p.payload > 0), key), "D", 0)
    add(_first_per_key(tcp & (bits == 0) & (p.payload == 0) & p.has_ack, key), "A", 0)
    add(_first_per_key(p.proto == UDP, key), "D", 0)
    zero_window = tcp & (p.win == 0) & ~p.rst & ~own_rst_before & ~peer_closed
    add(_powers_of_ten_per_key(zero_window, key), "W", 1)
    add(_powers_of_ten_per_key(tcp & retransmission, key), "T", 2)

    rows = np.concatenate([at for at, _, _ in letters])
    codes = np.concatenate([c for _, c, _ in letters]).astype(np.uint8)
    sub = np.concatenate([np.full(len(at), s) for at, _, s in letters])
    codes = np.where(d.is_orig[rows], codes, codes + 32).astype(np.uint8)  # lower case for the responder
    order = np.lexsort((sub, rows))
    text = codes[order].tobytes().decode("ascii")
    per_flow = np.bincount(p.flow[rows], minlength=p.n_flows)
    ends = np.cumsum(per_flow)
    begins = ends - per_flow
    return np.array(
        [
            ("^" if f else "") + text[b:e]
            for b, e, f in zip(begins.tolist(), ends.tolist(), flipped.tolist(), strict=True)
        ],
        dtype=object,
    )


# ---- conn_state: Zeek's TCP endpoint state machine, vectorised across flows


def _state_changing_packets(p: _Packets, d: _Directions) -> np.ndarray:
    """Positions of the packets that can change an endpoint's state, in flow and time order.

    Every SYN, FIN and RST; and, between two of those, the first packet of
    each direction and the first one with payload (an endpoint leaves Zeek's
    INACTIVE state on its first packet, except a bare ACK from the responder
    while the originator waits for its SYN-ACK). Other packets leave the
    state as it is.
    """
    control = p.is_tcp & (p.syn | p.fin | p.rst)
    new_flow = np.zeros(len(p.flow), dtype=bool)
    new_flow[p.starts] = True
    segment = np.cumsum(control | new_flow)
    key = segment * 2 + d.side
    plain = p.is_tcp & ~control
    selected = control | _first_per_key(plain, key) | _first_per_key(plain & (p.payload > 0), key)
    return np.flatnonzero(selected)


def _endpoint_states(p: _Packets, d: _Directions) -> np.ndarray:
    """Final Zeek endpoint states, shape (n_flows, 2): column 0 originator, 1 responder."""
    state = np.zeros((2, p.n_flows), dtype=np.int8)
    previous = np.zeros((2, p.n_flows), dtype=np.int8)
    events = _state_changing_packets(p, d)
    if len(events) == 0:
        return state.T.copy()
    flow = p.flow[events]
    first_of_flow = np.searchsorted(flow, flow)  # events are sorted by flow
    rank = np.arange(len(events)) - first_of_flow
    by_rank = stable_order(rank)
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
    for r in range(int(rank.max()) + 1):
        at = events[by_rank[bounds[r] : bounds[r + 1]]]
        _step(
            state, previous, p.flow[at], d.side[at], p.syn[at], p.fin[at], p.rst[at], p.has_ack[at], p.payload[at] > 0
        )
    return state.T.copy()


def _step(
    state: np.ndarray,
    previous: np.ndarray,
    flow: np.ndarray,
    side: np.ndarray,
    syn: np.ndarray,
    fin: np.ndarray,
    rst: np.ndarray,
    ack: np.ndarray,
    data: np.ndarray,
) -> None:
    """One packet per flow through Zeek's UpdateStateMachine (TCPSessionAdapter), all flows at once."""
    peer_side = 1 - side
    me, me_prev = state[side, flow].copy(), previous[side, flow].copy()
    peer, peer_prev = state[peer_side, flow].copy(), previous[peer_side, flow].copy()
    was = me.copy()

    def set_me(mask: np.ndarray, new: int) -> None:
        change = mask & (me != new)
        me_prev[change] = me[change]
        me[change] = new

    def set_peer(mask: np.ndarray, new: int) -> None:
        change = mask & (peer != new)
        peer_prev[change] = peer[change]
        peer[change] = new

    is_orig = side == 0
    inactive = was == INACTIVE
    opening = (was == SYN_SENT) | (was == SYN_ACK_SENT)
    established = (was == ESTABLISHED) | (was == PARTIAL)
    closed = was == CLOSED

    # INACTIVE: the first packet of this endpoint.
    set_me(inactive & syn & is_orig & ack, SYN_ACK_SENT)
    set_me(inactive & syn & is_orig & ~ack, SYN_SENT)
    answer = inactive & syn & ~is_orig  # SYN or SYN-ACK from the responder
    set_peer(answer & (peer == SYN_SENT), ESTABLISHED)
    set_me(answer, ESTABLISHED)
    set_me(inactive & fin, CLOSED)
    set_me(inactive & rst, RESET)
    plain = inactive & (me == INACTIVE)
    # A bare ACK from the responder before its SYN-ACK does not count as activity.
    early_ack = ~is_orig & ~data & (peer == SYN_SENT)
    joins = plain & ~early_ack & ack & (peer == ESTABLISHED)
    set_me(joins, ESTABLISHED)
    set_me(plain & ~early_ack & ~joins, PARTIAL)

    # SYN_SENT / SYN_ACK_SENT.
    set_me(opening & fin, CLOSED)
    set_me(opening & rst, RESET)

    # ESTABLISHED / PARTIAL.
    set_me(established & syn & (was == PARTIAL) & (peer == INACTIVE) & ~ack, SYN_SENT)
    closing = established & fin & ~rst
    set_me(closing, CLOSED)
    # The peer's FIN then RST was a normal close after all.
    set_peer(closing & (peer == RESET) & (peer_prev == CLOSED), CLOSED)
    set_me(established & rst, RESET)

    # CLOSED: a RST counts unless both sides already closed.
    set_me(closed & rst & (peer != CLOSED), RESET)

    state[side, flow], previous[side, flow] = me, me_prev
    state[peer_side, flow], previous[peer_side, flow] = peer, peer_prev


def _tcp_conn_state(states: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Zeek's conn_state() from the final endpoint states and sizes (base/protocols/conn/main.zeek)."""
    o, r = states[:, 0], states[:, 1]
    o_inactive = (o == INACTIVE) | (o == PARTIAL)
    r_inactive = (r == INACTIVE) | (r == PARTIAL)
    no_bytes = (sizes[:, 0] == 0) & (sizes[:, 1] == 0)
    conditions = [
        (r == RESET) & ((o == SYN_SENT) | (o == SYN_ACK_SENT) | ((o == RESET) & no_bytes)),
        (r == RESET) & o_inactive,
        r == RESET,
        (o == RESET) & r_inactive,
        o == RESET,
        (r == CLOSED) & (o == CLOSED),
        (o == CLOSED) & r_inactive,
        o == CLOSED,
        (r == CLOSED) & o_inactive,
        r == CLOSED,
        (o == SYN_SENT) & (r == INACTIVE),
        (o == ESTABLISHED) & (r == ESTABLISHED),
    ]
    choices = ["REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0", "S1"]
    return np.select(conditions, choices, default="OTH").astype(object)


def _udp_conn_state(orig_pkts: np.ndarray, resp_pkts: np.ndarray) -> np.ndarray:
    return np.select(
        [(orig_pkts > 0) & (resp_pkts > 0), orig_pkts > 0, resp_pkts > 0], ["SF", "S0", "SHR"], default="OTH"
    ).astype(object)


def _endpoint_text(codes: np.ndarray, addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(host, port, "host:port" with IPv6 in brackets) for endpoint codes."""
    # Many flows share an endpoint (the server): format each distinct one once.
    distinct, inverse = np.unique(codes, return_inverse=True)
    host = addresses[distinct >> _PORT_BITS] if len(addresses) else np.array([], dtype=object)
    port = distinct & ((1 << _PORT_BITS) - 1)
    text = np.array(
        [endpoint_text(h, pt) for h, pt in zip(host.tolist(), port.tolist(), strict=True)],
        dtype=object,
    )
    return host.astype(object)[inverse], port[inverse], text[inverse]


def _rst_lists(p: _Packets, is_orig: np.ndarray) -> list[list[dict[str, object]]]:
    lists: list[list[dict[str, object]]] = [[] for _ in range(p.n_flows)]
    at = np.flatnonzero(p.is_tcp & p.rst)
    for flow, index, orig in zip(p.flow[at].tolist(), p.index[at].tolist(), is_orig[at].tolist(), strict=True):
        lists[flow].append({"index": index, "from": "orig" if orig else "resp"})
    return lists


def empty_flows() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in FLOW_COLUMNS})


def build_flows(packets: pd.DataFrame) -> pd.DataFrame:
    """One row per TCP/UDP flow per capture, with Zeek-style history, conn_state, counts and RSTs.

    Columns (``FLOW_COLUMNS``): ``flow_id`` (as ``flow_ids``), ``capture``,
    ``proto`` ('tcp'/'udp'), ``orig``/``resp`` ("addr:port", "[v6]:port"),
    ``orig_h``, ``orig_p``, ``resp_h``, ``resp_p``, ``vlan`` (-1 untagged),
    ``history``, ``conn_state``, ``orig_pkts``, ``resp_pkts``, ``orig_bytes``,
    ``resp_bytes`` (payload bytes as Zeek counts them), ``first_ts``,
    ``last_ts`` (float seconds), ``syn_retransmits`` (the originator's SYNs
    repeating an earlier SYN's sequence number), ``retransmits`` (Zeek's
    retransmitted segments, both directions), ``rsts`` (list of
    ``{"index", "from"}``, index 0-based in the capture file), ``first_index``.

    A packet a capture saw twice because it was forwarded between two of the
    captured interfaces (``diag.copies.forwarded_copies``) counts once, in
    every column, under its first copy.
    """
    keys = _FlowKeys(packets)
    if len(keys.rows) == 0:
        return empty_flows()
    p = _Packets(packets, keys, _counted_rows(packets, keys))
    originator, flipped = _originators(p)
    is_orig = p.src_endpoint == originator[p.flow]
    d = _Directions(p, is_orig)
    responder = np.where(p.src_endpoint[p.starts] == originator, p.dst_endpoint[p.starts], p.src_endpoint[p.starts])

    own_rst_before = np.where(
        is_orig,
        _exclusive_count_before(p.flow_start_of_row, p.rst & is_orig) > 0,
        _exclusive_count_before(p.flow_start_of_row, p.rst & ~is_orig) > 0,
    )
    fin_before_by_orig = _exclusive_count_before(p.flow_start_of_row, p.fin & ~p.rst & is_orig) > 0
    fin_before_by_resp = _exclusive_count_before(p.flow_start_of_row, p.fin & ~p.rst & ~is_orig) > 0
    peer_closed = np.where(is_orig, fin_before_by_resp, fin_before_by_orig)

    retransmission, tcp_sizes = _retransmissions_and_sizes(p, d, own_rst_before)
    orig_pkts = np.add.reduceat(is_orig.astype(np.int64), p.starts)
    resp_pkts = p.counts - orig_pkts
    flow_is_tcp = p.is_tcp[p.starts]

    udp_payload = np.where(p.is_tcp, 0, p.payload)
    udp_bytes = np.bincount(d.key, weights=udp_payload, minlength=2 * p.n_flows).astype(np.int64).reshape(-1, 2)
    sizes = np.where(flow_is_tcp[:, None], tcp_sizes, udp_bytes)

    states = _endpoint_states(p, d)
    conn_state = np.where(flow_is_tcp, _tcp_conn_state(states, sizes), _udp_conn_state(orig_pkts, resp_pkts))

    orig_syn = p.is_tcp & ((p.flags & (SYN | ACK)) == SYN) & is_orig
    syn_at = np.flatnonzero(orig_syn)
    repeated = pd.Series(p.flow[syn_at] * _SEQ_SPACE + (p.seq[syn_at] & (_SEQ_SPACE - 1))).duplicated().to_numpy()
    syn_retransmits = np.bincount(p.flow[syn_at[repeated]], minlength=p.n_flows)
    retransmits = np.bincount(p.flow[retransmission], minlength=p.n_flows)

    orig_h, orig_p, orig_text = _endpoint_text(originator, keys.addresses)
    resp_h, resp_p, resp_text = _endpoint_text(responder, keys.addresses)
    flows = pd.DataFrame(
        {
            "flow_id": np.arange(p.n_flows, dtype=np.int64),
            "capture": p.capture_at_start,
            "proto": np.where(flow_is_tcp, "tcp", "udp").astype(object),
            "orig": orig_text,
            "resp": resp_text,
            "orig_h": orig_h,
            "orig_p": orig_p.astype(np.int64),
            "resp_h": resp_h,
            "resp_p": resp_p.astype(np.int64),
            "vlan": p.vlan[p.starts],
            "history": _history(p, d, retransmission, flipped, own_rst_before, peer_closed),
            "conn_state": conn_state,
            "orig_pkts": orig_pkts,
            "resp_pkts": resp_pkts,
            "orig_bytes": sizes[:, 0],
            "resp_bytes": sizes[:, 1],
            "first_ts": np.minimum.reduceat(p.ts_ns, p.starts) / 1e9,
            "last_ts": np.maximum.reduceat(p.ts_ns, p.starts) / 1e9,
            "syn_retransmits": syn_retransmits.astype(np.int64),
            "retransmits": retransmits.astype(np.int64),
            "rsts": _rst_lists(p, is_orig),
            "first_index": p.index[p.starts],
        },
        columns=list(FLOW_COLUMNS),
    )
    return flows
