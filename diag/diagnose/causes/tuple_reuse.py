"""tuple-reuse: A new SYN reused a 4-tuple the server still held: challenge ACK (RFC 5961), then the client's RST."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.TUPLE_REUSE,
    forged=False,
    fixes=(
        "Avoid reusing a 4-tuple the server still holds: let the client's stack pick ephemeral ports (no fixed "
        "source port), and keep net.ipv4.tcp_tw_reuse and the NAT's port allocation from recycling ports early; "
        "trade-off: more ports in use.",
        "Close connections cleanly (FIN, not a silent drop of state) so the server releases the tuple; "
        "trade-off: none.",
    ),
)
