"""silent-drop: The request or its reply vanished on the path, with no RST anywhere."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.SILENT_DROP,
    forged=False,
    fixes=(
        "Find the point where the packet was last seen and look for a DROP rule, a security group or NACL, "
        "a missing route or an MTU black hole after it; trade-off: depends on the rule.",
    ),
)
