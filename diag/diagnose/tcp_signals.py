"""The TCP signals of every suspect connection at once, as columns.

A busy capture has thousands of connections that end in a RST. Asking each
one its questions in Python (which packet does the RST answer, was the
connection established, does the RST's TTL fit its claimed sender) costs a
scan of its packets per question, so it is done here on whole columns of the
distinct packets and their sightings (``diag.diagnose.tcp_packets``), one row
per connection of signals (``TcpSignals``). Two signals have modules of their
own: how soon the RST came back against the round trip (``rst_timing``) and
its IP ID against its sender's count (``rst_ip_id``). The cause modules'
``tcp_rule`` reads those columns and every TCP connection is decided there;
only the findings themselves are written per connection, from the packets
they name (``Packets.seen``), by ``diag.diagnose.tcp``.

Ties are broken as the sentences written from the packets break them (the
first packet wins, as ``Counter.most_common`` keeps order), so a finding's
words and the columns that chose it agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from diag.capture.proto import ACK, FIN, RST, SYN, TCP
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context
from diag.diagnose.rst_ip_id import IpIdSignal, ip_id_signal
from diag.diagnose.rst_timing import TimingSignal, timing_signal
from diag.diagnose.signals import INITIAL_TTLS, shared_subnet
from diag.diagnose.tcp_packets import NONE, SEQ_SPACE, Packets, expand_ranges, lookup, sight_at

_INITIAL = np.array(INITIAL_TTLS, dtype=np.int64)


def hops_of(ttl: np.ndarray) -> np.ndarray:
    """``signals.hops`` on a column: routers passed since the sender, from the next common initial TTL."""
    ttl = ttl.astype(np.int64)
    slot = np.minimum(np.searchsorted(_INITIAL, ttl, side="left"), len(_INITIAL) - 1)
    result: np.ndarray = _INITIAL[slot] - ttl
    return result


def _mode(keys: np.ndarray, values: np.ndarray, order: np.ndarray) -> pd.Series:
    """Per key, the most frequent value; a tie goes to the value seen first (smallest ``order``).

    The keys come out in ascending order. Sorted numpy groups: a pandas grouping, sort and drop of
    duplicates made the same choice in about three times the time.
    """
    if not len(keys):
        return pd.Series(values, index=keys)  # empty, of the values' and the keys' types
    low, high = int(values.min()), int(values.max())
    span = high - low + 1
    if int(keys.min()) >= 0 and int(keys.max()) < np.iinfo(np.int64).max // span:
        # (key, value) as one number, sorted in one pass: the values here are small (TTLs, hops, capture codes).
        by_pair = np.argsort(keys.astype(np.int64) * span + (values - low))
    else:
        by_pair = np.lexsort((values, keys))
    key, value, seen = keys[by_pair], values[by_pair], order[by_pair]
    starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (value[1:] != value[:-1])])
    count = np.diff(np.r_[starts, len(key)])
    first = np.minimum.reduceat(seen, starts)
    pair_key, pair_value = key[starts], value[starts]
    best = np.lexsort((first, -count, pair_key))  # per key: most frequent, then seen first
    chosen = best[np.r_[True, pair_key[best][1:] != pair_key[best][:-1]]]
    return pd.Series(pair_value[chosen], index=pair_key[chosen])


@dataclass(frozen=True)
class TcpSignals:
    """One row per connection of the list (UDP rows are left empty): what the TCP cause rules read.

    Packets are rows of ``packets``; captures are codes into the table's
    names; ``NONE`` where there is none. The RST columns describe the
    decisive RST (``rst``): the first one whose sender had not closed with a
    FIN before it.
    """

    packets: Packets
    tcp: np.ndarray
    own: np.ndarray  # (connections, 2): the capture taken on the server's [0] and the client's [1] host
    rst: np.ndarray  # the decisive RST
    rst_from_client: np.ndarray
    repeated: np.ndarray  # RSTs of the same side from the decisive one on
    trigger: np.ndarray  # the packet the RST answers (``find_trigger``)
    trigger_is_syn: np.ndarray
    trigger_is_synack: np.ndarray
    established: np.ndarray  # handshake completed or data both ways before the RST
    challenge: np.ndarray  # an RFC 5961 challenge ACK the RST answers
    maker: np.ndarray  # the captured point that made the RST (``tcp.rst_maker``)
    forged: np.ndarray  # the RST is not its claimed sender's (absent at its own capture, TTL, made elsewhere, too soon)
    genuine: np.ndarray  # not forged, and seen leaving the sender's capture or at the sender's distance
    on_link: np.ndarray  # the RST's ends share a subnet and only the TTL spoke: its sender is a neighbour there
    answer: np.ndarray  # the server's SYN-ACK to the very SYN a RST in its name refuses (a race), or NONE
    syn_went_past: np.ndarray  # the SYN went on past the RST's maker (``tcp.syn_went_past``)
    refused: np.ndarray  # the client's SYN a server-side handshake RST refuses: the one it answers, else the last
    policy: np.ndarray  # that SYN did not reach the server, captures further on never saw it, or the RST is forged
    kept_sending: np.ndarray  # the RST's claimed sender's packets seen after it where the RST was seen
    idle: np.ndarray  # the packet the RST answers came after an idle gap (>= 1 s and >= 10 round trips)
    syn: np.ndarray  # without a decisive RST: the client's first SYN
    syn_verdict: np.ndarray  # ... and whether it is left unanswered long enough to be a finding
    synack: np.ndarray  # ... the first SYN-ACK acknowledging it, anywhere (NONE)
    synack_astray: np.ndarray  # ... that SYN-ACK passed points no SYN of the client passed
    syn_handed_on: np.ndarray  # ... the farthest attempt's last point DNATed it on with the client's address kept
    syn_unseen_elsewhere: np.ndarray  # ... captures running at the time never saw any of the SYNs
    handshake_seen: np.ndarray  # a SYN or SYN-ACK anywhere in the connection
    ip_id: IpIdSignal  # the RST's IP ID against its claimed sender's own count
    timing: TimingSignal  # how soon the RST came back against the round trip to its claimed sender

    # The phases of a connection that ended in a RST, in the order the causes are told apart.
    def reused(self) -> np.ndarray:
        """The client's RST answers an RFC 5961 challenge ACK: its own stack rejecting a stale connection."""
        result: np.ndarray = (self.rst >= 0) & self.rst_from_client & self.challenge
        return result

    def aborted(self) -> np.ndarray:
        """A RST ended an established connection (not the answer to a challenge ACK)."""
        result: np.ndarray = (self.rst >= 0) & self.established & ~self.reused()
        return result

    def refusing(self) -> np.ndarray:
        """A RST in the server's name during the handshake."""
        result: np.ndarray = (self.rst >= 0) & ~self.rst_from_client & ~self.established
        return result

    def refused_syn(self) -> np.ndarray:
        """A RST in the server's name during the handshake, not raced by the server's own SYN-ACK and not let
        through: the server refused the SYN, or a firewall did in its stead."""
        refused: np.ndarray = self.refusing() & (self.answer < 0) & ~self.syn_went_past
        return refused

    def client_handshake_rst(self) -> np.ndarray:
        """A RST in the client's name during the handshake that answers no challenge ACK."""
        result: np.ndarray = (self.rst >= 0) & self.rst_from_client & ~self.established & ~self.challenge
        return result

    def synack_reset_astray(self) -> np.ndarray:
        """A RST in the client's name, not its own, answering the server's SYN-ACK during the handshake."""
        result: np.ndarray = self.client_handshake_rst() & self.trigger_is_synack & ~self.genuine
        return result

    def reply_astray(self) -> np.ndarray:
        """Unanswered SYNs whose SYN-ACK went by other points, or that a forwarding box alone saw DNATed on with
        the client's address kept while no other capture saw them (the asymmetric return without a RST)."""
        answered = self.synack >= 0
        result: np.ndarray = self.syn_verdict & (
            (answered & self.synack_astray) | (~answered & self.syn_handed_on & ~self.syn_unseen_elsewhere)
        )
        return result


