"""The column reference in docs/ is the one the code defines."""

from __future__ import annotations

import pandas as pd
from conftest import PROJECT

from diag.capture import read_capture
from diag.capture.columns import describe_columns
from diag.flows import build_flows
from diag.flows.columns import FLOW_COLUMNS, describe_flow_columns
from diag.report.model import CAUSES


def test_docs_list_every_column_as_the_code_defines_it() -> None:
    doc = (PROJECT / "docs" / "columns.md").read_text()
    assert describe_columns() in doc, "docs/columns.md is stale: regenerate the table from describe_columns()"


def test_docs_list_every_flow_column_as_the_code_defines_it() -> None:
    doc = (PROJECT / "docs" / "analyze.md").read_text()
    assert describe_flow_columns() in doc, "docs/analyze.md is stale: regenerate the table from describe_flow_columns()"


def test_the_flow_table_has_the_declared_columns_and_dtypes() -> None:
    packets = read_capture(PROJECT / "captures" / "vpc-router.pcapng")
    flows = build_flows(packets)
    assert list(flows.columns) == list(FLOW_COLUMNS)
    assert len(flows) > 0
    for name, (dtype, _meaning) in FLOW_COLUMNS.items():
        actual = flows[name].dtype
        if dtype == "str":
            assert pd.api.types.is_string_dtype(actual), f"{name}: {actual}"
        else:
            assert str(actual) == dtype, f"{name}: {actual}, declared {dtype}"


def test_docs_list_every_cause() -> None:
    doc = (PROJECT / "docs" / "analyze.md").read_text()
    for cause in CAUSES:
        assert f"| `{cause}` |" in doc, f"docs/analyze.md does not describe the cause {cause}"
