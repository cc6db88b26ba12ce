"""Candidate reduction (``diag.reduction``): each point keeps only what correlation and diagnosis can use.

The steps a Dask cluster runs (``diag.cluster``: a point's files merged with
its flow table, its link keys cut into hash partitions, each partition
reduced to the keys of two points or more, the candidates chosen) are run
here in one process, so the result can be compared with the whole analysis
for any number of partitions without a cluster; so are the connection
partitions the diagnosis is cut into (``diag.partitions``). The cluster
itself is tested in tests/test_fleet.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT

from diag.analysis import analyze, group_points, parse_capture_args, read_file
from diag.capture.filter import parse_filter
from diag.clocks import PairBounds
from diag.correlate import correlate
from diag.partitions import components, cut_part, diagnose_part, merge_findings, partition_rows
from diag.reduction import LinkKeys, partition_link_keys, shared_link_keys
from diag.report import Finding, Report
from diag.report.flowcap import problem_mask
from diag.report.jsondoc import dumps
from diag.report.text import render_text
from diag.taskgraph import (
    InProcess,
    PointCandidates,
    point_candidates,
    point_link_parts,
    prepare_point,
    report_of_candidates,
    run_analysis,
    shared_in_partition,
)

CAPTURES = PROJECT / "captures"


def _candidates(
    points: Mapping[str, Sequence[Path]], partitions: int, packet_filter: str | None = None
) -> list[PointCandidates]:
    tree = parse_filter(packet_filter) if packet_filter else None
    parts = [
        prepare_point([str(path) for path in files], tree, *[read_file(name, path) for path in files])
        for name, files in points.items()
    ]
    cut = [point_link_parts(part, partitions) for part in parts]
    shared = [shared_in_partition([pieces[number] for pieces in cut]) for number in range(partitions)]
    return [point_candidates(part, *shared) for part in parts]


def _points(*specs: str | Path) -> dict[str, list[Path]]:
    return group_points(parse_capture_args([str(spec) for spec in specs]))


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated capture of many healthy flows and a few thousand resets and unanswered SYNs."""
    out = tmp_path_factory.mktemp("busy") / "busy.pcap"
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_capture.py"), "--packets", "40000", "--seed", "11",
         "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("partitions", [1, 2, 5])
def test_the_incident_at_every_point_reduced_gives_the_whole_report(partitions: int) -> None:
    points = _points(*sorted(CAPTURES.glob("*.pcapng")))
    whole = analyze(points)
    reduced = report_of_candidates(_candidates(points, partitions))
    assert reduced.dumps() == whole.dumps()
    assert reduced.flows.equals(whole.flows)
    assert whole.verdict is not None and whole.verdict.cause == "asymmetric-return"
    # The healthy traffic the points also saw is left out.
    assert len(reduced.packets) < len(whole.packets)


@pytest.mark.parametrize(
    "captures",
    [["fix-snat/client.pcapng"], ["udp-asymmetric/client.pcapng"], ["client.pcapng", "natgw.pcapng"],
     ["node-b.pcapng", "pod-b.pcapng", "vpc-router.pcapng"]],
)  # fmt: skip
def test_subsets_of_points_reduced_give_the_whole_report(captures: list[str]) -> None:
    points = _points(*(CAPTURES / name for name in captures))
    assert report_of_candidates(_candidates(points, 3)).dumps() == analyze(points).dumps()


def test_a_busy_capture_with_the_incident_keeps_a_few_percent(busy: Path) -> None:
    points = {"node-c": [busy], **_points(*sorted(CAPTURES.glob("*.pcapng")))}
    whole = analyze(points)
    results = _candidates(points, 2)
    reduced = report_of_candidates(results)
    assert reduced.dumps() == whole.dumps()
    kept = {result.info.name: len(result.packets) / result.read for result in results}
    assert kept["node-c"] < 0.2, kept
    assert {finding.cause for finding in whole.findings} >= {"asymmetric-return", "peer-reset"}


