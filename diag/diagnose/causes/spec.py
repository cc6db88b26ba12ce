"""What the registry holds for one cause."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from diag.report import Cause
from diag.report.facts import Fact


@dataclass(frozen=True)
class CauseSpec:
    """One cause: whether its RST is forged, what fixes it (each with its price), and what rules it out.

    ``excluded_by`` reads the facts a finding of *another* cause stands on and
    says why they exclude this one, or None when they do not; the diagnosis
    puts that reason in the finding's ``ruled_out``. Causes without one are
    ruled out by the rule that chose the verdict, in its own words.
    """

    cause: Cause
    forged: bool  # the RST is made by a box in someone else's name
    fixes: tuple[str, ...] = ()
    excluded_by: Callable[[Sequence[Fact]], str | None] | None = None
