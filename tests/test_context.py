"""Each capture's first row and time span, read a run of rows at a time, against a grouping of every row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diag.diagnose.context import _spans_by_code


def _grouped(codes: np.ndarray, ts: np.ndarray) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    present, first_row = np.unique(codes, return_index=True)
    grouped = pd.Series(ts).groupby(codes).agg(["min", "max"])
    return (
        dict(zip(present.tolist(), first_row.tolist(), strict=True)),
        dict(zip(grouped.index.tolist(), grouped["min"].tolist(), strict=True)),
        dict(zip(grouped.index.tolist(), grouped["max"].tolist(), strict=True)),
    )


@pytest.mark.parametrize(
    "layout",
    ["points one after another", "a point in two runs", "interleaved rows", "one point"],
)
def test_first_rows_and_spans_are_those_of_every_row(layout: str) -> None:
    rng = np.random.default_rng(7)
    if layout == "points one after another":
        codes = np.repeat([2, 0, 3, 1], [500, 300, 1, 700])
    elif layout == "a point in two runs":
        codes = np.repeat([1, 0, 1, 2], [100, 50, 80, 10])
    elif layout == "interleaved rows":
        codes = rng.integers(0, 4, 2000)
    else:
        codes = np.zeros(30, dtype=np.int64)
    ts = rng.integers(-(10**15), 10**15, len(codes))
    first_seen, lows, highs = _spans_by_code(codes.astype(np.int64), ts)
    assert (first_seen, lows, highs) == _grouped(codes, ts)


def test_no_rows_have_no_spans() -> None:
    assert _spans_by_code(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) == ({}, {}, {})