def test_a_filter_applied_where_the_point_is_read(busy: Path) -> None:
    points = {"node-c": [busy], **_points(CAPTURES / "client.pcapng", CAPTURES / "pod-b.pcapng")}
    expression = "tcp and not port 22"
    reduced = report_of_candidates(_candidates(points, 2, expression))
    assert reduced.dumps() == analyze(points, packet_filter=expression).dumps()


def test_shared_keys_do_not_depend_on_the_partitioning() -> None:
    rng = np.random.default_rng(3)
    points = [
        LinkKeys(
            np.unique(rng.integers(1, 500, 200, dtype=np.uint64)),
            np.unique(rng.integers(1, 50, 20, dtype=np.uint64)),
            np.arange(5, dtype=np.uint64) + point,
            np.full(5, point + 1, dtype=np.uint64),
        )
        for point in range(4)
    ]
    one = shared_link_keys(points)
    for partitions in (2, 3, 7):
        cut = [partition_link_keys(keys, partitions) for keys in points]
        parts = [shared_link_keys([pieces[number] for pieces in cut]) for number in range(partitions)]
        assert np.array_equal(np.sort(np.concatenate([part.packets for part in parts])), one.packets)
        assert np.array_equal(np.sort(np.concatenate([part.endpoints for part in parts])), one.endpoints)
        assert np.array_equal(np.sort(np.concatenate([part.syn_seqs for part in parts])), one.syn_seqs)
    # Sequence numbers 1 to 4 come with two different SYNs (two points' contents); 0 and 7 with one.
    assert one.syn_seqs.tolist() == [1, 2, 3, 4, 5, 6]


def _diagnosed_in_parts(report: Report, parts: int) -> list[Finding]:
    corr = correlate(report.packets)
    cuts = partition_rows(report.packets, corr, parts)
    return merge_findings([diagnose_part(*cut_part(report.packets, corr, rows), rows) for rows in cuts])


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_connection_partitions_diagnosed_apart_give_the_findings_of_one_run(busy: Path, parts: int) -> None:
    """The correlated candidates cut into parts of whole connections, each diagnosed alone, merged back."""
    points = {"node-c": [busy], **_points(*sorted(CAPTURES.glob("*.pcapng")))}
    reduced = report_of_candidates(_candidates(points, 2))
    assert _diagnosed_in_parts(reduced, parts) == list(reduced.findings)
    assert len(reduced.findings) > 50


def test_every_part_holds_whole_connections_and_each_point_s_time_span(busy: Path) -> None:
    points = {"node-c": [busy], **_points(CAPTURES / "client.pcapng", CAPTURES / "natgw.pcapng")}
    packets = report_of_candidates(_candidates(points, 2)).packets
    corr = correlate(packets)
    parts = partition_rows(packets, corr, 4)
    component = components(packets, corr)
    sizes = np.bincount(component[component >= 0])
    for rows in parts:
        present = component[rows][component[rows] >= 0]
        assert np.array_equal(np.bincount(present, minlength=len(sizes))[np.unique(present)], sizes[np.unique(present)])
        for code in np.unique(packets["capture"].cat.codes.to_numpy()):
            at = corr.ts_ref_ns[packets["capture"].cat.codes.to_numpy() == code]
            mine = corr.ts_ref_ns[rows][packets["capture"].cat.codes.to_numpy()[rows] == code]
            assert (mine.min(), mine.max()) == (at.min(), at.max())
    # The work is spread: no part holds most of the rows.
    assert max(len(rows) for rows in parts) < 0.5 * len(packets)


# ---- the whole graph (diag.taskgraph), run task by task in this process ----


@pytest.mark.parametrize("partitions", [1, 2, 3, 5, 7])
def test_the_graph_correlating_on_partitions_gives_the_whole_report(busy: Path, partitions: int) -> None:
    """Components labelled across points, clock bounds per partition combined, each partition correlated and
    diagnosed, the flow tables sending their counts and shown rows: the JSON and the text of one process."""
    points = {"node-c": [busy], **_points(*sorted(CAPTURES.glob("*.pcapng")))}
    pairs = parse_capture_args(points)
    whole = analyze(points)
    spread = run_analysis(InProcess(partitions), pairs)
    assert spread.dumps() == whole.dumps()
    assert render_text(spread) == render_text(whole)
    assert render_text(spread, all_findings=True) == render_text(whole, all_findings=True)
    assert spread.clock_offsets == whole.clock_offsets and len(whole.clock_offsets) >= 6
    # Nothing per packet came back, and of the flows only those the report shows.
    assert spread.packets.empty and spread.flow_digest is not None
    assert spread.flow_digest.flows == len(whole.flows)


