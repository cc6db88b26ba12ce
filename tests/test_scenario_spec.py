"""Scenarios as data: every shipped file is valid and consistent with its topology; mistakes are named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT

from diag.errors import DiagError
from diag.lab import load_topology, topology_names
from diag.report import CAUSES
from diag.scenario.client import parse_script
from diag.scenario.outdir import prepare_out_dir
from diag.scenario.runner import RUN_FILE, TOOL_MARK, with_fix
from diag.scenario.spec import PACKET_KINDS, available_scenarios, load_scenario

SCENARIOS = available_scenarios()
CAUSE_SCENARIOS = ("port-closed", "peer-reset", "idle-timeout", "injected-reset", "tuple-reuse",
                   "policy-reject", "silent-drop", "udp-asymmetric")


def test_the_promised_scenarios_are_shipped() -> None:
    fixes = [f"fix-{name.removeprefix('fix-')}" for name in topology_names() if name.startswith("fix-")]
    for name in ("incident", "tcp-udp", *CAUSE_SCENARIOS, *fixes):
        assert name in SCENARIOS


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_is_consistent_with_its_topology(name: str) -> None:
    scenario = load_scenario(name)
    topology = load_topology(scenario.topology)
    nodes = set(topology.node_names)
    assert scenario.description and scenario.expect_cause in CAUSES
    for node in [s.node for s in scenario.steps] + [s.node for s in scenario.setup] + list(scenario.conntrack):
        assert node in nodes, node
    points = nodes | {c.point for c in scenario.captures or ()}
    for expected in scenario.expect_packets:
        assert expected.at in points and expected.kind in PACKET_KINDS
        assert not expected.src or expected.src in nodes
    assert scenario.expect_packets, "a scenario without expectations proves nothing"
    for step in scenario.steps:
        host = step.target.partition(":")[0]
        assert host == "service" or host in nodes or host.replace(".", "").isdigit(), step.target


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    return path


VALID = """
description = "d"
topology = "incident"
[[step]]
kind = "tcp"
"""


@pytest.mark.parametrize(("text", "where"), [
    (VALID + 'colour = "red"\n', "step[0].colour: unknown key"),
    (VALID.replace('kind = "tcp"', 'kind = "teleport"'), "step[0].kind: must be one of"),
    (VALID + "timeout = 0\n", "step[0].timeout: must be positive"),
    (VALID + 'script = "send:x,dance"\n', "step[0].script: unknown action 'dance'"),
    (VALID.replace('topology = "incident"\n', ""), "topology: missing"),
    ('description = "d"\ntopology = "incident"\n', "step: missing"),
    (VALID + '[expect]\ncause = "gremlins"\n', "expect.cause: 'gremlins' is not a known cause"),
    (VALID + '[[expect.packets]]\nat = "client"\nkind = "syn"\ncount = "lots"\n', "expect.packets[0].count"),
    (VALID + '[[expect.packets]]\nat = "client"\nkind = "synack"\ncount = 1\n', "expect.packets[0].kind"),
    (VALID + '[[setup]]\nnode = "nlb"\nsysctls = { "kernel.panic" = 1 }\n', "setup[0].sysctls"),
    (VALID + '[pods]\nbehaviour = "sleepy"\n', "pods.behaviour"),
    (VALID + "[[step]]\nkind = \"replay\"\n", "step[1].capture: missing"),
    ("description = \n", "not valid TOML"),
])
def test_mistakes_name_file_key_and_problem(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DiagError) as error:
        load_scenario(str(path))
    assert str(path) in str(error.value) and where in str(error.value)


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(DiagError, match=r"known: .*incident"):
        load_scenario("no-such-scenario")


def test_script_parsing() -> None:
    assert parse_script("send:hi,recv,sleep:0.5") == [("send", "hi"), ("recv", ""), ("sleep", "0.5")]
    with pytest.raises(ValueError):
        parse_script("sleep:soon")


def test_fix_swaps_the_incident_for_its_fixed_scenario() -> None:
    fixed = with_fix(load_scenario("incident"), "snat")
    assert fixed.name == "fix-snat" and fixed.topology == "fix-snat" and fixed.expect_cause == "healthy"
    other = with_fix(load_scenario("silent-drop"), "local")
    assert other.topology == "fix-local" and other.expect_packets == () and other.setup
    with pytest.raises(DiagError, match=r"no fix 'teleport'; known fixes: .*snat"):
        with_fix(load_scenario("incident"), "teleport")


def test_out_dir_policy(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "b"
    prepare_out_dir(fresh, RUN_FILE, TOOL_MARK)
    assert fresh.is_dir()
    # A user's directory with their own files is refused and left untouched.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(DiagError, match="not empty and not a previous run-scenario output"):
        prepare_out_dir(theirs, RUN_FILE, TOOL_MARK)
    assert (theirs / "notes.txt").read_text() == "mine"
    # Capture-looking files without our run.json are not ours either.
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "client.pcapng").write_bytes(b"x")
    with pytest.raises(DiagError):
        prepare_out_dir(lookalike, RUN_FILE, TOOL_MARK)
    assert (lookalike / "client.pcapng").exists()
    # Our marker next to a user's subdirectory: still refused, nothing removed.
    (lookalike / RUN_FILE).write_text(json.dumps({"tool": TOOL_MARK}))
    (lookalike / "data").mkdir()
    with pytest.raises(DiagError, match="data"):
        prepare_out_dir(lookalike, RUN_FILE, TOOL_MARK)
    assert (lookalike / "data").is_dir() and (lookalike / "client.pcapng").exists()
    # A previous run's output is replaced.
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / RUN_FILE).write_text(json.dumps({"tool": TOOL_MARK}))
    (previous / "pod-b.pcapng").write_bytes(b"old")
    (previous / ".raw").mkdir()  # what a killed run leaves
    (previous / ".raw" / "pod-b.eth0.pcap").write_bytes(b"")
    prepare_out_dir(previous, RUN_FILE, TOOL_MARK)
    assert list(previous.iterdir()) == []
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(DiagError, match="not a directory"):
        prepare_out_dir(a_file, RUN_FILE, TOOL_MARK)


def _diag(*argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "diag.cli", *argv]
    if user is not None:
        command = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=120)


def test_list_describes_every_scenario_and_fix() -> None:
    result = _diag("run-scenario", "--list")
    assert result.returncode == 0, result.stderr
    for name in SCENARIOS:
        assert any(line.split()[0] == name for line in result.stdout.splitlines() if line.startswith("  "))
    fixes = [name.removeprefix("fix-") for name in topology_names() if name.startswith("fix-")]
    lines = result.stdout.split("fixes")[1].splitlines()
    assert sorted(line.split()[0] for line in lines if line.startswith("  ")) == sorted(fixes)


@pytest.mark.parametrize("argv", [
    ["run-scenario", "no-such-scenario"],
    ["run-scenario", "--fix", "teleport"],
    ["run-scenario", "--snaplen", "0"],
    ["replay", "missing.pcap"],
])
def test_bad_usage_is_one_line_and_status_2(argv: list[str]) -> None:
    result = _diag(*argv)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("diag: ")


def test_not_root_is_one_line_and_status_2(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to drop it) and setpriv")
    result = _diag("run-scenario", "--out", str(tmp_path / "out"), user="65534")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "diag: run-scenario builds network namespaces and needs root " \
                                    "(try: sudo diag run-scenario)"
    assert not (tmp_path / "out").exists()


def test_default_out_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    from diag.scenario.runner import default_out_dir

    scenario = load_scenario("incident")
    first = default_out_dir(scenario, tmp_path)
    first.mkdir()
    second = default_out_dir(scenario, tmp_path)
    assert second != first and not second.exists() and second.name.startswith("incident-")


def _reference_addresses() -> dict[str, str]:
    topology = load_topology("incident")
    return {node: str(topology.address(node)) for node in topology.node_names}


@pytest.mark.parametrize("checker", ["reader", "tshark"])
def test_reference_captures_show_what_the_incident_promises(checker: str) -> None:
    """The committed captures satisfy the incident's expectations (and not the fix's)."""
    from diag import read_capture
    from diag.scenario import expect

    if checker == "tshark" and shutil.which("tshark") is None:
        pytest.skip("needs tshark")
    captures = PROJECT / "captures"
    incident = load_scenario("incident")
    points = {e.at for e in incident.expect_packets}
    if checker == "reader":
        tables = {point: read_capture(captures / f"{point}.pcapng") for point in points}

        def seen(at: str, kind: str, src: str) -> expect.Seen:
            return expect.seen_in_table(tables[at], kind, src)
    else:
        def seen(at: str, kind: str, src: str) -> expect.Seen:
            return expect.seen_by_tshark(captures / f"{at}.pcapng", kind, src)

    assert expect.check(incident.expect_packets, seen, _reference_addresses()) == []
    fixed = [e for e in load_scenario("fix-snat").expect_packets if e.at in points]
    assert expect.check(tuple(fixed), seen, _reference_addresses())
