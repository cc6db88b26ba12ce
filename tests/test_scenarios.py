"""Every shipped scenario, run for real (as root): its captures show the packets its file promises.

Each scenario runs once per test session through the command line (``diag
run-scenario NAME --out DIR``, the ``run_of`` fixture of ``scenario_runs``).
The expected packets are checked twice, with diag's own reader and with
tshark display filters on the same files; the step outcomes are checked
against the scenario, and the verdict of the analysis against the scenario's
expected cause.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PROJECT, require_root
from scenario_runs import Run

from diag.scenario import expect
from diag.scenario.spec import available_scenarios, load_scenario

pytestmark = [pytest.mark.lab, pytest.mark.slow]
SCENARIOS = available_scenarios()


@pytest.mark.parametrize("name", SCENARIOS)
def test_expected_packets_by_reader(run_of: Callable[[str], Run], name: str) -> None:
    run = run_of(name)
    tables = run.tables()
    failures = expect.check(run.scenario.expect_packets,
                            lambda at, kind, src: expect.seen_in_table(tables[at], kind, src),
                            run.record["addresses"])
    assert failures == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_expected_packets_by_tshark(run_of: Callable[[str], Run], name: str) -> None:
    run = run_of(name)
    failures = expect.check(run.scenario.expect_packets,
                            lambda at, kind, src: expect.seen_by_tshark(run.out / f"{at}.pcapng", kind, src),
                            run.record["addresses"])
    assert failures == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_steps_end_as_the_scenario_says(run_of: Callable[[str], Run], name: str) -> None:
    run = run_of(name)
    outcomes = {step["step"]: step["outcome"] for step in run.record["steps"]}
    for step in run.scenario.steps:
        if "expect" in step.options:
            assert outcomes[step.label] == step.options["expect"], run.record["steps"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_node_captured_without_drops(run_of: Callable[[str], Run], name: str) -> None:
    run = run_of(name)
    record = run.record
    assert {c["point"] for c in record["captures"]} == set(record["addresses"])
    for capture in record["captures"]:
        assert capture["dropped_by_kernel"] == 0
        assert (run.out / capture["file"]).stat().st_size > 0
        assert all(i["captured"] >= 0 for i in capture["interfaces"])
    for node in run.scenario.conntrack:
        assert (run.out / f"{node}.conntrack.log").exists()


@pytest.mark.parametrize("name", SCENARIOS)
def test_verdict_is_the_expected_cause(run_of: Callable[[str], Run], name: str) -> None:
    run = run_of(name)
    report = json.loads((run.out / "report.json").read_text())
    assert report["schema"] == "diag.report/1"
    assert report["verdict"]["cause"] == run.scenario.expect_cause, report["verdict"]
    assert (run.out / "report.txt").read_text().strip()


def test_incident_per_attempt_at_the_pod(run_of: Callable[[str], Run]) -> None:
    """Each SYN the pod gets is answered by its SYN-ACK and then a RST claiming the client's address."""
    run = run_of("incident")
    pod = run.tables()["pod-b"]
    client = run.record["addresses"]["client"]
    tcp = pod[pod["proto"] == 6]
    kinds = ["syn" if expect.kind_mask(tcp, "syn")[i] else "syn-ack" if expect.kind_mask(tcp, "syn-ack")[i]
             else "rst" if expect.kind_mask(tcp, "rst")[i] else "other" for i in tcp.index]
    assert kinds == ["syn", "syn-ack", "rst"] * (len(kinds) // 3) and len(kinds) >= 6
    assert set(tcp[expect.kind_mask(tcp, "rst")]["src"].astype(str)) == {client}


def test_runs_leave_no_namespace_behind(run_of: Callable[[str], Run]) -> None:
    labs = {run_of(name).record["lab"] for name in ("incident", "tcp-udp")}
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in existing.splitlines() if any(f"-{lab}-" in line for lab in labs)]


def test_rerun_into_a_previous_output_replaces_it(run_of: Callable[[str], Run]) -> None:
    """A previous run's directory is kept unless --force; with it, the old captures of other points do not linger."""
    run = run_of("udp-asymmetric")
    stale = run.out / "stale-point.pcapng"
    stale.write_bytes((run.out / "client.pcapng").read_bytes())
    argv = [sys.executable, "-m", "diag.cli", "run-scenario", "udp-asymmetric", "--out", str(run.out), "--json", "-"]
    refused = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "--force" in refused.stderr and stale.exists()
    result = subprocess.run([*argv, "--force"], capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert json.loads(result.stdout)["schema"] == "diag.report/1"
    stages = [line for line in result.stderr.splitlines() if line.startswith("diag: [")]
    assert [s.split("] ")[1].split(":")[0] for s in stages][:5] == [
        "lab up", "captures listening", "traffic", "captures stopped", "lab down"]


def test_expectations_tell_scenarios_apart(run_of: Callable[[str], Run]) -> None:
    """The incident's expectations fail on the fixed topology's captures: they are not vacuous."""
    incident, fixed = load_scenario("incident"), run_of("fix-snat")
    tables = fixed.tables()
    failures = expect.check(incident.expect_packets,
                            lambda at, kind, src: expect.seen_in_table(tables[at], kind, src),
                            fixed.record["addresses"])
    assert any(f.startswith("client: ") and "syn-ack" in f for f in failures)
    assert any(f.startswith("pod-b: ") or f.startswith("natgw: ") for f in failures)


def test_keep_lab_leaves_it_up_for_diag_lab(tmp_path: Path) -> None:
    require_root()
    from diag.lab import lab_down, list_labs
    from diag.lab.plan import netns_name

    result = subprocess.run([sys.executable, "-m", "diag.cli", "run-scenario", "udp-asymmetric", "--keep-lab",
                             "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=PROJECT, timeout=120)
    name = json.loads((tmp_path / "out" / "run.json").read_text())["lab"]
    try:
        assert result.returncode == 0, result.stderr
        assert f"diag lab down {name}" in result.stderr
        assert name in {lab.name for lab in list_labs()}
        probe = subprocess.run(["ip", "netns", "exec", netns_name(name, "client"), "ip", "-br", "addr"],
                               capture_output=True, text=True)
        assert "203.0.113.10" in probe.stdout
    finally:
        lab_down(name)
    assert name not in {lab.name for lab in list_labs()}


def test_interrupt_stops_captures_and_tears_the_lab_down(tmp_path: Path) -> None:
    require_root()
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "diag.cli", "run-scenario", "incident", "--out", str(out)],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=PROJECT)
    assert process.stderr is not None
    lab = ""
    for line in process.stderr:
        found = re.search(r"lab up: \S+ as (\w+)", line)
        lab = found.group(1) if found else lab
        if "captures listening" in line:
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=30) == 130, rest
    assert lab and "diag: interrupted" in rest and "Traceback" not in rest
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"-{lab}-" not in namespaces
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert leftovers == ""
    # The directory is marked as ours: the next run may replace what the interrupted one left.
    assert json.loads((out / "run.json").read_text())["tool"] == "diag run-scenario"
    assert not (out / ".raw").exists()
