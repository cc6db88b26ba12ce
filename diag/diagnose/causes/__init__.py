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

import importlib
import pkgutil
from collections.abc import Callable, Sequence

from diag.diagnose.causes.spec import CauseSpec, Decision, Rule
from diag.report import Cause, RuledOut
from diag.report.facts import Fact


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
# What each cause's exclusion says when none of the kinds it reads is among the facts.
_SILENT: dict[Cause, str | None] = {
    cause: spec.excluded_by(()) if spec.excluded_by is not None else None for cause, spec in REGISTRY.items()
}


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
    for other, spec in REGISTRY.items():
        if other in (cause, Cause.HEALTHY) or spec.excluded_by is None:
            continue
        # An exclusion reads only the kinds it declares (the tests hold it to that), so it is given only those:
        # its scans then pass a fact or two, not all of them, and without any it says what it says of no facts,
        # worked out once. The ruled-out lines are asked of every finding, thousands on a busy capture.
        declared = [fact for fact in facts if fact.kind in spec.excluded_kinds]
        why = spec.excluded_by(declared) if declared else _SILENT[other]
        if why is not None:
            lines.append(RuledOut(other, why))
    return tuple(lines)


__all__ = ["REGISTRY", "CauseSpec", "Decision", "decide", "ruled_out", "spec_of"]
