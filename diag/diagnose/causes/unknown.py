"""unknown: The evidence fits no known pattern; the finding says what was seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import CauseSpec, Decision, first, kinds
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context
from diag.diagnose.tcp_findings import Outcome, rst_outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def udp(facts: Sequence[Fact]) -> Decision | None:
    """An ICMP destination unreachable that names neither a closed port nor a policy (no route, host down)."""
    refused = first(facts, "unreachable")
    if refused is None or refused["reason"] != "other":
        return None
    return Decision(
        0.5,
        f"{refused['sender']} answered the requests to {refused['quoted']} with ICMP destination unreachable "
        f"(code {refused['code']})",
        tuple(kinds(facts, "requests", "unreachable")),
    )


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """A RST in the client's name during the handshake that is neither a tuple reuse nor a forged answer to the
    server's SYN-ACK."""
    rule: np.ndarray = s.client_handshake_rst() & ~s.synack_reset_astray()
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """What the RST shows, and that it fits no known pattern."""
    return rst_outcome(s, k, ctx, lambda sides, rst, trigger, claim, base: tcp.unknown_handshake_reset(claim, base))


SPEC = CauseSpec(
    cause=Cause.UNKNOWN,
    forged=False,
    severity=Severity.REVIEW,
    udp=udp,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
)
