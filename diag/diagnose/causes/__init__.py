"""The cause registry: one module a cause, each declaring its ``SPEC`` (a ``CauseSpec``).

The registry is the one place that says anything about a particular cause:
its rules, its severity class in the verdict's ranking, whether its RST is
forged, its fixes, what rules it out. Every finding is made from its cause's
entry (``Finding.of(spec_of(cause), ...)``), which sets the severity and the
forged flag on it, so the report and the plots, which sit below the diagnosis
and cannot read the registry, get them as data.

Adding a cause is one module here (named after the cause, ``-`` as ``_``),
one test and one row of the cause table in docs/analyze.md, and one line
more: its name as a member of ``diag.report.Cause``. That enum stays in the
report layer because the type checker needs its members statically and the
findings the report holds are typed with it; it holds the names and nothing
else (tests/test_causes.py fails when a table of causes appears anywhere
outside this package). The modules are found by listing this package, so
nothing else has to name them. ``decide`` runs the rules, ``ruled_out``
computes a finding's ruled-out lines from its facts.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Sequence

from diag.diagnose.causes.spec import CauseSpec, Decision, Exclusion, Rule
from diag.report import Cause, RuledOut
from diag.report.facts import Fact


def _line(cause: Cause, why: str | None) -> RuledOut | None:
    return None if why is None else RuledOut(cause, why)


def _load() -> dict[Cause, CauseSpec]:
    registry: dict[Cause, CauseSpec] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "spec":
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SPEC", None)
        if not isinstance(spec, CauseSpec) or spec.cause.value.replace("-", "_") != module.name:
            raise ImportError(f"{__name__}.{module.name}: no SPEC for the cause this module is named after")
        registry[spec.cause] = spec
    return registry


REGISTRY: dict[Cause, CauseSpec] = _load()
# Every cause another one's findings can rule out (``healthy`` never is, a finding being never healthy), in the
# registry's order: its exclusion, the kinds that exclusion reads, and its line when none of them is among the facts
# (what it says of no facts, worked out once).
_EXCLUSIONS: tuple[tuple[Cause, Exclusion, frozenset[str], RuledOut | None], ...] = tuple(
    (cause, spec.excluded_by, spec.excluded_kinds, _line(cause, spec.excluded_by(())))
    for cause, spec in REGISTRY.items()
    if spec.excluded_by is not None and cause is not Cause.HEALTHY
)


def spec_of(cause: Cause) -> CauseSpec:
    """The registry's entry for ``cause`` (every member of ``Cause`` has one; the tests check it)."""
    return REGISTRY[cause]


def decide(facts: Sequence[Fact], rule_of: Callable[[CauseSpec], Rule | None]) -> tuple[Cause, Decision] | None:
    """The cause whose rule fits ``facts`` most confidently, among those the facts do not exclude; None if none fits.

    ``rule_of`` picks the protocol's rule from a spec (``lambda spec: spec.udp``).
    The rules are written so that one fits a given set of facts; the
    confidence (then the registry's order) only settles a tie for certain.
    """
    fitting: list[tuple[float, int, Cause, Decision]] = []
    for position, (cause, spec) in enumerate(REGISTRY.items()):
        rule = rule_of(spec)
        if rule is None or (spec.excluded_by is not None and spec.excluded_by(facts) is not None):
            continue
        decision = rule(facts)
        if decision is not None:
            fitting.append((-decision.confidence, position, cause, decision))
    if not fitting:
        return None
    _, _, cause, decision = min(fitting, key=lambda item: item[:2])
    return cause, decision


def ruled_out(cause: Cause, facts: Sequence[Fact]) -> tuple[RuledOut, ...]:
    """The causes a finding of ``cause`` rules out: every one its facts exclude, in the registry's order.

    Nothing else speaks: a cause no fact excludes is not listed. The finding's
    own cause and ``healthy`` (a finding is never healthy) are not listed.
    """
    lines = []
    for other, exclusion, at, silent in _plan(cause, tuple([fact.kind for fact in facts])):
        if not at:
            if silent is not None:
                lines.append(silent)
        elif (why := exclusion([facts[i] for i in at])) is not None:
            lines.append(_LINES.get((other, why)) or _line_made(other, why))
    return tuple(lines)


# The lines already made: the thousands of findings of a busy capture say a few sentences again and again.
_LINES: dict[tuple[Cause, str], RuledOut] = {}
_LINES_KEPT = 4096  # a bound on what a capture of ever new sentences (numbers in them) keeps


def _line_made(cause: Cause, why: str) -> RuledOut:
    if len(_LINES) >= _LINES_KEPT:
        _LINES.clear()
    line = _LINES[cause, why] = RuledOut(cause, why)
    return line


# The exclusions to ask of a finding: per cause, where its declared kinds sit among the finding's facts (none: its
# line of no facts, kept only when it says something).
_Plan = tuple[tuple[Cause, Exclusion, tuple[int, ...], RuledOut | None], ...]


@functools.lru_cache(maxsize=1024)
def _plan(cause: Cause, kinds: tuple[str, ...]) -> _Plan:
    """What ``ruled_out`` asks of the findings of ``cause`` whose facts are of ``kinds``, in that order.

    Made once per cause and shape of evidence (a busy capture's thousands of findings come in a handful of
    shapes): an exclusion reads only the kinds it declares (the tests hold it to that), so it is given only those
    facts, and one given none says what it says of no facts, worked out once.
    """
    plan = []
    for other, exclusion, declared, silent in _EXCLUSIONS:
        if other is cause:
            continue
        at = tuple(i for i, kind in enumerate(kinds) if kind in declared)
        if at or silent is not None:
            plan.append((other, exclusion, at, silent))
    return tuple(plan)


__all__ = ["REGISTRY", "CauseSpec", "Decision", "decide", "ruled_out", "spec_of"]
