"""idle-timeout: A middlebox dropped an idle flow's state and reset the next segment in an endpoint's name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import CauseSpec, firsts, left_its_sender, rst_phase
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.signals import Seen
from diag.diagnose.tcp import Sides
from diag.diagnose.tcp_findings import Outcome, rst_outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """A connection never established (a client still retrying its SYN, a RST in the handshake) had no flow to
    time out, a busy one was not idle, and a genuine RST is no middlebox's."""
    seen = firsts(facts)
    if "syn-retried" in seen:
        return "the client was still retrying its SYN: the connection never got established, nothing was idle"
    if rst_phase(seen) == "handshake" or "syns-unanswered" in seen:
        return "the connection never got established, nothing was idle"
    if (busy := seen.get("kept-sending")) is not None:
        return f"the connection was busy, not idle: the {busy['side']} kept sending after the RST"
    return left_its_sender(seen)


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """A forged RST ended an established connection, answering the first segment after a long silence, and its
    claimed sender sent nothing after it."""
    rule: np.ndarray = s.aborted() & s.forged & (s.kept_sending == 0) & s.idle
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """The forged RST after the idle gap, with the silence and the round trip it was held against."""

    def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        assert trigger is not None
        return tcp.idle_timeout(sides, rst, trigger, claim, base)

    return rst_outcome(s, k, ctx, write, every_packet=True)


SPEC = CauseSpec(
    cause=Cause.IDLE_TIMEOUT,
    forged=True,
    severity=Severity.INCIDENT,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    tcp_finding_reads_every_packet=True,
    excluded_by=excluded_by,
    excluded_kinds=frozenset({"syn-retried", "left-own", "rst", "syns-unanswered", "kept-sending"}),
    fixes=(
        "Enable TCP keepalives below the middlebox's idle timeout (e.g. net.ipv4.tcp_keepalive_time under 350 s "
        "for an AWS NLB or NAT gateway); trade-off: a few extra packets per idle connection.",
        "Raise the middlebox's idle timeout where it can be configured; trade-off: more state held for dead flows.",
    ),
)
