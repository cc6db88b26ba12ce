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
