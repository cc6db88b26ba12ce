"""``diag analyze pcap``: diagnose captures of the same traffic taken at different points."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from diag.commands.capturewarnings import print_capture_warnings
from diag.commands.options import add_max_memory
from diag.errors import DiagError
from diag.gcpause import end_startup

if TYPE_CHECKING:
    from diag.capture.filter import Node as FilterNode
    from diag.capture.location import Location
    from diag.cluster import ClusterSpec
    from diag.report import Report
    from diag.report.focus import FlowSelector
    from diag.stages import ProgressHook

HELP = "analyze existing captures"
PCAP_HELP = "diagnose pcap/pcapng captures of the same traffic taken at one or more points"

PCAP_DESCRIPTION = """\
Read one or more captures (pcap, pcapng, optionally gzip-compressed) of the
same traffic, taken at different points of its path, and say what happened to
every connection: who really sent each RST, which SYNs and datagrams were never
answered, and what would fix it.

Each PATH may be prefixed with NAME= to say where it was captured (the
vantage point: client, node-a, node-b, pod, natgw, ...). Findings and the flow
table refer to captures by these names. Without NAME= the file's stem is used
(pod.pcap.gz -> pod). One point may be several files, read in time order: a
NAME given again (pod=a.pcap pod=b.pcap), a directory (pod=DIR), a quoted
glob ('pod=ring.pcap*') or unnamed rotated files (pod.pcap pod.pcap1 ...,
as tcpdump -C writes them); two different files whose stems are the same are
refused. '-' is standard input (tcpdump -w - | diag analyze pcap pod=-).

