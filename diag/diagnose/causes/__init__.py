"""The cause registry: one module a cause, each declaring its ``SPEC`` (a ``CauseSpec``).

Adding a cause is one module here (named after the cause, ``-`` as ``_``),
a member of ``diag.report.Cause``, one test and one row of the cause table in
docs/analyze.md. The modules are found by listing this package, so nothing
else has to name them.
"""

from __future__ import annotations

import importlib
import pkgutil

from diag.diagnose.causes.spec import CauseSpec
from diag.report import Cause


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


def spec_of(cause: Cause) -> CauseSpec:
    """The registry's entry for ``cause`` (every member of ``Cause`` has one; the tests check it)."""
    return REGISTRY[cause]


__all__ = ["REGISTRY", "CauseSpec", "spec_of"]
