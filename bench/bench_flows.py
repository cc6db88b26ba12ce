"""Time the flow table (``diag.flows.build_flows``) on a large capture, alone and after the reader.

    .venv/bin/python bench/bench_flows.py                 # bench/data/tcp-1000000.pcap, generated if missing
    .venv/bin/python bench/bench_flows.py --packets 200000
    .venv/bin/python bench/bench_flows.py --file some.pcap --repeat 5

Both wall-clock and CPU time (of this process) are printed: on a shared
machine the CPU time is the steadier figure. The best of ``--repeat`` runs is
reported, and the flow table's conn_state counts as a sanity check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

T = TypeVar("T")


def best_of(repeat: int, job: Callable[[], T]) -> tuple[T, float, float]:
    """(result, best wall seconds, best CPU seconds) over ``repeat`` runs."""
    best_wall = best_cpu = float("inf")
    result: T | None = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = job()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    assert result is not None
    return result, best_wall, best_cpu


def rate(packets: int, seconds: float) -> str:
    return f"{packets / seconds / 1e6:5.2f} M packets/s" if seconds > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="capture to use (default: generated bench/data/tcp-N.pcap)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="size of the generated capture")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported")
    args = parser.parse_args(argv)

    path = args.file or BENCH_DIR / "data" / f"tcp-{args.packets}.pcap"
    if not path.exists():
        if args.file:
            print(f"bench_flows: {path}: no such file", file=sys.stderr)
            return 2
        subprocess.run([sys.executable, str(BENCH_DIR / "gen_capture.py"), "--packets", str(args.packets)], check=True)

    from diag import read_capture
    from diag.flows import build_flows

    # The first call in a process loads the compiled loops (a fixed start-up, timed apart).
    _, _, startup_cpu = best_of(1, lambda: build_flows(read_capture(BENCH_DIR.parent / "captures" / "client.pcapng")))
    table, read_wall, read_cpu = best_of(1, lambda: read_capture(path))
    flows, flows_wall, flows_cpu = best_of(args.repeat, lambda: build_flows(table))
    n = len(table)
    size_mb = path.stat().st_size / 1e6
    print(f"{path}: {n:,} packets, {size_mb:.0f} MB, {len(flows):,} flows")
    print(f"  start-up (loading the compiled loops, once per process): cpu {startup_cpu:.2f} s")
    print(f"  read_capture         wall {read_wall:6.2f} s  cpu {read_cpu:6.2f} s  ({rate(n, read_cpu)} cpu)")
    print(f"  build_flows          wall {flows_wall:6.2f} s  cpu {flows_cpu:6.2f} s  ({rate(n, flows_cpu)} cpu)")
    total_wall, total_cpu = read_wall + flows_wall, read_cpu + flows_cpu
    print(f"  read + flows         wall {total_wall:6.2f} s  cpu {total_cpu:6.2f} s  ({rate(n, total_cpu)} cpu)")
    states = flows["conn_state"].value_counts()
    print("  conn_state: " + ", ".join(f"{state} {count:,}" for state, count in states.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
