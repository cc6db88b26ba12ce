"""Time ``analyze`` on a generated fleet: one process, then Dask LocalClusters of 1 and 2 workers.

    .venv/bin/python bench/bench_fleet.py                       # 8 points x 4 files x 100,000 packets
    .venv/bin/python bench/bench_fleet.py --points 4 --files 2 --packets 20000 --workers 1 2

The fleet (``bench/data/fleet-P-F-N/POINT/POINT.pcap0 …``) is made once by
bench/gen_capture.py, one seed per file, and the shipped incident is planted
across three points: natgw's, node-b's and pod-b's captures are an extra ring
file of node-00, node-01 and node-02. Each configuration runs in a fresh child
process (imports and the compiled loops' cache load included in none of the
stage times) and prints the stage times from ``analyze``'s progress hook, the
child's peak RSS and, on a cluster, each worker's peak RSS and the time the
LocalCluster took to start. On a cluster it also measures what travels: the
pickled report the client ends up with (counts, findings, the flow rows
shown), and, after the last run (untimed), per point the pickled size of its
candidates and whole flow table (what the partitions shuffle between
workers, and what the outputs that gather the tables receive) and of its
link keys (what the key shuffle moves), and the workers' compute time per
kind of task. The reports of every configuration
must be identical (compared by a digest of the JSON); the script fails
otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import pickle
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT / "bench" / "data"
CAPTURES = PROJECT / "captures"
PLANTED = {"node-00": "natgw", "node-01": "node-b", "node-02": "pod-b"}


def make_fleet(points: int, files: int, packets: int) -> Path:
    root = DATA / f"fleet-{points}-{files}-{packets}"
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for point in range(points):
        name = f"node-{point:02d}"
        (root / name).mkdir(parents=True)
        for number in range(files):
            out = root / name / f"{name}.pcap{number}"
            seed = 1000 * point + number + 1
            subprocess.run(
                [sys.executable, str(PROJECT / "bench" / "gen_capture.py"), "--packets", str(packets),
                 "--seed", str(seed), "--out", str(out)],
                check=True, capture_output=True,
            )
        if name in PLANTED:
            shutil.copy(CAPTURES / f"{PLANTED[name]}.pcapng", root / name / f"{name}.pcap{files}")
    done.write_text("")
    return root


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used: on a shared machine, steadier than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_up() -> bool:
    """Load the compiled loops' cache (reader, flows, packet keys) with a small analysis of one capture."""
    from diag.analysis import analyze

    return analyze([str(CAPTURES / "client.pcapng")]) is not None


