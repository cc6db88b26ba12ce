"""``diag aws check`` and ``diag aws export-lab``: judge an AWS account's NLB setup, or turn it into a lab."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diag.errors import DiagError

HELP = "look for the risky NLB / NAT gateway setup in an AWS account, or export it as a lab topology"
CHECK_HELP = "read the account's Network Load Balancers, routes and NAT gateways and report what can reset connections"
EXPORT_HELP = "write the account's load balancer, subnets and NAT gateway as a lab topology TOML"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", metavar="P", help="AWS profile (default: the standard credential chain)")
    parser.add_argument("--region", metavar="R", help="AWS region (default: from the profile or AWS_REGION)")
    parser.add_argument("--lb", metavar="NAME|ARN", help="only this load balancer (default: every NLB in the region)")
    # For tests and AWS emulators; real accounts use each service's regional endpoint.
    parser.add_argument("--endpoint-url", metavar="URL", help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("aws", help=HELP, description=_sentence(HELP))
    commands = parser.add_subparsers(dest="aws_command", metavar="SUBCOMMAND")
    commands.required = True

    check = commands.add_parser(
        "check", help=CHECK_HELP, description=_sentence(CHECK_HELP),
        epilog="Needs read-only permissions: elasticloadbalancing:Describe*, ec2:DescribeInstances, "
        "ec2:DescribeSubnets, ec2:DescribeRouteTables, ec2:DescribeNatGateways, ec2:DescribeVpcs, "
        "cloudwatch:GetMetricData (unless --no-metrics), logs:FilterLogEvents (with --flow-logs-group).",
    )
    _add_connection_options(check)
    check.add_argument("--since", default="24h", metavar="DURATION",
                       help="metrics and log-group window, e.g. 90m, 24h, 7d (default: 24h)")
    check.add_argument("--no-metrics", action="store_true", help="do not read CloudWatch metrics")
    flows = check.add_mutually_exclusive_group()
    flows.add_argument("--flow-logs", type=Path, metavar="FILE", help="VPC flow log file (plain or .gz)")
    flows.add_argument("--flow-logs-group", metavar="NAME", help="CloudWatch Logs group that receives VPC flow logs")
    check.add_argument("--format", metavar="FIELDS", dest="flow_format",
                       help="the flow logs' custom format, e.g. '${version} ${interface-id} ...' "
                       "(default: the file's header line, else the default version 2 format)")
    check.add_argument("--json", metavar="FILE|-", help="write the diag.report/1 document here (- for stdout only)")
    check.set_defaults(func=run_check)

    export = commands.add_parser("export-lab", help=EXPORT_HELP, description=_sentence(EXPORT_HELP))
    _add_connection_options(export)
    export.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.toml", help="where to write")
    export.add_argument("--force", action="store_true", help="replace FILE.toml if it exists")
    export.add_argument("--forwarding", choices=("dnat", "cluster", "local"), default="dnat",
                        help="how nodes forward to pods, which AWS cannot show: dnat = to the pod on the next node "
                        "without SNAT (the risky case, default), cluster/local = kube-proxy with that "
                        "externalTrafficPolicy")
    export.set_defaults(func=run_export)


def run_check(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import botocore.exceptions

    from diag.aws.assess import assess
    from diag.aws.flowlogs import FlowLog, parse_format, read_file, read_log_group
    from diag.aws.inventory import read_inventory
    from diag.aws.metrics import MetricsWindow, parse_since, read_metrics
    from diag.aws.render import render_text
    from diag.aws.session import aws_errors, connect, is_access_denied, translate

    since = parse_since(args.since)
    flow_format = parse_format(args.flow_format) if args.flow_format else None
    flow_log: FlowLog | None = None
    if args.flow_logs is not None:
        flow_log = read_file(args.flow_logs, flow_format)  # bad input fails before any AWS call
    now = datetime.now(UTC)
    with aws_errors():
        clients = connect(args.profile, args.region, args.endpoint_url)
        inventory = read_inventory(clients, args.lb)
        metrics: MetricsWindow | None = None
        if not args.no_metrics:
            try:
                metrics = read_metrics(clients.cloudwatch, inventory, since, now)
            except botocore.exceptions.ClientError as error:
                if not is_access_denied(error):
                    raise
                raise DiagError(f"{translate(error)} (or skip metrics with --no-metrics)") from error
        if args.flow_logs_group:
            end_ms = int(now.timestamp() * 1000)
            start_ms = end_ms - int(since.total_seconds() * 1000)
            flow_log = read_log_group(clients.logs, args.flow_logs_group, start_ms, end_ms, flow_format)
    assessment = assess(inventory, metrics, flow_log)
    if args.json == "-":
        print(assessment.report.dumps())
        return 0
    print(render_text(assessment), end="")
    if args.json:
        _write(Path(args.json), assessment.report.dumps() + "\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from diag.aws.export import export_topology
    from diag.aws.inventory import read_inventory
    from diag.aws.session import aws_errors, connect

    output: Path = args.output
    if output.exists() and not args.force:
        raise DiagError(f"{output} exists; give --force to replace it")
    with aws_errors():
        clients = connect(args.profile, args.region, args.endpoint_url)
        inventory = read_inventory(clients, args.lb)
    text, notes = export_topology(inventory, args.lb, args.forwarding)
    _write(output, text)
    for note in notes:
        print(f"diag: note: {note}", file=sys.stderr)
    print(f"wrote {output}")
    return 0


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        raise DiagError(f"cannot write {path}: {error.strerror or error}") from error
