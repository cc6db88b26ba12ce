"""Run a scenario end to end: lab up, capture, traffic, capture stopped, lab down, analyze, write.

The output directory receives one ``<point>.pcapng`` per capture point,
``<node>.conntrack.log`` for the NAT boxes asked for, ``run.json`` (what was
run: lab addresses, step outcomes, capture statistics), ``kernel.jsonl`` (the
kernel's reset and drop tracepoints during the run, as root), and, once
analyzed, ``report.json`` (with ``ground_truth``: the kernel's account of each
RST against the diagnosis), ``report.txt`` and ``ladder.png`` when plotting
is available.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from diag.errors import DiagError, LabError
from diag.scenario.capture import DEFAULT_SNAPLEN, CapturePoint, CaptureSet, PointCapture
from diag.scenario.outdir import prepare_out_dir
from diag.scenario.spec import PodOverride, Scenario, Setup, load_scenario, scenario_path
from diag.scenario.steps import BackgroundStep, StepResult, run_step, start_background

if TYPE_CHECKING:
    from diag.lab import Lab
    from diag.lab.topology import Topology
    from diag.report import Report
    from diag.watch.kernel import KernelEvent
    from diag.watch.tracefs import KernelTrace

Progress = Callable[[str], None]
RUN_FILE = "run.json"
TOOL_MARK = "diag run-scenario"


@dataclass
class RunResult:
    """Everything one run produced."""

    scenario: Scenario
    out_dir: Path
    lab_name: str
    service: tuple[str, int]
    addresses: dict[str, str]
    captures: list[PointCapture]
    steps: list[StepResult]
    timings: dict[str, float] = field(default_factory=dict)
    report: Report | None = None
    warnings: list[str] = field(default_factory=list)
    analysis_error: str = ""
    kernel: KernelRecord | None = None  # the kernel's account of the run, when tracing was possible

    @property
    def capture_paths(self) -> dict[str, Path]:
        return {capture.point: capture.path for capture in self.captures}

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": TOOL_MARK,
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "topology": self.scenario.topology,
            "fix": self.scenario.fix,
            "lab": self.lab_name,
            "service": f"{self.service[0]}:{self.service[1]}",
            "addresses": self.addresses,
            "steps": [step.to_json() for step in self.steps],
            "captures": [
                {"point": c.point, "file": c.path.name, "packets": c.packets,
                 "dropped_by_kernel": c.dropped_by_kernel,
                 "interfaces": [vars(i) for i in c.interfaces]}
                for c in self.captures
            ],
            "timings_s": {stage: round(seconds, 3) for stage, seconds in self.timings.items()},
            "warnings": self.warnings,
            "analysis_error": self.analysis_error,
        }


def with_fix(scenario: Scenario, fix: str) -> Scenario:
    """The scenario on a fixed topology: ``fix-<FIX>``.

    The incident has one shipped scenario per fix (with its own expectations);
    any other scenario keeps its traffic on the fixed topology, without
    expectations, since nobody wrote down what the fix should change there.
    """
    from diag.lab.topology import topology_names

    fixes = available_fixes(topology_names())
    if fix not in fixes:
        raise DiagError(f"no fix {fix!r}; known fixes: {', '.join(fixes) or 'none'}")
    if scenario.name == "incident" and scenario_path(f"fix-{fix}").is_file():
        return load_scenario(f"fix-{fix}")
    return replace(scenario, topology=f"fix-{fix}", fix=fix, expect_cause="", expect_packets=())


def available_fixes(topologies: list[str]) -> list[str]:
    return [name.removeprefix("fix-") for name in topologies if name.startswith("fix-")]


def with_pod_behaviour(topology: Topology, override: PodOverride, origin: Path) -> Topology:
    """The topology with the scenario's pod server behaviour on the chosen pods (all pods by default)."""
    from diag.lab.topology import PodConfig

    pods = {node.name for node in topology.nodes if isinstance(node.config, PodConfig)}
    unknown = sorted(set(override.nodes) - pods)
    if unknown:
        raise DiagError(f"{origin}: pods.nodes: {', '.join(unknown)} not pods of topology {topology.name} "
                        f"(pods: {', '.join(sorted(pods))})")
    chosen = set(override.nodes) or pods
    nodes = []
    for node in topology.nodes:
        if node.name in chosen and isinstance(node.config, PodConfig):
            delay = node.config.delay if override.delay is None else override.delay
            node = replace(node, config=replace(node.config, behaviour=override.behaviour, delay=delay))
        nodes.append(node)
    return replace(topology, nodes=tuple(nodes))


