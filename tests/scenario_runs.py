"""Shipped scenarios run for real, once per test session, shared by every module that needs their captures.

A scenario run builds namespaces and captures at every hop for a few seconds;
the modules that check its packets, its verdict, and the verdicts from subsets
of its capture points all read the same run instead of paying for their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from diag import read_capture
from diag.scenario.spec import Scenario, load_scenario

PROJECT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    scenario: Scenario
    out: Path
    status: int
    stdout: str
    stderr: str

    @property
    def record(self) -> dict[str, Any]:
        assert self.status == 0, f"run-scenario {self.scenario.name} failed:\n{self.stderr}"
        return dict(json.loads((self.out / "run.json").read_text()))

    def capture_path(self, point: str) -> Path:
        """The capture file of one point (a node name, or a [[capture]] point of the scenario)."""
        files = {c["point"]: c["file"] for c in self.record["captures"]}
        return self.out / files[point]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {c["point"]: read_capture(self.out / c["file"]) for c in self.record["captures"]}


@pytest.fixture(scope="session")
def run_of(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Run]]:
    """``run_of(NAME)``: the session's one run of ``diag run-scenario NAME --out DIR``."""
    from conftest import require_root, require_tools  # conftest imports this module: import at use

    require_root()
    require_tools("tcpdump", "tshark", "iptables-restore", "conntrack")
    cache: dict[str, Run] = {}

    def run(name: str) -> Run:
        if name not in cache:
            out = tmp_path_factory.mktemp(name) / "out"
            result = subprocess.run(
                [sys.executable, "-m", "diag.cli", "run-scenario", name, "--out", str(out)],
                capture_output=True, text=True, cwd=PROJECT, timeout=120,
            )
            cache[name] = Run(load_scenario(name), out, result.returncode, result.stdout, result.stderr)
        return cache[name]

    yield run
