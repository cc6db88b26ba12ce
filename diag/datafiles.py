"""Where the shipped topologies, scenarios and reference captures are, and the user's own lab folders.

The top-level ``lab/`` and ``captures/`` folders of the source tree are shipped
inside the wheel as ``diag/_shipped/lab`` and ``diag/_shipped/captures`` (see
pyproject.toml) and found with ``importlib.resources``; an editable install
or a source checkout reads them where they are.

A user's own lab folders are laid out like ``lab/``: ``DIR/topologies/*.toml``
and ``DIR/scenarios/*.toml``. They are searched before the shipped ones, in
order: every ``--lab-path DIR`` given on the command line, then the entries of
``DIAG_LAB_PATH`` (separated like ``PATH``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

LAB_PATH_VARIABLE = "DIAG_LAB_PATH"


def _shipped(name: str) -> Path:
    installed = Path(str(resources.files("diag"))) / "_shipped" / name
    if installed.is_dir():
        return installed
    # An editable install or a checkout: the folder beside the package.
    return Path(__file__).resolve().parent.parent / name


def shipped_lab_dir() -> Path:
    return _shipped("lab")


def shipped_captures_dir() -> Path:
    return _shipped("captures")


def add_lab_paths(dirs: Iterable[os.PathLike[str] | str]) -> None:
    """Search these folders first (the command line's ``--lab-path``); child processes inherit them."""
    given = [os.fspath(Path(d).resolve()) for d in dirs]
    if not given:
        return
    current = os.environ.get(LAB_PATH_VARIABLE, "")
    os.environ[LAB_PATH_VARIABLE] = os.pathsep.join([*given, *([current] if current else [])])


def lab_dirs() -> list[Path]:
    """The lab folders in search order: the user's first, the shipped one last."""
    user = [Path(entry) for entry in os.environ.get(LAB_PATH_VARIABLE, "").split(os.pathsep) if entry]
    return [*user, shipped_lab_dir()]


def find_lab_file(kind: str, name: str) -> Path | None:
    """``<dir>/<kind>/<name>.toml`` in the first lab folder that has it (kind: topologies or scenarios)."""
    for directory in lab_dirs():
        candidate = directory / kind / f"{name}.toml"
        if candidate.is_file():
            return candidate
    return None


def lab_file_names(kind: str) -> list[str]:
    """Every name of that kind across the lab folders, each once, sorted."""
    names: set[str] = set()
    for directory in lab_dirs():
        folder = directory / kind
        if folder.is_dir():
            names.update(path.stem for path in folder.glob("*.toml"))
    return sorted(names)
