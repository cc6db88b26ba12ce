"""The healthy flows' summary line, counted by number (``healthy_summaries``), against a pandas grouping of
the same rows, and the text report's capture sections against the rows they list."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diag.capture.info import CaptureInfo
from diag.flows.columns import FLOW_COLUMNS
from diag.report import Report
from diag.report.flowkinds import healthy_summaries, healthy_summary, problem_kinds
from diag.report.text import render_text

STATES = ("SF", "S0", "S1", "REJ", "RSTR", "OTH")


def _flows(n: int, seed: int, captures: tuple[str, ...] = ("a", "b", "c")) -> pd.DataFrame:
    """``n`` rows of every flow column, of the declared types, with random captures, protocols, states, packet
    counts, SYN retries, RSTs and tunnels."""
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for name, (dtype, _) in FLOW_COLUMNS.items():
        if dtype == "str":
            columns[name] = pd.array([f"{name}{i}" for i in range(n)], dtype="str")
        elif dtype in ("int64", "float64"):
            columns[name] = rng.integers(0, 3, n).astype(dtype)
    columns["capture"] = pd.array(rng.choice(captures, n), dtype="str")
    columns["proto"] = pd.array(rng.choice(["tcp", "udp"], n), dtype="str")
    columns["conn_state"] = pd.array(rng.choice(STATES, n), dtype="str")
    columns["vlan"] = np.full(n, -1)
    columns["first_ts"] = 1.7e9 + np.arange(n, dtype=np.float64)
    columns["rsts"] = [[{"index": i, "from": "resp"}] if i % 7 == 0 else [] for i in range(n)]
    columns["carrier"] = rng.random(n) < 0.1
    return pd.DataFrame({name: columns[name] for name in FLOW_COLUMNS})


def _grouped_summary(flows: pd.DataFrame) -> str:
    """The summary line by a pandas grouping, as ``healthy_summary`` made it before it counted by number."""
    if flows.empty:
        return "healthy: 0 flows"
    carrier = flows["carrier"].to_numpy(dtype=bool)
    states = flows[~carrier].groupby(["proto", "conn_state"], sort=False, dropna=False).size()
    counts = {(str(key[0]), str(key[1])): int(count) for key, count in states.items() if isinstance(key, tuple)}
    parts = [f"{count} {proto} {state}" for (proto, state), count in sorted(counts.items())]
    if carrier.any():
        parts.append(f"{int(carrier.sum())} tunnel")
    return f"healthy: {len(flows)} flows ({', '.join(parts)})"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_group_is_summed_up_as_a_grouping_of_its_rows_does(seed: int) -> None:
    flows = _flows(500, seed)
    rng = np.random.default_rng(seed + 10)
    groups = [
        np.arange(len(flows)),
        np.flatnonzero(rng.random(len(flows)) < 0.3),
        np.zeros(0, dtype=np.int64),
        np.flatnonzero(flows["carrier"].to_numpy()),  # tunnels only
    ]
    assert healthy_summaries(flows, groups) == [_grouped_summary(flows.iloc[rows]) for rows in groups]
    assert healthy_summary(flows) == _grouped_summary(flows)
    assert healthy_summaries(flows.iloc[:0], [np.zeros(0, dtype=np.int64)]) == ["healthy: 0 flows"]


def test_each_capture_section_counts_and_lists_its_own_rows() -> None:
    """Each capture's section: its flows, each kind's count, at most ``limit`` rows of a kind (its first, in
    table order, ``--flows all`` every one) and the healthy line of its other rows."""
    flows = _flows(400, 5)
    names = ("a", "b", "c")
    infos = [CaptureInfo(name=name, path=f"{name}.pcap", packets=1, link_type="") for name in names]
    report = Report(captures=infos, packets=pd.DataFrame(), flows=flows, findings=())
    kinds = np.array(problem_kinds(flows), dtype=object)
    for flows_option, limit in (("problems", 2), ("all", 2)):
        text = render_text(report, flows=flows_option, limit=limit)
        sections = text.split("\nCAPTURE ")[1:]
        assert len(sections) == len(names)
        for name, section in zip(names, sections, strict=True):
            mine = flows["capture"].to_numpy() == name
            assert section.startswith(f"{name}  ({name}.pcap, 1 packets, unknown link, {int(mine.sum())} flows)")
            for kind in ("reset", "no reply", "one-sided", "SYN retried"):
                rows = np.flatnonzero(mine & (kinds == kind))
                listed = rows if flows_option == "all" else rows[:limit]
                assert (f"{kind.upper()} ({len(rows)})" in section) == (len(rows) > 0)
                for row in listed:
                    assert f"{flows['orig'].iloc[row]} -> {flows['resp'].iloc[row]}" in section
                for row in rows[len(listed) :]:
                    assert f"{flows['orig'].iloc[row]} -> " not in section
            healthy = np.flatnonzero(mine & (kinds == None))  # noqa: E711
            assert _grouped_summary(flows.iloc[healthy]) in section