def default_out_dir(scenario: Scenario, parent: Path = Path("diag-out")) -> Path:
    """A directory that does not exist yet: ``diag-out/<scenario>-<UTC time>[-N]``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    candidate = parent / f"{scenario.name}-{stamp}"
    number = 1
    while candidate.exists():
        number += 1
        candidate = parent / f"{scenario.name}-{stamp}-{number}"
    return candidate


class _Stages:
    """Times each stage and reports it as one progress line."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.started = progress, time.monotonic()
        self.timings: dict[str, float] = {}
        self._last = self.started

    def done(self, stage: str, note: str = "") -> None:
        now = time.monotonic()
        self.timings[stage] = now - self._last
        self._last = now
        self.progress(f"[{now - self.started:6.2f}s] {stage}" + (f": {note}" if note else ""))


def _apply_setup(lab: Lab, setup: Setup, work_dir: Path) -> None:
    for key, value in setup.sysctls.items():
        lab.run(setup.node, ["sysctl", "-qw", f"{key}={value}"])
    if setup.iptables:
        rules = work_dir / f"{setup.node}.rules"
        rules.write_text(setup.iptables.strip() + "\n")
        result = lab.run(setup.node, ["iptables-restore", "--noflush", str(rules)], check=False)
        if result.returncode != 0:
            raise LabError(f"setup in {setup.node}: iptables-restore refused the rules: {result.stderr.strip()}")
    for argv in setup.run:
        lab.run(setup.node, list(argv))


def _capture_points(scenario: Scenario, lab: Lab, topology: Topology) -> list[CapturePoint]:
    if scenario.captures is None:
        return [CapturePoint(node.name, lab.netns(node.name), tuple(lab.interfaces(node.name)))
                for node in topology.nodes]
    points = []
    for spec in scenario.captures:
        known = lab.interfaces(spec.node)
        interfaces = spec.interfaces or tuple(known)
        unknown = [name for name in interfaces if name not in known]
        if unknown:
            raise DiagError(f"{scenario.path}: capture point {spec.point}: {spec.node} has no interface "
                            f"{', '.join(unknown)} (it has {', '.join(known)})")
        points.append(CapturePoint(spec.point, lab.netns(spec.node), tuple(interfaces)))
    return points


