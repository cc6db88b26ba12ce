"""Benchmark: correlate four captures of one million packets each.

One generated capture (``bench/gen_capture.py``) is read once and becomes the
client's view; three more points are derived from it the way the lab's hops
would see the same traffic: a load balancer (TTL −1, clock 3 s ahead), a node
that DNATs the server address (TTL −2, clock 1.2 s behind, a NAT rewrite),
and the server (TTL −3, clock 40 ms ahead, 2% of packets lost on the way).
Only ``correlate`` is timed, and separately the tables it builds on first use.

    .venv/bin/python bench/bench_correlate.py               # 4 x 1,000,000 packets
    .venv/bin/python bench/bench_correlate.py --packets 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from gen_capture import DATA_DIR, write_capture  # noqa: E402

from diag import read_capture  # noqa: E402
from diag.analysis import concat_packets  # noqa: E402
from diag.correlate import correlate  # noqa: E402


def derived_point(base: pd.DataFrame, name: str, ttl_drop: int, clock_ns: int, loss: float, seed: int) -> pd.DataFrame:
    """The same traffic seen further along: later, lower TTL, some packets lost, maybe rewritten."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(base)) >= loss
    table = base[keep].copy()
    table["capture"] = pd.Categorical([name] * len(table))
    table["ts_ns"] = table["ts_ns"] + clock_ns + 200_000 * ttl_drop
    table["ttl"] = (table["ttl"] - ttl_drop).astype("int16")
    table["index"] = np.arange(len(table), dtype=np.int64)
    return table.reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets per capture (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (best is reported)")
    args = parser.parse_args(argv)

    path = DATA_DIR / f"tcp-{args.packets}.pcap"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", flush=True)
        write_capture(path, args.packets)
    client = read_capture(path, name="client")
    nlb = derived_point(client, "nlb", 1, 3_000_000_000, 0.0, 1)
    node = derived_point(client, "node-a", 2, -1_200_000_000, 0.0, 2)
    # node-a DNATs every destination address to a pod address, as a kube-proxy rule would.
    categories = [str(a) for a in node["dst"].cat.categories]
    pods = [f"198.19.{i // 250}.{i % 250 + 1}" if a else "" for i, a in enumerate(categories)]
    node["dst"] = pd.Categorical.from_codes(node["dst"].cat.codes.to_numpy(), categories=pd.Index(pods).unique())
    pod = derived_point(client, "pod", 3, 40_000_000, 0.02, 3)
    packets = concat_packets([client, nlb, node, pod])
    print(f"{len(packets):,} packets in 4 captures")

    best = best_cpu = float("inf")
    tables = tables_cpu = float("inf")
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        corr = correlate(packets)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
        start, start_cpu = time.perf_counter(), time.process_time()
        _ = corr.matches  # the per-row table, paths and NAT map are built on first use
        tables = min(tables, time.perf_counter() - start)
        tables_cpu = min(tables_cpu, time.process_time() - start_cpu)
    matched = int((corr.row_match >= 0).sum())
    # CPU time as well: on a shared machine the wall clock also counts other people's work.
    print(f"correlate (matching, clocks, hop order): best of {args.repeat}: {best:.2f} s wall, {best_cpu:.2f} s CPU")
    print(f"  + matches/paths/NAT tables on first use: {tables:.2f} s wall, {tables_cpu:.2f} s CPU")
    print(f"  = {best + tables:.2f} s wall, {best_cpu + tables_cpu:.2f} s CPU "
          f"({len(packets) / (best + tables) / 1e6:.2f} M packets/s wall)")  # fmt: skip
    print(f"matched rows: {matched:,} ({matched / len(packets):.1%}), matches: {len(corr.paths):,}")
    for point, offset in corr.offsets.items():
        print(f"  offset {point}: {offset.offset_s:+.6f} s ± {offset.uncertainty_s:.6f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
