"""``diag replay``: play the client side of a recorded conversation against a live lab scenario."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from diag.commands.options import add_lab_path
from diag.errors import DiagError

HELP = "replay one recorded TCP/UDP conversation's client side against a live lab and report the differences"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay", help=HELP, description=HELP[0].upper() + HELP[1:] + ".",
        epilog="The recorded client packets are rewritten onto the lab's client and service; TCP sequence "
        "numbers follow the live server's ISN, so the handshake really happens.",
    )
    parser.add_argument("capture", type=Path, metavar="CAPTURE", help="pcap or pcapng holding the conversation")
    choose = parser.add_mutually_exclusive_group()
    choose.add_argument("--flow", type=int, metavar="N", help="conversation number, as --list shows it")
    choose.add_argument("--stream", metavar="C:P-S:Q", help="conversation by its endpoints, CLIENT:PORT-SERVER:PORT")
    parser.add_argument("--list", action="store_true", help="list the capture's conversations and exit")
    parser.add_argument("--scenario", default="incident", metavar="NAME",
                        help="the lab to replay against: its topology and setup (default: incident)")
    parser.add_argument("--fix", metavar="FIX", help="use the fixed topology fix-FIX")
    parser.add_argument("--out", type=Path, metavar="DIR", help="keep the live captures here")
    parser.add_argument("--json", metavar="FILE|-", help="write the replay result as JSON")
    add_lab_path(parser)
    parser.set_defaults(func=run)


def _describe(result: dict[str, Any]) -> str:
    handshake = ""
    if str(result.get("conversation", "")).startswith("tcp"):
        handshake = f"handshake {'completed' if result.get('handshake') else 'not completed'}, "
    lines = [f"replayed {result.get('conversation', '?')}: {result.get('outcome', '?')} "
             f"({handshake}{result.get('sent', 0)} sent, {result.get('received', 0)} received)"]
    for departure in result.get("departures", []):
        where = f"recorded packet {departure['recorded_index']}" if departure["recorded_index"] is not None \
            else "after the recording"
        note = f" ({departure['note']})" if departure.get("note") else ""
        lines.append(f"  {where}: recorded {departure['recorded']}, live {departure['live']}{note}")
    if result.get("error"):
        lines.append(f"  error: {result['error']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from diag import read_capture
    from diag.scenario.conversation import choose_conversation, list_conversations

    packets = read_capture(args.capture)
    if args.list:
        for number, summary in enumerate(list_conversations(packets)):
            print(f"{number:4d}  {summary.proto}  {summary.client[0]}:{summary.client[1]} -> "
                  f"{summary.server[0]}:{summary.server[1]}  {summary.packets} packets")
        return 0
    conversation = choose_conversation(packets, args.flow, args.stream)  # bad choices fail before any lab
    from diag.scenario.runner import run_scenario, with_fix
    from diag.scenario.spec import Step, load_scenario

    scenario = load_scenario(args.scenario)
    if args.fix:
        scenario = with_fix(scenario, args.fix)
    if os.geteuid() != 0:
        raise DiagError("replay builds network namespaces and needs root (try: sudo diag replay ...)")
    options: dict[str, Any] = {"capture": str(args.capture.resolve())}
    if args.stream:
        options["stream"] = args.stream
    elif args.flow is not None:
        options["flow"] = args.flow
    step = Step(kind="replay", node="client", target="service", timeout=30.0, name="replay", options=options)
    scenario = replace(scenario, steps=(step,), expect_cause="", expect_packets=())
    print(f"diag: replaying {conversation.label} ({len(conversation.segments)} packets) "
          f"against {scenario.topology}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="diag-replay-") as scratch:
        out_dir = args.out or Path(scratch) / "out"
        result = run_scenario(scenario, out_dir, analyze=False,
                              progress=lambda line: print(f"diag: {line}", file=sys.stderr))
    detail = dict(result.steps[0].detail) if result.steps else {}
    print(_describe(detail))
    if args.json == "-":
        print(json.dumps(detail, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(detail, indent=2) + "\n")
    return 0