def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    snaplen: int = DEFAULT_SNAPLEN,
    keep_lab: bool = False,
    progress: Progress = lambda line: None,
    analyze: bool = True,
    watch: bool = False,
) -> RunResult:
    """Build the scenario's lab, capture everywhere while driving its traffic, then analyze the captures."""
    from diag.lab import Lab, load_topology

    stages = _Stages(progress)
    topology = load_topology(scenario.topology)
    if scenario.pods is not None:
        topology = with_pod_behaviour(topology, scenario.pods, scenario.path)
    node_names = {node.name for node in topology.nodes}
    _check_nodes(scenario, node_names)
    _check_capture_interfaces(scenario, topology)  # everything is checked before anything is made
    prepare_out_dir(out_dir, RUN_FILE, TOOL_MARK)
    # Mark the directory as ours at once, so an interrupted run's leftovers can be replaced next time.
    (out_dir / RUN_FILE).write_text(json.dumps({"tool": TOOL_MARK, "scenario": scenario.name,
                                                "state": "running"}) + "\n")
    lab = Lab(topology)
    with contextlib.ExitStack() as teardown:
        if keep_lab:
            lab.up(detach=True)  # the pod servers outlive this process
            teardown.callback(progress, f"lab {lab.name} left up (remove it with: diag lab down {lab.name})")
        else:
            teardown.enter_context(lab)  # torn down on leaving, on errors, SIGINT and SIGTERM
        stages.done("lab up", f"{topology.name} as {lab.name}, {len(node_names)} namespaces")
        with tempfile.TemporaryDirectory(prefix="diag-setup-") as work:
            for setup in scenario.setup:
                _apply_setup(lab, setup, Path(work))
        if scenario.setup:
            stages.done("setup", ", ".join(sorted({s.node for s in scenario.setup})))
        points = _capture_points(scenario, lab, topology)
        conntrack = [CapturePoint(node, lab.netns(node), ()) for node in scenario.conntrack]
        service = topology.service
        addresses = {node: lab.address(node) for node in sorted(node_names)}
        kernel_log = teardown.enter_context((out_dir / "kernel.jsonl").open("w"))
        kernel, kernel_note = _start_kernel_trace({node: lab.netns(node) for node in sorted(node_names)}, kernel_log)
        if kernel is not None:
            # Ended before its log is closed (the stack unwinds in reverse) when the run stops early, e.g. on
            # Ctrl-C: its reader would otherwise write events to a closed file. Ending it twice is harmless.
            teardown.callback(kernel.close)
        with CaptureSet(points, out_dir, snaplen=snaplen, conntrack=conntrack) as capture_set:
            interfaces = sum(len(p.interfaces) for p in points)
            stages.done("captures listening", f"{len(points)} points, {interfaces} interfaces")
            watcher = _start_watch(points, out_dir) if watch else None
            if watcher is not None:
                teardown.callback(_end_process, watcher)  # on an error in the traffic: no watch left running
            steps = _drive_traffic(scenario, lab, service)
            stages.done("traffic", "; ".join(f"{s.label} {s.outcome}" for s in steps))
            watch_note = _stop_watch(watcher) if watcher is not None else ""
            captures = capture_set.stop()
        record = _stop_kernel_trace(kernel)  # REJECT counters read while the namespaces still exist
        packets = sum(c.packets for c in captures)
        drops = sum(max(c.dropped_by_kernel, 0) for c in captures)
        stages.done("captures stopped", f"{packets} packets, {drops} dropped by kernel")
    if not keep_lab:
        stages.done("lab down")
    result = RunResult(scenario, out_dir, lab.name, service, addresses, captures, steps, kernel=record)
    result.warnings += [note for note in (kernel_note, watch_note) if note]
    result.warnings += [f"{c.point}: {c.dropped_by_kernel} packets dropped by the kernel"
                        for c in captures if c.dropped_by_kernel > 0]
    # run.json first: whatever happens in the analysis, the captures are described.
    result.timings = stages.timings
    (out_dir / RUN_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if analyze:
        _analyze(result, stages)
        result.timings = stages.timings
        (out_dir / RUN_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


@dataclass(frozen=True)
class KernelRecord:
    """What the kernel's tracepoints said during the run, and the REJECT rule counters of every box."""

    events: list[KernelEvent]
    reject_counts: dict[str, int]


def _start_kernel_trace(boxes: dict[str, str], log: IO[str]) -> tuple[KernelTrace | None, str]:
    """The kernel account of every lab box (events to ``kernel.jsonl``), or None and a line saying why not."""
    from diag.watch.tracefs import KernelTrace

    try:
        return KernelTrace.start(boxes, log), ""
    except DiagError as error:
        return None, f"no kernel account (kernel.jsonl stays empty): {error}"


def _stop_kernel_trace(kernel: KernelTrace | None) -> KernelRecord | None:
    if kernel is None:
        return None
    counts = kernel.reject_counts()
    kernel.close()
    return KernelRecord(kernel.snapshot(), counts)


def _start_watch(points: list[CapturePoint], out_dir: Path) -> subprocess.Popen[str]:
    """``diag watch`` over every capture point (all its interfaces: ``-i any``), writing ``watch.jsonl``."""
    sources = [f"{point.name}=any@{point.netns}" for point in points]
    process = subprocess.Popen(
        [sys.executable, "-m", "diag.cli", "watch", "--json-lines", str(out_dir / "watch.jsonl"), *sources],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    process.stderr.readline()  # "watching N point(s)" once every tcpdump listens (or its one-line error)
    return process


def _end_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _stop_watch(process: subprocess.Popen[str]) -> str:
    """Stop the watch as Ctrl-C would (it analyzes what it read); a line to warn with if it failed."""
    process.send_signal(signal.SIGINT)
    try:
        _out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
    if process.returncode != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        return f"diag watch failed: {lines[-1] if lines else f'status {process.returncode}'}"
    return ""


def _check_nodes(scenario: Scenario, nodes: set[str]) -> None:
    used = [("setup", s.node) for s in scenario.setup] + [("step", s.node) for s in scenario.steps]
    used += [("capture", c.node) for c in scenario.captures or ()] + [("conntrack", n) for n in scenario.conntrack]
    for key, node in used:
        if node not in nodes:
            raise DiagError(f"{scenario.path}: {key}: no node {node!r} in topology {scenario.topology} "
                            f"(nodes: {', '.join(sorted(nodes))})")


def _check_capture_interfaces(scenario: Scenario, topology: Any) -> None:
    for spec in scenario.captures or ():
        known = topology.interfaces(spec.node)
        unknown = [name for name in spec.interfaces or () if name not in known]
        if unknown:
            raise DiagError(f"{scenario.path}: capture point {spec.point}: {spec.node} has no interface "
                            f"{', '.join(unknown)} (it has {', '.join(known)})")


def _drive_traffic(scenario: Scenario, lab: Lab, service: tuple[str, int]) -> list[StepResult]:
    scenario_dir = scenario.path.parent
    background: list[BackgroundStep] = []
    results = []
    try:
        for step in scenario.steps:
            if step.background:
                background.append(start_background(step, lab, service, scenario_dir))
        for step in scenario.steps:
            if not step.background:
                results.append(run_step(step, lab, service, scenario_dir))
    finally:
        results += [job.finish() for job in background]
    return results


def _analyze(result: RunResult, stages: _Stages) -> None:
    try:
        from diag.analysis import analyze
        from diag.report.text import render_text
    except ImportError as error:
        result.warnings.append(f"analysis not available in this version ({error.name}); captures kept")
        stages.done("analyze", "skipped")
        return
    try:
        report = analyze({name: str(path) for name, path in result.capture_paths.items()})
    except DiagError:
        raise
    except Exception as error:  # a bug in the analysis must not cost the user the captures just made
        result.analysis_error = f"{type(error).__name__}: {error}"
        stages.done("analyze", "failed")
        return
    result.report = report
    document = report.dumps()
    if result.kernel is not None:
        from diag.watch.kernel import ground_truth

        parsed = json.loads(document)
        truth = ground_truth(report.findings, report.packets, result.kernel.events, result.kernel.reject_counts)
        parsed["ground_truth"] = truth
        result.warnings += [f"the kernel's account disagrees with the diagnosis: {rst['cause']} at {rst['point']} "
                            f"#{rst['index']}, but the kernel says {rst['made_by']} ({rst['reason']})"
                            for rst in truth["rsts"] if not rst["agrees"]]
        document = json.dumps(parsed, indent=2)
    (result.out_dir / "report.json").write_text(document + "\n")
    (result.out_dir / "report.txt").write_text(render_text(report) + "\n")
    stages.done("analyze", report.verdict_json()["cause"])
    _plot(result, stages)


def _plot(result: RunResult, stages: _Stages) -> None:
    """ladder.png when the plotting module is there; a failed picture never fails the run."""
    try:
        from diag.plot import ladder_to_file
    except ImportError:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert result.report is not None
            ladder_to_file(result.report, result.out_dir / "ladder.png")
        stages.done("ladder.png")
    except Exception as error:  # plotting is a bonus: report and go on
        result.warnings.append(f"ladder.png not drawn: {type(error).__name__}: {error}")

