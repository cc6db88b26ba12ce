"""Writing export files into a directory (``diag flows -o DIR``, ``analyze --export DIR``).

Each file goes through ``diag.commands.output``: checked before any work
(an existing file without ``--force``, a symbolic link, a directory in the
way), written to a temporary file and moved into place, never through a link.
On top of that, no target may be one of the input captures, even with
``--force``, and a missing output directory is created only once there is
something to write, so a run that fails on its input leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from diag.commands.output import atomic_path, check_output, write_atomically
from diag.errors import DiagError

if TYPE_CHECKING:
    from diag.capture.location import Location
    from diag.report import Report


def _problem(error: OSError) -> str:
    return error.strerror or str(error)


def check_dir(directory: Path, option: str) -> None:
    """The directory exists, or can be created: its nearest existing ancestor is a writable directory."""
    ancestor = directory
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DiagError(f"{option} {directory}: {ancestor} is not a directory")
    if ancestor != directory and not os.access(ancestor, os.W_OK | os.X_OK):
        raise DiagError(f"{option} {directory}: cannot create it in {ancestor} (permission denied)")


def make_dir(directory: Path, option: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DiagError(f"{option} {directory}: cannot create the directory ({_problem(error)})") from error


def check_targets(targets: Iterable[Path], inputs: Iterable[Location], force: bool, option: str) -> None:
    """Refuse, in one line, a target that is one of the inputs, or that ``check_output`` refuses."""
    from diag.capture.source import exists_quietly  # an input in a directory this user cannot search

    resolved_inputs = {path.resolve() for path in inputs if exists_quietly(path)}
    for target in targets:
        if exists_quietly(target) and target.resolve() in resolved_inputs:
            raise DiagError(f"{option} {target}: is one of the input captures; choose another directory")
        if target.parent.is_dir():  # else nothing is there yet: check_dir vouched for creating it
            check_output(target, force, option)


def write_bytes(target: Path, data: bytes, force: bool, option: str) -> None:
    with atomic_path(target, force, option) as temporary:
        try:
            temporary.write_bytes(data)
        except OSError as error:
            raise DiagError(f"{option} {target}: cannot write: {_problem(error)}") from error


def write_text(target: Path, text: str, force: bool, option: str) -> None:
    write_atomically(target, text, force, option)


def write_csv(target: Path, table: pd.DataFrame, force: bool, option: str) -> None:
    """The table as CSV with a header line (``export.csv_arrow_table`` decides how cells read)."""
    import pyarrow.csv as pa_csv

    from diag.report.export import csv_arrow_table

    with atomic_path(target, force, option) as temporary:
        try:
            pa_csv.write_csv(csv_arrow_table(table), str(temporary))
        except OSError as error:
            raise DiagError(f"{option} {target}: cannot write: {_problem(error)}") from error


def write_parquet(target: Path, table: pd.DataFrame, force: bool, option: str) -> None:
    """The table as Parquet (``export.arrow_table`` decides the column types)."""
    import pyarrow.parquet as pq

    from diag.report.export import arrow_table

    with atomic_path(target, force, option) as temporary:
        try:
            pq.write_table(arrow_table(table), str(temporary))
        except OSError as error:
            raise DiagError(f"{option} {target}: cannot write: {_problem(error)}") from error


def export_targets(directory: Path, names: Iterable[str]) -> list[Path]:
    """The files ``analyze --export DIR`` writes: NAME.parquet and NAME.csv for each table."""
    return [directory / f"{name}.{suffix}" for name in names for suffix in ("parquet", "csv")]


def write_export(directory: Path, tables: dict[str, pd.DataFrame], force: bool, option: str) -> list[Path]:
    """Write every table as Parquet and CSV into ``directory`` (created if missing); returns the files written."""
    make_dir(directory, option)
    written = []
    for name, table in tables.items():
        parquet, csv = export_targets(directory, [name])
        write_parquet(parquet, table, force, option)
        write_csv(csv, table, force, option)
        written += [parquet, csv]
    return written


def check_export(directory: Path, inputs: Iterable[Location], force: bool) -> None:
    """``analyze --export DIR``, checked before the analysis: every file it will write may be written."""
    from diag.report.export import EXPORT_TABLES

    check_dir(directory, "--export")
    check_targets(export_targets(directory, EXPORT_TABLES), inputs, force, "--export")


def export_report(report: Report, directory: Path, force: bool) -> list[Path]:
    """``analyze --export DIR``: the report's packets, flows and matches tables as Parquet and CSV."""
    from diag.report.export import report_tables

    return write_export(directory, report_tables(report), force, "--export")
