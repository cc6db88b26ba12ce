"""Shared fixtures: where the public corpus is, and skips for what a machine lacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto_fixture import moto_endpoint  # noqa: F401  (a session fixture: moto's server, for the AWS and S3 tests)
from scenario_runs import run_of  # noqa: F401  (a session fixture: each shipped scenario runs once per session)

PROJECT = Path(__file__).resolve().parent.parent
CORPUS = PROJECT.parent / "shared" / "corpus"


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by ./quickstart)")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to build network namespaces")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"public capture corpus not found at {CORPUS}")
    return CORPUS


def _host_state() -> dict[str, object]:
    """What the suite must leave as it found it: lab namespaces, the root namespace's links and rules,
    and the processes the lab starts (tcpdump, conntrack, pod servers)."""

    def output(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    processes = output("ps", "-eo", "pid=,args=").splitlines()
    lab_processes = sorted(
        line.split(None, 1)[1] for line in processes
        if any(word in line for word in ("tcpdump", "conntrack -E", "diag.lab.servers"))
        and "ps -eo" not in line and "<defunct>" not in line  # a zombie runs nothing; its parent reaps it
    )  # fmt: skip
    return {
        "lab namespaces": sorted(n for n in output("ip", "netns", "list").split() if n.startswith("diag-")),
        "root links": sorted(
            line.split(":")[1].strip().split("@")[0] for line in output("ip", "-o", "link").splitlines()
        ),
        "root rules": output("ip", "rule"),
        "root iptables": "\n".join(
            line.split(" [")[0] for line in output("iptables-save").splitlines() if not line.startswith("#")
        ),
        "lab processes": lab_processes,
    }


@pytest.fixture(scope="session", autouse=True)
def host_left_as_found() -> Iterator[None]:
    """After the whole run (as root), nothing a test built or started is left behind on the host.

    Run alone on the machine (as CI does): another suite's labs at the same time would show here.
    DIAG_SKIP_HOST_CHECK=1 turns it off for such a run.
    """
    if os.geteuid() != 0 or os.environ.get("DIAG_SKIP_HOST_CHECK"):
        yield
        return
    before = _host_state()
    yield
    after = _host_state()
    # Give processes being torn down by the last test a moment to go.
    for _ in range(20):
        if after == before:
            break
        time.sleep(0.5)
        after = _host_state()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"the test run left the host changed: {changed}"
