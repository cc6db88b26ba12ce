"""injected-reset: A device on the path injected a RST in an endpoint's name while the genuine traffic went on."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec, left_its_sender
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.INJECTED_RESET,
    forged=True,
    # A RST its claimed sender's own capture shows leaving it was not injected in that sender's name.
    excluded_by=left_its_sender,
    excluded_kinds=frozenset({"left-own"}),
    fixes=(
        "Find the injecting device on the path (IPS/DPI, firewall with TCP reset on policy match) from the hop "
        "distance in the evidence, and change its policy; trade-off: depends on why it resets.",
        "Encrypt the transport (TLS does not stop RSTs, but a VPN/IPsec tunnel hides the flow from injectors); "
        "trade-off: tunnel overhead and operations.",
    ),
)
