"""What every verdict needs besides the connection: the captures and their clocks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from diag.correlate import Correlation
from diag.report import Cause
from diag.report.facts import Fact

# Where the usual vantage names sit on a request's way, used only when no
# order is given: the client first, the server (pod) last.
USUAL_PATH_ORDER = (
    "client", "internet", "router", "nlb", "lb", "vpc-router", "node-a", "node", "node-b", "pod", "server",
)  # fmt: skip


def usual_path_rank(name: str) -> int | None:
    """Where a vantage name sits in ``USUAL_PATH_ORDER`` ('pod-b' counts as 'pod'); None if unknown."""
    if name in USUAL_PATH_ORDER:
        return USUAL_PATH_ORDER.index(name)
    stem = name.rsplit("-", 1)[0]
    return USUAL_PATH_ORDER.index(stem) if stem in USUAL_PATH_ORDER else None


def _capture_codes(column: pd.Series) -> tuple[list[str], np.ndarray]:
    """(names, per-row code into them) for the capture column, without a string per row.

    The last name is for rows with no capture name (pandas writes them 'nan'); it is
    only listed as a point when some row has it.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = [str(c) for c in column.cat.categories] + ["nan"]
        codes = column.cat.codes.to_numpy().astype(np.int64)
        return names, np.where(codes < 0, len(names) - 1, codes)
    codes, uniques = pd.factorize(column.astype(str).to_numpy())
    return [str(u) for u in uniques] + ["nan"], codes.astype(np.int64)


def _spans_by_code(codes: np.ndarray, ts: np.ndarray) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Per capture code present: its first row, and its earliest and latest time (``ts`` per row).

    Read by runs of equal codes: the stacked table holds each point's rows together, so a few runs span
    millions of rows, where a sort or a grouping of the codes went over every row. A point in several runs
    (rows of interleaved points, a table made otherwise) takes the first row and the extremes of them all.
    """
    if len(codes) == 0:
        return {}, {}, {}
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    run_code = codes[starts]
    present, first_run = np.unique(run_code, return_index=True)
    low = np.full(int(present[-1]) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.full(len(low), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(low, run_code, np.minimum.reduceat(ts, starts))
    np.maximum.at(high, run_code, np.maximum.reduceat(ts, starts))
    codes_present = present.tolist()
    return (
        dict(zip(codes_present, starts[first_run].tolist(), strict=True)),
        dict(zip(codes_present, low[present].tolist(), strict=True)),
        dict(zip(codes_present, high[present].tolist(), strict=True)),
    )


@dataclass(frozen=True)
class Context:
    """The analysis as a whole: which points were captured, and when each was running."""

    captures: tuple[str, ...]
    spans: dict[str, tuple[int, int]]  # capture -> first/last packet time, reference clock
    corr: Correlation
    packets: pd.DataFrame

    order: tuple[str, ...] = ()  # capture points in the order a request passes them, if given

    @classmethod
    def build(cls, packets: pd.DataFrame, corr: Correlation, order_hint: Sequence[str] | None = None) -> Context:
        names, codes = _capture_codes(packets["capture"])
        # Points in order of first appearance; an empty capture (a category with no rows) still says
        # something: that point saw none of it.
        first_seen, lows, highs = _spans_by_code(codes, np.asarray(corr.ts_ref_ns, dtype=np.int64))
        captured = [names[code] for code in sorted(first_seen, key=first_seen.__getitem__)]
        captured += [name for name in names[:-1] if name not in captured]
        spans: dict[str, tuple[int, int]] = {name: (-(2**62), 2**62) for name in captured}
        for code in first_seen:
            # A capture whose clock could not be tied to the others (nothing matched)
            # keeps the open span: its times say nothing on the common clock.
            if names[code] in corr.offsets or len(captured) == 1:
                spans[names[code]] = (lows[code], highs[code])
        return cls(tuple(captured), spans, corr, packets, tuple(order_hint or ()))

    def is_beyond(self, capture: str, point: str) -> bool:
        """``capture`` comes after ``point`` on the request's way (by the given order, else the usual names)."""
        if self.order:
            if capture not in self.order or point not in self.order:
                return False
            return self.order.index(capture) > self.order.index(point)
        mine, theirs = usual_path_rank(capture), usual_path_rank(point)
        return mine is not None and theirs is not None and mine > theirs

    def offset_uncertainty_ns(self, capture: str) -> int:
        offset = self.corr.offsets.get(capture)
        return 10**12 if offset is None else int(offset.uncertainty_s * 1e9)


# An evidence line while a verdict is assembled: a Fact, or a sentence not yet broken into one
# (the engine turns those into ``note`` facts).
Line = str | Fact


@dataclass
class Verdict:
    """A verdict being assembled: cause and confidence, and the lines that justify it."""

    cause: Cause
    confidence: float
    summary: str = ""
    origin: str | None = None
    origin_description: str | None = None
    evidence: list[Line] = field(default_factory=list)

    def support(self, line: Line, weight: float = 0.0) -> None:
        self.evidence.append(line)
        self.confidence = min(0.97, self.confidence + weight)

    def facts(self) -> list[Fact]:
        """The evidence lines that are already facts (what the registry's ``excluded_by`` reads)."""
        return [line for line in self.evidence if isinstance(line, Fact)]
