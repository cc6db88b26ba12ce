"""The TCP signals of every suspect connection at once, as columns.

A busy capture has thousands of connections that end in a RST. Asking each
one its questions in Python (which packet does the RST answer, was the
connection established, does the RST's TTL fit its claimed sender) costs a
scan of its packets per question, so it is done here on whole columns: one
table of distinct packets (``Packets``), one of their sightings (``Sights``),
and one row per connection of signals (``TcpSignals``). The cause modules'
``tcp_rule`` reads those columns; only the findings themselves are rendered
per connection, from the few packets they name (``Packets.seen``).

Every column answers the question the per-connection code in ``tcp.py`` and
``signals.py`` answers for the same connection, with the same tie-breaks
(the first packet wins a tie, as ``Counter.most_common`` keeps order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.capture.proto import ACK, FIN, RST, SYN, TCP
from diag.diagnose.connections import Connection, ConnectionTable
from diag.diagnose.context import Context
from diag.diagnose.signals import INITIAL_TTLS, Seen, Sight, shared_subnet

_INITIAL = np.array(INITIAL_TTLS, dtype=np.int64)
_MOD = 2**32


def hops_of(ttl: np.ndarray) -> np.ndarray:
    """``signals.hops`` on a column: routers passed since the sender, from the next common initial TTL."""
    ttl = ttl.astype(np.int64)
    slot = np.minimum(np.searchsorted(_INITIAL, ttl, side="left"), len(_INITIAL) - 1)
    result: np.ndarray = _INITIAL[slot] - ttl
    return result


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) of every index in the half-open ranges ``[starts[i], stops[i])``."""
    lengths = stops - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, starts[owner] + offsets


def _mode(keys: np.ndarray, values: np.ndarray, order: np.ndarray) -> pd.Series:
    """Per key, the most frequent value; a tie goes to the value seen first (smallest ``order``)."""
    frame = pd.DataFrame({"key": keys, "value": values, "order": order})
    counted = frame.groupby(["key", "value"], sort=False).agg(count=("order", "size"), first=("order", "min"))
    counted = counted.reset_index().sort_values(["key", "count", "first"], ascending=[True, False, True])
    best = counted.drop_duplicates("key")
    return pd.Series(best["value"].to_numpy(), index=best["key"].to_numpy())


def _lookup(table: pd.Series, keys: np.ndarray, missing: int = -1) -> np.ndarray:
    """``table[key]`` for every key, ``missing`` where it has none."""
    if len(table) == 0:
        return np.full(len(keys), missing, dtype=np.int64)
    at = pd.Index(table.index).get_indexer(keys)
    values = table.to_numpy().astype(np.int64)
    found: np.ndarray = np.where(at >= 0, values[np.maximum(at, 0)], missing)
    return found


@dataclass(frozen=True)
class Sights:
    """One row per capture point's copy of a distinct packet (``signals.Sight`` as columns)."""

    seen: np.ndarray  # the distinct packet (row of ``Packets``)
    capture: np.ndarray  # code into the table's names
    ttl: np.ndarray  # the highest TTL of the copies there
    forwarded: np.ndarray  # copies there with a lower TTL too
    incoming: np.ndarray
    head: np.ndarray  # the first copy's row in the connection table
    ts_ns: np.ndarray
    copies: np.ndarray  # rows of every copy, grouped by sighting: ``copies[bounds[i]:bounds[i+1]]``
    bounds: np.ndarray


