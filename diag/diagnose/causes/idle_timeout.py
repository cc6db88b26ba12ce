"""idle-timeout: A middlebox dropped an idle flow's state and reset the next segment in an endpoint's name."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.IDLE_TIMEOUT,
    forged=True,
    fixes=(
        "Enable TCP keepalives below the middlebox's idle timeout (e.g. net.ipv4.tcp_keepalive_time under 350 s "
        "for an AWS NLB or NAT gateway); trade-off: a few extra packets per idle connection.",
        "Raise the middlebox's idle timeout where it can be configured; trade-off: more state held for dead flows.",
    ),
)
