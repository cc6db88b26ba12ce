"""Which problem a flow row shows, and the summary line of the healthy ones.

The text report lists each capture's problem flows by kind (resets,
unanswered SYNs, one-sided flows, SYN retransmissions) and sums up the rest
in one line; the JSON report's cap on flow rows keeps the same problem
rows first (``problem_mask``, read by ``diag.report.flowcap``); a flow
table too big to gather (``diag.report.flowdigest``) and one kept on disk
(``diag.spilled``) count the same kinds and make the same line where the
rows are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import pandas as pd

# Problem kinds, most urgent first; a flow is listed under the first that applies.
RESET: Final = "reset"
UNANSWERED: Final = "no reply"
ONE_SIDED: Final = "one-sided"
SYN_RETRY: Final = "SYN retried"
PROBLEM_ORDER: Final = (RESET, UNANSWERED, ONE_SIDED, SYN_RETRY)


def problem_kind(flow: pd.Series) -> str | None:
    """The most urgent problem a flow row shows, or None when it looks healthy or is a tunnel."""
    if flow.get("carrier", False):  # one-way by design, as problem_kinds says too
        return None
    if len(flow["rsts"]) > 0:
        return RESET
    if flow["conn_state"] == "S0":
        return UNANSWERED
    if flow["orig_pkts"] == 0 or flow["resp_pkts"] == 0:
        return ONE_SIDED
    if flow["syn_retransmits"] > 0:
        return SYN_RETRY
    return None


def _conditions(flows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per row of a flow table: whether it is a tunnel, and whether it shows each kind of ``PROBLEM_ORDER``."""
    has_rst = np.fromiter(map(len, flows["rsts"].to_numpy()), dtype=np.int64, count=len(flows)) > 0
    unanswered = (flows["conn_state"] == "S0").to_numpy()
    one_sided = ((flows["orig_pkts"] == 0) | (flows["resp_pkts"] == 0)).to_numpy()
    retried = (flows["syn_retransmits"] > 0).to_numpy()
    return _carriers(flows), [has_rst, unanswered, one_sided, retried]


def _carriers(flows: pd.DataFrame) -> np.ndarray:
    """Per row: a tunnel (a VXLAN or Geneve carrier flow), one-way by design and never a problem of its own."""
    if "carrier" not in flows.columns:  # a table from before tunnels were told apart
        return np.zeros(len(flows), dtype=bool)
    carriers: np.ndarray = flows["carrier"].to_numpy(dtype=bool)
    return carriers


def problem_kinds(flows: pd.DataFrame) -> list[str | None]:
    """``problem_kind`` of every row of a flow table, column-wise."""
    carrier, kinds_shown = _conditions(flows)
    # The first kind that applies, in PROBLEM_ORDER: position 0 of _KIND_LABELS is "none".
    choice = np.select([carrier, *kinds_shown], [0, 1, 2, 3, 4], default=0)
    kinds: list[str | None] = _KIND_LABELS[choice].tolist()
    return kinds


def problem_mask(flows: pd.DataFrame) -> np.ndarray:
    """True for the rows ``problem_kinds`` gives a kind (the problems the text report lists), column-wise."""
    carrier, kinds_shown = _conditions(flows)
    problems: np.ndarray = np.asarray(np.logical_or.reduce(kinds_shown), dtype=bool) & ~carrier
    return problems


_KIND_LABELS: Final = np.array([None, *PROBLEM_ORDER], dtype=object)


def healthy_summary(flows: pd.DataFrame) -> str:
    """The summary line of a capture's healthy flows (counts by protocol and state, and tunnels)."""
    return healthy_summaries(flows, [np.arange(len(flows))])[0]


def healthy_summaries(flows: pd.DataFrame, groups: Sequence[np.ndarray]) -> list[str]:
    """``healthy_summary(flows.iloc[rows])`` for each ``rows`` of ``groups`` (positions in ``flows``).

    The protocol and state texts are numbered once for the whole table and each group's flows counted by
    number: a copy and a grouping of each capture's healthy rows cost more than the rest of its section.
    """
    if flows.empty:
        return [summary_line(0, {}, 0) for _ in groups]
    carrier = _carriers(flows)
    protos, proto_names = pd.factorize(flows["proto"], use_na_sentinel=False)
    states, state_names = pd.factorize(flows["conn_state"], use_na_sentinel=False)
    pair = protos.astype(np.int64) * len(state_names) + states
    lines = []
    for rows in groups:
        counted = pair[rows[~carrier[rows]]]
        counts = np.bincount(counted, minlength=len(proto_names) * len(state_names)) if len(counted) else counted
        present = np.flatnonzero(counts).tolist()
        by_state = {
            (proto_names[code // len(state_names)], state_names[code % len(state_names)]): int(counts[code])
            for code in present
        }
        lines.append(summary_line(len(rows), by_state, len(rows) - len(counted)))
    return lines


def summary_line(flows: int, states: Mapping[tuple[str, str], int], tunnels: int) -> str:
    """The healthy flows' line from their counts: ``flows`` in all, of which ``states[(proto, conn_state)]``
    of each protocol and state, and ``tunnels`` tunnels (counted apart, one-way by nature)."""
    if not flows:
        return "healthy: 0 flows"
    parts = [f"{count} {proto} {state}" for (proto, state), count in sorted(states.items())]
    if tunnels:
        parts.append(f"{tunnels} tunnel")
    return f"healthy: {flows} flows ({', '.join(parts)})"
