"""``diag lab up|down|ls|exec|show``: build a topology and explore it by hand."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from diag.commands.options import add_lab_path
from diag.errors import LabError

if TYPE_CHECKING:
    from diag.lab.topology import Topology

DESCRIPTION = """\
Build a topology's network in Linux namespaces and leave it up to explore.
Each node is a namespace named diag-<lab>-<node>; the kernel itself does the
NAT, the forwarding and the resets."""

EPILOG = """\
examples:
  diag lab up incident --dry-run     print every command and rule set, change nothing
  diag lab up incident --name demo   build it (prints the lab's name)
  diag lab exec client -- python3 -c 'import socket; socket.create_connection(("198.51.100.10", 80), 2)'
  diag lab show natgw                addresses, routes, rules, counters, conntrack
  diag lab down demo                 tear it down (--all: every lab, also what a killed run left)
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("lab", help="build, explore and tear down lab topologies",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="lab_command", metavar="ACTION")
    commands.required = True

    up = commands.add_parser("up", help="build a topology and leave it up")
    up.add_argument("topology", nargs="?", default="incident",
                    help="a topology name (default: incident; see --lab-path) or a path to a .toml file")
    up.add_argument("--name", help="lab name (1-12 lower-case letters and digits; default: random)")
    up.add_argument("--dry-run", action="store_true", help="print the shell commands and rule sets instead")
    up.add_argument("--clean-leftovers", action="store_true",
                    help="first tear down labs whose owner process is gone (leftovers of killed runs)")
    add_lab_path(up)
    up.set_defaults(func=cmd_up)

    down = commands.add_parser("down", help="tear a lab down")
    target = down.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="the lab to tear down")
    target.add_argument("--all", action="store_true", help="every lab on this host, also leftovers of killed runs")
    down.set_defaults(func=cmd_down)

    ls = commands.add_parser("ls", help="list labs on this host")
    ls.set_defaults(func=cmd_ls)

    exec_ = commands.add_parser("exec", help="run a command inside a node's namespace")
    exec_.add_argument("--lab", help="lab name (default: the only lab up)")
    exec_.add_argument("node")
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    exec_.set_defaults(func=cmd_exec)

    show = commands.add_parser("show", help="a node's addresses, routes, rules, rule counters and conntrack")
    show.add_argument("--lab", help="lab name (default: the only lab up)")
    show.add_argument("node")
    show.set_defaults(func=cmd_show)


def cmd_up(args: argparse.Namespace) -> int:
    from diag.lab import Lab, build_plan, lab_up, load_topology, render_shell

    topology = load_topology(args.topology)
    if args.dry_run:
        Lab(topology, args.name)  # validates the name
        print(render_shell(build_plan(topology, args.name or "LAB")), end="")
        return 0
    if args.clean_leftovers:
        report_cleaned()
    started = time.monotonic()
    lab = lab_up(topology, args.name)
    elapsed = time.monotonic() - started
    print(f"lab {lab.name} up: topology {topology.name}, {len(topology.nodes)} namespaces in {elapsed:.2f} s")
    if _has_service(topology):
        address, port = topology.service
        print(f"  clients connect to {address}:{port}")
    print(f"  diag lab exec --lab {lab.name} client -- COMMAND    diag lab down {lab.name}")
    return 0


def report_cleaned() -> None:
    """Tear down the leftovers of killed runs, saying which (``--clean-leftovers``)."""
    from diag.lab.lab import clean_leftovers, preflight

    preflight()
    removed = clean_leftovers()
    if removed:
        print(f"diag: removed {len(removed)} leftover lab(s): {', '.join(removed)}", file=sys.stderr)


def _has_service(topology: Topology) -> bool:
    try:
        topology.service  # noqa: B018 - a property that raises without an nlb
    except LabError:
        return False
    return True


def cmd_down(args: argparse.Namespace) -> int:
    from diag.lab import lab_down, lab_down_all
    from diag.lab.lab import preflight

    preflight()
    if args.all:
        removed = lab_down_all()
        print(f"removed {len(removed)} lab(s)" + (f": {', '.join(removed)}" if removed else ""))
    else:
        lab_down(args.name)
        print(f"lab {args.name} down")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from diag.lab import list_labs

    labs = list_labs()
    if not labs:
        print("no labs up")
        return 0
    print(f"{'NAME':<12} {'TOPOLOGY':<22} {'NAMESPACES':>10}  {'AGE':>8}  STATE")
    now = time.time()
    for info in labs:
        age = f"{now - info.created:.0f}s" if info.created else "?"
        if info.owner_gone:
            status = f"leftover: its run was killed (diag lab down {info.name}, or --clean-leftovers)"
        elif info.leftover:
            status = f"leftover: incomplete (diag lab down {info.name})"
        else:
            status = "up"
        print(f"{info.name:<12} {info.topology or '?':<22} {info.namespaces:>10}  {age:>8}  {status}")
    return 0


def _pick_lab(name: str | None) -> str:
    from diag.lab import list_labs

    if name:
        return name
    labs = [info.name for info in list_labs() if not info.leftover]
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is up (diag lab up)")
    raise LabError(f"several labs are up ({', '.join(labs)}): say which with --lab")


def cmd_exec(args: argparse.Namespace) -> int:
    from diag.lab import Lab
    from diag.lab.lab import preflight

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise LabError("give the command after --, e.g. diag lab exec client -- ip route")
    preflight()
    lab = Lab.attach(_pick_lab(args.lab))
    netns = lab.netns(args.node)
    sys.stdout.flush()
    try:
        return subprocess.call(["ip", "netns", "exec", netns, *command])
    except KeyboardInterrupt:
        return 130


def cmd_show(args: argparse.Namespace) -> int:
    from diag.lab import Lab
    from diag.lab.inspect import render_state
    from diag.lab.lab import preflight

    preflight()
    lab = Lab.attach(_pick_lab(args.lab))
    netns = lab.netns(args.node)
    print(render_state(args.node, netns, lab.state(args.node)), end="")
    return 0
