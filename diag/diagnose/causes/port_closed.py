"""port-closed: The server host itself refused the request: nothing listens on the port.

TCP: its RST answers the SYN. UDP: its ICMP port unreachable answers the
requests (sent by the host they were addressed to, as the point saw them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec, Decision, answered_with, first, firsts, host_of, kinds, udp_answered
from diag.diagnose.tcp_findings import refusal_finding
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """A RST in the server's name refuses the SYN; nothing says the SYN missed the server or the RST is not its own."""
    rule: np.ndarray = s.refused_syn() & ~s.policy
    return rule


def udp(facts: Sequence[Fact]) -> Decision | None:
    """ICMP port unreachable for the requests, from the very host they were addressed to."""
    refused = first(facts, "unreachable")
    if refused is None or refused["reason"] != "port" or refused["sender"] != host_of(str(refused["quoted"])):
        return None
    return Decision(
        0.85,
        f"nothing listens on {refused['quoted']}: its host answered the requests with ICMP port unreachable",
        tuple(kinds(facts, "requests", "unreachable")),
    )


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """A server that answered the requests (UDP) or the SYN (a SYN-ACK) listens on the port; a SYN that never
    reached the server, or went on past the RST's maker, was not refused by the server, nor was one its RST's
    own marks say another device refused; SYNs nothing answered were refused by no one."""
    seen = firsts(facts)
    if udp_answered(seen):
        return "the server answered the requests, so something listens on the port"
    if "syn-accepted" in seen:
        return "the server answered the same SYN with a SYN-ACK: it listens on the port"
    if answered_with(seen, "SYN-ACK", "server") is not None:
        return "the server answered with a SYN-ACK, so it listens; the RST claims the client, not the server"
    if (went_on := seen.get("syn-went-past")) is not None:
        return f"the RST was made before {went_on['point']} on the way, so not by the server"
    if "syn-missing-at-server" in seen or "syn-missing-further" in seen:
        return "the SYN never reached the server, so the server cannot have refused it"
    if any(fact.kind in ("absent-at-own", "ttl-hops", "rst-too-soon") and fact["side"] == "server" for fact in facts):
        return "the RST was not made by the server (see its TTL, presence, timing), so it did not refuse the SYN"
    if "syns-unanswered" in seen:
        return "no RST came back: nothing refused the SYN"
    return None


SPEC = CauseSpec(
    cause=Cause.PORT_CLOSED,
    forged=False,
    severity=Severity.ORDINARY,
    tcp_rule=tcp_rule,
    tcp_finding=refusal_finding,
    udp=udp,
    excluded_by=excluded_by,
    excluded_kinds=frozenset(
        {"answered", "reply-foreign", "reply-resourced", "reply-lost", "syn-accepted", "answers", "syn-went-past"}
        | {"syn-missing-at-server", "syn-missing-further", "absent-at-own", "ttl-hops", "rst-too-soon"}
        | {"syns-unanswered"}
    ),
    fixes=(
        "Start the service (or fix its port) on the server: nothing listens on the port the SYN reached.",
        "Check the Service's targetPort against the port the container really listens on; "
        "trade-off: none, but a readiness probe on that port keeps traffic away until it listens.",
    ),
)
