"""A flow table too big to gather: the counts the reports print and only the rows they show.

On a Dask cluster (``diag.cluster``) every point's flow table stays on the
worker that built it. Each point sends its ``CaptureFlows`` (how many flows,
how many of each problem kind, the healthy flows' summary line); the client
works out how many rows the JSON's cap (``diag.report.flowcap``: problem
flows first, in table order, then healthy ones) takes from each point
(``json_quota``), and each point sends those rows and the first
``DEFAULT_PROBLEM_LINES`` of each problem kind (``shown_rows``). A ``Report``
holding those rows and the ``FlowDigest`` renders, as text and as JSON under
that cap, exactly as the report holding every flow; it cannot list every
flow (``--flows all``), which needs the whole tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diag.report.flowkinds import healthy_summaries, healthy_summary, problem_kinds


@dataclass(frozen=True)
class CaptureFlows:
    """One capture point's flow table in numbers: what the text report says of it besides the rows it lists."""

    flows: int
    problems: dict[str, int]  # problem kind (``diag.report.flowkinds.PROBLEM_ORDER``) -> flows of that kind
    healthy: str  # the text report's summary line of the other flows ("healthy: N flows (...)")

    @property
    def problem_flows(self) -> int:
        return sum(self.problems.values())


@dataclass(frozen=True)
class FlowDigest:
    """Every capture's ``CaptureFlows`` (by capture name), and the JSON cap the report's rows were chosen for."""

    captures: dict[str, CaptureFlows]
    limit: int

    @property
    def flows(self) -> int:
        return sum(capture.flows for capture in self.captures.values())


def capture_flows(flows: pd.DataFrame) -> CaptureFlows:
    """The ``CaptureFlows`` of one point's whole flow table."""
    if flows.empty:
        return CaptureFlows(0, {}, healthy_summary(flows))
    kinds = pd.Series(problem_kinds(flows), dtype=object)
    counts = kinds.value_counts()
    return CaptureFlows(
        len(flows),
        {str(kind): int(count) for kind, count in counts.items()},
        healthy_summaries(flows, [np.flatnonzero(kinds.isna().to_numpy())])[0],  # counted, not copied
    )


def json_quota(captures: Sequence[CaptureFlows], limit: int) -> list[tuple[int, int]]:
    """Per point, in table order: how many of its first problem rows and first healthy rows the JSON's cap keeps."""
    total = sum(capture.flows for capture in captures)
    if total <= limit:
        return [(capture.problem_flows, capture.flows - capture.problem_flows) for capture in captures]
    quota = []
    problems_left = limit
    for capture in captures:
        taken = min(capture.problem_flows, problems_left)
        problems_left -= taken
        quota.append(taken)
    healthy_left = problems_left  # what the problem flows of every point left of the cap
    result = []
    for capture, problems in zip(captures, quota, strict=True):
        taken = min(capture.flows - capture.problem_flows, healthy_left)
        healthy_left -= taken
        result.append((problems, taken))
    return result


def shown_rows(flows: pd.DataFrame, problems: int, healthy: int, per_kind: int) -> np.ndarray:
    """The positions of the rows of one point's flow table the reports show: its first ``problems`` problem
    rows and first ``healthy`` healthy rows (the JSON's), and the first ``per_kind`` of each problem kind (the
    text's), in table order."""
    if flows.empty:
        return np.zeros(0, dtype=np.int64)
    kinds = pd.Series(problem_kinds(flows), dtype=object)
    problem = kinds.notna().to_numpy()  # problem_mask, without telling the kinds apart a second time
    keep = np.zeros(len(flows), dtype=bool)
    keep[np.flatnonzero(problem)[:problems]] = True
    keep[np.flatnonzero(~problem)[:healthy]] = True
    first_of_kind = kinds.groupby(kinds, sort=False).cumcount().to_numpy() < per_kind
    keep |= kinds.notna().to_numpy() & first_of_kind
    return np.flatnonzero(keep)
