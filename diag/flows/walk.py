"""The walk over each 5-tuple's packets that cuts it into flows and yields their Zeek-style summary.

Packets are grouped by 5-tuple (``group_by_flow``, file order kept inside a
group), then ``walk_flows`` goes through each group's packets in order, once.
A SYN that Zeek would take for a new connection (``_reused``: after a FIN or
RST, or with a new initial sequence number), or any packet after one of
Zeek's timers ended the connection (an unanswered SYN, a close, silence),
ends the current flow and starts the next. Per flow it keeps per direction what Zeek keeps per endpoint: the
highest sequence number reached (``last_seq``, unwrapped across 2**32),
whether the endpoint already sent a RST, the endpoint state, and which
history letters it has shown, and what Zeek's reassembler would have
delivered: sequence space the peer acknowledges that no captured segment
carried is a content gap (``_gap``: the ``G``/``g`` letters and
``missed_bytes``). A second, short pass over the flow's ACKs needs each side's
final ``last_seq``.

Everything here is compiled (``diag.compiled``) and works on numpy arrays
only; ``diag.flows`` turns the results into the flow table.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from diag.capture.proto import ACK, FIN, RST, SYN, TCP, UDP
from diag.compiled import compiled
from diag.flows.keys import KeyColumns, endpoint
from diag.flows.tcpstate import CLOSED, ESTABLISHED, INACTIVE, RESET, SYN_ACK_SENT, SYN_SENT, update_endpoints

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_SEQ_MASK: Final = (1 << 32) - 1
_NEVER: Final = np.iinfo(np.int64).min  # below any sequence number: "nothing sent yet"
_UPPER_TO_LOWER: Final = ord("a") - ord("A")  # the responder's letters are lower case

_LETTER_I: Final = ord("I")  # SYN+FIN+RST or FIN+RST together
_LETTER_Q: Final = ord("Q")  # other multi-flag packets
_LETTER_S: Final = ord("S")
_LETTER_H: Final = ord("H")  # SYN-ACK
_LETTER_F: Final = ord("F")
_LETTER_R: Final = ord("R")
_LETTER_D: Final = ord("D")
_LETTER_A: Final = ord("A")
_LETTER_W: Final = ord("W")  # zero window
_LETTER_T: Final = ord("T")  # retransmission
_LETTER_G: Final = ord("G")  # content gap
_FLIPPED: Final = ord("^")

# Zeek's timers that end a connection (init-bare.zeek defaults), in ns: a packet after one of them
# fired opens a new connection. An unanswered SYN is given up 5 s after it (tcp_attempt_delay), a
# closed or reset connection is forgotten 5 s after the close (tcp_close_delay), and any connection
# after a silence of 5 min (TCP) or 1 min (UDP, ICMP) (tcp_/udp_/icmp_inactivity_timeout).
_ATTEMPT_DELAY_NS: Final = 5_000_000_000
_CLOSE_DELAY_NS: Final = 5_000_000_000
_TCP_INACTIVITY_NS: Final = 300_000_000_000
_UDP_INACTIVITY_NS: Final = 60_000_000_000
_NO_TIMER: Final = np.iinfo(np.int64).max


@compiled
def group_by_flow(flow_id: IntArray, origin: IntArray) -> tuple[IntArray, IntArray]:
    """(rows sorted by group, file order kept; ``starts`` such that group g is ``order[starts[g]:starts[g + 1]]``).

    ``flow_id`` is the group of each row (the 5-tuple, ``diag.flows.keys``).
    Left out: rows of no group (-1), and later copies of a packet forwarded
    inside the capture (``origin`` >= 0, from ``diag.flows.copies.copy_origins``)
    when their origin is in the same group. A counting sort: two passes.
    """
    n = len(flow_id)
    counted = np.empty(n, dtype=np.bool_)
    n_flows = 0
    for row in range(n):
        flow = flow_id[row]
        source = origin[row]
        is_copy = 0 <= source < n and flow_id[source] == flow
        counted[row] = flow >= 0 and not is_copy
        if counted[row]:
            n_flows = max(n_flows, flow + 1)
    starts = np.zeros(n_flows + 1, dtype=np.int64)
    for row in range(n):
        if counted[row]:
            starts[flow_id[row] + 1] += 1
    for flow in range(n_flows):
        starts[flow + 1] += starts[flow]
    order = np.empty(starts[n_flows], dtype=np.int64)
    filled = starts[:-1].copy()
    for row in range(n):
        if counted[row]:
            flow = flow_id[row]
            order[filled[flow]] = row
            filled[flow] += 1
    return order, starts


@compiled
def signed_seq_delta(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, as a signed number (RFC 1982 style)."""
    difference = (a - b) & _SEQ_MASK
    return difference - ((difference >> 31) << 32)


