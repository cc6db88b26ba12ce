"""Whole ``diag analyze pcap`` processes on the generated 1M-packet captures, against tshark.

Each run is a fresh process (``diag analyze pcap FILE ... --json -``, standard output discarded),
so the figures include start-up, reading, the flow table, correlation and
the diagnosis, as a user pays them. For every run: wall seconds, CPU seconds
(user + system of that child alone, from ``os.wait4``), and the child's peak
resident memory against the capture's size. tshark runs once per capture
(``tshark -T fields`` with 15 header fields, output discarded) for the ratio.

    .venv/bin/python bench/gen_busy.py                          # the captures, once
    .venv/bin/python bench/gen_busy.py --profile busy --points 4
    .venv/bin/python bench/bench_analyze.py --repeat 3
    .venv/bin/python bench/bench_analyze.py --only busy --no-tshark
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DIAG = BENCH.parent / ".venv" / "bin" / "diag"
DATA = BENCH / "data"
TSHARK_FIELDS = (
    "frame.time_epoch", "ip.src", "ip.dst", "ip.proto", "ip.ttl", "ip.id", "tcp.srcport", "tcp.dstport",
    "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "tcp.len", "udp.srcport", "udp.dstport", "frame.len",
)  # fmt: skip

# name -> the captures of one analysis (several files: points of the same traffic, correlated)
CASES = {
    "quiet": ["quiet.pcap"],
    "20k": ["20k.pcap"],
    "busy": ["busy.pcap"],
    "busy-4pt": [f"busy-p{i}.pcap" for i in range(4)],
}


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, float]:
    """Wall, CPU and peak RSS of one child process."""
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}): {stderr.strip()[-500:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def tshark_command(path: Path) -> list[str]:
    command = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t"]
    command += ["-o", "tcp.relative_sequence_numbers:FALSE", "-o", "tcp.analyze_sequence_numbers:FALSE"]
    for field in TSHARK_FIELDS:
        command += ["-e", field]
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="where gen_busy.py wrote the captures")
    parser.add_argument("--only", action="append", choices=list(CASES), help="run only these cases")
    parser.add_argument("--repeat", type=int, default=1, help="diag runs per case; the best CPU time is kept")
    parser.add_argument("--no-tshark", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--source", type=Path, help="run the diag package found here (a copy before a change)")
    args = parser.parse_args(argv)
    if not args.no_tshark and shutil.which("tshark") is None:
        parser.error("tshark not found (or pass --no-tshark)")

    results = []
    for name in args.only or list(CASES):
        paths = [args.data / file for file in CASES[name]]
        missing = [p for p in paths if not p.exists()]
        if missing:
            print(f"{name}: skipped, {missing[0]} missing (bench/gen_busy.py writes it)", file=sys.stderr)
            continue
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        command = [str(DIAG)]
        env = None
        if args.source is not None:
            # The copy's own entry point, which ends the process as the diag script does.
            command = [sys.executable, "-m", "diag.cli"]
            env = {**os.environ, "PYTHONPATH": str(args.source)}
        command += ["analyze", "pcap", "--json", "-"]  # standard output goes to /dev/null
        command += [f"p{i}={p}" for i, p in enumerate(paths)] if len(paths) > 1 else [str(paths[0])]
        # ``python -m`` puts the working directory first on the path, before PYTHONPATH: run it in the copy.
        runs = [run(command, env, args.source) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["cpu"])
        row: dict[str, object] = {"case": name, "files": len(paths), "size_mb": round(size_mb), **best}
        row["all_cpu"] = [round(r["cpu"], 2) for r in runs]
        tshark_cpu = None
        if not args.no_tshark:
            tshark = [run(tshark_command(p)) for p in paths]
            tshark_cpu = sum(t["cpu"] for t in tshark)
            row["tshark_wall"] = sum(t["wall"] for t in tshark)
            row["tshark_cpu"] = tshark_cpu
            row["tshark_rss_mb"] = max(t["rss_mb"] for t in tshark)
        results.append(row)
        line = (
            f"{name:9} {size_mb:6.0f} MB  diag wall {best['wall']:6.2f} s  CPU {best['cpu']:6.2f} s "
            f"(runs {row['all_cpu']})  peak RSS {best['rss_mb']:6.0f} MB = {best['rss_mb'] / size_mb:.2f} x file"
        )
        if tshark_cpu is not None:
            line += f"  tshark CPU {tshark_cpu:6.2f} s  ratio {tshark_cpu / best['cpu']:5.1f}x"
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
