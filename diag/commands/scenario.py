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
        "a previous run-scenario output, which is replaced.",
    )
    parser.add_argument("name", nargs="?", default="incident", metavar="NAME",
                        help="scenario name in lab/scenarios or a path to a scenario TOML (default: incident)")
    parser.add_argument("--fix", metavar="FIX", help="run on the fixed topology fix-FIX (e.g. snat, local)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: ./diag-out/<scenario>-<UTC timestamp>)")
    parser.add_argument("--json", metavar="FILE|-", help="also write the diag.report/1 document here (- for stdout)")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards to explore it")
    add_lab_path(parser)
    parser.add_argument("--list", action="store_true", help="describe every scenario and fix, one line each")
    parser.add_argument("--snaplen", type=int, default=262144, metavar="N", help="bytes captured per packet")
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
    out_dir = args.out or default_out_dir(scenario)
    _progress(f"scenario {scenario.name}: {scenario.description}")
    result = run_scenario(scenario, out_dir, snaplen=args.snaplen, keep_lab=args.keep_lab, progress=_progress)
    for warning in result.warnings:
        _progress(f"warning: {warning}")
    if result.report is not None:
        from diag.report.text import render_text

        if args.json == "-":
            print(result.report.dumps())  # stdout is the JSON document alone, for piping
        else:
            print(render_text(result.report))
        if args.json and args.json != "-":
            try:
                Path(args.json).write_text(result.report.dumps() + "\n")
            except OSError as error:
                raise DiagError(f"--json {args.json}: cannot write: {error.strerror}") from None
    else:
        for step in result.steps:
            print(f"{step.label}: {step.outcome}")
    _progress(f"output in {out_dir}")
    if result.analysis_error:
        _progress(f"the analysis failed ({result.analysis_error}); the captures are in {out_dir}")
        return 1
    return 0