@pytest.mark.parametrize("limit", [7, 150, 1000])
def test_the_flow_rows_shown_under_any_cap_are_the_whole_table_s(busy: Path, limit: int) -> None:
    """Caps below the problem flows, between them and all flows, and above: the JSON's rows, its count of rows
    left out and the text's per-kind lists and counts are those of the whole table."""
    points = {"node-c": [busy], **_points(CAPTURES / "client.pcapng", CAPTURES / "natgw.pcapng")}
    whole = analyze(points)
    assert 7 < int(problem_mask(whole.flows).sum()) < 1000 < len(whole.flows)
    spread = run_analysis(InProcess(2), parse_capture_args(points), flow_limit=limit)
    assert dumps(spread, limit) == dumps(whole, limit)
    assert render_text(spread) == render_text(whole)
    with pytest.raises(ValueError, match="not every flow"):
        render_text(spread, flows="all")


def test_the_four_points_of_the_same_traffic_correlate_on_partitions(tmp_path: Path) -> None:
    """Every packet seen at four points, one hop and another clock apart: every packet is a candidate, and the
    clock offsets come from the delay bounds of every partition."""
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_busy.py"), "--profile", "busy", "--points", "4", "--flows", "300",
         "--packets", "8000", "--seed", "5", "--out-dir", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    points = {path.stem: [path] for path in sorted(tmp_path.glob("busy-p*.pcap"))}
    whole = analyze(points)
    assert len(whole.clock_offsets) == 4 and len({offset.offset_s for offset in whole.clock_offsets.values()}) == 4
    for partitions in (2, 5):
        assert run_analysis(InProcess(partitions), parse_capture_args(points)).dumps() == whole.dumps()


def test_delay_bounds_combined_from_parts_are_those_of_all_packets() -> None:
    """The median's sign, the bounds and so the pair's estimate, from any split of the packets."""
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(1, 12))
        d = rng.integers(-50, 50, n) * (1 + trial % 3)
        direction = rng.choice(np.array([-1, 0, 1], dtype=np.int8), n) * (trial % 2)
        whole = PairBounds.of(d, direction)
        assert whole.median_not_negative() == (float(np.median(d)) >= 0)
        cut = np.sort(rng.choice(np.arange(1, n + 1), int(rng.integers(0, n)), replace=False)) if n > 1 else []
        parts = [PairBounds.of(d[a:b], direction[a:b]) for a, b in zip([0, *cut], [*cut, n], strict=True) if b > a]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined.combine(part)
        assert combined == whole
        assert combined.estimate() == whole.estimate()


def test_merge_order_keeps_the_first_given_of_each_key_in_key_order() -> None:
    """The one ordering rule of the in-memory merge and the findings on disk, against a plain dict of tuples."""
    from diag.spilledfindings import merge_order

    rng = np.random.default_rng(5)
    for size in (0, 1, 7, 400):
        ts_ref = rng.integers(0, 5, size)
        first_row = rng.integers(0, 3, size)
        capture = np.array([["pod", "node-a", "node-b", "a"][code] for code in rng.integers(0, 4, size)], dtype=object)
        file = rng.integers(0, 2, size)
        index = rng.integers(0, 3, size)
        first_given: dict[tuple[int, int, str, int, int], int] = {}
        for position in range(size):
            key = (
                int(ts_ref[position]),
                int(first_row[position]),
                str(capture[position]),
                int(file[position]),
                int(index[position]),
            )
            first_given.setdefault(key, position)
        expected = [first_given[key] for key in sorted(first_given)]
        assert merge_order(ts_ref, first_row, capture, file, index).tolist() == expected
