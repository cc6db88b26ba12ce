"""The JSON document: its flow rows, built column by column, against pandas' own row-by-row conversion, the
problem rows its cap keeps first against the row-by-row problem kind, and the document written piece by piece
against the whole string."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

import diag.report.jsondoc
from diag.analysis import analyze
from diag.report.flowcap import cap_flows, problem_mask
from diag.report.flowkinds import problem_kind, problem_kinds
from diag.report.jsondoc import dumps, flows_to_json, write_json

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def _reference(flows: pd.DataFrame) -> list[dict[str, Any]]:
    """Row by row, as the document was first built: numpy scalars made plain, NaN null, vlan -1 null."""
    rows = []
    for row in flows.to_dict(orient="records"):
        record = {}
        for key, value in row.items():
            if not isinstance(value, list | dict):
                value = value.item() if hasattr(value, "item") else value
                value = None if isinstance(value, float) and math.isnan(value) else value
            record[str(key)] = value
        if record.get("vlan") == -1:
            record["vlan"] = None
        rows.append(record)
    return rows


def test_flow_rows_match_the_row_by_row_conversion_for_every_kind_of_column() -> None:
    rng = np.random.default_rng(5)
    count = 500
    flows = pd.DataFrame({
        "flow_id": np.arange(count, dtype=np.int64),
        "proto": pd.Series(rng.choice(["tcp", "udp"], count), dtype="str"),
        "orig_h": pd.Series(np.where(rng.random(count) < 0.1, None, "10.0.0.1"), dtype="str"),  # gaps
        "vlan": rng.choice([-1, 7, 4094], count).astype(np.int64),
        "first_ts": np.where(rng.random(count) < 0.1, np.nan, rng.random(count) * 1e9),
        "small": rng.integers(-5, 5, count).astype(np.int8),
        "count": rng.integers(0, 9, count).astype(np.uint32),
        "carrier": rng.random(count) < 0.5,
        "rsts": [[{"index": int(i), "from": "resp"}] if i % 7 == 0 else [] for i in range(count)],
        "mixed": [np.int64(i) if i % 3 else None for i in range(count)],
        "nullable": pd.array([None if i % 4 == 0 else i for i in range(count)], dtype="Int64"),
        "label": pd.Categorical(rng.choice(["a", "b"], count)),
        3: np.ones(count, dtype=np.float32) / 3,  # a column label that is not text
    })
    built = flows_to_json(flows)
    expected = _reference(flows)
    assert built == expected
    # Equal as Python values and as JSON text: the same types (1 is not 1.0 there), the same key order.
    assert orjson.dumps(built) == orjson.dumps(expected)
    assert flows_to_json(flows.iloc[::-3]) == _reference(flows.iloc[::-3])  # a slice, as the row cap makes


def test_an_empty_flow_table_is_an_empty_list() -> None:
    assert flows_to_json(pd.DataFrame({"flow_id": np.zeros(0, dtype=np.int64)})) == []


def test_the_cap_keeps_first_the_rows_the_text_lists_as_problems() -> None:
    """``problem_mask`` (the cap's) and ``problem_kinds`` against ``problem_kind`` row by row, a tunnel never a
    problem of its own."""
    rng = np.random.default_rng(11)
    count = 400
    flows = pd.DataFrame({
        "rsts": [[{"index": i}] if rng.random() < 0.1 else [] for i in range(count)],
        "conn_state": rng.choice(["S0", "SF", "REJ", "OTH"], count),
        "orig_pkts": rng.integers(0, 3, count),
        "resp_pkts": rng.integers(0, 3, count),
        "syn_retransmits": rng.integers(0, 2, count) * (rng.random(count) < 0.3),
        "carrier": rng.random(count) < 0.2,
    })
    kinds = [problem_kind(row) for _, row in flows.iterrows()]
    expected = np.array([kind is not None for kind in kinds])
    assert 0 < expected.sum() < count and (flows["carrier"] & (flows["orig_pkts"] == 0)).any()
    assert not any(kind for kind, carrier in zip(kinds, flows["carrier"], strict=True) if carrier)
    assert problem_mask(flows).tolist() == expected.tolist() and problem_kinds(flows) == kinds
    bare = flows.drop(columns="carrier")  # a table without the column: no row is a tunnel
    assert problem_mask(bare).tolist() == [problem_kind(row) is not None for _, row in bare.iterrows()]
    assert (problem_mask(bare) & flows["carrier"].to_numpy()).any()
    kept, left_out = cap_flows(flows, int(expected.sum()))
    assert left_out == count - expected.sum() and kept.index.tolist() == np.flatnonzero(expected).tolist()


@pytest.mark.parametrize(
    "captures",
    [
        sorted(CAPTURES.glob("*.pcapng")),  # the incident at every point: findings of several points
        [CAPTURES / "client.pcapng"],
        sorted((CAPTURES / "udp-asymmetric").glob("*.pcapng")),
    ],
    ids=["incident", "client", "udp-asymmetric"],
)
@pytest.mark.parametrize("at_once", [1, 2, 512])
def test_the_document_written_piece_by_piece_is_the_whole_string(
    captures: list[Path], at_once: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write_json`` writes the findings a few at a time: the bytes are ``dumps``' and a newline, whether the
    findings fill one piece or many, with the flows capped or not."""
    monkeypatch.setattr(diag.report.jsondoc, "FINDINGS_AT_ONCE", at_once)
    report = analyze([f"{path.stem}={path}" for path in captures])
    for flow_limit in (10_000, None, 1):
        sink = io.BytesIO()
        write_json(report, sink, flow_limit)
        assert sink.getvalue() == (dumps(report, flow_limit) + "\n").encode()
    assert report.findings or captures[0].parent.name == "udp-asymmetric"


def test_a_document_without_findings_is_the_whole_string() -> None:
    report = analyze([f"pod-b={CAPTURES / 'pod-b.pcapng'}"])
    healthy = replace(report, findings=[])
    sink = io.BytesIO()
    write_json(healthy, sink)
    assert sink.getvalue() == (dumps(healthy) + "\n").encode()
    assert b'"findings": []' in sink.getvalue()
