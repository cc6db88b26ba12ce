"""policy-reject: A firewall rejected the request with a RST in the server's name; the SYN never reached the server."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.POLICY_REJECT,
    forged=True,
    fixes=(
        "Allow the flow in the rejecting firewall (iptables/nftables REJECT rule, NetworkPolicy, security group "
        "with an ICMP/RST reject); trade-off: widening a rule widens who can reach the service, so allow the "
        "client's source range only.",
    ),
)
