"""port-closed: The server host itself refused the SYN: nothing listens on the port."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """The server's RST refuses the SYN it answers; the SYN reached it and nothing says the RST is not its own."""
    rule: np.ndarray = s.refused_syn() & ~s.policy
    return rule


SPEC = CauseSpec(
    cause=Cause.PORT_CLOSED,
    forged=False,
    tcp_rule=tcp_rule,
    fixes=(
        "Start the service (or fix its port) on the server: nothing listens on the port the SYN reached.",
        "Check the Service's targetPort against the port the container really listens on; "
        "trade-off: none, but a readiness probe on that port keeps traffic away until it listens.",
    ),
)
