"""Time diag's capture reader and flow table against tshark on one large capture.

    .venv/bin/python bench/bench_reader.py                       # generates bench/data/tcp-1000000.pcap if missing
    .venv/bin/python bench/bench_reader.py --packets 200000
    .venv/bin/python bench/bench_reader.py --file some.pcap --no-tshark

Each measurement runs in a fresh child process so its peak memory
(``ru_maxrss``) is its own; "import only" is the baseline of a child that just
imports diag, pandas and numpy. Rates are computed from CPU time (the work
is single-threaded), which stays meaningful on a machine shared with other
jobs; wall-clock seconds are shown next to it.

Start-up is reported apart: the imports, and the first read of a small
capture, which loads the compiled packet loops from their cache and
initialises numba (the same fixed cost in every process, whatever the size
of the capture). The timed read then starts in a process that has paid it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

TSHARK_FIELDS = (
    "frame.time_epoch",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.ttl",
    "ip.id",
    "ip.len",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "tcp.seq",
    "tcp.ack",
    "tcp.window_size_value",
    "udp.srcport",
    "udp.dstport",
)


SMALL_CAPTURE = Path(__file__).resolve().parent.parent / "captures" / "client.pcapng"


def child(job: str, path: str) -> dict[str, Any]:
    """One measurement, run inside the child process."""
    import_began = time.process_time()
    import pandas as pd

    import diag
    from diag import flows

    startup = time.process_time() - import_began
    if job.startswith("read_capture"):
        # Start-up, reported apart from the per-packet work: the first call in a
        # process loads the compiled packet loops and initialises numba.
        began = time.process_time()
        flows.build_flows(diag.read_capture(SMALL_CAPTURE))
        startup += time.process_time() - began

    began = time.perf_counter()
    cpu_began = time.process_time()
    packets = 0
    if job == "import":
        pass
    elif job == "read-bytes":
        with open(path, "rb") as capture:
            while chunk := capture.read(64 << 20):
                packets += len(chunk) * 0  # bytes only: the floor any reader pays
    elif job in ("read_capture", "read_capture+flows"):
        table = diag.read_capture(path)
        packets = len(table)
        if job == "read_capture+flows":
            flows.build_flows(table)
    elif job == "tshark":
        command = ["tshark", "-n", "-r", path, "-T", "fields", "-E", "separator=\t"]
        command += ["-o", "tcp.relative_sequence_numbers:FALSE", "-o", "tcp.analyze_sequence_numbers:FALSE"]
        for field in TSHARK_FIELDS:
            command += ["-e", field]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
            table = pd.read_csv(process.stdout, sep="\t", header=None, names=list(TSHARK_FIELDS), low_memory=False)
        packets = len(table)
    else:
        raise SystemExit(f"unknown job {job}")
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if job == "tshark":  # the work happens in the tshark process
        cpu += (
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
        )
    return {
        "job": job,
        "seconds": elapsed,
        "cpu": cpu,
        "startup_cpu": startup,
        "packets": packets,
        "maxrss_kb": max(own, children),
    }


def measure(job: str, path: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", job, "--file", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{job} failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="capture to read (default: generated bench/data/tcp-N.pcap)")
    parser.add_argument("--packets", type=int, default=1_000_000, help="size of the generated capture")
    parser.add_argument("--no-tshark", action="store_true", help="skip the (slow) tshark measurement")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each diag measurement; the best is reported")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, str(args.file))))
        return 0

    path = args.file
    if path is None:
        from bench.gen_capture import DATA_DIR, write_capture

        path = DATA_DIR / f"tcp-{args.packets}.pcap"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            write_capture(path, args.packets)
    size_mb = path.stat().st_size / 1e6
    print(f"capture: {path} ({size_mb:.0f} MB)")

    jobs = ["import", "read-bytes"] + ["read_capture", "read_capture+flows"] * args.repeat
    if not args.no_tshark:
        jobs.append("tshark")
    results: dict[str, dict[str, Any]] = {}
    for job in jobs:
        result = measure(job, path)
        best = results.get(job)
        if best is None or result["cpu"] < best["cpu"]:
            results[job] = result
    packets = results["read_capture"]["packets"]
    baseline_mb = results["import"]["maxrss_kb"] / 1024
    imports = results["import"]["startup_cpu"]
    print(f"packets: {packets:,}; import-only process: {baseline_mb:.0f} MB peak, imports {imports:.2f} CPU s")
    header = f"{'what':<22}{'wall s':>8}{'CPU s':>8}{'packets/s (CPU)':>17}{'peak RSS MB':>13}{'x file':>8}"
    print(header + f"{'start-up CPU s':>16}")
    for job, result in results.items():
        if job == "import":
            continue
        rate = f"{packets / result['cpu']:,.0f}" if result["cpu"] > 0 else "-"
        peak_mb = result["maxrss_kb"] / 1024
        times = f"{result['seconds']:>8.2f}{result['cpu']:>8.2f}"
        startup = f"{result['startup_cpu']:>16.2f}" if job.startswith("read_capture") else ""
        print(f"{job:<22}{times}{rate:>17}{peak_mb:>13.0f}{peak_mb / size_mb:>8.2f}{startup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