A PATH may be an object in S3, s3://BUCKET/KEY, read as a stream (never
downloaded whole). Credentials, region and endpoint come from boto3's
standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the
~/.aws files, an instance role; AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) for
an S3-compatible store.
"""

PCAP_EPILOG = """\
examples:
  diag analyze pcap pod.pcap
      one vantage point: the flows, resets and unanswered SYNs it shows
  diag analyze pcap client=laptop.pcap node-a=ip-10-0-1-5.pcap pod=web-7f9c.pcap
      three vantage points of the same connection attempts: the RST the pod
      saw "from the client" is traced to where it was really generated
  diag analyze pcap --json report.json client=c.pcap pod=p.pcap
      the same, and the diag.report/1 JSON document in report.json
  diag analyze pcap --json - client=c.pcap pod=p.pcap | jq .verdict
      JSON on stdout only (the text report is not printed)
  diag analyze pcap --filter 'tcp and host 203.0.113.10 and not port 22' node-b.pcap
      only the packets that match, as tcpdump reads the expression (and, or:
      same precedence, left to right; 'port 80 or 443' reuses 'port')
  diag analyze pcap --filter 'tcp[tcpflags] & tcp-rst != 0 or net 10.0.0.0/8' pod.pcap
  diag analyze pcap --flow 203.0.113.10:38622 --plot ladder.svg client=c.pcap pod=p.pcap
      the findings, flows and ladder of that one connection, wherever it was
      seen (the pod's own address after DNAT picks it too)
  diag analyze pcap s3://incident-0412/node-a.pcap.gz pod=s3://incident-0412/pod.pcap
      captures stored in S3, streamed from the bucket

output:
  The text report goes to stdout: the verdict first (the most significant
  finding: forged or asymmetric resets and silent drops outrank ordinary peer
  resets and refused ports), then the other findings grouped by cause and
  service (at most 10 groups; --all lists every finding), then per capture the
  problem flows (resets, unanswered SYNs, one-sided flows, SYN retransmissions)
  and a count of healthy flows. With --json - the JSON document replaces it
  on stdout. Warnings about damaged or unsupported parts of a capture go to
  stderr as "diag: warning: ..." lines. On a terminal, an analysis that takes
  over 2 s shows its stages on stderr (--quiet: never).

exit status:
  0  the captures were analyzed (whatever was found, even with warnings)
  2  bad usage, a capture that is missing, unreadable or not a capture at all,
     or an output file that exists (without --force)
"""

FLEET_HELP = "diagnose the captures of many points at once, each point a directory (or manifest entry) of files"

FLEET_DESCRIPTION = """\
Analyze the captures a whole fleet took of one incident, as 'analyze pcap'
does with the same options. The fleet is a directory whose subdirectories
are the capture points (DIR/POINT/*.pcap*, rotated and ring files of one
point read in time order), the same layout under an S3 prefix
(s3://BUCKET/PREFIX/POINT/*.pcap*, credentials and endpoint as for analyze
pcap), or a TOML manifest naming each point's files (or s3:// objects):

  [points.node-a]
  files = ["/captures/node-a/ring*.pcap"]   # files, directories or globs;
  [points.pod]                               # relative to the manifest
  files = ["pod/eth0.pcapng", "pod/eth1.pcapng"]

With --cluster (or DIAG_CLUSTER) every point is read, summarised and reduced
to its candidate packets on a Dask worker (the points' packet keys joined
across the workers), the candidates are cut into partitions of whole
connections, correlated and diagnosed on the workers, and only the report's
counts, findings and the flow rows it shows come back (--export, --plot,
--flow and --flows all gather the candidates and every flow instead); the
report is the same as without it.
"""

FLEET_EPILOG = """\
examples:
  diag analyze fleet incident-0412/
      every subdirectory of incident-0412 is one point, named after it
  diag analyze fleet --cluster local:4 --json report.json incident-0412/
      the points read and reduced by a local Dask cluster of 4 worker processes
  DIAG_CLUSTER=tcp://10.0.0.5:8786 diag analyze fleet fleet.toml
      the same on an existing cluster, whose workers see the files at the same paths
  diag analyze fleet --cluster local:4 s3://captures/incident-0412/
      a fleet in S3: each worker reads its points' objects from the bucket itself

exit status:
  0  the captures were analyzed (whatever was found, even with warnings)
  2  bad usage, a fleet without points, an unreadable capture, an
     unreachable scheduler, or an output file that exists (without --force)
"""

# What the stages after reading would load on first use, loaded instead while the captures are being read
# (see _ready_the_stages_after_reading): the compiled loops they call first, by module...
LOOPS_AFTER_READING = {
    "diag.flows.keys": ("_assign_tuple_ids",),
    "diag.flows.walk": ("group_by_flow", "walk_flows"),
    "diag.flows.copies": ("_keys",),
    "diag.correlate.sightings": (
        "_cut_copies",
        "_in_order",
        "_bucket_sort",
        "_cut_sightings",
        "_number_lone_rows",
        "_pair_occurrences",
    ),
    "diag.correlate.records": ("_fill",),
    "diag.correlate.clock": ("_fill_slots", "_pair_bounds"),
    "diag.correlate.paths": ("_lay_out",),
    "diag.correlate.match": ("_in_order_of_appearance", "_per_row", "_add_offsets"),
    "diag.diagnose.connections": ("_number_flows", "_union_by_group", "_any_repeated"),
    "diag.unionfind": ("union_pairs",),
}
# ... and the modules the reports import when they are written.
MODULES_AFTER_READING = (
    "diag.report.flowdigest",
    "diag.report.significance",
    "diag.report.text",
    "pandas.core.methods.to_dict",
    "pyarrow.pandas_compat",
)
# diag.cluster.ENVIRONMENT, named here so that a run without a cluster need not load diag.cluster to know it.
CLUSTER_ENVIRONMENT = "DIAG_CLUSTER"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("analyze", help=HELP, description=HELP.capitalize() + ".")
    commands = parser.add_subparsers(dest="analyze_command", metavar="SUBCOMMAND")
    commands.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", metavar="FILE|-", help="also write the diag.report/1 JSON document to FILE ('-': stdout, no text)"
    )
    common.add_argument("--plot", metavar="FILE", help="draw the ladder diagram of the verdict's flow (.png or .svg)")
    common.add_argument(
        "--filter",
        metavar="EXPR",
        help="analyze only the packets that match EXPR, in tcpdump's pcap-filter words (host, net, port, "
        "portrange, tcp, udp, icmp, ip, ip6, src, dst, and, or, not, parentheses); see the examples",
    )
    common.add_argument(
        "--flow",
        metavar="ADDR[:PORT]",
        help="report (and --plot) only the connections to or from this endpoint, as seen at any capture point",
    )
    common.add_argument("--force", action="store_true", help="replace existing --json, --plot and --export files")
    common.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="also write the packets, flows and matches tables to DIR as packets.parquet, packets.csv, "
        "flows.parquet, ... (DIR is created; an existing file is refused unless --force)",
    )
    common.add_argument(
        "--flows",
        choices=("problems", "all"),
        default="problems",
        help="list only problem flows, at most 20 of each kind, and at most 10,000 flow rows in the JSON, "
        "problems first (default), or every flow in both",
    )
    common.add_argument(
        "--all",
        dest="all_findings",
        action="store_true",
        help="list every finding, most significant first (default: the verdict, then the top 10 groups of cause "
        "and service)",
    )
    add_max_memory(common)
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress on stderr (shown only on a terminal, once the analysis takes over 2 s)",
    )
    common.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the text report (default: when stdout is a terminal)",
    )
    common.add_argument(
        "--cluster",
        metavar="local[:N]|tcp://HOST:PORT",
        help="read, correlate and diagnose on Dask workers (each point reduced to its candidate packets, the "
        "connections partitioned across the workers): a local cluster of N processes (default: one per CPU) "
        "or the scheduler at this address, whose workers see the files at the same paths (default: $DIAG_CLUSTER)",
    )
    # Parsers copy their parents' options when they are made, so the sub-commands come after the options.
    pcap = commands.add_parser(
        "pcap",
        parents=[common],
        help=PCAP_HELP,
        description=PCAP_DESCRIPTION,
        epilog=PCAP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pcap.add_argument(
        "captures", nargs="+", metavar="[NAME=]PATH",
        help="a capture file, a directory of one point's files, '-' (standard input) or an s3://BUCKET/KEY object, "
        "optionally named",
    )
    # Both end the process without freeing their tables when run as the process's command (diag.cli.main),
    # and say when their modules are loaded (diag.gcpause.end_startup).
    pcap.set_defaults(func=run_pcap, exit_without_teardown=True, ends_startup=True)
    fleet = commands.add_parser(
        "fleet",
        parents=[common],
        help=FLEET_HELP,
        description=FLEET_DESCRIPTION,
        epilog=FLEET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet.add_argument(
        "fleet", metavar="DIR|MANIFEST.toml|s3://BUCKET/PREFIX/",  # a str: a Path would fold the URL's '//'
        help="the fleet's directory, manifest or S3 prefix",
    )
    fleet.set_defaults(func=run_fleet, exit_without_teardown=True, ends_startup=True)


def _check_output_path(target: str, inputs: list[Location]) -> None:
    from diag.capture.source import exists_quietly

    resolved = Path(target).resolve()
    for path in inputs:
        if exists_quietly(path) and path.resolve() == resolved:
            raise DiagError(f"{target}: is one of the input captures; choose another output file")


def _analyze_here(
    pairs: list[tuple[str, Location]], progress: ProgressHook | None, packet_filter: FilterNode | None
) -> Report:
    """``analyze`` in this process, its captures read from the start in the background: the compiled
    reading runs on one CPU while pandas and the later stages are imported on the other."""
    from diag.capture.points import group_points
    from diag.capture.sidebyside import BackgroundRead

    started = BackgroundRead(pairs, progress)
    try:
        from diag.analysis import analyze

        end_startup()
        _ready_the_stages_after_reading()
        return analyze(group_points(pairs), progress=progress, packet_filter=packet_filter, started=started)
    finally:
        started.cancel()  # nothing left to stop once analyze took the result; an error: the reads stop


def _ready_the_stages_after_reading() -> None:
    """Load what the flow table, the correlation, the diagnosis and the reports need on first use, while the
    captures are still being read: a process otherwise waits for it after reading, about 40-70 ms of loading
    compiled loops (``diag.compiled.load_from_cache``) and importing modules, and 30-50 ms of setting up
    pyarrow's strings at the end of the read. A name no longer there costs nothing but the wait: its first
    use loads it, as before."""
    from diag.compiled import load_from_cache

    for module_name, names in LOOPS_AFTER_READING.items():
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
            load_from_cache(getattr(module, name, None) for name in names)
    for module_name in MODULES_AFTER_READING:
        with contextlib.suppress(ImportError):
            importlib.import_module(module_name)
    # The process's first column with text categories sets up pyarrow's strings (about 30-50 ms, most of it
    # once per process); otherwise the reader's table pays it when its read is done, on the path waited on.
    import numpy as np

    from diag.capture.addresses import categorical

    categorical(np.zeros(1, dtype=np.int8), [""])


def _plot(report: Report, target: str, force: bool) -> None:
    if importlib.util.find_spec("diag.plot") is None:
        raise DiagError("--plot needs the diag.plot module, which this installation does not have")
    plot = importlib.import_module("diag.plot")
    from diag.commands.output import atomic_path

    with atomic_path(Path(target), force, "--plot") as temporary:
        plot.ladder_to_file(report, temporary)


def _focus_options(args: argparse.Namespace) -> tuple[FilterNode | None, FlowSelector | None]:
    """--filter and --flow checked before any capture is read: a typo costs no analysis."""
    from diag.capture.filter import FilterError, parse_filter

    packet_filter = None
    if args.filter is not None:
        try:
            packet_filter = parse_filter(args.filter)
        except FilterError as error:
            raise DiagError(f"--filter: {error}") from None
    if args.flow is None:
        return packet_filter, None
    # diag.report.focus loads pandas: only for --flow, so that otherwise the captures are being read meanwhile.
    from diag.report.focus import parse_flow_selector

    return packet_filter, parse_flow_selector(args.flow)


def _focus(report: Report, selector: FlowSelector) -> Report:
    from diag.report.focus import focus_report
    from diag.spilled import SpilledFlows

    # A flow table on disk (passes): only the selected connections' rows are read back, a block at a time.
    store = report.flow_store if isinstance(report.flow_store, SpilledFlows) else None
    focused = focus_report(report, selector, store)
    flows = report.flow_digest.flows if store is not None and report.flow_digest is not None else len(report.flows)
    if store is not None:
        store.close()
    print(
        f"diag: --flow {selector}: {len(focused.findings)} of {len(report.findings)} findings, "
        f"{len(focused.flows)} of {flows} flow rows",
        file=sys.stderr,
    )
    return focused


def run_pcap(args: argparse.Namespace) -> int:
    from diag.capture.points import parse_capture_args

    return _analyze_and_report(args, parse_capture_args(args.captures))


def run_fleet(args: argparse.Namespace) -> int:
    from diag.capture.points import parse_capture_args
    from diag.fleet import fleet_points

    return _analyze_and_report(args, parse_capture_args(fleet_points(args.fleet)))


def _warn_if_filtered_out(expression: str, report: Report) -> None:
    """A filter that left no flow gives a report of nothing, whose verdict reads 'healthy': said on stderr,
    as --flow with no packet is refused (a filter may rightly leave nothing, so this is no error)."""
    if report.findings:
        return
    digest = report.flow_digest
    flows = digest.flows if digest is not None else len(report.flows)
    if not flows:
        print(
            f"diag: warning: --filter {expression!r} matched no TCP or UDP flow in the captures: "
            "the verdict below is of nothing",
            file=sys.stderr,
        )


def _cluster_option(args: argparse.Namespace) -> ClusterSpec | None:
    """``diag.cluster.cluster_from``'s answer, loading that module (and the whole analysis) only when
    --cluster or $DIAG_CLUSTER asks for one: without, the captures are read while the rest loads."""
    if args.cluster is None and not os.environ.get(CLUSTER_ENVIRONMENT, "").strip():
        return None
    from diag.cluster import cluster_from

    return cluster_from(args.cluster)


def _analyze_and_report(args: argparse.Namespace, pairs: list[tuple[str, Location]]) -> int:
    """Both sub-commands from here on: the same options, analysis and rendering."""
    from diag.commands.progress import stage_progress
    from diag.memory import budget_option, set_budget

    set_budget(budget_option(args.max_memory))
    cluster = _cluster_option(args)
    packet_filter, selector = _focus_options(args)
    inputs = [path for _, path in pairs]
    for target in (args.json, args.plot):
        if target and target != "-":
            _check_output_path(target, inputs)
    # Outputs are checked before any work (see diag.commands.output): no analysis ends in a refusal.
    from diag.commands.output import check_output, check_plot, write_atomically_with

    if args.json and args.json != "-":
        check_output(args.json, args.force, "--json")
    if args.plot:
        check_plot(args.plot, args.force)
    if args.export:
        from diag.commands.outfiles import check_export

        check_export(args.export, inputs, args.force)
    with stage_progress(args.quiet) as progress:
        if cluster is None:
            report = _analyze_here(pairs, progress, packet_filter)
        else:
            from diag.analysis import analyze
            from diag.capture.points import group_points
            from diag.cluster import analyze_on, cluster_client

            end_startup()
            with cluster_client(cluster, pairs) as client:
                if client is None:
                    report = analyze(group_points(pairs), progress=progress, packet_filter=packet_filter)
                else:
                    # These outputs read the packet and flow tables themselves: gathered to this process. Otherwise
                    # only the report's counts, findings and the flow rows it shows come back from the workers.
                    whole = bool(args.export or args.plot or selector is not None or args.flows == "all")
                    report = analyze_on(
                        client, pairs, progress=progress, packet_filter=packet_filter, whole_tables=whole
                    )
    print_capture_warnings(report.captures)
    if packet_filter is not None:
        _warn_if_filtered_out(args.filter, report)
    store = report.flow_store
    if store is not None and (args.flows == "all" or args.export or args.plot):
        # These use every flow row: the table an analysis in passes kept on disk is read back whole.
        report = replace(report, flows=store.load(), flow_digest=None, flow_store=None)
        store.close()
    if selector is not None:
        report = _focus(report, selector)

    from diag.report.flowcap import FLOW_LIMIT
    from diag.report.jsondoc import dumps, write_json
    from diag.report.text import render_text

    # The JSON's flows are capped like the text's (problems first), unless --flows all.
    flow_limit = None if args.flows == "all" else FLOW_LIMIT
    if args.json == "-":
        binary = getattr(sys.stdout, "buffer", None)
        if binary is None:  # a text stream with no bytes beneath (a caller's StringIO)
            sys.stdout.write(dumps(report, flow_limit) + "\n")
        else:  # a large document is written piece by piece (see write_json)
            sys.stdout.flush()
            write_json(report, binary, flow_limit)
    else:
        color = args.color == "always" or (
            args.color == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        )
        sys.stdout.write(render_text(report, color=color, flows=args.flows, all_findings=args.all_findings))
        if args.json:
            write_atomically_with(
                Path(args.json), lambda sink: write_json(report, sink, flow_limit), args.force, "--json"
            )
    if args.plot:
        _plot(report, args.plot, args.force)
    if args.export:
        from diag.commands.outfiles import export_report

        export_report(report, args.export, args.force)
    sys.stdout.flush()
    return 0
