"""The analysis' tables for other tools: pandas, Arrow/Parquet, CSV, Zeek's conn.log.

Pure functions from a ``Report`` (or its flow table) to tables and text; the
commands write them to files. The tables are the report's own, column for
column: ``packets`` (docs/columns.md), ``flows`` (docs/analyze.md) and
``matches`` (``diag.correlate.columns.MATCH_COLUMNS``).

Only the flow table's ``rsts`` column (a list of ``{"index", "from"}`` per
flow) needs a decision: Parquet keeps it as a list of structs with a fixed
type, CSV, which has no nesting, holds it as JSON text. Both files are
written by Arrow.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

import pandas as pd
import pyarrow as pa

from diag.correlate.columns import MATCH_COLUMNS, empty_table

if TYPE_CHECKING:
    from diag.report.model import Report

# Names of the tables ``analyze --export`` writes, each as NAME.parquet and NAME.csv.
EXPORT_TABLES: Final = ("packets", "flows", "matches")

# ``diag flows --format F``: the file name suffix of each format, after the point's name.
FLOW_FORMATS: Final[dict[str, str]] = {
    "conn.log": ".conn.log",
    "csv": ".flows.csv",
    "parquet": ".flows.parquet",
    "json": ".flows.json",
}

# Given explicitly so a table whose flows have no RST at all (every cell an
# empty list, which Arrow would type as a list of nulls) has the same schema.
RSTS_TYPE: Final = pa.list_(pa.struct([("index", pa.int64()), ("from", pa.string())]))

# A capture point's name becomes part of a file name: keep it one plain path component.
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_.@+-]+")


def report_tables(report: Report) -> dict[str, pd.DataFrame]:
    """The tables ``analyze --export`` writes, by name (an empty matches table when nothing was correlated)."""
    matches = report.matches if report.matches is not None else empty_table(MATCH_COLUMNS)
    return {"packets": report.packets, "flows": report.flows, "matches": matches}


def _nested_as_json(value: Any) -> Any:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list | dict) else value


def csv_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as CSV should hold it: list and dict cells (``rsts``) as compact JSON text, the rest unchanged."""
    nested = [
        column
        for column in table.columns
        if table[column].dtype == object and table[column].map(lambda v: isinstance(v, list | dict)).any()
    ]
    if not nested:
        return table
    out = table.copy()
    for column in nested:
        out[column] = out[column].map(_nested_as_json)
    return out


def arrow_table(table: pd.DataFrame) -> pa.Table:
    """The table as an Arrow table for Parquet: categoricals stay dictionaries, ``rsts`` a list of structs."""
    # A table's attrs (the reader's CaptureInfo) are not data, and Arrow cannot store them as metadata.
    plain = table.copy(deep=False)
    plain.attrs = {}
    arrow = pa.Table.from_pandas(plain, preserve_index=False)
    rsts_type = arrow.schema.field("rsts").type if "rsts" in arrow.column_names else None
    # CSV's copy already holds rsts as JSON text; only the nested lists get the fixed type.
    if rsts_type is not None and not (pa.types.is_string(rsts_type) or pa.types.is_large_string(rsts_type)):
        index = arrow.column_names.index("rsts")
        arrow = arrow.set_column(index, pa.field("rsts", RSTS_TYPE), arrow.column("rsts").cast(RSTS_TYPE))
    return arrow


def csv_arrow_table(table: pd.DataFrame) -> pa.Table:
    """The table as Arrow writes it to CSV (5 times faster than pandas' writer on a million packets).

    Arrow quotes every string and writes booleans as ``true``/``false``; pandas'
    ``read_csv`` reads both back as they were.
    """
    return arrow_table(csv_table(table))


def point_flows(flows: pd.DataFrame, names: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """Each capture point's flows, in the order the points were given (a point with no flows gets an empty table)."""
    captures = flows["capture"].astype(str) if len(flows) else pd.Series([], dtype=str)
    return [(name, flows[(captures == name).to_numpy()].reset_index(drop=True)) for name in names]


def flow_file_name(point: str, fmt: str) -> str:
    """``pod.conn.log``, ``pod.flows.csv``, ...; ValueError when the point's name is no plain file name."""
    if not _SAFE_NAME.fullmatch(point) or point in (".", ".."):
        raise ValueError(f"capture point name {point!r} cannot be used in a file name")
    return point + FLOW_FORMATS[fmt]
