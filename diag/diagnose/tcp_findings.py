"""Writing a TCP finding from the signal columns: what every cause's ``tcp_finding`` shares.

A cause module's ``tcp_rule`` claims connections over ``TcpSignals``; its
``tcp_finding`` then writes each claimed connection's finding (through the
sentences and facts of ``diag.diagnose.tcp``) from the packets it names,
which these helpers make from the columns: the RST, the packet it answers and
what its marks say of its claimed sender, or the client's SYNs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diag.capture.proto import ACK, RST, SYN
from diag.diagnose import tcp
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.signals import Seen, shared_subnet, where
from diag.diagnose.tcp import Sides, genuine_line, rst_lines, side_name
from diag.diagnose.tcp_signals import TcpSignals
from diag.report.facts import Fact

# A connection's finding: the verdict, the symptom packet and how often it occurred; None for no finding.
Outcome = tuple[Verdict, Seen, int] | None
Writer = Callable[[Connection, TcpSignals, int, Context], Outcome]


def sides_of(s: TcpSignals, k: int, packets: list[Seen]) -> Sides:
    names = s.packets.table.names
    server, client = s.own[k].tolist()
    return Sides(packets, names[client] if client >= 0 else None, names[server] if server >= 0 else None)


def _all_packets(s: TcpSignals, k: int) -> list[Seen]:
    """Every packet of the connection (for the rarer findings, whose sentences read more than a few)."""
    p = s.packets
    return [p.seen(i) for i in range(int(p.first[k]), int(p.first[k + 1]))]


def client_syns(s: TcpSignals, k: int) -> list[Seen]:
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


def rst_outcome(s: TcpSignals, k: int, ctx: Context, write: RstWriter, every_packet: bool = False) -> Outcome:
    p = s.packets
    rst = p.seen(int(s.rst[k]))
    trigger = p.seen(int(s.trigger[k])) if s.trigger[k] >= 0 else None
    sides = sides_of(s, k, _all_packets(s, k) if every_packet or s.forged[k] else [])
    base = rst_lines(rst, trigger, bool(s.handshake_seen[k]), bool(s.established[k]))
    verdict = write(sides, rst, trigger, _claim_lines(s, k, rst, sides, ctx), base)
    count = int(s.repeated[k])
    if count > 1:
        verdict.evidence.insert(0, Fact.of("repeated-rst", count=count))
    return verdict, rst, count


def unanswered_outcome(verdict: Verdict, syns: list[Seen]) -> Outcome:
    return verdict, syns[0], len(syns)


def refusal_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """A RST in the server's name refusing the SYN: the server's own (port-closed) or a firewall's
    (policy-reject), as the ``policy`` column says; both causes write it so."""
    genuine = bool(s.genuine[k])
    syn = s.packets.seen(int(s.refused[k])) if s.refused[k] >= 0 else None

    def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        refused = tcp.refusal(sides, rst, syn, ctx)
        if s.policy[k]:
            return tcp.policy_reject(conn, refused, claim, base)
        return tcp.port_closed(rst, refused, genuine, claim, base)

    return rst_outcome(s, k, ctx, write)
