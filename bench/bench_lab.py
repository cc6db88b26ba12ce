"""Time building and tearing down labs: the incident (9 namespaces) and the scale topology (95).

    sudo .venv/bin/python bench/bench_lab.py                  # incident x5, scale x2
    sudo .venv/bin/python bench/bench_lab.py --runs 10 --scale-runs 3 --json -

"up" is from calling ``Lab.up`` to every pod's server listening; "down" is
until every namespace and process is gone. Each run reports its phases too
(plan, kernel configuration, servers) so a slow run shows where it went.
Targets: incident up < 1 s and down < 1 s; scale up < 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diag.lab import Lab, build_plan, load_topology
from diag.lab import lab as lab_module

TARGETS = {"incident": (1.0, 1.0), "scale": (10.0, 10.0)}


def timed_phases() -> dict[str, float]:
    """Wrap the build's phases so each run records how long they took."""
    phases: dict[str, float] = {}

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = time.perf_counter() - began

        return timed

    lab_module.Lab._apply = wrap("kernel", lab_module.Lab._apply)  # type: ignore[method-assign]
    lab_module.Lab._start_servers = wrap("servers", lab_module.Lab._start_servers)  # type: ignore[method-assign]
    return phases


def measure(name: str, runs: int, phases: dict[str, float]) -> dict[str, Any]:
    topology = load_topology(name)
    began = time.perf_counter()
    build_plan(topology, "bench")
    plan_s = time.perf_counter() - began
    ups, downs, details = [], [], []
    for _ in range(runs):
        lab = Lab(topology)
        began = time.perf_counter()
        lab.up()
        up = time.perf_counter() - began
        began = time.perf_counter()
        lab.down()
        down = time.perf_counter() - began
        ups.append(up)
        downs.append(down)
        details.append(
            {
                "up_s": round(up, 3),
                "down_s": round(down, 3),
                **{f"{phase}_s": round(seconds, 3) for phase, seconds in phases.items()},
            }
        )
    up_target, down_target = TARGETS.get(name, (float("inf"), float("inf")))
    return {
        "topology": name,
        "namespaces": len(topology.nodes),
        "links": len(topology.links),
        "runs": runs,
        "plan_s": round(plan_s, 3),
        "up_median_s": round(statistics.median(ups), 3),
        "up_max_s": round(max(ups), 3),
        "down_median_s": round(statistics.median(downs), 3),
        "down_max_s": round(max(downs), 3),
        "up_target_s": up_target,
        "down_target_s": down_target,
        "details": details,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="incident builds (default 5)")
    parser.add_argument("--scale-runs", type=int, default=2, help="scale builds (default 2; 0 to skip)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON (- for stdout)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    phases = timed_phases()
    results = [measure("incident", args.runs, phases)]
    if args.scale_runs:
        results.append(measure("scale", args.scale_runs, phases))
    load = os.getloadavg()
    print(
        f"{'topology':<10} {'ns':>4} {'runs':>4} {'plan':>6} {'up med':>7} {'up max':>7} {'down med':>8} "
        f"{'down max':>8}  targets (up/down)"
    )
    for result in results:
        print(
            f"{result['topology']:<10} {result['namespaces']:>4} {result['runs']:>4} {result['plan_s']:>6.3f} "
            f"{result['up_median_s']:>7.3f} {result['up_max_s']:>7.3f} {result['down_median_s']:>8.3f} "
            f"{result['down_max_s']:>8.3f}  < {result['up_target_s']:g} s / < {result['down_target_s']:g} s"
        )
    print(f"(load average {load[0]:.2f} on {os.cpu_count()} CPUs)")
    if args.json:
        text = json.dumps({"results": results, "loadavg": load, "cpus": os.cpu_count()}, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