@compiled
def _is_power_of_ten(count: int) -> bool:
    """1, 10, 100, ...: the occurrences at which Zeek repeats a scaled history letter."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1


class FlowSummary(NamedTuple):
    """``walk_flows``'s results. Per flow unless said otherwise; ``[:, 0]`` originator, ``[:, 1]`` responder.

    Flows are in walk order (5-tuple by 5-tuple); ``diag.flows.table`` numbers
    them by first appearance.
    """

    first_row: IntArray  # table row of the flow's first packet
    originator: IntArray  # endpoints (``diag.flows.keys.endpoint``)
    responder: IntArray
    is_tcp: BoolArray
    packets: IntArray  # (n_flows, 2)
    sizes: IntArray  # (n_flows, 2) payload bytes: Zeek's sequence-space count for TCP, the sum for UDP and ICMP
    ip_sizes: IntArray  # (n_flows, 2) IP total lengths added up, as Zeek's orig_ip_bytes / resp_ip_bytes
    states: npt.NDArray[np.int8]  # (n_flows, 2) final Zeek endpoint states (``diag.flows.tcpstate``)
    first_ts_ns: IntArray
    last_ts_ns: IntArray
    syn_retransmits: IntArray
    retransmits: IntArray
    previous: IntArray  # the flow before this one on the same 5-tuple (walk order), -1 for none
    history_end: IntArray  # flow f's history is ``letters[history_end[f - 1]:history_end[f]]``
    letters: npt.NDArray[np.uint8]
    rst_flow: IntArray  # per RST, in walk then file order
    rst_index: IntArray
    rst_from_orig: BoolArray
    begin: IntArray  # flow f's packets are ``order[begin[f]:begin[f + 1]]`` (``order`` from ``group_by_flow``)
    missed_bytes: IntArray  # bytes of content gaps, both directions, as Zeek's conn.log counts them (``_gap``)


@compiled
def _flipped_at_start(proto: int, flags: int, sport: int, dport: int, likely_server: npt.NDArray[np.bool_]) -> bool:
    """Zeek's ``WantConnection``: is the first packet's receiver the originator? (``diag.flows.servers``)

    Only TCP and UDP flip; an ICMP connection's originator is its first message's sender.
    """
    if proto != TCP and proto != UDP:
        return False
    tcp = proto == TCP
    if tcp and (flags & (SYN | ACK)) == SYN:
        return False  # a SYN without ACK: its sender opens the connection
    source_likely = likely_server[proto, sport]
    destination_likely = likely_server[proto, dport]
    if not source_likely:
        return False
    if not destination_likely:
        return True
    # Both plausible servers: TCP flips a packet without SYN when its source port is the lower; UDP never.
    return tcp and (flags & SYN) == 0 and sport < dport


@compiled
def _reused(
    flags: int,
    seq: int,
    closed: bool,
    orig_side: int,
    state: IntArray,
    start_seq: IntArray,
) -> bool:
    """Zeek's ``IsReuse``: does this TCP packet (a SYN) start a new connection on the 5-tuple?

    Only a SYN can. A SYN-ACK only while the originator has sent nothing (a
    connection seen from its SYN-ACKs); it is then compared with the
    responder. After a FIN or RST (Zeek's "closed") every such SYN starts a
    new connection, whatever its sequence number; before, one that repeats
    the initial sequence number does not, nor a SYN that answers a SYN-ACK
    seen before it (the two crossed in the capture).
    """
    if (flags & SYN) == 0:
        return False
    resp_side = 1 - orig_side
    compared = orig_side
    if flags & ACK:
        if state[orig_side] != INACTIVE:
            return False
        compared = resp_side
    if closed:
        return True
    if (seq & _SEQ_MASK) == start_seq[compared]:
        return False
    crossed = (
        (flags & ACK) == 0
        and state[orig_side] == SYN_ACK_SENT
        and state[resp_side] == INACTIVE
        and (seq & _SEQ_MASK) == start_seq[resp_side]
    )
    return not crossed


@compiled
def walk_flows(
    order: IntArray,
    starts: IntArray,
    keys: KeyColumns,
    ack: IntArray,
    win: npt.NDArray[np.int32],
    payload_len: npt.NDArray[np.int32],
    ip_len: npt.NDArray[np.int32],
    ts_ns: IntArray,
    index: IntArray,
    likely_server: npt.NDArray[np.bool_],
) -> tuple[
    IntArray, IntArray, IntArray, BoolArray, IntArray, IntArray, IntArray, npt.NDArray[np.int8], IntArray,
    IntArray, IntArray, IntArray, IntArray, IntArray, npt.NDArray[np.uint8], IntArray, IntArray, BoolArray,
    IntArray, IntArray,
]:  # fmt: skip
    """Every flow's summary, in ``FlowSummary``'s field order (see ``group_by_flow`` for ``order``/``starts``).

    ``order``/``starts`` group the packets by 5-tuple; each 5-tuple's packets
    are cut into flows where Zeek starts a new connection (``_reused``).
    Inside a flow, sides are fixed: side 0 sent the flow's first packet;
    ``orig_side`` says which side is the originator, and changes when Zeek
    flips the roles.
    """
    n_tuples = len(starts) - 1
    n_packets = len(order)
    capacity = n_packets  # at most one flow per packet
    first_row = np.empty(capacity, dtype=np.int64)
    originators = np.empty(capacity, dtype=np.int64)
    responders = np.empty(capacity, dtype=np.int64)
    is_tcp = np.empty(capacity, dtype=np.bool_)
    packets = np.empty((capacity, 2), dtype=np.int64)
    sizes = np.empty((capacity, 2), dtype=np.int64)
    ip_sizes = np.empty((capacity, 2), dtype=np.int64)
    states = np.empty((capacity, 2), dtype=np.int8)
    first_ts_ns = np.empty(capacity, dtype=np.int64)
    last_ts_ns = np.empty(capacity, dtype=np.int64)
    syn_retransmits = np.empty(capacity, dtype=np.int64)
    retransmits = np.empty(capacity, dtype=np.int64)
    previous = np.empty(capacity, dtype=np.int64)
    history_end = np.empty(capacity, dtype=np.int64)
    letters = np.empty(5 * n_packets + 1, dtype=np.uint8)  # at most 4 letters and a '^' a packet
    rst_flow = np.empty(n_packets, dtype=np.int64)
    rst_index = np.empty(n_packets, dtype=np.int64)
    rst_from_orig = np.empty(n_packets, dtype=np.bool_)
    flow_begin = np.empty(capacity, dtype=np.int64)
    missed_bytes = np.empty(capacity, dtype=np.int64)
    n_letters = 0
    n_rsts = 0
    n_flows = 0

    # Per side (0: the flow's first sender, 1: the other) of the flow being walked; reset for each flow.
    endpoints = np.empty(2, dtype=np.int64)
    side_packets = np.empty(2, dtype=np.int64)
    side_ip_bytes = np.empty(2, dtype=np.int64)
    first_at = np.empty(2, dtype=np.int64)  # position in ``order`` of the side's first packet of this handshake
    seq_before = np.empty(2, dtype=np.int64)  # the previous packet's raw and unwrapped sequence numbers
    unwrapped_before = np.empty(2, dtype=np.int64)
    initial_seq = np.empty(2, dtype=np.int64)  # Zeek's last_seq before any packet moves it
    start_seq = np.empty(2, dtype=np.int64)  # the sequence number before the first payload byte
    zeek_start = np.empty(2, dtype=np.int64)  # Zeek's StartSeq (32 bits), which ``_reused`` compares with
    highest_end = np.empty(2, dtype=np.int64)  # highest segment end so far (RSTs and after-RST excluded)
    acked = np.empty(2, dtype=np.int64)  # highest acknowledgement the peer sent for this side
    fins = np.empty(2, dtype=np.int64)
    # Payload bytes of a side's earlier handshakes in this flow (see 'a new handshake' below).
    carried = np.empty(2, dtype=np.int64)
    reset_sent = np.empty(2, dtype=np.bool_)
    # Zeek's reassembly, per side: the end of the sequence space seen without a hole (its
    # last_reassem_seq), and the segments seen beyond a hole, as one block (start, end; _NEVER: none).
    delivered = np.empty(2, dtype=np.int64)
    held = np.empty((2, 2), dtype=np.int64)
    gaps = np.empty(2, dtype=np.int64)  # content gaps reported, for the scaled 'G'
    udp_bytes = np.empty(2, dtype=np.int64)
    # History letters: shown once ('I', 'Q', 'D', 'A'), on a new value ('S'/'H', 'F', 'R'), at the
    # 1st, 10th, 100th ... occurrence ('W', 'T', 'G').
    shown_i = np.empty(2, dtype=np.bool_)
    shown_q = np.empty(2, dtype=np.bool_)
    shown_data = np.empty(2, dtype=np.bool_)
    shown_ack = np.empty(2, dtype=np.bool_)
    shown_udp = np.empty(2, dtype=np.bool_)
    syn_seen = np.empty(2, dtype=np.bool_)
    syn_value = np.empty(2, dtype=np.int64)
    fin_seen = np.empty(2, dtype=np.bool_)
    fin_value = np.empty(2, dtype=np.int64)
    rst_seen = np.empty(2, dtype=np.bool_)
    rst_value = np.empty(2, dtype=np.int64)
    zero_windows = np.empty(2, dtype=np.int64)
    retransmitted = np.empty(2, dtype=np.int64)
    # Endpoint states, and which plain (no SYN/FIN/RST) packets since the last
    # SYN/FIN/RST were fed to the state machine: only the first of each
    # direction, and its first with payload, can change a state.
    state = np.empty(2, dtype=np.int64)
    state_before = np.empty(2, dtype=np.int64)
    did_close = np.empty(2, dtype=np.bool_)  # Zeek's did_close: the side's first FIN or RST was seen
    plain_fed = np.empty(2, dtype=np.bool_)
    data_fed = np.empty(2, dtype=np.bool_)

    for t in range(n_tuples):
        tuple_end = starts[t + 1]
        begin = starts[t]
        # The 5-tuple's latest SYN without ACK (its sender and sequence number), across its flows:
        # a SYN repeating it is a retransmission even when Zeek's rule put it in a new flow.
        last_syn_from = -1
        last_syn_seq = -1
        flow_before = -1
        while begin < tuple_end:
            f = n_flows
            n_flows += 1
            first = order[begin]
            tcp_flow = keys.proto[first] == TCP
            first_row[f] = first
            flow_begin[f] = begin
            is_tcp[f] = tcp_flow
            previous[f] = flow_before
            endpoints[0] = endpoint(keys.src_address[first], keys.sport[first])
            endpoints[1] = endpoint(keys.dst_address[first], keys.dport[first])
            orig_side = 0
            if _flipped_at_start(
                keys.proto[first], max(keys.tcp_flags[first], 0), keys.sport[first], keys.dport[first], likely_server
            ):
                orig_side = 1
                letters[n_letters] = _FLIPPED  # as Zeek's history does after flipping roles
                n_letters += 1
            for side in range(2):
                side_packets[side] = 0
                side_ip_bytes[side] = 0
                first_at[side] = -1
                highest_end[side] = _NEVER
                acked[side] = _NEVER
                fins[side] = 0
                carried[side] = 0
                udp_bytes[side] = 0
                zero_windows[side] = 0
                retransmitted[side] = 0
                gaps[side] = 0
                held[side, 0] = held[side, 1] = _NEVER
                zeek_start[side] = 0
                state[side] = state_before[side] = INACTIVE
                for flag in (reset_sent, shown_i, shown_q, shown_data, shown_ack, shown_udp, syn_seen, fin_seen):
                    flag[side] = False
                rst_seen[side] = plain_fed[side] = data_fed[side] = False
            first_ts = last_ts = ts_ns[first]
            closed = False  # a FIN or RST was seen (Zeek's IsClosed)
            did_close[0] = did_close[1] = False
            inactivity = _TCP_INACTIVITY_NS if tcp_flow else _UDP_INACTIVITY_NS
            attempt_at = _NO_TIMER  # when Zeek gives up an unanswered SYN
            delete_at = _NO_TIMER  # when Zeek forgets a closed connection
            timer_at = _NO_TIMER  # the earlier of the two
            latest = ts_ns[first]  # the flow's latest packet time so far
            syn_retransmits[f] = 0
            retransmits[f] = 0
            missed_bytes[f] = 0
            n_flow_rsts_start = n_rsts

            k = begin
            while k < tuple_end:
                row = order[k]
                flags = max(keys.tcp_flags[row], 0)
                tcp = keys.proto[row] == TCP
                raw_seq = keys.seq[row]
                if k > begin:
                    now = ts_ns[row]
                    # Zeek's timers fire before the packet is looked at: the connection is gone.
                    if now - latest >= inactivity:
                        break
                    if now >= timer_at:
                        if now >= delete_at:
                            break
                        # The attempt timer fires once: it ends the connection if the SYN is still unanswered.
                        attempt_at = _NO_TIMER
                        timer_at = delete_at
                        if (state[orig_side] == SYN_SENT or state[orig_side] == SYN_ACK_SENT) and (
                            state[1 - orig_side] == INACTIVE
                        ):
                            break
                    if tcp and (flags & SYN) != 0 and _reused(flags, raw_seq, closed, orig_side, state, zeek_start):
                        break  # this SYN opens the next connection on the 5-tuple
                latest = max(latest, ts_ns[row])
                syn, fin, rst, has_ack = (flags & SYN) != 0, (flags & FIN) != 0, (flags & RST) != 0, (flags & ACK) != 0
                payload = max(int(payload_len[row]), 0)
                side = 0 if endpoint(keys.src_address[row], keys.sport[row]) == endpoints[0] else 1
                peer = 1 - side
                from_orig = side == orig_side
                side_packets[side] += 1
                side_ip_bytes[side] += max(int(ip_len[row]), 0)
                first_ts, last_ts = min(first_ts, ts_ns[row]), max(last_ts, ts_ns[row])

                # Zeek's StartSeq: set by an endpoint's packets while it is inactive (one before a
                # midstream packet's sequence number), by a SYN later on, and by the peer's ACK
                # while the endpoint has sent nothing.
                if tcp:
                    if state[side] == INACTIVE:
                        zeek_start[side] = raw_seq & _SEQ_MASK if syn else (raw_seq - 1) & _SEQ_MASK
                    elif syn and state[side] != CLOSED and state[side] != RESET:
                        zeek_start[side] = raw_seq & _SEQ_MASK
                    if has_ack and state[peer] == INACTIVE:
                        zeek_start[peer] = (ack[row] - 1) & _SEQ_MASK

                # Sequence space: unwrap across 2**32, then Zeek's retransmission test against last_seq.
                # A new handshake: a SYN with another ISN than this side's earlier SYN (a server answering the
                # client's retransmitted SYN with a new ISN). Its sequence space has nothing to do with the
                # old one, so the old one's bytes are set aside and counting starts again here; subtracting
                # one ISN from another would count billions of bytes that were never sent.
                if tcp and syn and first_at[side] >= 0 and syn_seen[side] and syn_value[side] != raw_seq:
                    carried[side] += _epoch_bytes(highest_end[side], initial_seq[side], start_seq[side], fins[side])
                    first_at[side] = -1
                    highest_end[side] = _NEVER
                    fins[side] = 0
                    held[side, 0] = held[side, 1] = _NEVER
                if first_at[side] < 0:
                    first_at[side] = k
                    unwrapped = raw_seq
                else:
                    unwrapped = unwrapped_before[side] + signed_seq_delta(raw_seq, seq_before[side])
                seq_before[side], unwrapped_before[side] = raw_seq, unwrapped
                segment_end = unwrapped + payload + syn + fin - (payload if rst else 0)
                if first_at[side] == k:
                    initial_seq[side] = segment_end if syn else unwrapped
                    start_seq[side] = unwrapped if syn else unwrapped - 1
                    delivered[side] = unwrapped
                if tcp and not rst and segment_end > unwrapped:
                    if unwrapped <= delivered[side] and held[side, 1] == _NEVER:  # in order, nothing held: most
                        delivered[side] = max(delivered[side], segment_end)
                    else:
                        _reassemble(delivered, held, side, unwrapped, segment_end)
                own_rst_before = reset_sent[side]
                last_seq = max(highest_end[side], initial_seq[side])
                retransmission = (
                    payload > 0
                    and segment_end <= last_seq
                    and not own_rst_before
                    # A FIN right after the SYN may legitimately not advance (Zeek's >2 GB case).
                    and not (fin and last_seq == start_seq[side] + 1)
                )
                if not rst and not own_rst_before:
                    highest_end[side] = max(highest_end[side], segment_end)
                fins[side] += fin
                if retransmission:
                    retransmits[f] += 1
                if not tcp:
                    udp_bytes[side] += payload

                # History letters, in Zeek's order inside one packet: its kind, then 'W', then 'T'.
                case = 0 if from_orig else _UPPER_TO_LOWER
                letter = 0
                n_flags = syn + fin + rst
                if tcp and n_flags > 1:
                    if fin and rst:
                        if not shown_i[side]:
                            shown_i[side] = True
                            letter = _LETTER_I
                    elif not shown_q[side]:
                        shown_q[side] = True
                        letter = _LETTER_Q
                elif tcp and syn:
                    if not syn_seen[side] or syn_value[side] != raw_seq:
                        letter = _LETTER_H if has_ack else _LETTER_S
                    syn_seen[side], syn_value[side] = True, raw_seq
                elif tcp and fin:
                    fin_end = (raw_seq + payload) & _SEQ_MASK
                    if not fin_seen[side] or fin_value[side] != fin_end:
                        letter = _LETTER_F
                    fin_seen[side], fin_value[side] = True, fin_end
                elif tcp and rst:
                    if not rst_seen[side] or rst_value[side] != raw_seq:
                        letter = _LETTER_R
                    rst_seen[side], rst_value[side] = True, raw_seq
                elif tcp and payload > 0:
                    if not shown_data[side]:
                        shown_data[side] = True
                        letter = _LETTER_D
                elif tcp and has_ack:
                    if not shown_ack[side]:
                        shown_ack[side] = True
                        letter = _LETTER_A
                elif keys.proto[row] == UDP and not shown_udp[side]:
                    shown_udp[side] = True
                    letter = _LETTER_D
                if letter:
                    letters[n_letters] = letter + case
                    n_letters += 1
                # Zeek: a zero window is news unless it comes with or after the sender's RST, or after
                # the peer closed (its FIN: no window matters then).
                if tcp and win[row] == 0 and not rst and state[side] != RESET and state[peer] != CLOSED:
                    zero_windows[side] += 1
                    if _is_power_of_ten(zero_windows[side]):
                        letters[n_letters] = _LETTER_W + case
                        n_letters += 1
                if tcp and retransmission:
                    retransmitted[side] += 1
                    if _is_power_of_ten(retransmitted[side]):
                        letters[n_letters] = _LETTER_T + case
                        n_letters += 1

                # Endpoint states.
                if tcp:
                    control = syn or fin or rst
                    if control:
                        plain_fed[0] = plain_fed[1] = data_fed[0] = data_fed[1] = False
                        feed = True
                    else:
                        feed = not plain_fed[side] or (payload > 0 and not data_fed[side])
                        plain_fed[side] = True
                        data_fed[side] = data_fed[side] or payload > 0
                    if (
                        syn and not has_ack and not from_orig and state[side] == INACTIVE
                        and state[peer] == SYN_ACK_SENT and (raw_seq & _SEQ_MASK) == zeek_start[side]
                    ):  # fmt: skip
                        # The SYN answered by the SYN-ACK seen first (Zeek: a SYN/SYN-ACK reversal):
                        # the roles flip, and the SYN-ACK's sender is established.
                        orig_side = side
                        letters[n_letters] = _FLIPPED
                        n_letters += 1
                        state[peer], state_before[peer] = ESTABLISHED, state[peer]
                    was = state[side]
                    if feed:
                        state[side], state_before[side], state[peer], state_before[peer] = update_endpoints(
                            state[side], state_before[side], state[peer], state_before[peer],
                            from_orig, syn, fin, rst, has_ack, payload > 0,
                        )  # fmt: skip
                    if from_orig and syn and was == INACTIVE and state[side] != INACTIVE:
                        attempt_at = ts_ns[row] + _ATTEMPT_DELAY_NS
                        timer_at = min(attempt_at, delete_at)
                    if (fin or rst) and not did_close[side]:
                        # Zeek's ConnectionClosed: complete when this side reset, or the peer closed too or
                        # never spoke; then the other timers stop and the connection goes 5 s later.
                        did_close[side] = True
                        if state[side] == RESET or did_close[peer] or state[peer] == INACTIVE:
                            attempt_at = _NO_TIMER
                            delete_at = timer_at = ts_ns[row] + _CLOSE_DELAY_NS
                    closed = closed or fin or rst

                # The peer's data this packet acknowledges: sequence space never seen is a content gap.
                if tcp and has_ack and not rst and first_at[peer] >= 0:
                    reference = delivered[peer]
                    acked_to = reference + signed_seq_delta(ack[row], reference & _SEQ_MASK)
                    if acked_to > reference:  # else the usual ACK: nothing beyond what was seen
                        # Zeek reports a gap only while both ends are established or cleanly closing (closed
                        # from established); elsewhere holes come from RSTs' sequence numbers or packets
                        # before a partial connection's start.
                        reported = _clean(state[0], state_before[0]) and _clean(state[1], state_before[1])
                        holes, missing = _gap(delivered, held, peer, acked_to)
                        if reported and holes > 0:
                            missed_bytes[f] += missing
                            for _ in range(holes):
                                gaps[peer] += 1
                                if _is_power_of_ten(gaps[peer]):
                                    letters[n_letters] = _LETTER_G + (0 if peer == orig_side else _UPPER_TO_LOWER)
                                    n_letters += 1

                # SYNs without ACK from the originator repeating the 5-tuple's latest SYN.
                if tcp and syn and not has_ack:
                    sender = endpoints[side]
                    if from_orig and sender == last_syn_from and (raw_seq & _SEQ_MASK) == last_syn_seq:
                        syn_retransmits[f] += 1
                    last_syn_from, last_syn_seq = sender, raw_seq & _SEQ_MASK
                if tcp and rst:
                    rst_flow[n_rsts], rst_index[n_rsts], rst_from_orig[n_rsts] = f, index[row], side == 0
                    n_rsts += 1
                reset_sent[side] = reset_sent[side] or rst
                k += 1

            # Each side's payload bytes from its sequence space, bounded by what the peer acknowledged.
            for side in range(2):
                sizes[f, side] = 0
            if tcp_flow:
                _highest_acks(order, begin, k, keys, endpoints[0], ack, first_at, highest_end, initial_seq, acked)
                for side in range(2):
                    if first_at[side] >= 0:
                        reached = max(highest_end[side], acked[side])
                        epoch = _epoch_bytes(reached, initial_seq[side], start_seq[side], fins[side])
                        sizes[f, side] = carried[side] + epoch
            else:
                sizes[f, 0], sizes[f, 1] = udp_bytes[0], udp_bytes[1]
            resp_side = 1 - orig_side
            if orig_side == 1:  # columns are (originator, responder)
                sizes[f, 0], sizes[f, 1] = sizes[f, 1], sizes[f, 0]
            originators[f], responders[f] = endpoints[orig_side], endpoints[resp_side]
            packets[f, 0], packets[f, 1] = side_packets[orig_side], side_packets[resp_side]
            ip_sizes[f, 0], ip_sizes[f, 1] = side_ip_bytes[orig_side], side_ip_bytes[resp_side]
            states[f, 0], states[f, 1] = state[orig_side], state[resp_side]
            # RSTs were noted by side (True: side 0); the roles are known now that the flow has ended.
            for r in range(n_flow_rsts_start, n_rsts):
                rst_from_orig[r] = rst_from_orig[r] == (orig_side == 0)
            first_ts_ns[f], last_ts_ns[f] = first_ts, last_ts
            history_end[f] = n_letters
            flow_before = f
            begin = k

    return (
        first_row[:n_flows].copy(), originators[:n_flows].copy(), responders[:n_flows].copy(),
        is_tcp[:n_flows].copy(), packets[:n_flows].copy(), sizes[:n_flows].copy(), ip_sizes[:n_flows].copy(),
        states[:n_flows].copy(), first_ts_ns[:n_flows].copy(), last_ts_ns[:n_flows].copy(),
        syn_retransmits[:n_flows].copy(), retransmits[:n_flows].copy(), previous[:n_flows].copy(),
        history_end[:n_flows].copy(), letters[:n_letters].copy(),
        rst_flow[:n_rsts].copy(), rst_index[:n_rsts].copy(), rst_from_orig[:n_rsts].copy(), flow_begin[:n_flows].copy(),
        missed_bytes[:n_flows].copy(),
    )  # fmt: skip


@compiled
def _clean(state: int, before: int) -> bool:
    """Zeek's ``is_clean``: an endpoint established, or closed straight from established."""
    return state == ESTABLISHED or (state == CLOSED and before == ESTABLISHED)


@compiled
def _reassemble(delivered: IntArray, held: IntArray, side: int, start: int, end: int) -> None:
    """A segment of ``side`` covering ``[start, end)`` (unwrapped sequence space) reaches the reassembler.

    A segment that starts at or before the end of what was seen without a hole
    extends it, and takes in the held block once it reaches it (a retransmission
    filled the hole). One past a hole is held: Zeek keeps such blocks until the
    hole is filled or acknowledged. Disjoint held blocks are kept as one, from
    the lowest start to the highest end.
    """
    if start <= delivered[side]:
        delivered[side] = max(delivered[side], end)
        if held[side, 1] != _NEVER and held[side, 0] <= delivered[side]:
            delivered[side] = max(delivered[side], held[side, 1])
            held[side, 0] = held[side, 1] = _NEVER
    elif held[side, 1] == _NEVER:
        held[side, 0], held[side, 1] = start, end
    else:
        held[side, 0], held[side, 1] = min(held[side, 0], start), max(held[side, 1], end)


@compiled
def _gap(delivered: IntArray, held: IntArray, side: int, acked_to: int) -> tuple[int, int]:
    """The peer acknowledged ``side``'s sequence space up to ``acked_to``: (holes, bytes) never seen below it.

    As Zeek's reassembler when an acknowledgement passes what it could
    deliver: the hole up to the held block (or up to the acknowledgement) is
    skipped as a gap, the held block delivered, and the space between it and
    the acknowledgement is a second gap.
    """
    if acked_to <= delivered[side]:
        return 0, 0
    holes = 0
    missing = 0
    if held[side, 1] != _NEVER and held[side, 0] < acked_to:
        holes += 1
        missing += held[side, 0] - delivered[side]
        delivered[side] = held[side, 1]
        held[side, 0] = held[side, 1] = _NEVER
    if acked_to > delivered[side]:
        holes += 1
        missing += acked_to - delivered[side]
        delivered[side] = acked_to
    return holes, missing


@compiled
def _epoch_bytes(highest_end: int, initial_seq: int, start_seq: int, fins: int) -> int:
    """Zeek's payload count of one sequence space: its extent less the SYN, and less the FIN if one was sent."""
    extent = max(highest_end, initial_seq) - start_seq
    size = extent - 1 if extent > 0 else 0
    return size - 1 if fins > 0 and size > 0 else size


@compiled
def _highest_acks(
    order: IntArray,
    begin: int,
    end: int,
    keys: KeyColumns,
    first_sender: int,
    ack: IntArray,
    first_at: IntArray,
    highest_end: IntArray,
    initial_seq: IntArray,
    acked: IntArray,
) -> None:
    """Per side, into ``acked``: the highest acknowledgement the peer sent after the side's first packet.

    Side 0 is ``first_sender``'s (the flow's first packet's sender), side 1 the other end's.

    Acknowledgement numbers are unwrapped against the acknowledged side's
    final last_seq; those in RSTs do not count.
    """
    for k in range(begin, end):
        row = order[k]
        flags = max(keys.tcp_flags[row], 0)
        if (flags & ACK) == 0 or (flags & RST) != 0:
            continue
        target = 1 if endpoint(keys.src_address[row], keys.sport[row]) == first_sender else 0  # the acknowledged side
        if first_at[target] < 0 or k <= first_at[target]:
            continue
        reference = max(highest_end[target], initial_seq[target])
        unwrapped = reference + signed_seq_delta(ack[row], reference & _SEQ_MASK)
        acked[target] = max(acked[target], unwrapped)
