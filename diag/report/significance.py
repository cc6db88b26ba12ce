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
   protocol. In the incident class rarity is left out (it is 1): a forged
   reset repeated on every connection of a service is the incident itself,
   not background, so there the most confident finding leads. Ties go to
   the more confident, then the earlier symptom.

A group is every finding of one cause and service; groups are ordered by
their most significant member, so the verdict's group comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.report.model import FORGED_RESET_CAUSES, Cause, Finding

# Severity classes; a cause not listed (a new one, before it is classed here) counts as class 2.
INCIDENT_CLASS: Final = 3
REVIEW_CLASS: Final = 2
ORDINARY_CLASS: Final = 1
SEVERITY: Final[dict[Cause, int]] = {
    **dict.fromkeys(FORGED_RESET_CAUSES, INCIDENT_CLASS),
    Cause.SILENT_DROP: INCIDENT_CLASS,
    Cause.TUPLE_REUSE: REVIEW_CLASS,
    Cause.UNKNOWN: REVIEW_CLASS,
    Cause.PEER_RESET: ORDINARY_CLASS,
    Cause.PORT_CLOSED: ORDINARY_CLASS,
    Cause.HEALTHY: 0,
}
EXAMPLES_PER_GROUP: Final = 3

Ints = npt.NDArray[np.int64]


def severity(cause: Cause) -> int:
    return SEVERITY.get(cause, REVIEW_CLASS)


def _service(finding: Finding) -> tuple[str, str]:
    return (finding.proto, finding.server)


def _group_key(finding: Finding) -> tuple[str, str, str]:
    return (str(finding.cause), finding.proto, finding.server)


@dataclass(frozen=True)
class _Table:
    """The findings' ranking inputs as columns; a busy capture has tens of thousands of findings."""

    klass: Ints
    rarity: npt.NDArray[np.float64]
    confidence: npt.NDArray[np.float64]
    ts: npt.NDArray[np.float64]  # +inf without a symptom packet: after every timed one
    group: Ints  # group code (cause, proto, server), dense from 0

    @property
    def weight(self) -> npt.NDArray[np.float64]:
        return self.confidence * self.rarity


# The last findings ranked and their table: the verdict, the groups and the text's ranking each ask for the same
# list (four or five times a report), and a busy capture's table takes tens of milliseconds to build.
_last: list[tuple[tuple[Finding, ...], _Table]] = []


def _table(findings: Sequence[Finding]) -> _Table:
    if _last:
        seen, table = _last[0]
        # The same findings, one by one (a Finding is immutable, so the same objects rank the same).
        if len(seen) == len(findings) and all(a is b for a, b in zip(seen, findings, strict=True)):
            return table
    table = _build_table(findings)
    _last[:] = [(tuple(findings), table)]
    return table


def _build_table(findings: Sequence[Finding]) -> _Table:
    causes = [str(f.cause) for f in findings]
    columns = {"cause": causes, "proto": [f.proto for f in findings], "server": [f.server for f in findings]}
    frame = pd.DataFrame(columns, dtype=object)  # plain objects: factorised faster than arrow strings
    group: Ints = np.asarray(frame.groupby(["cause", "proto", "server"], sort=False).ngroup(), dtype=np.int64)
    service: Ints = np.asarray(frame.groupby(["proto", "server"], sort=False).ngroup(), dtype=np.int64)
    per_group = np.bincount(group)[group]
    per_service = np.bincount(service)[service]
    klass = np.array([severity(f.cause) for f in findings], dtype=np.int64)
    return _Table(
        klass=klass,
        rarity=np.where(klass >= INCIDENT_CLASS, 1.0, 1.0 + np.log10(per_service / per_group)),
        confidence=np.array([f.confidence for f in findings], dtype=np.float64),
        ts=np.array([f.packet.ts if f.packet is not None else np.inf for f in findings], dtype=np.float64),
        group=group,
    )


def _ranked(table: _Table) -> Ints:
    # lexsort: the last key is the primary one; it is stable, so equal keys keep the list's order.
    return np.lexsort((table.ts, -table.confidence, -table.weight, -table.klass)).astype(np.int64)


def rarity_weights(findings: Sequence[Finding]) -> list[float]:
    """``1 + log10(n_service / n_cause_in_service)`` of every finding: 1 for the usual, more for the rare."""
    return _table(findings).rarity.tolist() if findings else []


def ranked(findings: Sequence[Finding]) -> list[int]:
    """Indices of ``findings``, most significant first: by class, confidence x rarity, confidence, time."""
    return _ranked(_table(findings)).tolist() if findings else []


def most_significant(findings: Sequence[Finding]) -> int | None:
    """Index of the verdict among ``findings``, None when there are none."""
    if not findings:
        return None
    return int(_ranked(_table(findings))[0])


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
    ordinary resets) are ordered by size, largest first, then by the rank
    of their best member.
    """
    if not findings:
        return []
    table = _table(findings)
    order = _ranked(table)
    # Members of each group in rank order: a stable sort of the ranked list by group code.
    by_group = order[np.argsort(table.group[order], kind="stable")]
    counts = np.bincount(table.group)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    best = by_group[starts]  # each group's most significant member
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    weight = table.weight
    group_order = np.lexsort((position[best], -counts, -table.confidence[best], -weight[best], -table.klass[best]))
    best_confidence = np.maximum.reduceat(table.confidence[by_group], starts)
    members, first, size = by_group.tolist(), starts.tolist(), counts.tolist()
    groups = []
    for code in group_order.tolist():
        head = findings[members[first[code]]]
        groups.append(
            Group(
                cause=str(head.cause),
                proto=head.proto,
                server=head.server,
                count=size[code],
                confidence=float(best_confidence[code]),
                members=tuple(members[first[code] : first[code] + size[code]]),
            )
        )
    return groups


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
