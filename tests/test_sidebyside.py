"""Captures read side by side and in the background (``diag.capture.sidebyside``) against one by one.

The reference is ``read_capture`` of each file alone, on the shipped captures
of the incident; the memory budget is checked to count every read going on,
and a failed read to stop the others with its own error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT

from diag.capture import read_capture
from diag.capture.sidebyside import BackgroundRead, FileRead, read_files
from diag.errors import CaptureError
from diag.memory import BYTES_PER_PACKET, MemoryBudget, MemoryBudgetError, current_budget, set_budget

CAPTURES = sorted((PROJECT / "captures").glob("*.pcapng"))


def pairs_of(paths: list[Path]) -> list[tuple[str, Path]]:
    return [(path.stem, path) for path in paths]


def assert_same_as_alone(files: list[FileRead], pairs: list[tuple[str, Path]]) -> None:
    assert len(files) == len(pairs)
    for (table, info), (name, path) in zip(files, pairs, strict=True):
        alone = read_capture(path, name=name)
        pd.testing.assert_frame_equal(table, alone)
        assert info == alone.attrs["capture_info"]


@pytest.mark.filterwarnings("ignore::diag.capture.CaptureWarning")
def test_files_read_side_by_side_are_the_files_read_alone() -> None:
    assert len(CAPTURES) >= 4
    pairs = pairs_of(CAPTURES)
    assert_same_as_alone(read_files(pairs), pairs)


@pytest.mark.filterwarnings("ignore::diag.capture.CaptureWarning")
def test_a_background_read_gives_the_same_files_and_can_be_dropped() -> None:
    pairs = pairs_of(CAPTURES)
    started = BackgroundRead(pairs)
    assert_same_as_alone(started.result(), pairs)
    dropped = BackgroundRead(pairs)
    dropped.cancel()  # returns once the reads stopped; nothing raised
    with pytest.raises(CaptureError):
        dropped.result()


def test_the_budget_counts_the_reads_going_on() -> None:
    budget = MemoryBudget(limit=1000 * BYTES_PER_PACKET)
    first, second = object(), object()
    budget.check("a.pcap", 600, first)
    budget.check("a.pcap", 700, first)  # a read's own earlier projection is replaced, not added
    with pytest.raises(MemoryBudgetError, match="of other reads"):
        budget.check("b.pcap", 400, second)  # 700 in flight + 400 > 1000
    budget.forget(second)
    budget.keep(650, first)  # the read ended: its rows count, its projection no more
    budget.check("b.pcap", 350, second)
    with pytest.raises(MemoryBudgetError):
        budget.check("b.pcap", 351, second)
    assert budget.reading == {second: 350}


@pytest.mark.filterwarnings("ignore::diag.capture.CaptureWarning")
def test_files_side_by_side_stay_within_the_budget_one_by_one_would(tmp_path: Path) -> None:
    """Two copies of a capture under a budget that holds one of them: refused, as reading them in turn is."""
    path = max(CAPTURES, key=lambda capture: capture.stat().st_size)
    packets = len(read_capture(path))
    copies = [shutil.copy(path, tmp_path / f"{side}.pcapng") for side in ("left", "right")]
    pairs = pairs_of([Path(copy) for copy in copies])
    # A read projects about 1.02 x its packets + 1024 (diag.capture.reader): room for one file, not for two.
    set_budget(int((1.5 * packets + 1030) * BYTES_PER_PACKET))
    try:
        with pytest.raises(MemoryBudgetError):
            read_files(pairs)
        assert current_budget().reading == {}  # no read left counted as going on
        set_budget(3 * (packets + 2048) * BYTES_PER_PACKET)
        files = read_files(pairs)
        assert current_budget().kept_packets == 2 * packets and current_budget().reading == {}
        assert_same_as_alone(files, pairs)
    finally:
        set_budget(None)


@pytest.mark.filterwarnings("ignore::diag.capture.CaptureWarning")
def test_a_failed_read_raises_its_own_error_and_stops_the_others(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is no capture at all" * 100)
    pairs = pairs_of([CAPTURES[0], bad, *CAPTURES[1:4]])
    with pytest.raises(CaptureError, match=r"bad\.pcap: not a pcap or pcapng capture"):
        read_files(pairs)
    missing = tmp_path / "gone.pcap"
    with pytest.raises(CaptureError, match=r"gone\.pcap: no such file"):
        read_files(pairs_of([*CAPTURES[:3], missing]))