def _per_connection(values: np.ndarray, owners: np.ndarray, n: int, reduce: str) -> np.ndarray:
    """Reduce ``values`` per owning connection: 'max' or 'min' (NONE where it has none)."""
    if reduce == "max":
        result = np.full(n, NONE, dtype=np.int64)
        np.maximum.at(result, owners, values)
        return result
    result = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(result, owners, values)
    return np.where(result == np.iinfo(np.int64).max, NONE, result)


def compute_signals(packets: Packets, connections: list[Connection], ctx: Context) -> TcpSignals:
    """Every signal the TCP cause rules read, for all connections at once."""
    p, s = packets, packets.sights
    n = len(connections)
    index = np.arange(len(p.conn))
    pos = index - p.first[p.conn]  # position in the connection's packet order
    side = p.from_orig.astype(np.int64)  # 1: the client (originator)
    is_rst = p.has(RST)
    first_sight = p.sight_start
    first_cap, first_ttl = s.capture[first_sight], s.ttl[first_sight]
    first_hops0 = hops_of(first_ttl) == 0
    initial_here = first_hops0 & ~s.forwarded[first_sight]
    generated = np.where(initial_here & ~s.incoming[first_sight], first_cap, NONE)
    arrived = np.where(initial_here & s.incoming[first_sight], first_cap, NONE)
    names = p.table.names
    n_names = len(names) + 1
    spans = _coded_spans(ctx, names)
    tcp = np.array([c.proto == TCP for c in connections], dtype=bool)

    # The capture on each side's host: most votes of packets that start there with an initial TTL.
    own = np.full((n, 2), NONE, dtype=np.int64)
    voters = np.flatnonzero(~is_rst & (generated >= 0))
    if len(voters):
        modes = _mode(p.conn[voters] * 2 + side[voters], generated[voters], pos[voters])
        keys = modes.index.to_numpy()
        own[keys // 2, keys % 2] = modes.to_numpy()

    # The claimed sender's usual TTL and hop count at each capture (its ordinary packets).
    ordinary = ~is_rst[s.seen]
    sight_key = (p.conn[s.seen] * 2 + side[s.seen]) * n_names + s.capture
    usual_ttl = _mode(sight_key[ordinary], s.ttl[ordinary], pos[s.seen][ordinary])
    usual_hops = _mode(sight_key[ordinary], hops_of(s.ttl[ordinary]), pos[s.seen][ordinary])

    # The decisive RST: the first whose sender had not sent a FIN before it.
    fin_at = np.full(n * 2, np.iinfo(np.int64).max, dtype=np.int64)
    fins = np.flatnonzero(p.has(FIN))
    np.minimum.at(fin_at, p.conn[fins] * 2 + side[fins], pos[fins])
    rsts = np.flatnonzero(is_rst)
    decisive = rsts[fin_at[p.conn[rsts] * 2 + side[rsts]] >= pos[rsts]]
    rst = _per_connection(decisive, p.conn[decisive], n, "min") if len(decisive) else np.full(n, NONE)
    has_rst = rst >= 0
    safe_rst = np.maximum(rst, 0)
    rst_side = np.where(has_rst, side[safe_rst], 0)
    same_side = rsts[(rst[p.conn[rsts]] >= 0) & (side[rsts] == rst_side[p.conn[rsts]])]
    same_side = same_side[p.ts_ref[same_side] >= p.ts_ref[rst[p.conn[same_side]]]]
    repeated = np.bincount(p.conn[same_side], minlength=n)

    # Per packet: the decisive RST of its connection, to compare with.
    r_of = rst[p.conn]
    with_rst = r_of >= 0
    r = np.maximum(r_of, 0)
    before = with_rst & (pos < pos[r])
    rst_has_ack = p.has(ACK)[r]

    # The trigger (``find_trigger``): the last packet of the other side before the RST whose sequence numbers
    # the RST answers, else the last packet of the other side before it.
    candidate = before & (side != side[r]) & ~is_rst
    syn_fin = (p.has(SYN) | p.has(FIN)).astype(np.int64)
    answered_by_ack = p.ack[r] == (p.seq + np.maximum(p.payload_len, 0) + syn_fin) % SEQ_SPACE
    answered_by_seq = p.has(ACK) & (p.seq[r] == p.ack)
    matches = candidate & np.where(rst_has_ack, answered_by_ack, answered_by_seq)
    by_number = _per_connection(index[matches], p.conn[matches], n, "max")
    last_before = _per_connection(index[candidate], p.conn[candidate], n, "max")
    trigger = np.where(by_number >= 0, by_number, last_before)
    pure_syn = p.handshake(SYN)
    synack = p.handshake(SYN | ACK)
    trigger_is_syn = (trigger >= 0) & pure_syn[np.maximum(trigger, 0)]

    # Established before the RST: a SYN-ACK and the client's ACK of it, or data both ways.
    established = _established(p, pos, side, before, synack, n)
    challenge = _challenge(p, pos, side, before, is_rst, pure_syn, r, n)

    # Whether the RST is its claimed sender's (``tcp._genuineness``).
    rst_sights_owner, rst_sights = expand_ranges(p.sight_start[rst[has_rst]], p.sight_stop[rst[has_rst]])
    k_sight = np.flatnonzero(has_rst)[rst_sights_owner]
    at_key = (k_sight * 2 + rst_side[k_sight]) * n_names + s.capture[rst_sights]
    sight_hops = hops_of(s.ttl[rst_sights])
    typical_ttl = lookup(usual_ttl, at_key)
    mismatch = (typical_ttl >= 0) & (hops_of(np.maximum(typical_ttl, 0)) != sight_hops)
    typical_hops = lookup(usual_hops, at_key)
    consistent = (typical_hops >= 0) & (typical_hops == sight_hops)
    own_side = own[np.arange(n), rst_side]
    other_side = own[np.arange(n), 1 - rst_side]
    at_own = s.capture[rst_sights] == own_side[k_sight]
    maker = np.where(has_rst, generated[safe_rst], NONE)
    neighbour = np.where(has_rst, arrived[safe_rst], NONE)
    maker = np.where((maker < 0) & (neighbour >= 0) & (neighbour == other_side), neighbour, maker)
    leaving_own = (own_side >= 0) & (maker == own_side)
    covers_own = _covers(spans, own_side, p.ts_ref[safe_rst])
    absent_at_own = has_rst & (own_side >= 0) & ~_any(at_own, k_sight, n) & covers_own
    hops_at_maker = lookup(usual_hops, (np.arange(n) * 2 + rst_side) * n_names + np.maximum(maker, 0))
    hops_at_maker = np.where(maker >= 0, hops_at_maker, NONE)
    on_link = _on_link(p, rst, has_rst & (maker >= 0) & (maker == other_side) & (own_side < 0) & (hops_at_maker < 0))
    made_elsewhere = (
        (maker >= 0)
        & (maker != own_side)
        & ~on_link
        & ((own_side >= 0) | (maker == other_side) | ((hops_at_maker != NONE) & (hops_at_maker != 0)))
    )
    # A point that made a RST in the client's name and never saw a packet from the client, only the server's
    # answer arriving, is a box on the reply's way, not the client.
    client_at = (side[s.seen] == 1) & ~is_rst[s.seen] & (s.capture == maker[p.conn[s.seen]])
    made_elsewhere |= (
        has_rst
        & (rst_side == 1)
        & (maker >= 0)
        & (maker != own_side)
        & (sight_at(p, trigger, maker) >= 0)
        & ~_any(client_at & (maker[p.conn[s.seen]] >= 0), p.conn[s.seen], n)
    )
    # A RST back sooner than its claimed sender could have answered was made closer than that sender.
    timing = timing_signal(p, rst, rst_side, trigger, side, pure_syn, synack)
    forged = has_rst & (absent_at_own | _any(mismatch, k_sight, n) | made_elsewhere | timing.too_soon)
    genuine = has_rst & ~forged & (leaving_own | on_link | _any(consistent, k_sight, n))

    answer = _answer(p, side, pure_syn, synack, r, with_rst, trigger, n)
    syn_went_past = _syn_went_past(p, trigger, trigger_is_syn, rst, generated, n_names)
    client_syns = np.flatnonzero(pure_syn & (side == 1))
    last_syn = _per_connection(client_syns, p.conn[client_syns], n, "max") if len(client_syns) else np.full(n, NONE)
    refusing = has_rst & (rst_side == 0) & ~established
    refused = np.where(refusing, np.where(trigger_is_syn, trigger, last_syn), NONE)
    policy = _policy(p, ctx, names, spans, own, maker, refused, forged)
    aborted = has_rst & established & forged
    kept_sending = _kept_sending(p, rst, rst_side, side, is_rst, aborted)
    idle = _idle(p, pos, side, pure_syn, synack, trigger, aborted & (kept_sending == 0))
    syn, syn_verdict, synack_for_syn, farthest = _unanswered(p, spans, side, pure_syn, synack, pos, n)
    unanswered = ~has_rst & syn_verdict
    answered = np.where(unanswered, synack_for_syn, NONE)
    astray, unseen_elsewhere = _syn_points(p, ctx, names, side, pure_syn, syn, answered)
    return TcpSignals(
        packets=p,
        tcp=tcp,
        own=own,
        rst=rst,
        rst_from_client=has_rst & (rst_side == 1),
        repeated=repeated,
        trigger=trigger,
        trigger_is_syn=trigger_is_syn,
        trigger_is_synack=(trigger >= 0) & synack[np.maximum(trigger, 0)],
        established=established,
        challenge=challenge,
        maker=maker,
        forged=forged,
        genuine=genuine,
        on_link=on_link,
        answer=answer,
        syn_went_past=syn_went_past,
        refused=refused,
        policy=policy,
        kept_sending=kept_sending,
        idle=idle,
        syn=np.where(has_rst, NONE, syn),
        syn_verdict=unanswered,
        synack=np.where(unanswered, synack_for_syn, NONE),
        synack_astray=unanswered & astray,
        syn_handed_on=_handed_on(p, unanswered & (synack_for_syn < 0), farthest),
        syn_unseen_elsewhere=unanswered & unseen_elsewhere,
        handshake_seen=_any(pure_syn | synack, p.conn, n),
        ip_id=ip_id_signal(p, rst, rst_side, side, is_rst),
        timing=timing,
    )


def _any(flags: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Per connection: some row it owns has ``flags``."""
    result = np.zeros(n, dtype=bool)
    result[owners[flags]] = True
    return result


def _on_link(p: Packets, rst: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``tcp.neighbours_subnet`` found a subnet for the chosen connections' RSTs (few: read one by one)."""
    result = np.zeros(len(rst), dtype=bool)
    columns, names = p.table.columns, p.table.names
    for k in np.flatnonzero(chosen).tolist():
        head = int(p.head[rst[k]])
        result[k] = shared_subnet(names[columns["src"][head]], names[columns["dst"][head]]) is not None
    return result


@dataclass(frozen=True)
class _Spans:
    """When each capture was running, by its code in the table's names (the codes of other texts, and the one
    past the end that stands for NONE, have none)."""

    known: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _coded_spans(ctx: Context, names: list[str]) -> _Spans:
    """``ctx.spans`` by the codes of the table's names, once for every column that asks.

    The names are distinct (codes into one list of texts), and a capture is among them only when it has rows.
    """
    low = np.zeros(len(names) + 1, dtype=np.int64)
    high = np.zeros(len(names) + 1, dtype=np.int64)
    known = np.zeros(len(names) + 1, dtype=bool)
    for capture, (start, end) in ctx.spans.items():
        if capture in names:
            code = names.index(capture)
            known[code], low[code], high[code] = True, start, end
    return _Spans(known, low, high)


def _covers(spans: _Spans, capture: np.ndarray, ts_ref: np.ndarray) -> np.ndarray:
    """``signals.covers`` on columns: the capture was running at that time (False for NONE)."""
    at = np.where(capture >= 0, capture, len(spans.known) - 1)
    result: np.ndarray = spans.known[at] & (spans.low[at] <= ts_ref) & (ts_ref <= spans.high[at])
    return result


def _established(
    p: Packets, pos: np.ndarray, side: np.ndarray, before: np.ndarray, synack: np.ndarray, n: int
) -> np.ndarray:
    """``tcp.is_established`` before the decisive RST, per connection."""
    server_synack = np.flatnonzero(before & synack & (side == 0))
    client_ack = np.flatnonzero(before & (side == 1) & p.has(ACK))
    answered = pd.merge(
        pd.DataFrame(
            {"conn": p.conn[server_synack], "value": (p.seq[server_synack] + 1) % SEQ_SPACE}
        ).drop_duplicates(),
        pd.DataFrame({"conn": p.conn[client_ack], "value": p.ack[client_ack]}).drop_duplicates(),
        on=["conn", "value"],
    )
    result = np.zeros(n, dtype=bool)
    result[answered["conn"].to_numpy(dtype=np.int64)] = True
    data = before & (p.payload_len > 0)
    both_ways = _any(data & (side == 1), p.conn, n) & _any(data & (side == 0), p.conn, n)
    established: np.ndarray = result | both_ways
    return established


def _challenge(
    p: Packets,
    pos: np.ndarray,
    side: np.ndarray,
    before: np.ndarray,
    is_rst: np.ndarray,
    pure_syn: np.ndarray,
    r: np.ndarray,
    n: int,
) -> np.ndarray:
    """A server pure ACK before the RST, acked by the RST's seq, answering a client SYN it does not acknowledge."""
    index = np.arange(len(pos))
    client = (side == 1) & ~is_rst
    # The client's last non-RST packet strictly before each packet, within its connection.
    last_client = np.maximum.accumulate(np.where(client, index, -1))
    previous = np.r_[-1, last_client[:-1]]
    previous = np.where(previous >= p.first[p.conn], previous, -1)
    pure_ack = (p.flags == ACK) & (p.payload_len <= 0)
    prior = np.maximum(previous, 0)
    challenge = (
        before
        & (side == 0)
        & pure_ack
        & (p.seq[r] == p.ack)
        & (previous >= 0)
        & pure_syn[prior]
        & (p.ack != (p.seq[prior] + 1) % SEQ_SPACE)
    )
    return _any(challenge, p.conn, n)


def _answer(
    p: Packets,
    side: np.ndarray,
    pure_syn: np.ndarray,
    synack: np.ndarray,
    r: np.ndarray,
    with_rst: np.ndarray,
    trigger: np.ndarray,
    n: int,
) -> np.ndarray:
    """The server's SYN-ACK to the very SYN a RST in its name refuses (the first), or NONE.

    A server refuses a SYN (RST+ACK, ack = ISN + 1) or accepts it (SYN-ACK,
    the same ack), never both; a RST it sends after its own SYN-ACK, aborting
    the half-open connection, is in its own sequence space (seq = its ISN + 1).
    Both answers to one SYN mean another device answered in the server's
    name: it raced the server (Weaver, Sommer and Paxson, NDSS 2009).
    """
    rst_acks = p.has(ACK)[r]
    refused_by_ack = _any(
        with_rst & rst_acks & pure_syn & (side == 1) & ((p.seq + 1) % SEQ_SPACE == p.ack[r]), p.conn, n
    )
    safe = np.maximum(trigger, 0)
    by_trigger = (trigger >= 0) & pure_syn[safe]
    rst = np.full(n, NONE, dtype=np.int64)
    rst[p.conn[with_rst]] = r[with_rst]
    rst_safe = np.maximum(rst, 0)
    has_ack = (rst >= 0) & p.has(ACK)[rst_safe]
    refused = np.where(has_ack, refused_by_ack, by_trigger)
    wanted = np.where(has_ack, p.ack[rst_safe], (p.seq[safe] + 1) % SEQ_SPACE)
    k = p.conn
    answer = (
        synack
        & (side == 0)
        & refused[k]
        & (p.ack == wanted[k])
        & (p.seq[rst_safe[k]] != p.seq)
        & (p.seq[rst_safe[k]] != (p.seq + 1) % SEQ_SPACE)
    )
    first = _per_connection(np.flatnonzero(answer), k[answer], n, "min")
    result: np.ndarray = np.where((rst >= 0) & ~p.from_orig[rst_safe], first, NONE)
    return result


def _syn_went_past(
    p: Packets, trigger: np.ndarray, trigger_is_syn: np.ndarray, rst: np.ndarray, generated: np.ndarray, n_names: int
) -> np.ndarray:
    """A sighting of the SYN the RST answers past the RST's maker (``tcp.syn_went_past`` finds it)."""
    s = p.sights
    result = np.zeros(len(rst), dtype=bool)
    chosen = np.flatnonzero(trigger_is_syn & (rst >= 0))
    if len(chosen) == 0:
        return result
    rst_first = p.sight_start[rst[chosen]]
    rst_cap, rst_hops = s.capture[rst_first], hops_of(s.ttl[rst_first])
    owner, syn_sights = expand_ranges(p.sight_start[trigger[chosen]], p.sight_stop[trigger[chosen]])
    at_rst_point = s.capture[syn_sights] == rst_cap[owner]
    # The SYN's sighting where the RST was first seen (one at most: one sighting per point).
    at_rst = np.full(len(chosen), NONE, dtype=np.int64)
    at_rst[owner[at_rst_point]] = syn_sights[at_rst_point]
    found = at_rst >= 0
    safe = np.maximum(at_rst, 0)
    sent_on = found & (generated[rst[chosen]] == rst_cap) & s.forwarded[safe]
    past = hops_of(s.ttl[safe]) + rst_hops + 1
    beyond = (hops_of(s.ttl[syn_sights]) >= past[owner]) & found[owner]
    # Went on: a point far enough along saw the SYN and never the RST (keyed by the RST and the point).
    beyond_keys = rst[chosen][owner[beyond]].astype(np.int64) * n_names + s.capture[syn_sights[beyond]]
    went_on = np.zeros(len(chosen), dtype=bool)
    went_on[owner[beyond][~np.isin(beyond_keys, rst_sight_keys(p, rst[chosen]))]] = True
    result[chosen] = sent_on | went_on
    return result


def rst_sight_keys(p: Packets, rows: np.ndarray) -> np.ndarray:
    """``packet * (names + 1) + capture`` for every sighting of the packets ``rows``."""
    n_names = len(p.table.names) + 1
    owner, sights = expand_ranges(p.sight_start[rows], p.sight_stop[rows])
    keys: np.ndarray = rows[owner].astype(np.int64) * n_names + p.sights.capture[sights]
    return keys


def _policy(
    p: Packets,
    ctx: Context,
    names: list[str],
    spans: _Spans,
    own: np.ndarray,
    maker: np.ndarray,
    syn: np.ndarray,
    forged: np.ndarray,
) -> np.ndarray:
    """A server-side handshake RST is a firewall's, not the server's: the SYN it refuses missing at the server's
    capture or at captures further along its path, or the RST forged and the SYN not seen at the server.

    Without a capture on the server, the point where the SYN ended counts as the server's host when the RST
    was made there (and it is not the client's).
    """
    s = p.sights
    result: np.ndarray = forged.copy()  # with no SYN to follow, only the RST's own marks speak
    chosen = np.flatnonzero(syn >= 0)
    if len(chosen) == 0:
        return result
    rows = syn[chosen]
    syn_ts = p.ts_ref[rows]
    last_cap = s.capture[p.sight_stop[rows] - 1]
    server_own, client_own = own[chosen, 0], own[chosen, 1]
    made = maker[chosen]
    server = np.where((server_own < 0) & (made >= 0) & (made == last_cap) & (made != client_own), made, server_own)
    at_server = (server >= 0) & (sight_at(p, rows, server) >= 0)
    missing = (server_own >= 0) & (sight_at(p, rows, server_own) < 0) & _covers(spans, server_own, syn_ts)
    last_points, last_point = np.unique(last_cap, return_inverse=True)  # a handful of points
    last_point = last_point.ravel()
    for capture in ctx.captures:
        low, high = ctx.spans.get(capture, (1, 0))
        running = (low <= syn_ts) & (syn_ts <= high)
        beyond = np.array([ctx.is_beyond(capture, names[c]) for c in last_points.tolist()], dtype=bool)[last_point]
        if not (running & beyond).any():
            continue
        code = np.full(len(rows), names.index(capture) if capture in names else len(names), dtype=np.int64)
        missing |= beyond & running & (sight_at(p, rows, code) < 0)
    result[chosen] = missing | (forged[chosen] & ~at_server)
    return result


def _kept_sending(
    p: Packets, rst: np.ndarray, rst_side: np.ndarray, side: np.ndarray, is_rst: np.ndarray, chosen: np.ndarray
) -> np.ndarray:
    """Per chosen connection, how many of the RST's claimed sender's packets (not RSTs) a point that saw the RST
    saw after it: a sender that reset the connection sends nothing more."""
    s = p.sights
    n = len(rst)
    count = np.zeros(n, dtype=np.int64)
    ks = np.flatnonzero(chosen & (rst >= 0))
    if len(ks) == 0:
        return count
    n_names = len(p.table.names) + 1
    owner, rst_sights = expand_ranges(p.sight_start[rst[ks]], p.sight_stop[rst[ks]])
    rst_ts = pd.Series(s.ts_ns[rst_sights], index=ks[owner] * n_names + s.capture[rst_sights])
    k = p.conn[s.seen]
    mine = chosen[k] & (side[s.seen] == rst_side[k]) & ~is_rst[s.seen]
    since = lookup(rst_ts, np.where(mine, k * n_names + s.capture, -1), missing=np.iinfo(np.int64).max)
    after = mine & (s.ts_ns > since)
    packets = np.unique(s.seen[after])
    count += np.bincount(p.conn[packets], minlength=n)
    return count


def _idle(
    p: Packets,
    pos: np.ndarray,
    side: np.ndarray,
    pure_syn: np.ndarray,
    synack: np.ndarray,
    trigger: np.ndarray,
    chosen: np.ndarray,
) -> np.ndarray:
    """The packet the RST answers came after a silence of at least ``IDLE_GAP_MIN_NS`` and ``IDLE_GAP_RTTS``
    handshake round trips (``IDLE_GAP_MIN_NS`` alone when no round trip was seen)."""
    from diag.diagnose.tcp import IDLE_GAP_MIN_NS, IDLE_GAP_RTTS

    t = np.maximum(trigger, 0)
    has_gap = chosen & (trigger >= 0) & (pos[t] > 0)
    gap = np.where(has_gap, p.ts_ref[t] - p.ts_ref[np.maximum(t - 1, 0)], 0)
    long = has_gap & (gap >= IDLE_GAP_MIN_NS)
    rtt = handshake_rtt(p, side, pure_syn, synack, long)
    threshold = np.where(rtt > 0, np.maximum(IDLE_GAP_MIN_NS, IDLE_GAP_RTTS * rtt), IDLE_GAP_MIN_NS)
    result: np.ndarray = long & (gap >= threshold)
    return result


def handshake_rtt(
    p: Packets, side: np.ndarray, pure_syn: np.ndarray, synack: np.ndarray, chosen: np.ndarray
) -> np.ndarray:
    """Per chosen connection, the shortest SYN to ACK-of-the-SYN-ACK time at any one capture (one clock); NONE.

    The client's SYN, the server's SYN-ACK acknowledging it and the client's
    bare ACK of that SYN-ACK are paired by their sequence numbers; each pair's
    SYN and ACK are compared where both were seen.
    """
    n = len(chosen)
    result = np.full(n, NONE, dtype=np.int64)
    k = p.conn
    mine = chosen[k]
    syns, answers = np.flatnonzero(mine & pure_syn & (side == 1)), np.flatnonzero(mine & synack & (side == 0))
    acks = np.flatnonzero(mine & (side == 1) & (p.flags == ACK))
    if not (len(syns) and len(answers) and len(acks)):
        return result
    syn_answer = pd.merge(
        pd.DataFrame({"conn": k[syns], "value": (p.seq[syns] + 1) % SEQ_SPACE, "syn": syns}),
        pd.DataFrame({"conn": k[answers], "value": p.ack[answers], "answer": answers}),
        on=["conn", "value"],
    )
    syn_answer["value"] = (p.seq[syn_answer["answer"].to_numpy()] + 1) % SEQ_SPACE
    pairs = pd.merge(
        syn_answer[["conn", "value", "syn"]],
        pd.DataFrame({"conn": k[acks], "value": p.ack[acks], "ack": acks}),
        on=["conn", "value"],
    )[["conn", "syn", "ack"]].drop_duplicates()
    if pairs.empty:
        return result
    s = p.sights
    syn_rows, ack_rows = pairs["syn"].to_numpy(), pairs["ack"].to_numpy()
    owner, sights = expand_ranges(p.sight_start[syn_rows], p.sight_stop[syn_rows])
    at = sight_at(p, ack_rows[owner], s.capture[sights])
    found = at >= 0
    rtt = s.ts_ns[np.maximum(at, 0)] - s.ts_ns[sights]
    positive = found & (rtt > 0)
    conn = pairs["conn"].to_numpy()[owner[positive]]
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, conn, rtt[positive])
    result[best < np.iinfo(np.int64).max] = best[best < np.iinfo(np.int64).max]
    return result


def _syn_points(
    p: Packets,
    ctx: Context,
    names: list[str],
    side: np.ndarray,
    pure_syn: np.ndarray,
    first_syn: np.ndarray,
    synack: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(astray, unseen elsewhere) per connection with a first SYN: the SYN-ACK ``synack`` was seen at a point no
    SYN of the client passed; a capture running when the first SYN was sent never saw any of them."""
    s = p.sights
    n = len(first_syn)
    n_names = len(names) + 1
    syns = np.flatnonzero(pure_syn & (side == 1) & (first_syn[p.conn] >= 0))
    owner, sights = expand_ranges(p.sight_start[syns], p.sight_stop[syns])
    syn_keys = np.unique(p.conn[syns][owner] * n_names + s.capture[sights])
    astray = np.zeros(n, dtype=bool)
    ks = np.flatnonzero(synack >= 0)
    if len(ks):
        owner, sights = expand_ranges(p.sight_start[synack[ks]], p.sight_stop[synack[ks]])
        off_path = ~np.isin(ks[owner] * n_names + s.capture[sights], syn_keys)
        astray[ks[owner[off_path]]] = True
    unseen = np.zeros(n, dtype=bool)
    ks = np.flatnonzero(first_syn >= 0)
    ts = p.ts_ref[first_syn[ks]]
    for capture in ctx.captures:
        code = names.index(capture) if capture in names else len(names)  # a point with no rows never saw it
        low, high = ctx.spans.get(capture, (1, 0))
        unseen[ks] |= (low <= ts) & (ts <= high) & ~_among(ks * n_names + code, syn_keys)
    return astray, unseen


def _among(queries: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``np.isin`` for keys already sorted and distinct, by binary search (no sort of the queries)."""
    at = np.minimum(np.searchsorted(sorted_keys, queries), max(len(sorted_keys) - 1, 0))
    found: np.ndarray = sorted_keys[at] == queries if len(sorted_keys) else np.zeros(len(queries), dtype=bool)
    return found


def _handed_on(p: Packets, chosen: np.ndarray, farthest: np.ndarray) -> np.ndarray:
    """Per chosen connection, its farthest SYN's last point DNATed it on with the client's address kept.

    That point's copies show the SYN arriving (the highest TTL, first in time)
    and leaving (the lowest TTL, last in time); its destination changed and
    its source address did not (``forwarding.handoff``).
    """
    s, columns = p.sights, p.table.columns
    result = np.zeros(len(chosen), dtype=bool)
    ks = np.flatnonzero(chosen & (farthest >= 0))
    if len(ks) == 0:
        return result
    last = p.sight_stop[farthest[ks]] - 1
    owner, copies = expand_ranges(s.bounds[last], s.bounds[last + 1])
    rows = s.copies[copies]
    frame = pd.DataFrame(
        {
            "owner": owner,
            "order": np.arange(len(rows)),
            "ts": columns["ts_ns"][rows],
            "ttl": columns["ttl"][rows].astype(np.int64),
            "src": columns["src"][rows],
            "dst": columns["dst"][rows],
            "dport": columns["dport"][rows],
        }
    ).sort_values(["owner", "ts", "order"], kind="stable")
    ttl = frame.groupby("owner")["ttl"]
    arrived = frame[frame["ttl"] == ttl.transform("max")].drop_duplicates("owner", keep="first").set_index("owner")
    left = frame[frame["ttl"] == ttl.transform("min")].drop_duplicates("owner", keep="last").set_index("owner")
    at = np.arange(len(ks))
    arrived, left = arrived.reindex(at), left.reindex(at)
    dnat = (arrived["dst"].to_numpy() != left["dst"].to_numpy()) | (
        arrived["dport"].to_numpy() != left["dport"].to_numpy()
    )
    kept = arrived["src"].to_numpy() == left["src"].to_numpy()
    spread = arrived["ttl"].to_numpy() != left["ttl"].to_numpy()
    result[ks] = dnat & kept & spread
    return result


def _unanswered(
    p: Packets,
    spans: _Spans,
    side: np.ndarray,
    pure_syn: np.ndarray,
    synack: np.ndarray,
    pos: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first SYN, unanswered long enough, the first SYN-ACK to it, the farthest-seen attempt) per connection.

    What ``tcp.unanswered_syn`` decides before it renders: no packet of the
    server seen where the first SYN was, after it; no later ACK from the
    client; retransmitted or waited for a second.
    """
    from diag.diagnose.tcp import UNANSWERED_WAIT_NS

    s = p.sights
    index = np.arange(len(pos))
    syns = np.flatnonzero(pure_syn & (side == 1))
    first_syn = _per_connection(syns, p.conn[syns], n, "min") if len(syns) else np.full(n, NONE)
    has_syn = first_syn >= 0
    f = np.maximum(first_syn, 0)
    f_sight = p.sight_start[f]
    point, point_ts = s.capture[f_sight], s.ts_ns[f_sight]
    k_of_sight = p.conn[s.seen]
    answered = (
        (side[s.seen] == 0) & (s.capture == point[k_of_sight]) & (s.ts_ns >= point_ts[k_of_sight]) & has_syn[k_of_sight]
    )
    later_ack = (side == 1) & p.has(ACK) & ~p.has(RST) & (p.ts_ref > p.ts_ref[f[p.conn]]) & has_syn[p.conn]
    attempts = np.bincount(p.conn[syns][p.seq[syns] == p.seq[f[p.conn[syns]]]], minlength=n)
    last_syn = _per_connection(syns, p.conn[syns], n, "max") if len(syns) else np.full(n, NONE)
    span_end = np.where(spans.known, spans.high, np.iinfo(np.int64).min // 2)
    waited = span_end[point] - p.ts_ref[np.maximum(last_syn, 0)] >= UNANSWERED_WAIT_NS
    verdict = has_syn & ~_any(answered, k_of_sight, n) & ~_any(later_ack, p.conn, n) & ((attempts >= 2) | waited)
    acking = synack & (side == 0) & (p.ack == (p.seq[f[p.conn]] + 1) % SEQ_SPACE) & has_syn[p.conn]
    # The farthest-seen attempt (most sightings, the first of those) and whether its last point forwarded it.
    n_sights = p.sight_stop - p.sight_start
    by_conn = syns[np.lexsort((index[syns], -n_sights[syns], p.conn[syns]))]
    rows = by_conn[np.r_[True, p.conn[by_conn][1:] != p.conn[by_conn][:-1]]] if len(by_conn) else by_conn
    farthest_syn = np.full(n, NONE, dtype=np.int64)
    farthest_syn[p.conn[rows]] = rows
    acked_by = np.flatnonzero(acking)
    return first_syn, verdict, _per_connection(acked_by, p.conn[acked_by], n, "min"), farthest_syn