@dataclass(frozen=True)
class Packets:
    """The distinct packets of the TCP connections (``signals.Seen`` as columns), per connection in time order.

    Row ``i`` belongs to connection ``conn[i]`` (its position in the
    connection list); a connection's packets are the slice
    ``first[k]:first[k + 1]``, ordered as ``distinct_packets`` orders them.
    """

    table: ConnectionTable
    conn: np.ndarray
    first: np.ndarray  # per connection (and one past the end), where its packets start
    head: np.ndarray  # row of the first copy at the first point
    from_orig: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    payload_len: np.ndarray
    ts_ref: np.ndarray
    sight_start: np.ndarray  # the packet's sightings: ``sights`` rows [sight_start, sight_stop), in path order
    sight_stop: np.ndarray
    sights: Sights
    _made: dict[int, Seen] = field(default_factory=dict, compare=False, repr=False)  # ``seen``'s results

    def has(self, flag: int) -> np.ndarray:
        result: np.ndarray = (self.flags >= 0) & ((self.flags & flag) != 0)
        return result

    def handshake(self, wanted: int) -> np.ndarray:
        result: np.ndarray = (self.flags >= 0) & ((self.flags & (SYN | ACK | RST)) == wanted)
        return result

    def seen(self, i: int) -> Seen:
        """Packet ``i`` as the ``Seen`` that ``distinct_packets`` makes of it (for rendering a finding)."""
        made = self._made.get(i)
        if made is None:
            self.prefetch(np.array([i], dtype=np.int64))
            made = self._made[i]
        return made

    def prefetch(self, chosen: np.ndarray) -> None:
        """Make the ``Seen`` of every packet in ``chosen`` at once: one gather per column for all of them."""
        chosen = np.unique(chosen[chosen >= 0])
        if len(chosen) == 0:
            return
        columns, names, sights = self.table.columns, self.table.names, self.sights
        owner, sight_rows = _ranges(self.sight_start[chosen], self.sight_stop[chosen])
        copy_owner, copies = _ranges(sights.bounds[sight_rows], sights.bounds[sight_rows + 1])
        rows = sights.copies[copies]
        values = {name: columns[name][rows].tolist() for name in _SIGHT_COLUMNS}
        src, sport, dst, dport = values["src"], values["sport"], values["dst"], values["dport"]
        capture, index, ts_ns, ts_ref, ip_id, file = (
            values[name] for name in ("capture", "index", "ts_ns", "ts_ref", "ip_id", "file")
        )
        ttl = sights.ttl[sight_rows].tolist()
        forwarded = sights.forwarded[sight_rows].tolist()
        incoming = sights.incoming[sight_rows].tolist()
        copy_bounds = np.r_[0, np.cumsum(sights.bounds[sight_rows + 1] - sights.bounds[sight_rows])].tolist()
        sight_bounds = np.r_[0, np.cumsum(self.sight_stop[chosen] - self.sight_start[chosen])].tolist()
        made: list[Sight] = []
        for s in range(len(sight_rows)):
            at, stop = copy_bounds[s], copy_bounds[s + 1]
            made.append(
                Sight(
                    capture=names[capture[at]],
                    index=index[at],
                    ts_ns=ts_ns[at],
                    ts_ref=ts_ref[at],
                    ttl=ttl[s],
                    ip_id=ip_id[at],
                    forwarded=forwarded[s],
                    incoming=incoming[s],
                    src=endpoint_text(names[src[at]], sport[at]),
                    dst=endpoint_text(names[dst[at]], dport[at]),
                    sources=tuple(dict.fromkeys(endpoint_text(names[src[c]], sport[c]) for c in range(at, stop))),
                    file=int(file[at]),
                )
            )
        del owner, copy_owner
        for n, i in enumerate(chosen.tolist()):
            head = copy_bounds[sight_bounds[n]]
            self._made[i] = Seen(
                pkt=values["pkt"][head],
                from_orig=bool(values["from_orig"][head]),
                flags=values["tcp_flags"][head],
                seq=values["seq"][head],
                ack=values["ack"][head],
                payload_len=values["payload_len"][head],
                digest=values["payload_digest"][head],
                sights=tuple(made[sight_bounds[n] : sight_bounds[n + 1]]),
            )


_SIGHT_COLUMNS = (
    "capture", "index", "ts_ns", "ts_ref", "ip_id", "src", "sport", "dst", "dport", "file", "pkt", "from_orig",
    "tcp_flags", "seq", "ack", "payload_len", "payload_digest",
)  # fmt: skip


