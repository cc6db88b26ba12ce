"""One suspect predicate for the diagnosis and the watch: which connections may hold a finding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import synthetic

from diag.capture.proto import RST, TCP
from diag.correlate import correlate
from diag.diagnose.connections import build_connections
from diag.diagnose.suspects import suspect
from diag.watch.links import FlowLinks, row_keys


def test_the_signs_of_an_answer_not_yet_come_count_once_it_is_due() -> None:
    none, one = np.zeros(1, dtype=bool), np.ones(1, dtype=bool)
    for now in ("rst", "syn_retried", "udp_split"):
        signs = dict.fromkeys(("rst", "syn_retried", "udp_split", "syn_unanswered", "udp_one_way"), none)
        signs[now] = one
        assert suspect(**signs, answer_due=False).all(), now
    for later in ("syn_unanswered", "udp_one_way"):
        signs = dict.fromkeys(("rst", "syn_retried", "udp_split", "syn_unanswered", "udp_one_way"), none)
        signs[later] = one
        assert not suspect(**signs, answer_due=False).any(), later
        assert suspect(**signs).all(), later
    assert not suspect(none, none, none, none, none).any()


def _links(packets: pd.DataFrame) -> FlowLinks:
    links = FlowLinks()
    for number, (_, rows) in enumerate(packets.groupby("capture", observed=True, sort=False)):
        columns = {name: rows[name].to_numpy() for name in rows.columns}
        for name in ("src", "dst"):  # the watch numbers addresses once for every point
            columns[name] = pd.Categorical(rows[name].astype(str), categories=sorted(set(packets[name].astype(str))))
            columns[name] = np.asarray(columns[name].codes, dtype=np.int64)
        links.link(row_keys(columns, number))
    return links


@pytest.mark.parametrize("name", list(synthetic.SCENARIOS))
def test_the_watch_hands_on_what_the_diagnosis_would_judge(name: str) -> None:
    """From each single point: whenever the diagnosis of the same packets has a connection to judge, the watch
    marks a group suspect now or waiting for an answer (it may mark more: it asks per flow, not per
    connection); a RST is a suspect for both at once."""
    scenario = synthetic.SCENARIOS[name]()
    for point in scenario.points:
        packets = synthetic.SCENARIOS[name]().packets((point,))
        judged = build_connections(packets, correlate(packets), suspects_only=True)
        links = _links(packets)
        now, waiting = links.suspects(links.groups()), links.waiting()
        if judged:
            assert (now | waiting).any(), point
        flags = packets["tcp_flags"].to_numpy().astype(np.int64)
        if ((packets["proto"].to_numpy() == TCP) & (flags >= 0) & ((flags & RST) != 0)).any():
            assert judged and now.any(), point
