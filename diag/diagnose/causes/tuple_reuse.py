"""tuple-reuse: A new SYN reused a 4-tuple the server still held: challenge ACK (RFC 5961), then the client's RST."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec, answered_with, first
from diag.report import Cause
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """The RST of a tuple reuse is the client's own stack answering the challenge ACK: its capture shows it, and
    the RST answers that bare ACK, not a SYN-ACK."""
    if (synack := answered_with(facts, "SYN-ACK", "server")) is not None:
        return (
            f"no RFC 5961 challenge ACK: the RST answers the server's SYN-ACK (seq {synack['seq']}, ack "
            f"{synack['ack']}), which accepted the SYN"
        )
    absent = first(facts, "absent-at-own")
    if absent is not None and absent["side"] == "client":
        return "the client's own capture never shows the RST, and in a tuple reuse the client's stack sends it"
    return None


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """The client's RST answers an RFC 5961 challenge ACK the server sent to its new SYN."""
    rule: np.ndarray = s.reused()
    return rule


SPEC = CauseSpec(
    cause=Cause.TUPLE_REUSE,
    forged=False,
    tcp_rule=tcp_rule,
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