def build_packets(table: ConnectionTable, connections: list[Connection]) -> Packets:
    """The distinct packets of the TCP ``connections``, grouped and ordered as ``distinct_packets`` does."""
    columns = table.columns
    n_rows = len(columns["pkt"])
    # Which connection (position in the list) each row belongs to; -1 for UDP.
    owner = np.full(n_rows, -1, dtype=np.int64)
    tcp = np.array([c.proto == TCP for c in connections], dtype=bool)
    starts = np.array([c.start for c in connections], dtype=np.int64)
    stops = np.array([c.stop for c in connections], dtype=np.int64)
    k_of_row, rows = _ranges(starts[tcp], stops[tcp])
    owner[rows] = np.flatnonzero(tcp)[k_of_row]
    order = table.by_packet[owner[table.by_packet] >= 0]  # TCP rows by connection, packet, hop, time
    pkt, capture = columns["pkt"][order], columns["capture"][order]
    n_names = max(len(table.names), 1)
    sight_id, _ = pd.factorize(pkt.astype(np.int64) * n_names + capture)
    by_sight = np.argsort(sight_id, kind="stable")
    copies = order[by_sight]
    n_sights = int(sight_id.max()) + 1 if len(sight_id) else 0
    bounds = np.searchsorted(sight_id[by_sight], np.arange(n_sights + 1))
    heads = copies[bounds[:-1]]
    ttl = columns["ttl"][copies].astype(np.int64)
    top = np.maximum.reduceat(ttl, bounds[:-1]) if n_sights else ttl[:0]
    low = np.minimum.reduceat(ttl, bounds[:-1]) if n_sights else ttl[:0]
    names = table.names
    in_code = names.index("in") if "in" in names else -1
    # Sightings of one packet are consecutive ids (the packets' rows are consecutive in ``order``).
    head_pkt = columns["pkt"][heads]
    new_packet = np.r_[True, head_pkt[1:] != head_pkt[:-1]] if n_sights else np.zeros(0, dtype=bool)
    packet_of_sight = np.cumsum(new_packet) - 1
    first_sight = np.flatnonzero(new_packet)
    last_sight = np.r_[first_sight[1:], n_sights]
    packet_head = heads[first_sight]
    conn = owner[packet_head]
    ts_ref = columns["ts_ref"][packet_head]
    # ``distinct_packets`` orders by (reference time, packet id) within the connection.
    ordered = np.lexsort((columns["pkt"][packet_head], ts_ref, conn))
    rank = np.empty(len(ordered), dtype=np.int64)
    rank[ordered] = np.arange(len(ordered))
    sights = Sights(
        seen=rank[packet_of_sight],
        capture=columns["capture"][heads],
        ttl=top,
        forwarded=low < top,
        incoming=columns["direction"][heads] == in_code,
        head=heads,
        ts_ns=columns["ts_ns"][heads],
        copies=copies,
        bounds=bounds,
    )
    conn = conn[ordered]
    packet_head = packet_head[ordered]
    return Packets(
        table=table,
        conn=conn,
        first=np.searchsorted(conn, np.arange(len(connections) + 1)),
        head=packet_head,
        from_orig=columns["from_orig"][packet_head].astype(bool),
        flags=columns["tcp_flags"][packet_head].astype(np.int64),
        seq=columns["seq"][packet_head].astype(np.int64),
        ack=columns["ack"][packet_head].astype(np.int64),
        payload_len=columns["payload_len"][packet_head].astype(np.int64),
        ts_ref=ts_ref[ordered],
        sight_start=first_sight[ordered],
        sight_stop=last_sight[ordered],
        sights=sights,
    )


NONE = -1  # "no such packet / capture" in the integer columns


