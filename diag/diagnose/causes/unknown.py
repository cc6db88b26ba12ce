"""unknown: The evidence fits no known pattern; the finding says what was seen."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.UNKNOWN,
    forged=False,
)
