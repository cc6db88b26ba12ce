"""Time the ladder diagram: picking one connection out of a busy capture, drawing it, writing PNG and SVG.

    .venv/bin/python bench/bench_plot.py                      # the reference captures + 1,000,000 other packets
    .venv/bin/python bench/bench_plot.py --background 0 --repeat 5

The reference captures of the incident (``captures/``) are analyzed once; then
``--background`` packets of other connections (copies of the incident's
packets with other client ports) are added to the report's packet table, as a
busy node's capture would hold, and the plot functions are timed on it. The
best of ``--repeat`` runs is printed, wall clock and CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

T = TypeVar("T")


def best_of(repeat: int, job: Callable[[], T]) -> tuple[T, float, float]:
    """(last result, best wall seconds, best CPU seconds) over ``repeat`` runs."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = job()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return result, best_wall, best_cpu


def with_background(packets: pd.DataFrame, count: int, seed: int = 1) -> pd.DataFrame:
    """``packets`` plus ``count`` copies of its TCP packets on other client ports."""
    if count == 0:
        return packets
    tcp = packets[packets["proto"] == 6]
    background = tcp.sample(count, replace=True, random_state=seed).reset_index(drop=True)
    ports = np.random.default_rng(seed).integers(1024, 32768, count).astype("int32")  # below the lab's client port
    client_is_source = background["sport"].to_numpy() > 1023
    background["sport"] = np.where(client_is_source, ports, background["sport"].to_numpy())
    background["dport"] = np.where(client_is_source, background["dport"].to_numpy(), ports)
    from diag.analysis import concat_packets

    return concat_packets([packets, background])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", type=int, default=1_000_000, help="other packets to add (default 1e6)")
    parser.add_argument("--repeat", type=int, default=3, choices=range(1, 101), metavar="N")
    args = parser.parse_args()

    import diag.plot
    from diag.analysis import analyze

    captures = sorted((BENCH_DIR.parent / "captures").glob("*.pcap*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = analyze({path.name.split(".")[0]: path for path in captures})
    report.packets = with_background(report.packets, args.background)
    print(f"{len(report.packets):,} packets in {len(captures)} captures; verdict {report.verdict_json()['cause']}")

    view, wall, cpu = best_of(args.repeat, lambda: diag.plot.flow_view(report))
    print(f"flow_view      {wall:7.3f} s wall {cpu:7.3f} s cpu  ({len(view.trips)} packets, {len(view.lanes)} lanes)")
    _, wall, cpu = best_of(args.repeat, lambda: diag.plot.ladder(report))
    print(f"ladder         {wall:7.3f} s wall {cpu:7.3f} s cpu  (figure built, not rendered)")
    with tempfile.TemporaryDirectory() as directory:
        for suffix in (".png", ".svg"):
            target = Path(directory) / f"ladder{suffix}"
            _, wall, cpu = best_of(args.repeat, lambda target=target: diag.plot.ladder_to_file(report, target))
            print(f"ladder_to_file {wall:7.3f} s wall {cpu:7.3f} s cpu  ({suffix}, {target.stat().st_size:,} bytes)")
    _, wall, cpu = best_of(args.repeat, lambda: diag.plot.timeline(report))
    print(f"timeline       {wall:7.3f} s wall {cpu:7.3f} s cpu")


if __name__ == "__main__":
    main()
