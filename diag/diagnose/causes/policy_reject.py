"""policy-reject: A firewall rejected the request in the server's stead; the request never reached the server.

TCP: a RST in the server's name answers the SYN. UDP: an ICMP destination
unreachable that says a policy prohibited it, or a port unreachable sent by
a box other than the host the requests were addressed to (a REJECT rule).
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
    """A RST in the server's name refuses the SYN, and the SYN is missing where the server's side would show it,
    or the RST is forged and the SYN was not seen at the server."""
    rule: np.ndarray = s.refused_syn() & s.policy
    return rule


def udp(facts: Sequence[Fact]) -> Decision | None:
    """ICMP administratively prohibited for the requests, or port unreachable from a box in the server's stead."""
    refused = first(facts, "unreachable")
    if refused is None:
        return None
    cited = tuple(kinds(facts, "requests", "unreachable"))
    sender, quoted = refused["sender"], refused["quoted"]
    if refused["reason"] == "prohibited":
        return Decision(0.85, f"{sender} refused the requests to {quoted}: ICMP administratively prohibited", cited)
    if refused["reason"] == "port" and sender != host_of(str(quoted)):
        return Decision(
            0.75,
            f"{sender} refused the requests to {quoted} in its stead with ICMP port unreachable (a REJECT rule)",
            cited,
        )
    return None


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """Requests the server answered, a SYN seen at the server or past the RST's maker, were let through; a RST
    from a neighbour of the server on its own link is what the server's own looks like; SYNs nothing answered
    were refused by no one."""
    seen = firsts(facts)
    if udp_answered(seen):
        return "the server answered the requests, so nothing on the way refused them"
    if "syn-accepted" in seen:
        return (
            "the SYN reached the server and was answered; a rejecting firewall stops the SYN, so no genuine answer "
            "follows"
        )
    if answered_with(seen, "SYN-ACK", "server") is not None:
        return "the SYN reached the server and was answered; the RST goes to the server, not to the client"
    if (went_on := seen.get("syn-went-past")) is not None:
        return f"the SYN was not stopped: it reached {went_on['point']}, past the RST's maker"
    if (reached := seen.get("syn-at-server")) is not None:
        return f"the SYN reached the server's capture ({reached['point']})"
    if (link := seen.get("on-link")) is not None and link["side"] == "server":
        return (
            f"the server is a neighbour on {link['point']}'s link and the RST is what its own looks like there: a "
            "firewall would have to sit on that very link"
        )
    if "syns-unanswered" in seen:
        return "no RST came back: nothing refused the SYN"
    return None


SPEC = CauseSpec(
    cause=Cause.POLICY_REJECT,
    forged=True,
    severity=Severity.INCIDENT,
    tcp_rule=tcp_rule,
    tcp_finding=refusal_finding,
    udp=udp,
    excluded_by=excluded_by,
    excluded_kinds=frozenset(
        {"answered", "reply-foreign", "reply-resourced", "reply-lost", "syn-accepted", "answers", "syn-went-past"}
        | {"syn-at-server", "on-link", "syns-unanswered"}
    ),
    fixes=(
        "Allow the flow in the rejecting firewall (iptables/nftables REJECT rule, NetworkPolicy, security group "
        "with an ICMP/RST reject); trade-off: widening a rule widens who can reach the service, so allow the "
        "client's source range only.",
    ),
)
