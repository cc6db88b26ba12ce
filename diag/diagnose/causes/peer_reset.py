"""peer-reset: An endpoint really aborted an established connection."""

from __future__ import annotations

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause

SPEC = CauseSpec(
    cause=Cause.PEER_RESET,
    forged=False,
    fixes=(
        "Look at the application that sent the RST: an abortive close (SO_LINGER 0), a crash, or closing the "
        "socket with unread data; trade-off: none at the network level, this is the endpoint's decision.",
    ),
)
