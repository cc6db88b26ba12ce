"""Writing the export files: never over an existing file unless asked, never over an input.

Every target is checked before the slow part of a command runs, so a refusal
costs nothing and no file is left half-written; the files are then opened
with O_EXCL (mode ``x``) so a file that appeared in between is not clobbered
either. ``--force`` replaces existing files, but never one of the inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from diag.errors import DiagError


def _problem(error: OSError) -> str:
    return error.strerror or str(error)


def output_dir(directory: Path) -> Path:
    """The directory, created (with its parents) when missing; DiagError when it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError as error:
        raise DiagError(f"{directory}: exists and is not a directory") from error
    except OSError as error:
        raise DiagError(f"{directory}: cannot create the output directory ({_problem(error)})") from error
    return directory


def check_targets(targets: Iterable[Path], inputs: Iterable[Path], force: bool) -> None:
    """Refuse, in one line, a target that exists (unless ``force``) or that is one of the inputs."""
    resolved_inputs = {path.resolve() for path in inputs if path.exists()}
    for target in targets:
        if target.exists() and target.resolve() in resolved_inputs:
            raise DiagError(f"{target}: is one of the input captures; choose another output")
        if not force and (target.exists() or target.is_symlink()):
            raise DiagError(f"{target}: already exists; use --force to replace it")


def open_target(target: Path, force: bool) -> BinaryIO:
    """Open for writing in binary: exclusive creation unless ``force``."""
    try:
        return target.open("wb" if force else "xb")
    except FileExistsError as error:
        raise DiagError(f"{target}: already exists; use --force to replace it") from error
    except OSError as error:
        raise DiagError(f"{target}: cannot write ({_problem(error)})") from error


def write_bytes(target: Path, data: bytes, force: bool) -> None:
    with open_target(target, force) as out:
        try:
            out.write(data)
        except OSError as error:
            raise DiagError(f"{target}: cannot write ({_problem(error)})") from error


def write_csv(target: Path, table: pd.DataFrame, force: bool) -> None:
    """The table as CSV with a header line and no index column (``export.csv_table`` prepared it)."""
    with open_target(target, force) as out:
        try:
            table.to_csv(out, index=False)
        except OSError as error:
            raise DiagError(f"{target}: cannot write ({_problem(error)})") from error


def write_parquet(target: Path, table: pd.DataFrame, force: bool) -> None:
    """The table as Parquet (``export.arrow_table`` decides the column types)."""
    import pyarrow.parquet as pq

    from diag.report.export import arrow_table

    with open_target(target, force) as out:
        try:
            pq.write_table(arrow_table(table), out)
        except OSError as error:
            raise DiagError(f"{target}: cannot write ({_problem(error)})") from error


def export_targets(directory: Path, names: Iterable[str]) -> list[Path]:
    """The files ``analyze --export DIR`` writes: NAME.parquet and NAME.csv for each table."""
    return [directory / f"{name}.{suffix}" for name in names for suffix in ("parquet", "csv")]


def write_export(directory: Path, tables: dict[str, pd.DataFrame], force: bool) -> list[Path]:
    """Write every table as Parquet and CSV into ``directory``; returns the files written."""
    from diag.report.export import csv_table

    written = []
    for name, table in tables.items():
        parquet, csv = export_targets(directory, [name])
        write_parquet(parquet, table, force)
        write_csv(csv, csv_table(table), force)
        written += [parquet, csv]
    return written
