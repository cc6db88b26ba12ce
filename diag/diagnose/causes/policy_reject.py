"""policy-reject: A firewall rejected the request with a RST in the server's name; the SYN never reached the server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """A RST in the server's name refuses the SYN, and the SYN is missing where the server's side would show it."""
    rule: np.ndarray = s.refused_syn() & s.policy
    return rule


SPEC = CauseSpec(
    cause=Cause.POLICY_REJECT,
    forged=True,
    tcp_rule=tcp_rule,
    fixes=(
        "Allow the flow in the rejecting firewall (iptables/nftables REJECT rule, NetworkPolicy, security group "
        "with an ICMP/RST reject); trade-off: widening a rule widens who can reach the service, so allow the "
        "client's source range only.",
    ),
)
