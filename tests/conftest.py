"""Shared fixtures: where the public corpus is, and skips for what a machine lacks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
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
