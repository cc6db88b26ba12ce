"""The cause registry: one module a cause, agreeing with the Cause vocabulary, the docs and the report.

The registry is the only place that says anything about a particular cause:
these tests fail when a table of causes appears anywhere else in the package,
when a finding does not carry its cause's entry, and when the package makes a
finding other than from that entry (``Finding.of``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pkgutil
import subprocess
import sys

import pytest
from conftest import PROJECT

import diag.diagnose.causes as causes_package
from diag.analysis import analyze
from diag.diagnose.causes import REGISTRY, spec_of
from diag.report import CAUSES, Cause, Finding, Severity

PACKAGE = PROJECT / "diag"
REGISTRY_DIR = PACKAGE / "diagnose" / "causes"
CLASS_NAMES = {Severity.INCIDENT: "incident", Severity.REVIEW: "review", Severity.ORDINARY: "ordinary",
               Severity.NONE: "none"}  # fmt: skip


def test_every_cause_has_exactly_its_own_module() -> None:
    modules = {m.name for m in pkgutil.iter_modules(causes_package.__path__)} - {"spec"}
    assert modules == {cause.replace("-", "_") for cause in CAUSES}
    assert set(REGISTRY) == set(Cause)
    assert all(spec.cause is cause for cause, spec in REGISTRY.items())


def test_every_cause_declares_its_class_and_only_causes_that_are_findings_rank() -> None:
    assert all(isinstance(spec.severity, Severity) for spec in REGISTRY.values())
    # healthy is never a finding, so it alone is classed below every finding; a forged RST is an incident.
    assert [cause for cause, spec in REGISTRY.items() if spec.severity is Severity.NONE] == [Cause.HEALTHY]
    assert all(spec.severity is Severity.INCIDENT for spec in REGISTRY.values() if spec.forged)


def _cause_tables(source: str, name: str) -> list[str]:
    """Where a module outside the registry keeps something about particular causes: a collection literal
    (set, list, tuple, dict keys) of ``Cause`` members, or of two cause names or more as strings (one such
    string is as often something else: a target's health, a scenario step)."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Set | ast.List | ast.Tuple | ast.Dict):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            members = [
                f"Cause.{item.attr}"
                for item in items
                if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "Cause"
            ]
            names = [item.value for item in items if isinstance(item, ast.Constant) and item.value in CAUSES]
            if members or len(names) > 1:
                found.append((node.lineno, f"{name}:{node.lineno}: {', '.join(members + names)}"))
    return [text for _, text in sorted(found)]


def test_no_table_of_causes_outside_the_registry() -> None:
    """What a cause is (its class, whether it forges, what the watch waits for) is said in its module only.

    Naming one member where a finding of it is made or drawn is fine; a set,
    list or mapping of causes elsewhere is a second registry that a new cause
    would have to be added to as well.
    """
    modules = [path for path in PACKAGE.rglob("*.py") if REGISTRY_DIR not in path.parents]
    found = [t for path in modules for t in _cause_tables(path.read_text(), str(path.relative_to(PROJECT)))]
    assert not found, "tables of causes outside diag/diagnose/causes/:\n" + "\n".join(found)


def test_the_table_check_finds_the_tables_that_were_once_outside_the_registry() -> None:
    source = (
        "FORGED = frozenset({Cause.ASYMMETRIC_RETURN, Cause.POLICY_REJECT})\n"
        "SEVERITY = {Cause.PEER_RESET: 1, **dict.fromkeys(FORGED, 3)}\n"
        "quiet = cause in ('port-closed', 'peer-reset')\n"
        "drawn = finding.cause is Cause.SILENT_DROP\n"  # one member where a finding is drawn: not a table
    )
    assert [line.split(":")[1] for line in _cause_tables(source, "sample")] == ["1", "2", "3"]


