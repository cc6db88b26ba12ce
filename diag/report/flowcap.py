"""How many flow rows the JSON report carries: all of a normal capture's, a bounded share of a huge one's.

A capture of two million one-packet flows made a 1.17 GB report, most of it
healthy rows nobody reads in JSON. Past ``FLOW_LIMIT`` rows the report keeps
the problem flows first (resets, unanswered SYNs, one-sided flows, SYN
retransmissions: what the text report lists), then healthy ones up to the
limit, in the table's own order, and says how many rows it left out.
``--flows all`` asks for every row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FLOW_LIMIT = 10_000


def problem_mask(flows: pd.DataFrame) -> np.ndarray:
    """True for the rows with a problem the text report lists (``diag.report.flowkinds.problem_kind``), column-wise."""
    problems = np.asarray(
        (np.fromiter(map(len, flows["rsts"].to_numpy()), dtype=np.int64, count=len(flows)) > 0)
        | (flows["conn_state"] == "S0").to_numpy()
        | ((flows["orig_pkts"] == 0) | (flows["resp_pkts"] == 0)).to_numpy()
        | (flows["syn_retransmits"] > 0).to_numpy(),
        dtype=bool,
    )
    if "carrier" in flows.columns:  # a tunnel is never a problem of its own
        problems &= ~flows["carrier"].to_numpy(dtype=bool)
    return problems


def cap_flows(flows: pd.DataFrame, limit: int | None = FLOW_LIMIT) -> tuple[pd.DataFrame, int]:
    """At most ``limit`` rows of ``flows`` (None: all), problem rows first; (the rows kept, how many left out)."""
    if limit is None or flows is None or len(flows) <= limit:
        return flows, 0
    problems = problem_mask(flows)
    # Problem rows first, then healthy ones, each in table order; the kept rows go back to table order.
    ranked = np.concatenate([np.flatnonzero(problems), np.flatnonzero(~problems)])
    kept = np.sort(ranked[:limit])
    return flows.iloc[kept], len(flows) - limit
