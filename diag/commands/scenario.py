"""``diag run-scenario``: reproduce a failure in the lab, capture at every hop, and say what happened."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from diag.commands.options import add_lab_path
from diag.errors import DiagError

HELP = "build a lab scenario, capture at every hop, drive its traffic, analyze (default: the incident)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run-scenario", help=HELP, description=HELP[0].upper() + HELP[1:] + ".",
        epilog="Output directory: captures (<point>.pcapng, one interface per pcapng interface block), "
        "run.json, report.json, report.txt, ladder.png. An existing --out must be empty or hold "
        "a previous run-scenario output, which --force replaces.",
    )
    parser.add_argument("name", nargs="?", default="incident", metavar="NAME",
                        help="scenario name in lab/scenarios or a path to a scenario TOML (default: incident)")
    parser.add_argument("--fix", metavar="FIX", help="run on the fixed topology fix-FIX (e.g. snat, local)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: ./diag-out/<scenario>-<UTC timestamp>)")
    parser.add_argument("--json", metavar="FILE|-", help="also write the diag.report/1 document here (- for stdout)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --json file, and a previous run's output in --out")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards to explore it")
    parser.add_argument("--clean-leftovers", action="store_true",
                        help="first tear down labs whose owner process is gone (leftovers of killed runs)")
    add_lab_path(parser)
    parser.add_argument("--list", action="store_true", help="describe every scenario and fix, one line each")
    parser.add_argument("--snaplen", type=int, default=262144, metavar="N", help="bytes captured per packet")
    parser.add_argument("--watch", action="store_true",
                        help="also run 'diag watch' over every capture point during the traffic (watch.jsonl)")
    parser.set_defaults(func=run)


def list_scenarios() -> str:
    from diag.lab.topology import load_topology, topology_names
    from diag.scenario.runner import available_fixes
    from diag.scenario.spec import available_scenarios, load_scenario

    lines = ["scenarios (diag run-scenario NAME):"]
    for name in available_scenarios():
        scenario = load_scenario(name)
        cause = f" [{scenario.expect_cause}]" if scenario.expect_cause else ""
        lines.append(f"  {name:<22} {scenario.description}{cause}")
    lines.append("fixes (diag run-scenario --fix FIX):")
    for fix in available_fixes(topology_names()):
        lines.append(f"  {fix:<22} {load_topology('fix-' + fix).description}")
    return "\n".join(lines)


def _progress(line: str) -> None:
    print(f"diag: {line}", file=sys.stderr, flush=True)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before the lab is built: the --json file and the --out directory may be written."""
    from diag.commands.output import check_output

    if args.json and args.json != "-":
        check_output(args.json, args.force, "--json")
    out: Path | None = args.out
    if out is None:
        return
    if out.is_symlink():
        raise DiagError(f"--out {out}: is a symbolic link; diag does not write through links")
    try:
        occupied = out.is_dir() and any(out.iterdir())
    except OSError as error:
        raise DiagError(f"--out {out}: {error.strerror or error}") from None
    if occupied and not args.force:
        raise DiagError(f"--out {out}: not empty (--force replaces a previous run-scenario output there)")


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(list_scenarios())
        return 0
    from diag.scenario.runner import default_out_dir, run_scenario, with_fix
    from diag.scenario.spec import load_scenario

    if args.snaplen <= 0:
        raise DiagError(f"--snaplen must be positive, not {args.snaplen}")
    scenario = load_scenario(args.name)
    if args.fix:
        scenario = with_fix(scenario, args.fix)
    if os.geteuid() != 0:
        raise DiagError("run-scenario builds network namespaces and needs root (try: sudo diag run-scenario)")
    _check_outputs(args)
    if args.clean_leftovers:
        from diag.commands.lab import report_cleaned

        report_cleaned()
    out_dir = args.out or default_out_dir(scenario)
    _progress(f"scenario {scenario.name}: {scenario.description}")
    result = run_scenario(scenario, out_dir, snaplen=args.snaplen, keep_lab=args.keep_lab, progress=_progress,
                          watch=args.watch)
    for warning in result.warnings:
        _progress(f"warning: {warning}")
    if result.report is not None:
        from diag.report.text import render_text

        if args.json == "-":
            print(result.report.dumps())  # stdout is the JSON document alone, for piping
        else:
            print(render_text(result.report))
        if args.json and args.json != "-":
            from diag.commands.output import write_atomically

            write_atomically(Path(args.json), result.report.dumps() + "\n", args.force, "--json")
    else:
        for step in result.steps:
            print(f"{step.label}: {step.outcome}")
    _progress(f"output in {out_dir}")
    if result.analysis_error:
        _progress(f"the analysis failed ({result.analysis_error}); the captures are in {out_dir}")
        return 1
    return 0
