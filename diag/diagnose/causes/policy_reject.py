"""policy-reject: A firewall rejected the request in the server's stead; the request never reached the server.

TCP: a RST in the server's name answers the SYN. UDP: an ICMP destination
unreachable that says a policy prohibited it, or a port unreachable sent by
a box other than the host the requests were addressed to (a REJECT rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec, Decision, first, host_of, kinds, udp_answered
from diag.report import Cause
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
    """Requests the server answered were let through."""
    return "the server answered the requests, so nothing on the way refused them" if udp_answered(facts) else None


SPEC = CauseSpec(
    cause=Cause.POLICY_REJECT,
    forged=True,
    tcp_rule=tcp_rule,
    udp=udp,
    excluded_by=excluded_by,
    excluded_kinds=frozenset({"answered", "reply-foreign", "reply-resourced", "reply-lost"}),
    fixes=(
        "Allow the flow in the rejecting firewall (iptables/nftables REJECT rule, NetworkPolicy, security group "
        "with an ICMP/RST reject); trade-off: widening a rule widens who can reach the service, so allow the "
        "client's source range only.",
    ),
)
