"""tuple-reuse: A new SYN reused a 4-tuple the server still held: challenge ACK (RFC 5961), then the client's RST."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import CauseSpec, answered_with, firsts
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
    """The RST of a tuple reuse is the client's own stack answering the challenge ACK: its capture shows it, and
    the RST answers that bare ACK, not a SYN-ACK."""
    seen = firsts(facts)
    if (synack := answered_with(seen, "SYN-ACK", "server")) is not None:
        return (
            f"no RFC 5961 challenge ACK: the RST answers the server's SYN-ACK (seq {synack['seq']}, ack "
            f"{synack['ack']}), which accepted the SYN"
        )
    absent = seen.get("absent-at-own")
    if absent is not None and absent["side"] == "client":
        return "the client's own capture never shows the RST, and in a tuple reuse the client's stack sends it"
    return None


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """The client's RST answers an RFC 5961 challenge ACK the server sent to its new SYN."""
    rule: np.ndarray = s.reused()
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """The challenge ACK to the new SYN and the client's RST answering it."""
    genuine = bool(s.genuine[k])

    def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        challenge = tcp.challenge_ack(sides.packets, rst)
        assert challenge is not None, "the columns saw the challenge ACK"
        return tcp.tuple_reuse(sides, rst, challenge, genuine, claim, base)

    return rst_outcome(s, k, ctx, write, every_packet=True)


SPEC = CauseSpec(
    cause=Cause.TUPLE_REUSE,
    forged=False,
    severity=Severity.REVIEW,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    tcp_finding_reads_every_packet=True,
    excluded_by=excluded_by,
    excluded_kinds=frozenset({"absent-at-own", "answers"}),
    fixes=(
        "Avoid reusing a 4-tuple the server still holds: let the client's stack pick ephemeral ports (no fixed "
        "source port), and keep net.ipv4.tcp_tw_reuse and the NAT's port allocation from recycling ports early; "
        "trade-off: more ports in use.",
        "Close connections cleanly (FIN, not a silent drop of state) so the server releases the tuple; "
        "trade-off: none.",
    ),
)
