"""Which finding is the incident: findings ranked by significance, and grouped by cause and service.

A busy capture holds thousands of findings, nearly all of them the ordinary
resets every network has: peers aborting connections, SYNs to closed ports.
The most *confident* finding is then almost always one of those, because an
endpoint's own RST is the easiest thing to be sure of. The verdict must be
the most *significant* one instead. Significance is decided in two steps,
from the findings list alone (a pure function, so a report ranks the same
whoever renders it):

1. **Severity class of the cause** (strict: no count lifts a finding over a
   class). Resets forged in someone else's name (asymmetric return, idle
   timeout, injection, policy reject) and silent drops are class 3: they are
   what an incident looks like. Causes that need a look but are not forged
   (tuple reuse, unknown) are class 2. Peer resets and refused ports, which
   every busy capture has, are class 1.
2. **Weight within a class**: confidence x rarity, where rarity says how
   unusual the cause is for that service in this capture:
   ``1 + log10(findings of the service / findings of this cause there)``.
   A cause seen on 1 of 3000 findings of a service weighs about 4.5 times
   its confidence; one seen on 2900 of them weighs its confidence. A
   service is the server endpoint as the client addressed it, with the
   protocol. Ties go to the more confident, then the earlier symptom.

A group is every finding of one cause and service; groups are ordered by
their most significant member, so the verdict's group comes first.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from diag.report.model import FORGED_RESET_CAUSES, Finding

# Severity classes; a cause not listed (a new one, before it is classed here) counts as class 2.
INCIDENT_CLASS: Final = 3
REVIEW_CLASS: Final = 2
ORDINARY_CLASS: Final = 1
SEVERITY: Final[dict[str, int]] = {
    **dict.fromkeys(FORGED_RESET_CAUSES, INCIDENT_CLASS),
    "silent-drop": INCIDENT_CLASS,
    "tuple-reuse": REVIEW_CLASS,
    "unknown": REVIEW_CLASS,
    "peer-reset": ORDINARY_CLASS,
    "port-closed": ORDINARY_CLASS,
    "healthy": 0,
}
EXAMPLES_PER_GROUP: Final = 3

ServiceKey = tuple[str, str]  # (proto, server endpoint)
GroupKey = tuple[str, str, str]  # (cause, proto, server endpoint)


def severity(cause: str) -> int:
    return SEVERITY.get(str(cause), REVIEW_CLASS)


def _service(finding: Finding) -> ServiceKey:
    return (finding.proto, finding.server)


def _group_key(finding: Finding) -> GroupKey:
    return (str(finding.cause), finding.proto, finding.server)


def rarity_weights(findings: Sequence[Finding]) -> list[float]:
    """``1 + log10(n_service / n_cause_in_service)`` of every finding: 1 for the usual, more for the rare."""
    per_service = Counter(_service(f) for f in findings)
    per_group = Counter(_group_key(f) for f in findings)
    return [1.0 + math.log10(per_service[_service(f)] / per_group[_group_key(f)]) for f in findings]


def significance_keys(findings: Sequence[Finding]) -> list[tuple[int, float, float, float]]:
    """A sort key per finding, larger = more significant: (class, confidence x rarity, confidence, -time)."""
    keys = []
    for finding, rarity in zip(findings, rarity_weights(findings), strict=True):
        ts = finding.packet.ts if finding.packet is not None else math.inf
        keys.append((severity(finding.cause), finding.confidence * rarity, finding.confidence, -ts))
    return keys


def ranked(findings: Sequence[Finding]) -> list[int]:
    """Indices of ``findings``, most significant first (stable: equal keys keep the list's order)."""
    keys = significance_keys(findings)
    return sorted(range(len(findings)), key=lambda i: keys[i], reverse=True)


def most_significant(findings: Sequence[Finding]) -> int | None:
    """Index of the verdict among ``findings``, None when there are none."""
    if not findings:
        return None
    keys = significance_keys(findings)
    # max() keeps the first of equal keys, as the stable sort in ``ranked`` does.
    return max(range(len(findings)), key=lambda i: keys[i])


@dataclass(frozen=True)
class Group:
    """Findings of one cause and service: how many, the best confidence, and examples (indices into findings)."""

    cause: str
    proto: str
    server: str
    count: int
    confidence: float
    members: tuple[int, ...]  # every member's index, most significant first

    @property
    def examples(self) -> tuple[int, ...]:
        return self.members[:EXAMPLES_PER_GROUP]

    def to_json(self) -> dict[str, object]:
        return {
            "cause": self.cause,
            "proto": self.proto,
            "server": self.server,
            "count": self.count,
            "confidence": round(self.confidence, 3),
            "examples": list(self.examples),
        }


def group_findings(findings: Sequence[Finding]) -> list[Group]:
    """Findings grouped by (cause, proto, server), the groups ordered by their most significant member.

    Groups whose best members weigh the same (the many services with only
    ordinary resets) are ordered by size, largest first, then by time.
    """
    keys = significance_keys(findings)
    members: dict[GroupKey, list[int]] = {}
    for index in sorted(range(len(findings)), key=lambda i: keys[i], reverse=True):
        members.setdefault(_group_key(findings[index]), []).append(index)

    def order(indices: list[int]) -> tuple[int, float, float, int, float]:
        best_class, weight, confidence, earliest = keys[indices[0]]
        return (best_class, weight, confidence, len(indices), earliest)

    return [
        Group(
            cause=cause,
            proto=proto,
            server=server,
            count=len(indices),
            confidence=max(findings[i].confidence for i in indices),
            members=tuple(indices),
        )
        for (cause, proto, server), indices in sorted(members.items(), key=lambda item: order(item[1]), reverse=True)
    ]


def why_first(findings: Sequence[Finding], index: int) -> str | None:
    """One sentence on why ``findings[index]`` ranks where it does, for the verdict; None for a lone finding."""
    if len(findings) < 2:
        return None
    finding = findings[index]
    service = _service(finding)
    in_service = [f for f in findings if _service(f) == service]
    same = sum(1 for f in in_service if _group_key(f) == _group_key(finding))
    klass = {
        INCIDENT_CLASS: "a forged or asymmetric reset or a silent drop, which outranks ordinary peer resets and "
        "refused ports",
        REVIEW_CLASS: "a cause that is not an ordinary peer reset or refused port",
        ORDINARY_CLASS: "an ordinary peer reset or refused port (nothing more serious was found)",
    }.get(severity(finding.cause), "no problem")
    return (
        f"most significant of {len(findings)} findings: {klass}; {finding.cause} on {same} of the "
        f"{len(in_service)} findings of {finding.proto} {finding.server}"
    )
