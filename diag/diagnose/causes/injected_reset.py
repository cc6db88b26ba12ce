"""injected-reset: A device on the path injected a RST in an endpoint's name while the genuine traffic went on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec, left_its_sender
from diag.report import Cause

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """A forged RST ended an established connection (its claimed sender went on sending, or no idle gap explains
    it); or a RST in the server's name refused a SYN the server accepted (a race) or that went on past its maker."""
    aborted = s.aborted() & s.forged & ((s.kept_sending > 0) | ~s.idle)
    refused = s.refusing() & ((s.answer >= 0) | s.syn_went_past)
    rule: np.ndarray = aborted | refused
    return rule


SPEC = CauseSpec(
    cause=Cause.INJECTED_RESET,
    forged=True,
    # A RST its claimed sender's own capture shows leaving it was not injected in that sender's name.
    tcp_rule=tcp_rule,
    excluded_by=left_its_sender,
    excluded_kinds=frozenset({"left-own"}),
    fixes=(
        "Find the injecting device on the path (IPS/DPI, firewall with TCP reset on policy match) from the hop "
        "distance in the evidence, and change its policy; trade-off: depends on why it resets.",
        "Encrypt the transport (TLS does not stop RSTs, but a VPN/IPsec tunnel hides the flow from injectors); "
        "trade-off: tunnel overhead and operations.",
    ),
)
