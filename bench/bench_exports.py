"""How long the exports take: the flow table as conn.log, CSV, Parquet and JSON, the packet table as Parquet and CSV.

    .venv/bin/python bench/bench_exports.py [CAPTURE]     # default: bench/data/tcp-1000000.pcap (gen_capture.py)

Reads the capture once, builds the flow table, then renders each export into
memory (no disk in the figures) and prints seconds and rows per second, best
of three.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from diag import read_capture
from diag.flows import build_flows
from diag.report.export import arrow_table, csv_arrow_table
from diag.report.jsondoc import flows_to_json
from diag.report.zeeklog import conn_log

DEFAULT = Path(__file__).parent / "data" / "tcp-1000000.pcap"


def best_of(work: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def parquet_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(arrow_table(table), buffer)
    return buffer.getvalue()


def csv_bytes(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pa_csv.write_csv(csv_arrow_table(table), buffer)
    return buffer.getvalue()


def main() -> None:
    capture = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not capture.exists():
        sys.exit(f"{capture}: not found (make it with bench/gen_capture.py)")
    packets = read_capture(capture)
    flows = build_flows(packets)
    now = pd.Timestamp.now().to_pydatetime()
    cases: list[tuple[str, int, Callable[[], object]]] = [
        ("flows conn.log", len(flows), lambda: conn_log(flows, now, now)),
        ("flows csv", len(flows), lambda: csv_bytes(flows)),
        ("flows parquet", len(flows), lambda: parquet_bytes(flows)),
        ("flows json", len(flows), lambda: json.dumps(flows_to_json(flows), indent=2)),
        ("packets parquet", len(packets), lambda: parquet_bytes(packets)),
        ("packets csv", len(packets), lambda: csv_bytes(packets)),
    ]
    print(f"{capture.name}: {len(packets):,} packets, {len(flows):,} flows")
    for name, rows, work in cases:
        seconds = best_of(work)
        print(f"{name:16s} {seconds:7.2f} s  {rows / seconds / 1e3:9.0f} k rows/s")


if __name__ == "__main__":
    main()
