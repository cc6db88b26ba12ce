"""The package stays lint-clean and typed: ruff and mypy run as part of the tests."""

from __future__ import annotations

import subprocess
import sys

from conftest import PROJECT


def test_ruff_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "diag", "tests", "bench"],
        cwd=PROJECT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "diag"], cwd=PROJECT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
