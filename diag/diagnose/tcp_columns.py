"""TCP findings from the signal columns: the registry's rules choose, a finding is rendered per connection.

Each cause module's ``tcp_rule`` claims the connections it explains from
``TcpSignals``; every TCP connection the diagnosis looks at is claimed by
exactly one rule. The finding of a claimed connection is then written by
``diag.diagnose.tcp`` from the packets it names (the RST, the packet it
answers, the SYNs), built from the columns; the columns also say which of a
cause's shapes it is (an injected RST racing the server or one let through,
say), so nothing is decided here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diag.capture.proto import ACK, RST, SYN
from diag.diagnose import tcp
from diag.diagnose.causes import REGISTRY
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.signals import Seen, shared_subnet, where
from diag.diagnose.tcp import Sides, genuine_line, rst_lines, side_name
from diag.diagnose.tcp_signals import TcpSignals
from diag.report import Cause
from diag.report.facts import Fact

# A connection's finding: the verdict, the symptom packet and how often it occurred; None for no finding.
Outcome = tuple[Verdict, Seen, int] | None
Renderer = Callable[[Connection, TcpSignals, int, Context], Outcome]


def _sides(s: TcpSignals, k: int, packets: list[Seen]) -> Sides:
    names = s.packets.table.names
    server, client = (int(code) for code in s.own[k])
    return Sides(packets, names[client] if client >= 0 else None, names[server] if server >= 0 else None)


def _all_packets(s: TcpSignals, k: int) -> list[Seen]:
    """Every packet of the connection (for the rarer findings, whose sentences read more than a few)."""
    p = s.packets
    return [p.seen(i) for i in range(int(p.first[k]), int(p.first[k + 1]))]


def _client_syns(s: TcpSignals, k: int) -> list[Seen]:
    p = s.packets
    chosen = np.arange(int(p.first[k]), int(p.first[k + 1]))
    flags = p.flags[chosen]
    client_syn = (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN) & p.from_orig[chosen]
    return [p.seen(int(i)) for i in chosen[client_syn]]


def _claim_lines(s: TcpSignals, k: int, rst: Seen, sides: Sides, ctx: Context) -> list[Line]:
    """What the RST's marks say of its claimed sender (``tcp.genuineness``'s lines), then its timing and IP ID."""
    return _marks(s, k, rst, sides, ctx) + _timing_and_ip_id(s, k)


def _timing_and_ip_id(s: TcpSignals, k: int) -> list[Line]:
    """A RST back sooner than its claimed sender could answer; an IP ID out of that sender's count (said where
    the RST is not taken for its sender's own: an ordinary reset from a stack that lost the socket has one too)."""
    names, who = s.packets.table.names, side_name(bool(s.rst_from_client[k]))
    lines: list[Line] = []
    timing, ip_id = s.timing, s.ip_id
    if timing.too_soon[k]:
        lines.append(
            Fact.of(
                "rst-too-soon",
                point=names[int(timing.point[k])],
                side=who,
                delay_ns=int(timing.delay_ns[k]),
                rtt_ns=int(timing.rtt_ns[k]),
            )
        )
    if ip_id.out_of_line[k] and not s.genuine[k]:
        last = s.packets.seen(int(ip_id.last[k]))
        sight = last.at(names[int(ip_id.point[k])])
        assert sight is not None
        lines.append(
            Fact.of(
                "ip-id-out-of-line",
                point=sight.capture,
                side=who,
                rst_ip_id=int(ip_id.rst_id[k]),
                last_ip_id=sight.ip_id,
                packet=where(sight),
            )
        )
    return lines


