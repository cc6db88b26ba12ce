"""What a live lab leaves under /run so other processes can find it.

One JSON file per lab (``/run/diag/labs/<id>.json``): topology source, the
namespace of each node, and the processes the lab started. ``diag lab
ls/exec/show/down`` read it; /run is a tmpfs, so nothing survives a reboot,
exactly like the namespaces themselves.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diag.errors import LabError
from diag.lab.lifetime import process_start

STATE_DIR = Path(os.environ.get("DIAG_LAB_STATE_DIR", "/run/diag/labs"))


@dataclass
class LabRecord:
    name: str
    topology: str
    source: str  # the topology's TOML text
    namespaces: dict[str, str]  # node -> namespace
    pids: list[int] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    # The process that builds and uses the lab; when it is gone (and the lab was not
    # left up on purpose, ``detached``), the lab is a leftover of a killed run.
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int = field(default_factory=lambda: process_start(os.getpid()) or 0)
    detached: bool = False  # built to stay up after its owner exits (diag lab up, --keep-lab)


def record_path(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def log_dir(name: str) -> Path:
    return STATE_DIR / name


def save(record: LabRecord) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = record_path(record.name)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=1))
    temporary.replace(path)  # readers never see half a file


def create(record: LabRecord) -> bool:
    """Write a new record; False when a lab of that name is already recorded (atomic, across processes)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with open(record_path(record.name), "x") as new:
            new.write(json.dumps(asdict(record), indent=1))
    except FileExistsError:
        return False
    return True


def load(name: str) -> LabRecord:
    path = record_path(name)
    try:
        data = json.loads(path.read_text())
        return LabRecord(**data)
    except FileNotFoundError:
        raise LabError(f"no lab named {name!r} (see `diag lab ls`)") from None
    except (ValueError, TypeError) as error:
        raise LabError(f"{path}: unreadable lab record: {error}") from None


def remove(name: str) -> None:
    record_path(name).unlink(missing_ok=True)
    directory = log_dir(name)
    if directory.is_dir():
        for entry in directory.iterdir():
            entry.unlink(missing_ok=True)
        directory.rmdir()


def recorded_names() -> list[str]:
    if not STATE_DIR.is_dir():
        return []
    return sorted(path.stem for path in STATE_DIR.glob("*.json"))
