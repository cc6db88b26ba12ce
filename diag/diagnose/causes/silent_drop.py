"""silent-drop: The request or its reply vanished on the path, with no RST anywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import CauseSpec, Decision, first, firsts, kinds, listed
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context
from diag.diagnose.tcp_findings import Outcome, client_syns, sides_of, unanswered_outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def udp(facts: Sequence[Fact]) -> Decision | None:
    """The server's replies lost on the request's own path, or requests retried at a client's pace and never
    answered at all (unless a forwarding box shows them DNATed on with the client's address kept: that is the
    asymmetric return's signature from that box, though a drop after it looks the same).

    From one capture point alone the server's side is unseen, which makes it less sure.
    """
    lost, nothing = first(facts, "reply-lost"), first(facts, "no-reply")
    if lost is not None:
        return Decision(
            0.7, f"the server's replies vanished after {lost['last']}", tuple(kinds(facts, "requests", "reply-lost"))
        )
    if nothing is None or not nothing["retried"] or first(facts, "forwarded") is not None:
        return None  # a lone datagram, a stream, or every datagram different: a one-way protocol
    single = first(facts, "single-point") is not None
    return Decision(
        0.4 if single else 0.6,
        f"UDP requests vanished after {nothing['last']} with no reply",
        tuple(kinds(facts, "requests", "no-reply", "single-point")),
    )


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """A reply that arrived, was translated on its way or took another path, was not lost; a RST or an ICMP
    error came back, so nothing was silent."""
    seen = firsts(facts)
    if "reply-foreign" in seen:
        return "the reply was not lost: it arrived from the wrong source"
    if "reply-resourced" in seen:
        return "the reply left the server and was translated, not dropped"
    if (paths := seen.get("paths")) is not None and paths["reply_only"]:
        return f"the reply was not lost on the request's path: it took another one ({listed(paths['reply_only'])})"
    if "rst" in seen:
        return "a RST came back: the connection was answered, not silently dropped"
    if (refused := seen.get("unreachable")) is not None:
        return f"an ICMP destination unreachable from {refused['sender']} came back: refused, not silently dropped"
    return None


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """SYNs unanswered long enough whose SYN-ACK (if any) was lost on their own path, and no box alone that shows
    them handed on with the client's address kept."""
    rule: np.ndarray = s.syn_verdict & ~s.reply_astray()
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """The unanswered SYNs: their SYN-ACK lost on their own path, or no answer at all."""
    syns = client_syns(s, k)
    if s.synack[k] >= 0:
        return unanswered_outcome(tcp.synack_lost(syns, s.packets.seen(int(s.synack[k]))), syns)
    return unanswered_outcome(tcp.syn_lost(conn, sides_of(s, k, syns), syns, ctx), syns)


SPEC = CauseSpec(
    cause=Cause.SILENT_DROP,
    forged=False,
    severity=Severity.INCIDENT,
    absence=True,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    udp=udp,
    excluded_by=excluded_by,
    excluded_kinds=frozenset({"reply-foreign", "reply-resourced", "paths", "rst", "unreachable"}),
    fixes=(
        "Find the point where the packet was last seen and look for a DROP rule, a security group or NACL, "
        "a missing route or an MTU black hole after it; trade-off: depends on the rule.",
    ),
)
