"""Options that several commands share, declared once."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_lab_path(parser: argparse.ArgumentParser) -> None:
    """``--lab-path DIR``: the user's own topologies and scenarios, searched before the shipped ones."""
    parser.add_argument(
        "--lab-path", action="append", type=Path, default=[], metavar="DIR",
        help="a folder laid out like lab/ (DIR/topologies/*.toml, DIR/scenarios/*.toml) searched before the "
        "shipped ones; may be repeated; the DIAG_LAB_PATH variable adds more",
    )  # fmt: skip


def add_max_memory(parser: argparse.ArgumentParser, *, analysis: bool = True) -> None:
    """``--max-memory SIZE``: the budget a read must fit in (``diag.memory``; ``diag.passes`` beyond it).

    ``analysis``: the command is an analysis (``analyze``), whose --flows all, --export and --plot are
    named; ``diag flows`` has none of them, and its table is returned whole, so it must fit.
    """
    common = (
        "the memory the captures' packets may take (512M, 2G, 1.5GiB; default: half the memory available, "
        "or of the cgroup's limit if lower); "
    )
    if analysis:
        rest = (
            "captures that need more are analysed in passes, with the same result; standard input, and "
            "candidates that do not fit even then, stop with one line; in passes, --flows all, --export and "
            "--plot read the whole flow table back into memory"
        )
    else:
        rest = (
            "captures that need more are read in passes; standard input, and a flow table that does not fit "
            "even then, stop with one line"
        )
    parser.add_argument("--max-memory", metavar="SIZE", help=common + rest)
