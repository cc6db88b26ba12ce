"""port-closed: The server host itself refused the SYN: nothing listens on the port."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.PORT_CLOSED,
    forged=False,
    fixes=(
        "Start the service (or fix its port) on the server: nothing listens on the port the SYN reached.",
        "Check the Service's targetPort against the port the container really listens on; "
        "trade-off: none, but a readiness probe on that port keeps traffic away until it listens.",
    ),
)