def _marks(s: TcpSignals, k: int, rst: Seen, sides: Sides, ctx: Context) -> list[Line]:
    if s.forged[k]:
        trigger = s.packets.seen(int(s.trigger[k])) if s.trigger[k] >= 0 else None
        return tcp.genuineness(sides, rst, trigger, ctx)[2]
    own = sides.own_capture(rst.from_orig)
    maker = int(s.maker[k])
    lines: list[Line] = []
    leaving_own = own is not None and maker >= 0 and s.packets.table.names[maker] == own
    if leaving_own:
        sight = rst.at(own) if own is not None else None
        assert sight is not None
        lines.append(Fact.of("left-own", side=side_name(rst.from_orig), packet=where(sight), ttl=sight.ttl))
    elif s.genuine[k]:
        subnet = shared_subnet(rst.first.src_addr, rst.first.dst_addr) if s.on_link[k] else None
        lines.append(genuine_line(rst, s.packets.table.names[maker] if maker >= 0 else None, subnet))
    return lines


# Writes a RST's finding from (sides, rst, trigger, claim lines, base lines).
RstWriter = Callable[[Sides, Seen, Seen | None, list[Line], list[Line]], Verdict]


def _rst_outcome(s: TcpSignals, k: int, ctx: Context, write: RstWriter, every_packet: bool = False) -> Outcome:
    p = s.packets
    rst = p.seen(int(s.rst[k]))
    trigger = p.seen(int(s.trigger[k])) if s.trigger[k] >= 0 else None
    sides = _sides(s, k, _all_packets(s, k) if every_packet or s.forged[k] else [])
    base = rst_lines(rst, trigger, bool(s.handshake_seen[k]), bool(s.established[k]))
    verdict = write(sides, rst, trigger, _claim_lines(s, k, rst, sides, ctx), base)
    count = int(s.repeated[k])
    if count > 1:
        verdict.evidence.insert(0, Fact.of("repeated-rst", count=count))
    return verdict, rst, count


def _unanswered_outcome(verdict: Verdict, syns: list[Seen]) -> Outcome:
    return verdict, syns[0], len(syns)


