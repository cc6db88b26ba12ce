"""The cause registry: one module a cause, agreeing with the Cause vocabulary, the docs and the report."""

from __future__ import annotations

import pkgutil

import pytest
from conftest import PROJECT

import diag.diagnose.causes as causes_package
from diag.analysis import analyze
from diag.diagnose.causes import REGISTRY, spec_of
from diag.report import CAUSES, FORGED_RESET_CAUSES, Cause


def test_every_cause_has_exactly_its_own_module() -> None:
    modules = {m.name for m in pkgutil.iter_modules(causes_package.__path__)} - {"spec"}
    assert modules == {cause.replace("-", "_") for cause in CAUSES}
    assert set(REGISTRY) == set(Cause)
    assert all(spec.cause is cause for cause, spec in REGISTRY.items())


def test_forged_flags_agree_with_the_report_layer() -> None:
    # The report and the plots read FORGED_RESET_CAUSES (they sit below the diagnosis); the registry must agree.
    assert {cause for cause, spec in REGISTRY.items() if spec.forged} == FORGED_RESET_CAUSES


def test_fixes_name_their_price() -> None:
    for cause, spec in REGISTRY.items():
        if cause in (Cause.HEALTHY, Cause.UNKNOWN):
            assert spec.fixes == ()
            continue
        assert spec.fixes, f"{cause} has no fix"
        # Every cause states at least one trade-off (some fixes are free and say so).
        assert any("trade-off" in fix for fix in spec.fixes), f"{cause}: no fix states its trade-off"


def test_the_docs_cause_table_is_the_registry() -> None:
    """docs/analyze.md's cause table has one row a registered cause, no more, no fewer, in the vocabulary's order."""
    doc = (PROJECT / "docs" / "analyze.md").read_text()
    table = doc.split("## Causes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = [line.split("`")[1] for line in rows]
    assert documented == [str(cause) for cause in Cause]
    assert set(documented) == {str(cause) for cause in REGISTRY}
    assert all(line.count("|") == 3 and line.split("|")[2].strip() for line in rows), "every row says its signature"


def test_cause_is_a_str_enum_carrying_the_json_strings() -> None:
    assert tuple(c.value for c in Cause) == CAUSES
    assert spec_of(Cause("port-closed")).cause == "port-closed" and str(Cause.PORT_CLOSED) == "port-closed"


def test_the_diagnosis_hands_out_members_and_the_registry_fixes() -> None:
    captures = PROJECT / "captures"
    points = [f"{p}={captures / (p + '.pcapng')}" for p in ("client", "natgw")]
    if not all((captures / f"{p}.pcapng").exists() for p in ("client", "natgw")):
        pytest.skip("reference captures missing")
    (finding,) = analyze(points).findings
    assert isinstance(finding.cause, Cause) and finding.cause is Cause.ASYMMETRIC_RETURN
    assert finding.fixes == spec_of(Cause.ASYMMETRIC_RETURN).fixes
    assert all(isinstance(r.cause, Cause) for r in finding.ruled_out)
