"""Which finding is the incident: findings ranked by significance, and grouped by cause and service.

A busy capture holds thousands of findings, nearly all of them the ordinary
resets every network has: peers aborting connections, SYNs to closed ports.
The most *confident* finding is then almost always one of those, because an
endpoint's own RST is the easiest thing to be sure of. The verdict must be
the most *significant* one instead. Significance is decided in two steps,
from the findings list alone (nothing else is read, so a report ranks the
same whoever renders it; ``Ranking`` works it out once per report):

1. **Severity class of the cause** (strict: no count lifts a finding over a
   class; ``Severity``). Resets forged in someone else's name and silent
   drops are the incident class: they are what an incident looks like.
   Causes that need a look but are not forged are the review class. Peer
   resets and refused ports, which every busy capture has, are the ordinary
   class. Each cause declares its class in its registry entry
   (``diag.diagnose.causes``, ``CauseSpec.severity``, listed in
   docs/analyze.md) and the finding carries it (``Finding.severity``): the
   ranking reads the findings alone, with no table of causes here.
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

A ``Ranking`` ranks one list of findings once; a report keeps its own
(``Report.ranking``), so the text and the JSON document, which both ask for
the verdict and the groups, build the table once per report and nothing
outlives the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Final, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd


class Severity(IntEnum):
    """A cause's severity class, the ranking's first key: a higher class always ranks first."""

    NONE = 0  # nothing wrong (``healthy``): never a finding
    ORDINARY = 1  # what every busy capture has plenty of
    REVIEW = 2  # worth a look, but no RST forged and nothing lost
    INCIDENT = 3  # what an incident looks like: a RST forged in someone else's name, or packets lost


EXAMPLES_PER_GROUP: Final = 3
# Why a class leads, for the verdict's "ranked" line.
_CLASS_REASON: Final = {
    Severity.INCIDENT: "a forged or asymmetric reset or a silent drop, which outranks ordinary peer resets and "
    "refused ports",
    Severity.REVIEW: "a cause that is not an ordinary peer reset or refused port",
    Severity.ORDINARY: "an ordinary peer reset or refused port (nothing more serious was found)",
}

Ints = npt.NDArray[np.int64]


class _Timed(Protocol):
    @property
    def ts(self) -> float: ...


class Rankable(Protocol):
    """What the ranking reads of a finding (``diag.report.model.Finding`` is one): its cause and service, how sure
    and how serious it is, and when its symptom was seen."""

    @property
    def cause(self) -> str: ...
    @property
    def proto(self) -> str: ...
    @property
    def server(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def severity(self) -> Severity: ...
    @property
    def packet(self) -> _Timed | None: ...


F = TypeVar("F", bound=Rankable)


@dataclass(frozen=True)
class _Table:
    """The findings' ranking inputs as columns; a busy capture has tens of thousands of findings."""

    klass: Ints
    rarity: npt.NDArray[np.float64]
    confidence: npt.NDArray[np.float64]
    ts: npt.NDArray[np.float64]  # +inf without a symptom packet: after every timed one
    group: Ints  # group code (cause, proto, server), dense from 0
    per_group: Ints  # each finding's group's size
    per_service: Ints  # how many findings each finding's service (proto, server) has

    @property
    def weight(self) -> npt.NDArray[np.float64]:
        return self.confidence * self.rarity


def _build_table(findings: Sequence[Rankable]) -> _Table:
    # One pass over the findings: an analysis in passes reads each back from disk (``diag.spilledfindings``).
    rows = [
        (str(f.cause), f.proto, f.server, f.severity, f.confidence, np.inf if f.packet is None else f.packet.ts)
        for f in findings
    ]
    causes, protos, servers, severities, confidences, times = zip(*rows, strict=True) if rows else ((),) * 6
    columns = {"cause": list(causes), "proto": list(protos), "server": list(servers)}
    frame = pd.DataFrame(columns, dtype=object)  # plain objects: factorised faster than arrow strings
    group: Ints = np.asarray(frame.groupby(["cause", "proto", "server"], sort=False).ngroup(), dtype=np.int64)
    service: Ints = np.asarray(frame.groupby(["proto", "server"], sort=False).ngroup(), dtype=np.int64)
    per_group = np.bincount(group)[group]
    per_service = np.bincount(service)[service]
    klass = np.array(severities, dtype=np.int64)
    return _Table(
        klass=klass,
        rarity=np.where(klass >= Severity.INCIDENT, 1.0, 1.0 + np.log10(per_service / per_group)),
        confidence=np.array(confidences, dtype=np.float64),
        ts=np.array(times, dtype=np.float64),
        group=group,
        per_group=per_group,
        per_service=per_service,
    )


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


class Ranking(Generic[F]):
    """One list of findings ranked: the verdict, every finding in rank order, the groups, why the verdict leads.

    Each answer is worked out once, when first asked for. The findings are
    not copied: they must not change while the ranking is in use (a report's
    cannot: ``Report.findings`` is a tuple or the read-only findings on disk).
    """

    def __init__(self, findings: Sequence[F]) -> None:
        self.findings = findings

    @cached_property
    def _table(self) -> _Table:
        return _build_table(self.findings)

    @cached_property
    def _order(self) -> Ints:
        if not self.findings:
            return np.zeros(0, dtype=np.int64)
        table = self._table
        # lexsort: the last key is the primary one; it is stable, so equal keys keep the list's order.
        return np.lexsort((table.ts, -table.confidence, -table.weight, -table.klass)).astype(np.int64)

    @property
    def order(self) -> list[int]:
        """Indices of the findings, most significant first: by class, confidence x rarity, confidence, time."""
        return self._order.tolist()  # type: ignore[no-any-return]

    @property
    def top(self) -> int | None:
        """Index of the verdict among the findings, None when there are none."""
        return int(self._order[0]) if self.findings else None

    @property
    def verdict(self) -> F | None:
        """The most significant finding, None when there are none."""
        top = self.top
        return None if top is None else self.findings[top]

    @property
    def rarity(self) -> list[float]:
        """``1 + log10(n_service / n_cause_in_service)`` of every finding: 1 for the usual, more for the rare."""
        return self._table.rarity.tolist() if self.findings else []

    @cached_property
    def groups(self) -> list[Group]:
        """The findings grouped by (cause, proto, server), the groups ordered by their most significant member.

        Groups whose best members weigh the same (the many services with only
        ordinary resets) are ordered by size, largest first, then by the rank
        of their best member.
        """
        if not self.findings:
            return []
        findings, table, order = self.findings, self._table, self._order
        # Members of each group in rank order: a stable sort of the ranked list by group code.
        by_group = order[np.argsort(table.group[order], kind="stable")]
        counts = np.bincount(table.group)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        best = by_group[starts]  # each group's most significant member
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        weight = table.weight
        group_order = np.lexsort(
            (position[best], -counts, -table.confidence[best], -weight[best], -table.klass[best])
        )
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

    def why_first(self, index: int) -> str | None:
        """One sentence on why finding ``index`` ranks where it does, for the verdict; None for a lone finding."""
        findings = self.findings
        if len(findings) < 2:
            return None
        finding, table = findings[index], self._table
        klass = _CLASS_REASON.get(finding.severity, "no problem")
        return (
            f"most significant of {len(findings)} findings: {klass}; {finding.cause} on {table.per_group[index]} of "
            f"the {table.per_service[index]} findings of {finding.proto} {finding.server}"
        )
