"""The JSON report's flow rows: how many it carries (all of a normal capture's, a bounded share of a huge
one's) and each as a JSON object (``flows_to_json``).

A capture of two million one-packet flows made a 1.17 GB report, most of it
healthy rows nobody reads in JSON. Past ``FLOW_LIMIT`` rows the report keeps
the problem flows first (resets, unanswered SYNs, one-sided flows, SYN
retransmissions: what the text report lists), then healthy ones up to the
limit, in the table's own order, and says how many rows it left out.
``--flows all`` asks for every row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

# Callers long imported it from here; the rules of what is a problem are diag.report.flowkinds'.
from diag.report.flowkinds import problem_mask as problem_mask

FLOW_LIMIT = 10_000


def cap_flows(
    flows: pd.DataFrame, limit: int | None = FLOW_LIMIT, kinds: np.ndarray | None = None
) -> tuple[pd.DataFrame, int]:
    """At most ``limit`` rows of ``flows`` (None: all), problem rows first; (the rows kept, how many left out).
    ``kinds``: the rows' ``problem_kinds``, when they are known already."""
    if limit is None or flows is None or len(flows) <= limit:
        return flows, 0
    problems = problem_mask(flows) if kinds is None else kinds != None  # noqa: E711 (element-wise)
    # Problem rows first, then healthy ones, each in table order; the kept rows go back to table order.
    ranked = np.concatenate([np.flatnonzero(problems), np.flatnonzero(~problems)])
    kept = np.sort(ranked[:limit])
    return flows.iloc[kept], len(flows) - limit


def _plain(value: Any) -> Any:
    """numpy scalars and NaN into JSON-safe Python values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cell(value: Any) -> Any:
    """One cell of an object column: lists and dicts (``rsts``) as they are, anything else made plain."""
    return value if isinstance(value, list | dict) else _plain(value)


def _column_values(flows: pd.DataFrame, position: int) -> list[Any]:
    """Column ``position`` of ``flows`` as JSON-ready Python values, one per row.

    Whole columns at once: numpy's ``tolist`` makes Python ints, floats and
    bools in C, so only object columns (lists) and missing values are looked
    at cell by cell. Anything else (an extension dtype) goes through pandas'
    own row conversion, as the whole table once did.
    """
    series = flows.iloc[:, position]
    numpy_dtype = isinstance(series.dtype, np.dtype)  # not a nullable extension type such as Int64
    kind = series.dtype.kind
    if numpy_dtype and kind in "iub":
        return list(series.to_numpy().tolist())
    if numpy_dtype and kind == "f":
        values = series.to_numpy().tolist()
        return [None if value != value else value for value in values] if series.hasnans else list(values)
    if isinstance(series.dtype, pd.StringDtype) and not series.hasnans:
        return list(series.tolist())  # text without gaps: Python strings already
    if numpy_dtype and kind == "O":
        return [_cell(value) for value in series.tolist()]
    return [_cell(value) for row in series.to_frame().to_dict(orient="records") for value in row.values()]


def flows_to_json(flows: pd.DataFrame) -> list[dict[str, Any]]:
    """Flow rows as JSON objects; list-valued cells (``rsts``) pass through, an untagged ``vlan`` (-1) is null.

    Built column by column and zipped into rows: converting the table row by
    row (``DataFrame.to_dict``) cost most of the document's time on tens of
    thousands of flows.
    """
    if flows is None or flows.empty:
        return []
    names = [str(name) for name in flows.columns]
    columns = [_column_values(flows, position) for position in range(len(names))]
    for name, values in zip(names, columns, strict=True):
        if name == "vlan":
            values[:] = [None if value == -1 else value for value in values]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
