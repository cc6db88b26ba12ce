"""Analysis in passes (``diag.passes``): the report of captures larger than the budget is the report of one pass.

The shipped captures are small, so the number of passes is forced (``passes=``)
instead of coming from a tiny budget; the whole JSON document (findings, flow
table, clock, captures, warnings) must equal the one-pass analysis's.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT

import diag.passes
import diag.spilled
from diag.analysis import analyze, concat_packets, parse_capture_args, read_captures
from diag.capture.reader import read_capture
from diag.flows import build_flows
from diag.flows.candidate_stream import CandidateSurvey, FileOrder
from diag.flows.candidates import candidate_rows, key_table
from diag.memory import MemoryBudgetError, parse_size, set_budget
from diag.passes import analyze_in_passes, flows_in_passes
from diag.report import Report
from diag.report.jsondoc import report_to_json, write_json
from diag.report.text import render_text
from diag.scratch import choose_spill_directory, filesystem_of

CAPTURES = PROJECT / "captures"
DIAG = PROJECT / ".venv" / "bin" / "diag"

CASES = {
    "incident": sorted(CAPTURES.glob("*.pcapng")),
    "incident-client+pod-b": [CAPTURES / "client.pcapng", CAPTURES / "pod-b.pcapng"],
    "node-a": [CAPTURES / "node-a.pcapng"],
    "fix-snat": sorted((CAPTURES / "fix-snat").glob("*.pcapng")),
    "udp-asymmetric": sorted((CAPTURES / "udp-asymmetric").glob("*.pcapng")),
}


def _arguments(paths: list[Path]) -> list[str]:
    return [f"{path.stem}={path}" for path in paths]


@pytest.mark.parametrize(("passes", "spill", "parts"), [(1, False, 1), (3, True, 3)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_passes_give_the_report_of_one_pass(case: str, passes: int, spill: bool, parts: int) -> None:
    """With ``spill`` the flow table goes to disk: the report holds the rows it shows, the store every row; with
    ``parts`` the candidates are diagnosed in that many connection partitions, one after another."""
    arguments = _arguments(CASES[case])
    one_pass = analyze(arguments)
    whole = report_to_json(one_pass, None)
    pairs = parse_capture_args(arguments)
    report = analyze_in_passes(
        pairs, 1 << 40, passes=passes, buckets=passes * 2 + 1, spill_flows=spill, diagnose_parts=parts
    )
    if spill:
        assert report.flow_store is not None
        pd.testing.assert_frame_equal(report.flow_store.load(), one_pass.flows)
        assert report_to_json(report) == report_to_json(one_pass)
        in_memory = analyze_in_passes(pairs, 1 << 40, passes=passes, buckets=passes * 2 + 1, spill_flows=False)
        assert render_text(report) == render_text(in_memory)
        report = replace(report, flows=report.flow_store.load(), flow_digest=None)
    assert report_to_json(report, None) == whole
    assert whole["findings"] or case == "fix-snat"  # the cases hold symptoms to get wrong
    assert len(report.packets) <= sum(info["packets"] for info in whole["captures"])


def test_compressed_files_and_a_ring_of_files_are_read_again_in_each_pass(tmp_path: Path) -> None:
    """gzip inputs are decompressed again in every pass; a point of several files keeps its merged order."""
    ring = tmp_path / "ring"
    ring.mkdir()
    arguments = []
    for path in CASES["incident"]:
        packed = tmp_path / f"{path.stem}.pcapng.gz"
        packed.write_bytes(gzip.compress(path.read_bytes()))
        arguments.append(f"{path.stem}={packed}")
    # The client's point as two files: the capture twice, which overlaps in time and is merged packet by packet.
    for name in ("a.pcapng", "b.pcapng"):
        shutil.copy(CAPTURES / "client.pcapng", ring / name)
    arguments = [a for a in arguments if not a.startswith("client=")] + [f"client={ring}"]
    whole = report_to_json(analyze(arguments), None)
    report = analyze_in_passes(parse_capture_args(arguments), 1 << 40, passes=2)
    assert report_to_json(report, None) == whole


def test_a_budget_too_small_even_for_passes_is_one_clear_error() -> None:
    """Over the budget the one-pass read refuses and ``analyze`` turns to passes; when even those do not fit
    (the incident's 106 packets nearly all candidates, ~40 KB), the error says so."""
    set_budget(30_000)
    try:
        with pytest.raises(MemoryBudgetError, match="even analysed in passes"):
            analyze(_arguments(CASES["incident"]))
    finally:
        set_budget(None)


def test_the_refusal_names_a_budget_that_lets_the_same_analysis_through() -> None:
    """The refusal says where to start (``at least --max-memory 1M``, as the option is written), and that
    budget gives the report an unbounded analysis gives."""
    arguments = _arguments(CASES["incident"])
    set_budget(30_000)
    try:
        with pytest.raises(MemoryBudgetError) as refused:
            analyze(arguments)
    finally:
        set_budget(None)
    suggested = re.search(r"\(at least --max-memory (\d+[MG])\)$", str(refused.value))
    assert suggested is not None, str(refused.value)
    set_budget(parse_size(suggested[1]))
    try:
        within = analyze(arguments)
    finally:
        set_budget(None)
    assert report_to_json(within, None) == report_to_json(analyze(arguments), None)


def test_a_flow_table_too_large_even_for_passes_names_no_diagnosis() -> None:
    """``diag flows`` chooses no candidates: its refusal speaks of the flow table, not of packets the
    diagnosis needs (it said 'about 0 of them needed for the diagnosis')."""
    pairs = parse_capture_args(_arguments(CASES["incident"]))
    with pytest.raises(MemoryBudgetError, match="even analysed in passes") as refused:
        flows_in_passes(pairs, 30_000)
    assert "diagnosis" not in str(refused.value) and "their flow table (about " in str(refused.value)


def test_standard_input_over_the_budget_is_one_line() -> None:
    """Standard input cannot be read twice: over the budget it is refused in one line, exit status 2."""
    done = subprocess.run(
        [str(DIAG), "analyze", "pcap", "-q", "--max-memory", "1K", "--json", "-", "-"],
        input=(CAPTURES / "client.pcapng").read_bytes(),
        capture_output=True,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "standard input" in stderr and "save it to a file" in stderr


def _key_tables_in_chunks(arguments: list[str], chunk: int) -> list[tuple[int, int, pd.DataFrame]]:
    """(file, first row, packet chunk) of each point read whole, one file per point, in ``chunk``-row pieces."""
    pieces = []
    for number, (name, path) in enumerate(parse_capture_args(arguments)):
        table = read_capture(path, name=name)
        pieces += [(number, start, table.iloc[start : start + chunk]) for start in range(0, len(table), chunk)]
    return pieces


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_streamed_choice_keeps_what_candidate_rows_keeps(case: str, tmp_path: Path) -> None:
    """Chunks of 7 rows, 5 buckets worked on one at a time: the rows kept are ``candidate_rows``'s (a tie of
    delay bounds would keep every tied key, a superset; these captures have none)."""
    arguments = _arguments(CASES[case])
    pieces = _key_tables_in_chunks(arguments, 7)
    survey = CandidateSurvey(tmp_path, buckets=5, buffer_rows=10)
    keys = []
    for number, start, packets in pieces:
        table = key_table(packets, number)
        survey.add(table, number, start)
        keys.append(table)
    choice = survey.choose([FileOrder(n, n, 0, False) for n in range(len(arguments))], bucket_rows=1)
    assert not list(tmp_path.iterdir())  # the buckets are removed as they are read
    expected = candidate_rows(pd.concat(keys, ignore_index=True))
    streamed = np.concatenate(
        [
            choice.keep(packets, key_table(packets, number)["node"].to_numpy(), number, start)
            for number, start, packets in pieces
        ]
    )
    assert (streamed >= expected).all()
    print("SUMS", case, streamed.sum(), expected.sum(), len(expected))
    assert expected.sum() < len(expected) or case.startswith("udp")


@pytest.mark.parametrize("case", ["incident", "fix-snat"])
def test_the_flow_table_alone_in_passes_is_the_flow_table_of_one_pass(case: str) -> None:
    """``diag flows`` over the budget: the partitions' flow rows, renumbered, are the whole table's."""
    pairs = parse_capture_args(_arguments(CASES[case]))
    tables, _infos = read_captures(pairs)
    whole = build_flows(concat_packets(tables))
    flows, infos = flows_in_passes(pairs, 1 << 40, passes=3)
    pd.testing.assert_frame_equal(flows, whole)
    assert [info.name for info in infos] == [path.stem for path in CASES[case]]


@pytest.fixture(scope="module")
def four_points(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Generated busy traffic at four points (each a hop further, its own clock): resets, refusals, lost SYNs."""
    out = tmp_path_factory.mktemp("four")
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_busy.py"), "--profile", "busy", "--packets", "30000",
         "--flows", "1500", "--points", "4", "--seed", "3", "--out-dir", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return sorted(out.glob("busy-p*.pcap"))


def test_four_generated_points_in_passes_give_the_report_of_one_pass(four_points: list[Path], tmp_path: Path) -> None:
    """Delay bounds that tie across many packets (generated clocks) and thousands of candidates: the streamed
    choice is ``candidate_rows``'s, and four flow partitions and 7 key buckets give the one-pass report."""
    arguments = _arguments(four_points)
    pieces = _key_tables_in_chunks(arguments, 5000)
    survey = CandidateSurvey(tmp_path, buckets=7, buffer_rows=3000)
    keys = []
    for number, start, packets in pieces:
        table = key_table(packets, number)
        survey.add(table, number, start)
        keys.append(table)
    choice = survey.choose([FileOrder(n, n, 0, False) for n in range(len(arguments))], bucket_rows=4000)
    expected = candidate_rows(pd.concat(keys, ignore_index=True))
    streamed = np.concatenate(
        [
            choice.keep(packets, key_table(packets, number)["node"].to_numpy(), number, start)
            for number, start, packets in pieces
        ]
    )
    assert (streamed == expected).all() and 0 < expected.sum() < len(expected) // 2
    whole = report_to_json(analyze(arguments), None)
    report = analyze_in_passes(parse_capture_args(arguments), 1 << 40, passes=4, buckets=7)
    assert report_to_json(report, None) == whole
    in_parts = analyze_in_passes(parse_capture_args(arguments), 1 << 40, passes=4, buckets=7, diagnose_parts=5)
    assert report_to_json(in_parts, None) == whole
    assert len(whole["findings"]) > 10 and len(whole["clock"]["offsets"]) == 4


def _ladder(report: Report, path: Path) -> str:
    """The verdict's ladder as SVG text, without what changes from one drawing to the next (date, clip ids)."""
    import diag.plot

    diag.plot.ladder_to_file(report, path)
    text = path.read_text()
    return re.sub(r'(id|href|clip-path)="[^"]*"|url\(#[^)]*\)|<dc:date>[^<]*', "", text)


def test_the_ladder_drawn_from_passes_is_the_one_pass_ladder(four_points: list[Path], tmp_path: Path) -> None:
    """Passes keep every packet of a connection that can hold a finding, at every point: the same drawing."""
    for arguments in (_arguments(CASES["incident"]), _arguments(four_points)):
        whole = _ladder(analyze(arguments), tmp_path / "whole.svg")
        passes = _ladder(analyze_in_passes(parse_capture_args(arguments), 1 << 40, passes=2), tmp_path / "passes.svg")
        assert passes == whole and "<path" in whole


def test_the_command_over_its_budget_reads_in_passes_with_the_same_report(
    four_points: list[Path], tmp_path: Path
) -> None:
    """``--max-memory 40M`` is below what one read of the four points needs (about 70 MB at 576 bytes a
    packet), so ``analyze`` turns to passes; the JSON report is the uncapped one's."""
    outputs = {}
    for budget in ("40M", None):
        out = tmp_path / f"{budget}.json"
        extra = ["--max-memory", budget] if budget else []
        done = subprocess.run(
            [str(DIAG), "analyze", "pcap", "-q", *extra, "--json", str(out), *_arguments(four_points)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        outputs[budget] = out.read_text()
    assert outputs["40M"] == outputs[None]


def test_a_flow_table_on_disk_gives_the_report_of_one_pass(
    four_points: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9,000 flows, of which the report keeps 100 healthy ones and the problem rows it shows in memory (the JSON
    capped at 100 rows, the text's 20 lines of each kind); the rest is read back from disk in blocks of a few
    dozen rows, merged from 4 partitions: the same JSON and text, and the same whole table."""
    monkeypatch.setattr(diag.spilled, "FLOW_LIMIT", 100)
    monkeypatch.setattr(diag.spilled, "MERGE_BLOCK_ROWS", 37)
    monkeypatch.setattr(diag.spilled, "READ_ROWS", 101)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    arguments = _arguments(four_points)
    one_pass = analyze(arguments)
    pairs = parse_capture_args(arguments)
    report = analyze_in_passes(pairs, 1 << 40, passes=4, buckets=7, spill_flows=True)
    store = report.flow_store
    assert store is not None and len(store._parts) == 4
    assert len(report.flows) < 400 < len(one_pass.flows)  # only the rows the reports show are in memory
    assert report_to_json(report, 100) == report_to_json(one_pass, 100)
    assert report_to_json(report, 100)["flows_truncated"] == len(one_pass.flows) - 100
    in_memory = analyze_in_passes(pairs, 1 << 40, passes=4, buckets=7, spill_flows=False)
    assert in_memory.flow_store is None
    assert render_text(report) == render_text(in_memory)
    pd.testing.assert_frame_equal(store.load(), one_pass.flows)
    assert list(tmp_path.iterdir()) == [store.path]  # the packet and key buckets are gone already
    del report
    store.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("stop", [RuntimeError("a partition failed"), KeyboardInterrupt()])
def test_the_temporary_files_are_removed_when_the_analysis_stops(
    four_points: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: BaseException
) -> None:
    """An error (or Ctrl-C) while the third partition's flows are built, with packets, keys and two partitions'
    flow rows on disk: the error comes out as it was, and no file is left behind."""
    built = []

    def build_or_stop(packets: pd.DataFrame) -> pd.DataFrame:
        if len(built) == 2:
            assert any(tmp_path.rglob("packets-*")) and any(tmp_path.rglob("part-*.rows"))
            raise stop
        built.append(len(packets))
        return build_flows(packets)

    monkeypatch.setattr(diag.passes, "build_flows", build_or_stop)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(type(stop)):
        analyze_in_passes(parse_capture_args(_arguments(four_points)), 1 << 40, passes=4, spill_flows=True)
    assert len(built) == 2
    assert not list(tmp_path.iterdir())


def test_the_command_with_a_flow_table_on_disk_writes_the_uncapped_report_and_leaves_no_file(
    four_points: list[Path], tmp_path: Path
) -> None:
    """``--max-memory 12M``: passes, and the 9,000 flows' table (about 4.5 MB in memory) is over a quarter of
    the budget, so it goes to disk; the JSON and the text are the uncapped run's, ``--flows all`` too, and
    the temporary directory is empty afterwards."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    environment = {**os.environ, "TMPDIR": str(temporary)}
    outputs = {}
    for budget in ("12M", None):
        for flows in ("problems", "all"):
            out = tmp_path / f"{budget}-{flows}.json"
            extra = ["--max-memory", budget] if budget else []
            done = subprocess.run(
                [str(DIAG), "analyze", "pcap", "--flows", flows, *extra, "--json", str(out), *_arguments(four_points)],
                capture_output=True, text=True, check=False, env=environment,
            )  # fmt: skip
            assert done.returncode in (0, 1), done.stderr
            outputs[budget, flows] = (out.read_text(), done.stdout)
            assert not list(temporary.iterdir())
    set_budget(parse_size("12M"))  # the same decision in this process: passes, and the flows on disk
    try:
        report = analyze(_arguments(four_points))
    finally:
        set_budget(None)
    assert report.flow_store is not None and report.flow_digest is not None
    report.flow_store.close()
    for flows in ("problems", "all"):
        assert outputs["12M", flows] == outputs[None, flows]


def test_captures_without_a_packet_in_passes_give_the_report_of_one_pass(tmp_path: Path) -> None:
    """A file of nothing but its header, alone and next to a capture: no bucket, no flow, the same report."""
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for arguments in ([f"empty={empty}"], [f"empty={empty}", f"client={CAPTURES / 'client.pcapng'}"]):
        whole = analyze(arguments)
        report = analyze_in_passes(parse_capture_args(arguments), 1 << 40, passes=2, spill_flows=True)
        assert report_to_json(report) == report_to_json(whole)
        assert render_text(report) == render_text(whole)


def test_a_killed_command_in_passes_leaves_no_temporary_file_and_no_output(
    four_points: list[Path], tmp_path: Path
) -> None:
    """SIGTERM while the analysis in passes holds its buckets on disk: exit 143, the temporary directory
    emptied on the way out, and no half-written report."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    out = tmp_path / "report.json"
    command = [str(DIAG), "analyze", "pcap", "--max-memory", "12M", "--json", str(out), *_arguments(four_points)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    deadline = time.monotonic() + 120
    while not any(temporary.iterdir()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert process.poll() is None, "the analysis ended before its temporary files appeared"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "diag: terminated"
    assert not list(temporary.iterdir())
    assert not out.exists()


def _healthy_key_tables(flows: int, chunk: int) -> list[pd.DataFrame]:
    """Key tables (``key_table``'s columns) of ``flows`` TCP flows at one point, in ``chunk``-row pieces: each a
    SYN, a SYN-ACK and an ACK with keys of their own, and every hundredth flow a RST after them."""
    flow = np.repeat(np.arange(flows, dtype=np.int64), 3)
    step = np.tile(np.arange(3), flows)
    reset = np.arange(0, flows, 100)
    flow, step = np.concatenate([flow, reset]), np.concatenate([step, np.full(len(reset), 3)])
    order = np.lexsort((step, flow))
    flow, step = flow[order], step[order]
    salt = np.uint64(0x9E3779B97F4A7C15)
    client = (flow.astype(np.uint64) + np.uint64(1)) * salt
    server = np.uint64(77 * 0x9E3779B97F4A7C15 % (1 << 64))
    from_client = (step == 0) | (step == 2)
    flags = np.array([0x02, 0x12, 0x10, 0x04], dtype=np.int16)[step]
    table = pd.DataFrame(
        {
            "point": np.zeros(len(flow), dtype=np.int16),
            "node": (flow.astype(np.uint64) + np.uint64(1)) * np.uint64(0xC2B2AE3D27D4EB4F),
            "key": np.arange(1, len(flow) + 1, dtype=np.uint64) * np.uint64(0x165667B19E3779F9),
            "ip_id": np.arange(len(flow), dtype=np.int32) % 65536,
            "ts_ns": np.arange(len(flow), dtype=np.int64) * 1000,
            "ttl": np.full(len(flow), 64, dtype=np.int16),
            "proto": np.full(len(flow), 6, dtype=np.int16),
            "tcp_flags": flags,
            "seq": flow * 7919 + step,
            "sender": np.where(from_client, client, server),
            "client_endpoint": np.where(step <= 1, client, np.uint64(0)),
        }
    )
    return [table.iloc[start : start + chunk].reset_index(drop=True) for start in range(0, len(table), chunk)]


def test_the_survey_holds_no_state_per_flow_in_memory(tmp_path: Path) -> None:
    """60,000 flows that share nothing: what the survey holds between chunks is bounded by its buffer, not by
    the flows (per-flow counts, SYNs and client endpoints are on disk), and the union-find joins only the
    chosen flows, not every flow. The choice is still ``candidate_rows``'s."""
    import tracemalloc

    chunks = _healthy_key_tables(60_000, 4096)
    survey = CandidateSurvey(tmp_path, buckets=8, buffer_rows=2000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = 0
        for chunk in chunks:
            survey.add(chunk, 0, first)
            first += len(chunk)
            assert survey.held_rows() <= 2000 + 3 * 4096  # keys, node counts, SYNs, endpoints of a chunk
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Kept whole in memory, the flows' counts alone would be 60,000 × 48 bytes or more (2.9 MB).
    assert held < 1_500_000, f"the survey holds {held:,} bytes after 60,000 flows"
    choice = survey.choose([FileOrder(0, 0, 0, False)], bucket_rows=10_000)
    assert not list(tmp_path.iterdir())
    assert survey.nodes_seen == 60_000
    assert survey.vertices_joined < 1000  # the 600 reset flows and the boundary rows' flows
    whole = pd.concat(chunks, ignore_index=True)
    expected = candidate_rows(whole)
    kept = choice.keep(whole, whole["node"].to_numpy(), 0, 0)
    assert (kept == expected).all() and expected.sum() == 600 * 4 + 3  # the last flow holds the latest row


@pytest.fixture(scope="module")
def busy_point(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated busy traffic at one point, 12,000 connections: about a thousand of them end badly."""
    out = tmp_path_factory.mktemp("busy")
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_busy.py"), "--profile", "busy", "--packets", "150000",
         "--flows", "12000", "--seed", "5", "--out-dir", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out / "busy.pcap"


def test_the_findings_of_finished_parts_are_on_disk_not_in_memory(busy_point: Path, tmp_path: Path) -> None:
    """The diagnosis in 5 connection partitions of a thousand findings: what it leaves held once the parts
    are done is a small record a finding (the findings are in a file with no name, read back when asked
    for), where a list of them held several kilobytes each. Read back they are the one-pass findings, in
    its order, and the ranking, the text and the JSON document made of them are the same."""
    import gc
    import tracemalloc

    from diag.correlate import correlate
    from diag.spilledfindings import SpilledFindings

    one_pass = analyze([str(busy_point)])
    correlation = correlate(one_pass.packets)
    diagnose_in_parts = diag.passes._diagnoser(5)
    assert diagnose_in_parts is not None
    diagnose_in_parts(one_pass.packets, correlation)  # what a first call loads or caches is not the findings'
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        found = diagnose_in_parts(one_pass.packets, correlation)
        gc.collect()  # what the diagnosis left in reference cycles is garbage, not held
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert isinstance(found, SpilledFindings) and len(found) > 800
    # As Finding objects they take 4-6 KB each (the facts, evidence and ruled-out causes).
    assert held < 400 * len(found), f"{held:,} bytes held for {len(found)} findings"
    assert found == one_pass.findings and list(found) == list(one_pass.findings)
    assert found[-1] == one_pass.findings[-1] and found[3:9] == one_pass.findings[3:9]
    spilled = replace(one_pass, findings=found)
    assert spilled.findings is found  # read-only already: kept on disk, not copied into a tuple
    assert report_to_json(spilled) == report_to_json(one_pass)
    assert render_text(spilled, all_findings=True) == render_text(one_pass, all_findings=True)
    buffer, expected = io.BytesIO(), io.BytesIO()
    write_json(spilled, buffer)
    write_json(one_pass, expected)
    assert buffer.getvalue() == expected.getvalue()
    assert not list(tmp_path.iterdir())  # the file has no name


def test_flow_on_a_flow_table_on_disk_reads_back_only_the_selected_rows(
    four_points: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--flow`` with the flow table on disk: the selected connections' rows are picked from each block of
    101 rows read back (not the whole table loaded), and the focused report is the one focused on the whole
    table read back."""
    from diag.report.focus import focus_report, parse_flow_selector

    monkeypatch.setattr(diag.spilled, "READ_ROWS", 101)
    arguments = _arguments(four_points)
    report = analyze_in_passes(parse_capture_args(arguments), 1 << 40, passes=4, buckets=7, spill_flows=True)
    store = report.flow_store
    assert isinstance(store, diag.spilled.SpilledFlows) and report.verdict is not None
    whole = replace(report, flows=store.load(), flow_digest=None, flow_store=None)
    blocks: list[int] = []
    read_back = type(store).chunks

    def counted(rows: int = 0) -> Iterator[pd.DataFrame]:
        for chunk in read_back(store, rows):
            blocks.append(len(chunk))
            yield chunk

    monkeypatch.setattr(store, "chunks", counted)
    for endpoint in (report.verdict.client, report.verdict.server):
        selector = parse_flow_selector(endpoint)
        focused, expected = focus_report(report, selector, store), focus_report(whole, selector)
        pd.testing.assert_frame_equal(focused.flows, expected.flows)
        assert report_to_json(focused, None) == report_to_json(expected, None)
        assert render_text(focused, flows="all") == render_text(expected, flows="all")
        assert 0 < len(focused.flows) < len(whole.flows) // 10
    assert max(blocks) == 101 and sum(blocks) == 2 * len(whole.flows)
    store.close()


MOUNTS_TEXT = """/dev/vda / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
/dev/vdb /var/tmp xfs rw 0 0
tmpfs /run tmpfs rw 0 0
/dev/vdc /srv/my\\040captures ext4 rw 0 0
"""


def test_spilled_files_leave_a_tmp_in_memory_for_var_tmp_unless_somebody_chose_the_place() -> None:
    assert filesystem_of("/tmp/x/y", MOUNTS_TEXT) == "tmpfs"
    assert filesystem_of("/tmpfoo", MOUNTS_TEXT) == "ext4"  # a mount point is a whole path component
    assert filesystem_of("/srv/my captures/ring", MOUNTS_TEXT) == "ext4"
    assert filesystem_of("/run", MOUNTS_TEXT + "/dev/vdd /run ext4 rw 0 0\n") == "ext4"  # the later mount hides
    assert choose_spill_directory({}, "/tmp", "/var/tmp", MOUNTS_TEXT, True) == "/var/tmp"
    assert choose_spill_directory({"TMPDIR": "/tmp"}, "/tmp", "/var/tmp", MOUNTS_TEXT, True) is None
    assert choose_spill_directory({}, "/run", "/var/tmp", MOUNTS_TEXT, True) is None  # chosen: not the default
    assert choose_spill_directory({}, "/tmp", "/var/tmp", MOUNTS_TEXT, False) is None  # /var/tmp unusable
    on_disk = MOUNTS_TEXT.replace("tmpfs /tmp tmpfs", "/dev/vde /tmp ext4")
    assert choose_spill_directory({}, "/tmp", "/var/tmp", on_disk, True) is None
    both = MOUNTS_TEXT.replace("/dev/vdb /var/tmp xfs", "tmpfs /var/tmp tmpfs")
    assert choose_spill_directory({}, "/tmp", "/var/tmp", both, True) is None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_an_analysis_in_passes_spills_to_disk_when_tmp_is_a_tmpfs(four_points: list[Path], tmp_path: Path) -> None:
    """In a mount namespace of its own (the host's mounts untouched), the system's temporary directory is
    made a tmpfs: the analysis in passes writes its spilled files to the directory on disk instead, and
    leaves none behind. (Both stand-in directories sit under this test's own, so that /tmp stays as it is.)"""
    system, disk = tmp_path / "system-tmp", tmp_path / "var-tmp"
    system.mkdir()
    disk.mkdir()
    if filesystem_of(os.path.realpath(disk), Path("/proc/self/mounts").read_text()) in ("tmpfs", "ramfs"):
        pytest.skip("this test's own directory is in memory: no directory on disk to spill to")
    script = (
        "import sys, tempfile; import diag.scratch as scratch; "
        f"scratch.SYSTEM_TEMPORARY = tempfile.tempdir = {str(system)!r}; scratch.ON_DISK_TEMPORARY = {str(disk)!r}; "
        "made = []; original = tempfile.TemporaryDirectory; "
        "tempfile.TemporaryDirectory = lambda *a, **k: made.append(k.get('dir')) or original(*a, **k); "
        "from diag.cli import main; status = main(sys.argv[1:]); "
        "print(sorted(set(made)), file=sys.stderr); sys.exit(status)"
    )
    environment = {name: value for name, value in os.environ.items() if name not in ("TMPDIR", "TEMP", "TMP")}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs diag-test {system} && "
         'exec "$@"', "sh", sys.executable, "-c", script, "analyze", "pcap", "--max-memory", "12M",
         "--json", str(tmp_path / "r.json"), "--force", "--quiet", *_arguments(four_points)],
        capture_output=True, text=True, check=False, env=environment, timeout=300,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    assert done.stderr.strip().splitlines()[-1] == repr([str(disk)])
    assert not list(disk.iterdir()) and not list(system.iterdir())