def one(mode: str, fleet: Path, shipped: bool = False) -> dict[str, object]:
    """Run in a child process: one analysis of the fleet in ``mode`` ('single' or 'local:N')."""
    from diag.analysis import analyze
    from diag.fleet import fleet_points

    # Start-up kept out of the stage times, in this process and in every worker.
    warm_up()
    stages: dict[str, float] = {}

    @contextlib.contextmanager
    def progress(stage: str, _detail: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - started

    points = fleet_points(fleet)
    result: dict[str, object] = {"mode": mode}
    started = time.perf_counter()
    client_cpu = cpu_s()
    if mode == "single":
        report = analyze(points, progress=progress)
        result["workers_rss_mb"] = []
    else:
        from distributed import Client, LocalCluster, get_task_stream

        from diag.analysis import parse_capture_args
        from diag.cluster import analyze_on, reduce_on

        workers = int(mode.split(":")[1])
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
        ) as cluster, Client(cluster) as client:
            # Each worker loads the compiled loops once, as the single process did above.
            client.run(warm_up)
            result["cluster_start_s"] = time.perf_counter() - started
            started = time.perf_counter()
            client_cpu = cpu_s()
            workers_cpu = client.run(cpu_s)
            with get_task_stream(client) as stream:
                report = analyze_on(client, parse_capture_args(points), progress)
            total_s = time.perf_counter() - started
            client_cpu_s = cpu_s() - client_cpu
            # Time the workers spent computing, per kind of task (diag-read-..., diag-point-...); the rest of
            # the stages is scheduling and transfer.
            compute: dict[str, float] = {}
            for task in stream.data:
                kind = str(task["key"]).split("-")[1]
                for part in task["startstops"]:
                    if part["action"] == "compute":
                        compute[kind] = compute.get(kind, 0.0) + part["stop"] - part["start"]
            result["worker_compute_s"] = compute
            result["workers_rss_mb"] = sorted(client.run(peak_rss_mb).values())
            result["workers_cpu_s"] = sorted(
                spent - workers_cpu[worker] for worker, spent in client.run(cpu_s).items()
            )
            result["report_bytes"] = len(pickle.dumps(report, protocol=5))
            result["findings_bytes"] = len(pickle.dumps(report.findings, protocol=5))
            result["flow_rows_shown"] = len(report.flows)
            result["client_rss_mb"] = peak_rss_mb()
            if shipped:
                # Not timed: what each point's candidates and whole flow table weigh, as the outputs that gather
                # the tables (--export, --plot, --flow, --flows all) receive them and the partitions shuffle them.
                candidates = reduce_on(client, parse_capture_args(points))
                result["shipped"] = [
                    {"point": one.info.name, "packets": one.read, "candidates": len(one.packets),
                     "candidates_bytes": len(pickle.dumps(one.packets, protocol=5)),
                     "flows_bytes": len(pickle.dumps(one.flows, protocol=5)), "link_bytes": one.link_bytes}
                    for one in candidates
                ]  # fmt: skip
        result["total_s"] = total_s
        result["client_cpu_s"] = client_cpu_s
    if mode == "single":
        result["total_s"] = time.perf_counter() - started
        result["client_cpu_s"] = cpu_s() - client_cpu
        result["client_rss_mb"] = peak_rss_mb()
    result["stages_s"] = stages
    result["packets"] = sum(info.packets for info in report.captures)
    result["bytes"] = sum(path.stat().st_size for files in points.values() for path in files)
    result["files"] = sum(len(files) for files in points.values())
    result["verdict"] = report.verdict.cause if report.verdict else "healthy"
    result["findings"] = len(report.findings)
    result["digest"] = hashlib.sha256(report.dumps().encode()).hexdigest()[:16]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--files", type=int, default=4, help="generated files per point")
    parser.add_argument("--packets", type=int, default=100_000, help="packets per generated file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="LocalCluster sizes to run")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FLEET"), help=argparse.SUPPRESS)
    parser.add_argument("--shipped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.child[0], Path(args.child[1]), shipped=args.shipped)))
        return 0
    fleet = make_fleet(args.points, args.files, args.packets)
    rows = []
    modes = ["single", *(f"local:{workers}" for workers in args.workers)]
    for mode in modes:
        # The tables' sizes are measured once, after the last run's timed analysis.
        extra = ["--shipped"] if mode == modes[-1] and mode != "single" else []
        child = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(fleet), *extra], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    first = rows[0]
    print(f"fleet: {args.points} points, {first['files']} files, {first['packets']:,} packets, "
          f"{first['bytes'] / 1e6:,.0f} MB; verdict {first['verdict']}, {first['findings']} findings")
    print("| run | cluster start s | read s | flows s | candidates s | correlate s | diagnose s | total s "
          "| client CPU s | workers' CPU s | client peak RSS MB | worker peak RSS MB | report MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        stages = row["stages_s"]
        workers = ", ".join(f"{rss:.0f}" for rss in row["workers_rss_mb"]) or "-"
        start = f"{row['cluster_start_s']:.1f}" if "cluster_start_s" in row else "-"
        report_mb = f"{row['report_bytes'] / 1e6:.2f}" if "report_bytes" in row else "-"
        print(f"| {row['mode']} | {start} | {stages.get('read', 0):.2f} | {stages.get('flows', 0):.2f} | "
              f"{stages.get('candidates', 0):.2f} | {stages.get('correlate', 0):.2f} | "
              f"{stages.get('diagnose', 0):.2f} | {row['total_s']:.2f} | {row['client_cpu_s']:.1f} | "
              f"{', '.join(f'{cpu:.1f}' for cpu in row.get('workers_cpu_s', [])) or '-'} | "
              f"{row['client_rss_mb']:.0f} | {workers} | {report_mb} |")
    for row in rows:
        if "findings_bytes" in row:
            print(f"{row['mode']}: the report the client holds, pickled: {row['report_bytes'] / 1e6:.2f} MB, of which "
                  f"{row['findings'] :,} findings {row['findings_bytes'] / 1e6:.2f} MB and {row['flow_rows_shown']:,} "
                  "flow rows shown")
        if "worker_compute_s" in row:
            tasks = ", ".join(f"{kind} {seconds:.2f}" for kind, seconds in row["worker_compute_s"].items())
            print(f"{row['mode']}: workers' compute s by task: {tasks}")
    shipped = next((row["shipped"] for row in rows if "shipped" in row), None)
    if shipped:
        print("| point | packets | candidates | candidates MB | flow table MB | link keys MB |")
        print("|---|---:|---:|---:|---:|---:|")
        for point in shipped:
            print(f"| {point['point']} | {point['packets']:,} | {point['candidates']:,} | "
                  f"{point['candidates_bytes'] / 1e6:.2f} | {point['flows_bytes'] / 1e6:.2f} | "
                  f"{point['link_bytes'] / 1e6:.2f} |")
    digests = {row["digest"] for row in rows}
    if len(digests) != 1:
        print(f"reports differ between runs: {[(row['mode'], row['digest']) for row in rows]}", file=sys.stderr)
        return 1
    print(f"reports identical in every run (digest {digests.pop()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
