"""The content order the correlation groups packets by, against numpy's stable sort."""

from __future__ import annotations

import numpy as np
import pytest

from diag.correlate.sightings import by_capture_then_time, content_order


def _spread(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, n, dtype=np.uint64)


def _few_distinct(rng: np.random.Generator, n: int) -> np.ndarray:
    """Many rows per content: copies of one packet, retransmissions of one segment."""
    return rng.choice(_spread(rng, max(n // 20, 1)), n)


def _not_spread(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values that share their top bits: every row falls in a few buckets (the merge sort's case)."""
    top = np.where(rng.integers(0, 2, n) == 1, np.uint64(0xFFFF_0000_0000_0000), np.uint64(0))
    return rng.integers(0, 2**20, n).astype(np.uint64) | top


@pytest.mark.parametrize("values", [_spread, _few_distinct, _not_spread])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 5_000, 200_000])
def test_content_order_is_the_stable_sort_of_the_contents(values: object, n: int) -> None:
    rng = np.random.default_rng(n)
    content = values(rng, n)  # type: ignore[operator]
    rows = np.sort(rng.choice(10 * n + 1, n, replace=False)).astype(np.int64)  # positions of the matchable rows
    ordered, new_content = content_order(content, rows)
    by_content = np.argsort(content, kind="stable")
    assert ordered.dtype == np.int64 and np.array_equal(ordered, rows[by_content])
    sorted_content = content[by_content]
    expected_new = np.ones(n, dtype=bool)
    expected_new[1:] = sorted_content[1:] != sorted_content[:-1]
    assert np.array_equal(new_content, expected_new)


@pytest.mark.parametrize("layout", ["in order", "times step back", "captures interleaved", "both"])
def test_capture_then_time_order_is_the_stable_sort_by_both(layout: str) -> None:
    rng = np.random.default_rng(len(layout))
    n = 20_000
    capture = np.sort(rng.integers(0, 4, n))
    ts = np.sort(rng.integers(0, 10**9, n)) // 1000 * 1000  # some equal times: their order must stay
    if layout in ("times step back", "both"):
        ts[n // 3 : n // 3 + 500] -= 10**8  # a clock step inside one capture
    if layout in ("captures interleaved", "both"):
        capture = rng.permutation(capture)
    order = by_capture_then_time(capture.astype(np.int64), ts.astype(np.int64))
    assert np.array_equal(order, np.lexsort((ts, capture)))
