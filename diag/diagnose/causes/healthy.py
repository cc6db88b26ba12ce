"""healthy: Nothing wrong: the verdict when there is no finding. Never a finding itself.

Its rule recognises a UDP conversation that got its answer (a reply from the
address the client wrote to), so that no finding is made of it; a reply from
elsewhere, or re-sourced on a path the request never took, excludes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec, Decision, first, kinds
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context
from diag.diagnose.tcp_findings import Outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def udp(facts: Sequence[Fact]) -> Decision | None:
    answered = first(facts, "answered")
    if answered is None:
        return None
    return Decision(1.0, f"the client got its replies from {answered['src']}", tuple(kinds(facts, "answered")))


def excluded_by(facts: Sequence[Fact]) -> str | None:
    if first(facts, "reply-foreign") is not None:
        return "a reply reached the client from an address it never wrote to"
    if first(facts, "reply-resourced") is not None:
        return "a reply was re-sourced on a path the request never took"
    return None


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """No RST to judge and no SYN left unanswered: the connection makes no finding."""
    rule: np.ndarray = s.tcp & (s.rst < 0) & ~s.syn_verdict
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """No finding."""
    return None


SPEC = CauseSpec(
    cause=Cause.HEALTHY,
    forged=False,
    severity=Severity.NONE,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    udp=udp,
    excluded_by=excluded_by,
    excluded_kinds=frozenset({"reply-foreign", "reply-resourced"}),
)