def _findings_made_by_hand(source: str, name: str) -> list[str]:
    """Where a module makes a finding other than with ``Finding.of``: a call of ``Finding`` itself, or a
    ``replace`` giving a finding another cause, class or forged flag than the entry it was made from."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        reclassed = {keyword.arg for keyword in node.keywords} & {"cause", "severity", "forged"}
        if called == "Finding" or (called == "replace" and reclassed):
            found.append((node.lineno, f"{name}:{node.lineno}: {ast.unparse(func)}(...)"))
    return [text for _, text in sorted(found)]


def test_every_finding_is_made_from_its_causes_entry() -> None:
    """The class and the forged flag a finding carries are its cause's, because ``Finding.of`` is the only way
    the package makes one: a finding written out field by field could leave them out or copy the wrong ones."""
    found = [
        text for path in sorted(PACKAGE.rglob("*.py"))
        for text in _findings_made_by_hand(path.read_text(), str(path.relative_to(PROJECT)))
    ]  # fmt: skip
    assert not found, "findings made without Finding.of:\n" + "\n".join(found)


def test_the_hand_made_finding_check_finds_them() -> None:
    source = (
        "a = Finding(cause=spec.cause, confidence=0.4, severity=spec.severity, forged=spec.forged)\n"
        "b = model.Finding(Cause.UNKNOWN, 0.3)\n"
        "c = dataclasses.replace(finding, cause=Cause.PEER_RESET)\n"
        "d = replace(finding, evidence=())\n"  # the same cause with more evidence: not a new finding
        "e = Finding.of(spec_of(Cause.UNKNOWN), confidence=0.4)\n"
        "f = [Finding for _ in ()]\n"  # the type named, not called
    )
    assert [line.split(":")[1] for line in _findings_made_by_hand(source, "sample")] == ["1", "2", "3"]


def test_finding_of_takes_the_cause_class_and_flag_from_the_entry_and_every_other_field() -> None:
    from_entry = {"cause", "severity", "forged"}
    others = {field.name for field in dataclasses.fields(Finding)} - from_entry
    assert set(inspect.signature(Finding.of).parameters) == {"entry"} | others  # a new field reaches it too
    for cause, spec in REGISTRY.items():
        finding = Finding.of(spec, confidence=0.5, proto="tcp", client="203.0.113.1:40000", server="198.51.100.1:80",
                             packet=None, claimed_src=None, origin=None, summary="s", evidence=("one",))  # fmt: skip
        assert (finding.cause, finding.severity, finding.forged) == (cause, spec.severity, spec.forged)
        assert finding.evidence == ("one",) and finding.facts[0].kind == "note"


def test_the_report_layer_does_not_import_the_diagnosis() -> None:
    """The report sits below the diagnosis: it gets what the registry says as data on the findings."""
    modules = sorted(f"diag.report.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE / "report")]))
    probe = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True)
    # The report's layer and those below it in docs/architecture.md.
    layers = ("report", "correlate", "flows", "reduction", "capture", "lab", "fleet", "errors", "compiled",
              "datafiles", "memory", "gcpause", "unionfind")  # fmt: skip
    diag = [name.split(".") for name in ast.literal_eval(loaded.stdout) if name.startswith("diag.")]
    above = [".".join(name) for name in diag if name[1] not in layers]
    assert not above, above
    for path in (PACKAGE / "report").glob("*.py"):  # imports inside functions or for the type checker too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("diag.diagnose"), f"{path.name} imports {node.module}"


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
    assert all(line.count("|") == 5 and line.split("|")[4].strip() for line in rows), "every row says its signature"
    for line in rows:  # the class and the forged flag as the registry declares them
        cells = [cell.strip() for cell in line.split("|")[1:4]]
        spec = spec_of(Cause(cells[0].strip("`")))
        assert cells[1:] == [CLASS_NAMES[spec.severity], "yes" if spec.forged else ""], line


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
    spec = spec_of(Cause.ASYMMETRIC_RETURN)
    assert finding.fixes == spec.fixes
    assert (finding.severity, finding.forged) == (spec.severity, spec.forged) == (Severity.INCIDENT, True)
    assert all(isinstance(r.cause, Cause) for r in finding.ruled_out)


def test_every_finding_carries_its_causes_class_and_forged_flag() -> None:
    """What the report ranks and the plots draw by comes from the registry, finding by finding."""
    captures = sorted((PROJECT / "captures").glob("*.pcapng"))
    findings = [f for path in captures for f in analyze([f"{path.stem}={path}"]).findings]
    findings += analyze([f"{path.stem}={path}" for path in captures]).findings
    assert len({f.cause for f in findings}) >= 2, "the shipped captures give findings of more than one cause"
    for finding in findings:
        spec = spec_of(finding.cause)
        assert (finding.severity, finding.forged) == (spec.severity, spec.forged), finding.cause