def _peer_reset(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    genuine = bool(s.genuine[k])
    return _rst_outcome(
        s, k, ctx, lambda sides, rst, trigger, claim, base: tcp.peer_reset(sides, rst, trigger, genuine, claim, base)
    )


def _refusal(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    genuine = bool(s.genuine[k])
    syn = s.packets.seen(int(s.refused[k])) if s.refused[k] >= 0 else None

    def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        refused = tcp.refusal(sides, rst, syn, ctx)
        if s.policy[k]:
            return tcp.policy_reject(conn, refused, claim, base)
        return tcp.port_closed(rst, refused, genuine, claim, base)

    return _rst_outcome(s, k, ctx, write)


def _injected_reset(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    p = s.packets
    forged = bool(s.forged[k])
    if s.aborted()[k]:
        writer = tcp.kept_sending if s.kept_sending[k] else tcp.forged_abort
        return _rst_outcome(s, k, ctx, writer, every_packet=True)
    if s.answer[k] >= 0:
        answer = p.seen(int(s.answer[k]))
        return _rst_outcome(
            s,
            k,
            ctx,
            lambda sides, rst, trigger, claim, base: tcp.raced_handshake(sides, rst, answer, forged, claim, base),
            every_packet=True,
        )

    def let_through(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        assert trigger is not None
        beyond = tcp.syn_went_past(rst, trigger)
        assert beyond is not None, "the columns saw the SYN go on"
        return tcp.let_through(sides, rst, trigger, beyond, claim, base)

    return _rst_outcome(s, k, ctx, let_through)


def _idle_timeout(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        assert trigger is not None
        return tcp.idle_timeout(sides, rst, trigger, claim, base)

    return _rst_outcome(s, k, ctx, write, every_packet=True)


def _tuple_reuse(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    genuine = bool(s.genuine[k])

    def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        challenge = tcp.challenge_ack(sides.packets, rst)
        assert challenge is not None, "the columns saw the challenge ACK"
        return tcp.tuple_reuse(sides, rst, challenge, genuine, claim, base)

    return _rst_outcome(s, k, ctx, write, every_packet=True)


def _asymmetric_return(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    p = s.packets
    if s.rst[k] >= 0:
        forged = bool(s.forged[k])

        def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
            assert trigger is not None
            return tcp.synack_reset(conn, sides, rst, trigger, forged, claim, base, ctx)

        return _rst_outcome(s, k, ctx, write, every_packet=True)
    syns = _client_syns(s, k)
    if s.synack[k] >= 0:
        return _unanswered_outcome(tcp.synack_astray(conn, syns, p.seen(int(s.synack[k]))), syns)
    return _unanswered_outcome(tcp.syn_handed_on(conn, syns), syns)


def _silent_drop(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    syns = _client_syns(s, k)
    if s.synack[k] >= 0:
        return _unanswered_outcome(tcp.synack_lost(syns, s.packets.seen(int(s.synack[k]))), syns)
    return _unanswered_outcome(tcp.syn_lost(conn, _sides(s, k, syns), syns, ctx), syns)


def _unknown(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    return _rst_outcome(s, k, ctx, lambda sides, rst, trigger, claim, base: tcp.unknown_handshake_reset(claim, base))


def _healthy(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    return None


RENDERERS: dict[Cause, Renderer] = {
    Cause.HEALTHY: _healthy,
    Cause.PEER_RESET: _peer_reset,
    Cause.PORT_CLOSED: _refusal,
    Cause.POLICY_REJECT: _refusal,
    Cause.SILENT_DROP: _silent_drop,
    Cause.ASYMMETRIC_RETURN: _asymmetric_return,
    Cause.INJECTED_RESET: _injected_reset,
    Cause.IDLE_TIMEOUT: _idle_timeout,
    Cause.TUPLE_REUSE: _tuple_reuse,
    Cause.UNKNOWN: _unknown,
}


# Causes whose findings read every packet of their connection (they are rare: forged RSTs, races, reuse).
_EVERY_PACKET = frozenset({Cause.ASYMMETRIC_RETURN, Cause.INJECTED_RESET, Cause.IDLE_TIMEOUT, Cause.TUPLE_REUSE})


def _prefetch(s: TcpSignals, chosen: np.ndarray, cause: Cause) -> None:
    """Make the packets the chosen connections' findings name in one go: the RST and its trigger, or the SYNs
    (every packet of a connection whose finding reads them all)."""
    p = s.packets
    wanted = [s.rst[chosen], s.trigger[chosen], s.refused[chosen], s.synack[chosen], s.answer[chosen]]
    unanswered = chosen & (s.rst < 0) & s.syn_verdict
    if unanswered.any():
        mine = unanswered[p.conn] & p.from_orig & p.handshake(SYN)
        wanted.append(np.flatnonzero(mine))
    every = chosen & (s.rst >= 0) & (s.forged | (cause in _EVERY_PACKET))
    if every.any():
        wanted.append(np.flatnonzero(every[p.conn]))
    wanted.append(s.ip_id.last[chosen & s.ip_id.out_of_line & ~s.genuine])  # said only then
    p.prefetch(np.concatenate(wanted))


def judge_by_columns(connections: list[Connection], s: TcpSignals, ctx: Context) -> dict[int, Outcome]:
    """The outcome of every TCP connection, by its position: each is claimed by exactly one cause's rule."""
    claimed = np.zeros(len(connections), dtype=bool)
    outcomes: dict[int, Outcome] = {}
    for cause, spec in REGISTRY.items():
        if spec.tcp_rule is None:
            continue
        mine = spec.tcp_rule(s) & s.tcp
        if (mine & claimed).any():
            raise AssertionError(f"the TCP rule of {cause} claims connections another rule claims")
        claimed |= mine
        render = RENDERERS[cause]
        _prefetch(s, mine, cause)
        for k in np.flatnonzero(mine).tolist():
            outcomes[k] = render(connections[k], s, k, ctx)
    if (s.tcp & ~claimed).any():
        raise AssertionError("a TCP connection no cause's rule claims")
    return outcomes
