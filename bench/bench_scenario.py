"""Benchmark: ``diag run-scenario`` end to end, stage by stage (needs root).

Runs each named scenario a few times through the command line, exactly as a
user would, and reports the wall time of the whole command (interpreter start
included) and the median of each stage from ``run.json``. The target for the
default scenario (the incident) is under 15 s end to end.

    sudo .venv/bin/python bench/bench_scenario.py                    # incident, 3 runs
    sudo .venv/bin/python bench/bench_scenario.py --runs 5 incident fix-snat tuple-reuse
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def one_run(name: str, out: Path) -> tuple[float, dict[str, float]] | None:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "diag.cli", "run-scenario", name, "--out", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        print(f"{name}: run failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}")
        return None
    return wall, json.loads((out / "run.json").read_text())["timings_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", default=["incident"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_scenario: needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="diag-bench-") as scratch:
        for name in args.scenarios:
            walls: list[float] = []
            stages: dict[str, list[float]] = {}
            for number in range(args.runs):
                measured = one_run(name, Path(scratch) / f"{name}-{number}")
                if measured is None:
                    continue
                wall, timings = measured
                walls.append(wall)
                for stage, seconds in timings.items():
                    stages.setdefault(stage, []).append(seconds)
            if not walls:
                continue
            print(
                f"{name}: end to end median {statistics.median(walls):.2f} s "
                f"(min {min(walls):.2f}, max {max(walls):.2f}, {args.runs} runs)"
            )
            for stage, values in stages.items():
                print(f"  {stage:<20} {statistics.median(values):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
