"""``diag flows``: write the flow table of each capture point as Zeek's conn.log, CSV, Parquet or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from diag.commands.capturewarnings import print_capture_warnings
from diag.commands.options import add_max_memory
from diag.errors import DiagError

if TYPE_CHECKING:
    import pandas as pd

HELP = "write the flow table of each capture point as Zeek's conn.log, CSV, Parquet or JSON"

DESCRIPTION = """\
Read captures and write their flow table, one file per capture point: one row
per TCP, UDP or ICMP connection with Zeek's history letters and connection
state. Each PATH is named as in 'diag analyze pcap' (NAME=, several files of one
point, a directory, '-' for standard input, s3://BUCKET/KEY).

  conn.log  Zeek's TSV log, header lines and all, for zeek-cut and the tools
            that read Zeek logs (fields diag does not compute are '-')
  csv       every column of the flow table (docs/analyze.md), rsts as JSON
  parquet   the same table, typed (rsts as a list of structs)
  json      the records of the report's "flows" member, as a JSON array
"""

EPILOG = """\
examples:
  diag flows pod.pcap --format conn.log | zeek-cut id.orig_h id.resp_h conn_state history
  diag flows client=c.pcap pod=p.pcap --format parquet -o flows/
      writes flows/client.flows.parquet and flows/pod.flows.parquet

output:
  Without -o, the one capture point's file goes to stdout (several points need
  -o). With -o DIR (created if missing) the files are NAME.conn.log,
  NAME.flows.csv, NAME.flows.parquet or NAME.flows.json. An existing file is
  never replaced unless --force is given.

exit status:
  0  the files were written
  2  bad usage, an existing output file, or a capture that cannot be read
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "flows",
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "captures", nargs="+", metavar="[NAME=]PATH",
        help="a capture file, a directory of one point's files, '-' (standard input) or an s3://BUCKET/KEY "
        "object, optionally named",
    )  # fmt: skip
    # Checked in run() rather than with choices= and required=: missing or wrong, the line lists the formats.
    parser.add_argument("--format", metavar="FORMAT", help="conn.log, csv, parquet or json (required)")
    parser.add_argument(
        "-o", "--output", type=Path, metavar="DIR",
        help="write one file per capture point here (default: the one point's file on stdout)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace output files that already exist")
    add_max_memory(parser, analysis=False)
    parser.set_defaults(func=run)


def _check_format(fmt: str | None) -> str:
    from diag.report.export import FLOW_FORMATS

    choices = ", ".join(FLOW_FORMATS)
    if fmt is None:
        raise DiagError(f"flows: give --format ({choices})")
    if fmt not in FLOW_FORMATS:
        raise DiagError(f"flows: unknown format {fmt!r} (choose {choices})")
    return fmt


def _targets(directory: Path, points: list[str], fmt: str) -> list[Path]:
    from diag.report.export import flow_file_name

    try:
        return [directory / flow_file_name(point, fmt) for point in points]
    except ValueError as error:
        raise DiagError(f"flows: {error}; name the point with NAME=PATH") from error


def render(flows: pd.DataFrame, fmt: str) -> bytes:
    """One point's flows in the format, as the bytes of the file."""
    import io

    from diag.report.jsondoc import flows_to_json
    from diag.report.zeeklog import conn_log

    if fmt == "conn.log":
        # Zeek stamps #open and #close with the local wall clock of the writer.
        opened = datetime.now()
        return conn_log(flows, opened, datetime.now()).encode()
    if fmt == "json":
        return (json.dumps(flows_to_json(flows), indent=2, allow_nan=False) + "\n").encode()
    buffer = io.BytesIO()
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        from diag.report.export import csv_arrow_table

        pa_csv.write_csv(csv_arrow_table(flows), buffer)
        return buffer.getvalue()
    import pyarrow.parquet as pq

    from diag.report.export import arrow_table

    pq.write_table(arrow_table(flows), buffer)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from diag.analysis import parse_capture_args, read_captures
    from diag.capture.points import concat_packets
    from diag.commands.outfiles import check_dir, check_targets, make_dir, write_bytes
    from diag.flows import build_flows
    from diag.memory import MemoryBudgetError, budget_option, current_budget, set_budget
    from diag.report.export import point_flows

    fmt = _check_format(args.format)
    set_budget(budget_option(args.max_memory))
    pairs = parse_capture_args(args.captures)
    points = list(dict.fromkeys(name for name, _ in pairs))
    inputs = [path for _, path in pairs]
    if args.output is None and len(points) > 1:
        raise DiagError(f"flows: {len(points)} capture points ({', '.join(points)}); give -o DIR for one file each")
    if args.output is None and fmt == "parquet" and sys.stdout.isatty():
        raise DiagError("flows: Parquet is binary; give -o DIR or redirect stdout to a file")
    targets: list[Path] = []
    if args.output is not None:
        check_dir(args.output, "-o")
        targets = _targets(args.output, points, fmt)
        check_targets(targets, inputs, args.force, "-o")

    try:
        tables, infos = read_captures(pairs)
        flows = build_flows(concat_packets(tables), icmp=True)
        del tables
    except MemoryBudgetError as error:
        # Every packet at once would not fit: the flow table in partitions, one pass over the files each.
        from diag.passes import flows_in_passes

        limit = current_budget().limit
        if limit is None:
            raise
        flows, infos = flows_in_passes(pairs, limit, refusal=error)
    print_capture_warnings(infos)
    per_point = point_flows(flows, points)

    if args.output is None:
        sys.stdout.buffer.write(render(per_point[0][1], fmt))
        sys.stdout.flush()
        return 0
    make_dir(args.output, "-o")
    for target, (_point, table) in zip(targets, per_point, strict=True):
        write_bytes(target, render(table, fmt), args.force, "-o")
    return 0