@dataclass(frozen=True)
class TcpSignals:
    """One row per connection of the list (UDP rows are left empty): what the TCP cause rules read.

    Packets are rows of ``packets``; captures are codes into the table's
    names; ``NONE`` where there is none. The RST columns describe the
    decisive RST (``rst``): the first one whose sender had not closed with a
    FIN before it, as ``tcp.analyze_tcp`` picks it.
    """

    packets: Packets
    tcp: np.ndarray
    own: np.ndarray  # (connections, 2): the capture taken on the server's [0] and the client's [1] host
    rst: np.ndarray  # the decisive RST
    rst_from_client: np.ndarray
    repeated: np.ndarray  # RSTs of the same side from the decisive one on
    trigger: np.ndarray  # the packet the RST answers (``tcp.find_trigger``)
    trigger_is_syn: np.ndarray
    established: np.ndarray  # handshake completed or data both ways before the RST
    challenge: np.ndarray  # an RFC 5961 challenge ACK the RST answers (``tcp._challenge_ack`` finds one)
    maker: np.ndarray  # the captured point that made the RST (``tcp._rst_maker``)
    forged: np.ndarray  # the RST is not its claimed sender's (absent at its own capture, TTL, made elsewhere)
    genuine: np.ndarray  # not forged, and seen leaving the sender's capture or at the sender's distance
    on_link: np.ndarray  # the RST's ends share a subnet and only the TTL spoke: its sender is a neighbour there
    unsure_origin: np.ndarray  # made at a point other than the sender's own, where the per-connection rules say more
    server_answered: np.ndarray  # the server also accepted the SYN the RST refuses (``tcp._genuine_answer``)
    syn_went_past: np.ndarray  # the SYN went on past the RST's maker (``tcp._syn_went_past``)
    policy: np.ndarray  # the SYN did not reach the server, or captures further on never saw it
    syn: np.ndarray  # without a decisive RST: the client's first SYN
    syn_verdict: np.ndarray  # ... and whether it is left unanswered long enough to be a finding
    synack: np.ndarray  # ... a SYN-ACK acknowledging it, anywhere
    syn_forwarded: np.ndarray  # ... the farthest-seen attempt was sent on at its last point (a forwarding box)
    handshake_seen: np.ndarray  # a SYN or SYN-ACK anywhere in the connection

    def refused_syn(self) -> np.ndarray:
        """A RST in the server's name answering the client's SYN during the handshake, not raced by the server's
        own SYN-ACK, not let through, and not forged by its own marks: the server refused, or a firewall did."""
        refused: np.ndarray = (
            (self.rst >= 0)
            & ~self.rst_from_client
            & ~self.established
            & ~self.server_answered
            & self.trigger_is_syn
            & ~self.syn_went_past
            & ~self.forged
        )
        return refused


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
    answered_by_ack = p.ack[r] == (p.seq + np.maximum(p.payload_len, 0) + syn_fin) % _MOD
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
    rst_sights_owner, rst_sights = _ranges(p.sight_start[rst[has_rst]], p.sight_stop[rst[has_rst]])
    k_sight = np.flatnonzero(has_rst)[rst_sights_owner]
    at_key = (k_sight * 2 + rst_side[k_sight]) * n_names + s.capture[rst_sights]
    sight_hops = hops_of(s.ttl[rst_sights])
    typical_ttl = _lookup(usual_ttl, at_key)
    mismatch = (typical_ttl >= 0) & (hops_of(np.maximum(typical_ttl, 0)) != sight_hops)
    typical_hops = _lookup(usual_hops, at_key)
    consistent = (typical_hops >= 0) & (typical_hops == sight_hops)
    own_side = own[np.arange(n), rst_side]
    other_side = own[np.arange(n), 1 - rst_side]
    at_own = s.capture[rst_sights] == own_side[k_sight]
    maker = np.where(has_rst, generated[safe_rst], NONE)
    neighbour = np.where(has_rst, arrived[safe_rst], NONE)
    maker = np.where((maker < 0) & (neighbour >= 0) & (neighbour == other_side), neighbour, maker)
    leaving_own = (own_side >= 0) & (maker == own_side)
    covers_own = _covers(ctx, names, own_side, p.ts_ref[safe_rst])
    absent_at_own = has_rst & (own_side >= 0) & ~_any(at_own, k_sight, n) & covers_own
    hops_at_maker = _lookup(usual_hops, (np.arange(n) * 2 + rst_side) * n_names + np.maximum(maker, 0))
    hops_at_maker = np.where(maker >= 0, hops_at_maker, NONE)
    on_link = _on_link(p, rst, has_rst & (maker >= 0) & (maker == other_side) & (own_side < 0) & (hops_at_maker < 0))
    made_elsewhere = (
        (maker >= 0)
        & (maker != own_side)
        & ~on_link
        & ((own_side >= 0) | (maker == other_side) | ((hops_at_maker != NONE) & (hops_at_maker != 0)))
    )
    forged = has_rst & (absent_at_own | _any(mismatch, k_sight, n) | made_elsewhere)
    genuine = has_rst & ~forged & (leaving_own | on_link | _any(consistent, k_sight, n))
    unsure_origin = has_rst & (maker >= 0) & (maker != own_side) & (rst_side == 1)

    server_answered = _server_answered(p, side, pure_syn, synack, r, with_rst, trigger, n)
    syn_went_past = _syn_went_past(p, trigger, trigger_is_syn, rst, generated, n_names)
    policy = _policy(p, ctx, names, own[:, 0], maker, other_side, trigger, trigger_is_syn, n_names)
    syn, syn_verdict, synack_for_syn, syn_forwarded = _unanswered(p, ctx, names, side, pure_syn, synack, pos, n)
    return TcpSignals(
        packets=p,
        tcp=tcp,
        own=own,
        rst=rst,
        rst_from_client=has_rst & (rst_side == 1),
        repeated=repeated,
        trigger=trigger,
        trigger_is_syn=trigger_is_syn,
        established=established,
        challenge=challenge,
        maker=maker,
        forged=forged,
        genuine=genuine,
        on_link=on_link,
        unsure_origin=unsure_origin,
        server_answered=server_answered,
        syn_went_past=syn_went_past,
        policy=policy,
        syn=np.where(has_rst, NONE, syn),
        syn_verdict=~has_rst & syn_verdict,
        synack=~has_rst & synack_for_syn,
        syn_forwarded=~has_rst & syn_forwarded,
        handshake_seen=_any(pure_syn | synack, p.conn, n),
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


def _covers(ctx: Context, names: list[str], capture: np.ndarray, ts_ref: np.ndarray) -> np.ndarray:
    """``signals.covers`` on columns: the capture was running at that time (False for NONE)."""
    low = np.full(len(names) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.full(len(names) + 1, np.iinfo(np.int64).min, dtype=np.int64)
    for code, name in enumerate(names):
        if name in ctx.spans:
            low[code], high[code] = ctx.spans[name]
    at = np.where(capture >= 0, capture, len(names))
    result: np.ndarray = (low[at] <= ts_ref) & (ts_ref <= high[at])
    return result


def _established(
    p: Packets, pos: np.ndarray, side: np.ndarray, before: np.ndarray, synack: np.ndarray, n: int
) -> np.ndarray:
    """``tcp.is_established`` before the decisive RST, per connection."""
    server_synack = np.flatnonzero(before & synack & (side == 0))
    client_ack = np.flatnonzero(before & (side == 1) & p.has(ACK))
    answered = pd.merge(
        pd.DataFrame({"conn": p.conn[server_synack], "value": (p.seq[server_synack] + 1) % _MOD}).drop_duplicates(),
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
        & (p.ack != (p.seq[prior] + 1) % _MOD)
    )
    return _any(challenge, p.conn, n)


def _server_answered(
    p: Packets,
    side: np.ndarray,
    pure_syn: np.ndarray,
    synack: np.ndarray,
    r: np.ndarray,
    with_rst: np.ndarray,
    trigger: np.ndarray,
    n: int,
) -> np.ndarray:
    """``tcp._genuine_answer`` found a SYN-ACK from the server to the very SYN the RST refuses."""
    rst_acks = p.has(ACK)[r]
    refused_by_ack = _any(with_rst & rst_acks & pure_syn & (side == 1) & ((p.seq + 1) % _MOD == p.ack[r]), p.conn, n)
    safe = np.maximum(trigger, 0)
    by_trigger = (trigger >= 0) & pure_syn[safe]
    rst = np.full(n, NONE, dtype=np.int64)
    rst[p.conn[with_rst]] = r[with_rst]
    rst_safe = np.maximum(rst, 0)
    has_ack = (rst >= 0) & p.has(ACK)[rst_safe]
    refused = np.where(has_ack, refused_by_ack, by_trigger)
    wanted = np.where(has_ack, p.ack[rst_safe], (p.seq[safe] + 1) % _MOD)
    k = p.conn
    answer = (
        synack
        & (side == 0)
        & refused[k]
        & (p.ack == wanted[k])
        & (p.seq[rst_safe[k]] != p.seq)
        & (p.seq[rst_safe[k]] != (p.seq + 1) % _MOD)
    )
    answered: np.ndarray = _any(answer, k, n) & (rst >= 0) & ~p.from_orig[rst_safe]
    return answered


def _syn_went_past(
    p: Packets, trigger: np.ndarray, trigger_is_syn: np.ndarray, rst: np.ndarray, generated: np.ndarray, n_names: int
) -> np.ndarray:
    """``tcp._syn_went_past`` found a sighting of the SYN past the RST's maker."""
    s = p.sights
    result = np.zeros(len(rst), dtype=bool)
    chosen = np.flatnonzero(trigger_is_syn & (rst >= 0))
    if len(chosen) == 0:
        return result
    rst_first = p.sight_start[rst[chosen]]
    rst_cap, rst_hops = s.capture[rst_first], hops_of(s.ttl[rst_first])
    owner, syn_sights = _ranges(p.sight_start[trigger[chosen]], p.sight_stop[trigger[chosen]])
    at_rst_point = s.capture[syn_sights] == rst_cap[owner]
    # The SYN's sighting where the RST was first seen (one at most: one sighting per point).
    at_rst = np.full(len(chosen), NONE, dtype=np.int64)
    at_rst[owner[at_rst_point]] = syn_sights[at_rst_point]
    found = at_rst >= 0
    safe = np.maximum(at_rst, 0)
    sent_on = found & (generated[rst[chosen]] == rst_cap) & s.forwarded[safe]
    past = hops_of(s.ttl[safe]) + rst_hops + 1
    rst_points = set(zip(*(np.divmod(rst_sight_keys(p, rst[chosen]), n_names)), strict=True))
    beyond = (hops_of(s.ttl[syn_sights]) >= past[owner]) & found[owner]
    beyond_keys = [
        (int(rst[chosen][o]), int(c))
        for o, c in zip(owner[beyond].tolist(), s.capture[syn_sights][beyond].tolist(), strict=True)
    ]
    went_on = np.zeros(len(chosen), dtype=bool)
    for o, key in zip(owner[beyond].tolist(), beyond_keys, strict=True):
        if key not in rst_points:
            went_on[o] = True
    result[chosen] = sent_on | went_on
    return result


def rst_sight_keys(p: Packets, rows: np.ndarray) -> np.ndarray:
    """``packet * (names + 1) + capture`` for every sighting of the packets ``rows``."""
    n_names = len(p.table.names) + 1
    owner, sights = _ranges(p.sight_start[rows], p.sight_stop[rows])
    keys: np.ndarray = rows[owner].astype(np.int64) * n_names + p.sights.capture[sights]
    return keys


def _policy(
    p: Packets,
    ctx: Context,
    names: list[str],
    server_own: np.ndarray,
    maker: np.ndarray,
    client_own: np.ndarray,
    trigger: np.ndarray,
    trigger_is_syn: np.ndarray,
    n_names: int,
) -> np.ndarray:
    """The SYN (the trigger) missing at the server's capture, or at captures further along its path.

    What ``tcp._handshake_reset_from_server`` calls a policy reject apart from a forged RST; only read for
    connections whose RST answers a SYN.
    """
    s = p.sights
    n = len(trigger)
    result = np.zeros(n, dtype=bool)
    chosen = np.flatnonzero(trigger_is_syn)
    if len(chosen) == 0:
        return result
    syn = trigger[chosen]
    seen_at = set(rst_sight_keys(p, syn).tolist())
    last_cap = s.capture[p.sight_stop[syn] - 1]
    syn_ts = p.ts_ref[syn]
    server = server_own[chosen]
    missing = (server >= 0) & _covers(ctx, names, server, syn_ts)
    missing &= np.array([int(a) * n_names + int(b) not in seen_at for a, b in zip(syn, server, strict=True)])
    result[chosen] = missing
    for capture in ctx.captures:
        low, high = ctx.spans.get(capture, (1, 0))
        running = (low <= syn_ts) & (syn_ts <= high)
        after = np.array([ctx.is_beyond(capture, names[c]) for c in last_cap.tolist()], dtype=bool)
        if not (running & after).any():
            continue
        code = names.index(capture) if capture in names else len(names)
        absent = np.array([int(a) * n_names + code not in seen_at for a in syn.tolist()], dtype=bool)
        result[chosen] |= after & absent & running
    return result


def _unanswered(
    p: Packets,
    ctx: Context,
    names: list[str],
    side: np.ndarray,
    pure_syn: np.ndarray,
    synack: np.ndarray,
    pos: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first SYN, unanswered long enough, a SYN-ACK to it, farthest attempt forwarded) per connection.

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
    span_end = np.full(len(names) + 1, np.iinfo(np.int64).min // 2, dtype=np.int64)
    for code, name in enumerate(names):
        if name in ctx.spans:
            span_end[code] = ctx.spans[name][1]
    waited = span_end[point] - p.ts_ref[np.maximum(last_syn, 0)] >= UNANSWERED_WAIT_NS
    verdict = has_syn & ~_any(answered, k_of_sight, n) & ~_any(later_ack, p.conn, n) & ((attempts >= 2) | waited)
    acking = synack & (side == 0) & (p.ack == (p.seq[f[p.conn]] + 1) % _MOD) & has_syn[p.conn]
    # The farthest-seen attempt (most sightings, the first of those) and whether its last point forwarded it.
    n_sights = p.sight_stop - p.sight_start
    farthest_order = pd.DataFrame({"conn": p.conn[syns], "n": -n_sights[syns], "i": index[syns]})
    farthest = farthest_order.sort_values(["conn", "n", "i"]).drop_duplicates("conn")
    forwarded = np.zeros(n, dtype=bool)
    rows = farthest["i"].to_numpy(dtype=np.int64)
    forwarded[p.conn[rows]] = s.forwarded[p.sight_stop[rows] - 1]
    return first_syn, verdict, _any(acking, p.conn, n), forwarded
