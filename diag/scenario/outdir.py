"""The output directory policy: never overwrite what is not ours.

A fresh directory is created. An existing one is accepted when it is empty, or
when it holds only what a previous run of the same command wrote (recognised
by its ``run.json`` marker and diag's own file names); those files are then
removed so stale captures of another scenario cannot mix with the new ones
(including the per-interface ``.raw`` captures a killed run may leave).
Anything else in the directory makes the run refuse, before any lab is built.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from diag.errors import DiagError

OWN_FILES = re.compile(r"^([A-Za-z0-9_.\-]+\.pcapng|[A-Za-z0-9_.\-]+\.conntrack\.log|run\.json|report\.json"
                       r"|report\.txt|ladder\.png|ladder\.svg|kernel\.jsonl|watch\.jsonl)$")
RAW_DIR = ".raw"  # per-interface captures before the merge; left behind only by a killed run


def _is_previous_run(directory: Path, run_file: str, mark: str) -> bool:
    try:
        return bool(json.loads((directory / run_file).read_text()).get("tool") == mark)
    except (OSError, ValueError, AttributeError):
        return False


def _is_own(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name == RAW_DIR and all(p.is_file() and p.suffix == ".pcap" for p in entry.iterdir())
    return bool(OWN_FILES.match(entry.name))


def prepare_out_dir(directory: Path, run_file: str, mark: str) -> None:
    if directory.exists() and not directory.is_dir():
        raise DiagError(f"--out {directory}: exists and is not a directory")
    if directory.is_dir():
        entries = list(directory.iterdir())
        if entries:
            foreign = [entry.name for entry in entries if not _is_own(entry)]
            if foreign or not _is_previous_run(directory, run_file, mark):
                shown = ", ".join(sorted(foreign)[:3]) if foreign else "files without a run.json from diag"
                raise DiagError(f"--out {directory}: not empty and not a previous run-scenario output "
                                f"({shown}); choose another directory")
            for entry in entries:
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DiagError(f"--out {directory}: cannot create: {error.strerror}") from None
