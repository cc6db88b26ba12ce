"""The column reference in docs/ is the one the code defines."""

from __future__ import annotations

from conftest import PROJECT

from diag.capture.columns import describe_columns


def test_docs_list_every_column_as_the_code_defines_it() -> None:
    doc = (PROJECT / "docs" / "columns.md").read_text()
    assert describe_columns() in doc, "docs/columns.md is stale: regenerate the table from describe_columns()"
