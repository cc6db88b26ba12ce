"""unknown: The evidence fits no known pattern; the finding says what was seen."""

from __future__ import annotations

from collections.abc import Sequence

from diag.diagnose.causes.spec import CauseSpec, Decision, first, kinds
from diag.report import Cause
from diag.report.facts import Fact


def udp(facts: Sequence[Fact]) -> Decision | None:
    """An ICMP destination unreachable that names neither a closed port nor a policy (no route, host down)."""
    refused = first(facts, "unreachable")
    if refused is None or refused["reason"] != "other":
        return None
    return Decision(
        0.5,
        f"{refused['sender']} answered the requests to {refused['quoted']} with ICMP destination unreachable "
        f"(code {refused['code']})",
        tuple(kinds(facts, "requests", "unreachable")),
    )


SPEC = CauseSpec(
    cause=Cause.UNKNOWN,
    forged=False,
    udp=udp,
)
