"""Run a scenario's traffic steps inside the lab's namespaces.

Every step is a separate process in its node's namespace (the kernel client,
the scapy programs, the replayer), so it uses that namespace's interfaces,
routes and firewall, and every step is bounded by its ``timeout``. Background
steps (an injector on a router) start first, say ``ready``, and are collected
after the foreground steps.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from diag.errors import DiagError, LabError
from diag.scenario.spec import Step

SCENARIO_PACKAGE = Path(__file__).resolve().parent


class LabHandle(Protocol):
    """What the steps need from a running lab (``diag.lab.Lab`` provides it)."""

    def run(
        self, node: str, command: list[str], timeout: float = 5.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...

    def popen(self, node: str, command: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]: ...

    def address(self, node: str) -> str: ...


@dataclass(frozen=True)
class StepResult:
    """What one step did: its outcome word (``ok``, ``timeout``, ``reset``, ...) and details."""

    label: str
    kind: str
    node: str
    outcome: str
    seconds: float
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.label, "kind": self.kind, "node": self.node, "outcome": self.outcome,
                "seconds": round(self.seconds, 3), "detail": dict(self.detail)}


def resolve_target(target: str, service: tuple[str, int], lab: LabHandle) -> tuple[str, int]:
    """``service``, ``service:PORT``, ``NODE:PORT`` or ``ADDRESS:PORT`` into an address and port."""
    host, _, port_text = target.rpartition(":") if ":" in target else (target, "", "")
    if not port_text:
        host = target
    if port_text and not port_text.isdigit():
        raise DiagError(f"step target {target!r}: the port must be a number")
    if host == "service":
        return service[0], int(port_text) if port_text else service[1]
    if not port_text:
        raise DiagError(f"step target {target!r}: give a port (NODE:PORT or ADDRESS:PORT)")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", host):
        return host, int(port_text)
    try:
        return lab.address(host), int(port_text)
    except LabError as error:
        raise DiagError(f"step target {target!r}: {error}") from None


def step_argv(step: Step, address: str, port: int, scenario_dir: Path) -> list[str]:
    """The command line that performs ``step`` (run inside its node's namespace)."""
    options = step.options
    # The client and the scapy programs need nothing from the package: running
    # them by path (isolated) skips importing diag and pandas, a second per step.
    client = [sys.executable, "-I", str(SCENARIO_PACKAGE / "client.py")]
    crafted = [sys.executable, "-I", str(SCENARIO_PACKAGE / "crafted.py")]
    if step.kind == "tcp":
        return [*client, "tcp", address, str(port),
                "--script", str(options.get("script", "send:hello,recv")),
                "--syn-retries", str(options.get("syn_retries", 2)),
                "--bind-port", str(options.get("bind_port", 0)),
                "--io-timeout", str(options.get("io_timeout", 3.0))]
    if step.kind == "udp":
        return [*client, "udp", address, str(port),
                "--send", str(options.get("send", "ping")), "--count", str(options.get("count", 2)),
                "--reply-timeout", str(options.get("reply_timeout", 1.0))]
    if step.kind == "tuple-reuse":
        return [*crafted, "tuple-reuse", address, str(port),
                "--source-port", str(options.get("source_port", 40404)), "--timeout", str(step.timeout)]
    if step.kind == "inject-rst":
        return [*crafted, "inject-rst", "--interface", str(options["interface"]),
                "--port", str(options.get("port", port)), "--timeout", str(step.timeout)]
    if step.kind == "replay":
        capture = Path(str(options["capture"]))
        if not capture.is_absolute():
            capture = scenario_dir / capture
        argv = [sys.executable, "-m", "diag.scenario.replay", str(capture), "--to", f"{address}:{port}",
                "--timeout", str(step.timeout)]
        if "flow" in options:
            argv += ["--flow", str(options["flow"])]
        if "stream" in options:
            argv += ["--stream", str(options["stream"])]
        return argv
    raise DiagError(f"step {step.label}: kind {step.kind!r} has no command")


def _outcome(step: Step, stdout: str, seconds: float) -> StepResult:
    """The step's JSON answer is its last stdout line."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    detail: dict[str, Any] = json.loads(lines[-1]) if lines else {"output": stdout[-500:]}
    return StepResult(step.label, step.kind, step.node, str(detail.get("outcome", "no-answer")), seconds, detail)


class BackgroundStep:
    """A step that runs alongside the others (an injector): started, confirmed ready, collected later."""

    def __init__(self, step: Step, process: subprocess.Popen[str]) -> None:
        self.step, self.process, self.started = step, process, time.monotonic()
        self._ready = threading.Event()
        self._said_ready = False
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)
            if line.strip() == "ready":
                self._said_ready = True
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 10.0) -> None:
        self._ready.wait(timeout)
        if not self._said_ready:
            if self.process.poll() is None:
                self.process.kill()
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise LabError(f"step {self.step.label} did not get ready: {stderr.strip()[-300:] or 'no answer'}")

    def finish(self) -> StepResult:
        try:
            self.process.wait(self.step.timeout + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(2)
        return _outcome(self.step, "".join(self._lines), time.monotonic() - self.started)


def start_background(step: Step, lab: LabHandle, service: tuple[str, int], scenario_dir: Path) -> BackgroundStep:
    address, port = resolve_target(step.target, service, lab)
    argv = step_argv(step, address, port, scenario_dir)
    process = lab.popen(step.node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    background = BackgroundStep(step, process)
    background.wait_ready()
    return background


def run_step(step: Step, lab: LabHandle, service: tuple[str, int], scenario_dir: Path) -> StepResult:
    """Run one foreground step to completion (or its timeout)."""
    started = time.monotonic()
    if step.kind == "sleep":
        time.sleep(float(step.options.get("seconds", 1.0)))
        return StepResult(step.label, step.kind, step.node, "ok", time.monotonic() - started)
    address, port = resolve_target(step.target, service, lab)
    argv = step_argv(step, address, port, scenario_dir)
    try:
        completed = lab.run(step.node, argv, timeout=step.timeout, check=False)
    except (subprocess.TimeoutExpired, LabError):  # the lab reports a timeout as a LabError
        return StepResult(step.label, step.kind, step.node, "step-timeout", time.monotonic() - started,
                          {"error": f"gave up after {step.timeout} s"})
    result = _outcome(step, completed.stdout, time.monotonic() - started)
    if completed.returncode != 0:
        detail = dict(result.detail) | {"exit": completed.returncode, "stderr": completed.stderr.strip()[-500:]}
        return StepResult(step.label, step.kind, step.node, "failed", result.seconds, detail)
    return result
