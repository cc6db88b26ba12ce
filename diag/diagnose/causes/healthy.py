"""healthy: Nothing wrong: the verdict when there is no finding. Never a finding itself."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.HEALTHY,
    forged=False,
)
