"""TCP findings from the signal columns: the registry's rules choose, a finding is rendered per connection.

Each cause module's ``tcp_rule`` claims the connections it explains from
``TcpSignals``; the finding of a claimed connection is then written from the
few packets it names (the RST, the packet it answers, the SYNs), built from
the columns, through the same sentence-writing code as the per-connection
rules of ``diag.diagnose.tcp``. Connections no rule claims are left to those.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diag.capture.proto import ACK, RST, SYN
from diag.diagnose.causes import REGISTRY
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.signals import Seen, shared_subnet, where
from diag.diagnose.tcp import (
    Sides,
    established_reset,
    genuine_line,
    handshake_reset_from_server,
    rst_lines,
    side_name,
    unanswered_syn,
)
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


def _claim_lines(s: TcpSignals, k: int, rst: Seen, sides: Sides) -> list[Line]:
    """What ``tcp._genuineness`` says of a RST that nothing marks as forged."""
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


def _handshake_seen(s: TcpSignals, k: int) -> bool:
    return bool(s.handshake_seen[k])


def _rst_outcome(
    s: TcpSignals, k: int, decide: Callable[[Sides, Seen, Seen | None, list[Line], list[Line]], Verdict | None]
) -> Outcome:
    p = s.packets
    rst = p.seen(int(s.rst[k]))
    trigger = p.seen(int(s.trigger[k])) if s.trigger[k] >= 0 else None
    sides = _sides(s, k, [])
    verdict = decide(
        sides, rst, trigger, _claim_lines(s, k, rst, sides), rst_lines(rst, trigger, _handshake_seen(s, k))
    )
    if verdict is None:
        return None
    count = int(s.repeated[k])
    if count > 1:
        verdict.evidence.insert(0, Fact.of("repeated-rst", count=count))
    return verdict, rst, count


def _peer_reset(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    genuine = bool(s.genuine[k])
    return _rst_outcome(
        s,
        k,
        lambda sides, rst, trigger, claim, base: established_reset(sides, rst, trigger, genuine, False, claim, base),
    )


def _refused_syn(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    genuine = bool(s.genuine[k])
    return _rst_outcome(
        s,
        k,
        lambda sides, rst, trigger, claim, base: handshake_reset_from_server(
            conn, sides, rst, trigger, genuine, False, claim, base, ctx
        ),
    )


def _silent_drop(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    # The columns showed nothing answered the SYNs: the client's SYNs are all the rules below still read.
    p = s.packets
    chosen = np.arange(int(p.first[k]), int(p.first[k + 1]))
    flags = p.flags[chosen]
    client_syn = (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN) & p.from_orig[chosen]
    syns = [p.seen(int(i)) for i in chosen[client_syn]]
    return unanswered_syn(conn, _sides(s, k, syns), ctx)


def _healthy(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    return None


RENDERERS: dict[Cause, Renderer] = {
    Cause.HEALTHY: _healthy,
    Cause.PEER_RESET: _peer_reset,
    Cause.PORT_CLOSED: _refused_syn,
    Cause.POLICY_REJECT: _refused_syn,
    Cause.SILENT_DROP: _silent_drop,
}


def _prefetch(s: TcpSignals, chosen: np.ndarray) -> None:
    """Make the packets the chosen connections' findings name in one go: the RST and its trigger, or the SYNs."""
    p = s.packets
    wanted = [s.rst[chosen], s.trigger[chosen]]
    unanswered = chosen & (s.rst < 0) & s.syn_verdict
    if unanswered.any():
        mine = unanswered[p.conn] & p.from_orig & p.handshake(SYN)
        wanted.append(np.flatnonzero(mine))
    p.prefetch(np.concatenate(wanted))


def judge_by_columns(
    connections: list[Connection], s: TcpSignals, ctx: Context
) -> tuple[np.ndarray, dict[int, Outcome]]:
    """(claimed, outcomes): which connections a registry rule explained, and their outcome by position."""
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
        _prefetch(s, mine)
        for k in np.flatnonzero(mine).tolist():
            outcomes[k] = render(connections[k], s, k, ctx)
    return claimed, outcomes
