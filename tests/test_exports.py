"""Exports: ``diag flows`` (Zeek's conn.log, CSV, Parquet, JSON) and ``diag analyze pcap --export``.

The conn.log is read back with a small TSV reader written here from Zeek's
format description (the header lines say the separator, the unset and empty
markers, the field names and types), not with diag's own code, and compared
field by field with the flow table. CSV and Parquet are read back with
pandas and compared with the tables. The commands run as separate processes,
as a user runs them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import CORPUS, PROJECT

from diag.analysis import analyze, concat_packets, parse_capture_args, read_captures
from diag.capture.columns import PACKET_COLUMNS
from diag.flows import FLOW_COLUMNS, build_flows
from diag.report.jsondoc import flows_to_json
from diag.report.zeeklog import conn_log_lines, escape_text, format_time

REFERENCE = sorted((PROJECT / "captures").glob("*.pcapng"))
# Real traffic nobody on the project made: TCP and UDP, IPv6, flows of one packet.
CORPUS_FILES = ["of13_ericsson.pcapng", "babel_update_oobr.pcap", "hncp.pcap", "tftp.pcap", "afs.pcap"]

# Zeek's conn.log fields and types, as Zeek's documentation and its logs list them.
ZEEK_FIELDS = [
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration", "orig_bytes",
    "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes", "history", "orig_pkts", "orig_ip_bytes",
    "resp_pkts", "resp_ip_bytes", "tunnel_parents",
]  # fmt: skip
ZEEK_TYPES = [
    "time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count", "count", "string",
    "bool", "bool", "count", "string", "count", "count", "count", "count", "set[string]",
]  # fmt: skip
HEADER_TIME = re.compile(r"\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d")


def run_diag(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "diag.cli", *map(str, args)], cwd=PROJECT, capture_output=True, timeout=300
    )


def _corpus_captures() -> list[Path]:
    found = [CORPUS / "tcpdump" / "tests" / name for name in CORPUS_FILES]
    return [path for path in found if path.exists()]


def point_flows(*captures: str | Path) -> dict[str, pd.DataFrame]:
    """Each point's flow table, built in this process the way the command builds it."""
    pairs = parse_capture_args([str(c) for c in captures])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables, _infos = read_captures(pairs)
    flows = build_flows(concat_packets(tables), icmp=True)
    return {name: flows[flows["capture"].astype(str) == name].reset_index(drop=True) for name in dict(pairs)}


# --- an independent reader of Zeek's TSV logs ---------------------------------------------------------------


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _typed(text: str, zeek_type: str, meta: dict[str, str]) -> Any:
    if text == meta["unset_field"]:
        return None
    if zeek_type.startswith(("set[", "vector[")):
        if text == meta["empty_field"]:
            return set()
        inner = zeek_type[zeek_type.index("[") + 1 : -1]
        return {_typed(item, inner, meta) for item in text.split(meta["set_separator"])}
    if zeek_type == "string" and text == meta["empty_field"]:
        return ""
    if zeek_type in ("time", "interval", "double"):
        return float(text)
    if zeek_type in ("count", "int", "port"):
        return int(text)
    if zeek_type == "bool":
        return {"T": True, "F": False}[text]
    return _unescape(text)


def read_zeek_log(text: str) -> dict[str, Any]:
    """Header values, field names and types, typed records and the #close value of a Zeek ASCII log."""
    lines = text.split("\n")
    assert lines[-1] == "", "a Zeek log ends with a newline"
    lines = lines[:-1]
    first = lines[0]
    assert first.startswith("#separator "), first
    separator = _unescape(first[len("#separator ") :])
    meta: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    fields: list[str] = []
    types: list[str] = []
    for line in lines[1:]:
        if line.startswith("#"):
            key, _, value = line[1:].partition(separator)
            if key == "fields":
                fields = value.split(separator)
            elif key == "types":
                types = value.split(separator)
            else:
                meta[key] = value
            continue
        cells = line.split(separator)
        assert len(cells) == len(fields), line
        records.append({f: _typed(c, t, meta) for f, t, c in zip(fields, types, cells, strict=True)})
    return {"separator": separator, "meta": meta, "fields": fields, "types": types, "records": records}


# --- conn.log ---------------------------------------------------------------------------------------------------


def _conn_log(capture: str | Path) -> str:
    result = run_diag("flows", capture, "--format", "conn.log")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode()


def test_conn_log_header_is_zeeks() -> None:
    text = _conn_log(PROJECT / "captures" / "pod-b.pcapng")
    lines = text.split("\n")
    assert lines[0] == "#separator \\x09"  # the only header line with a space: the separator is not known yet
    assert lines[1:5] == ["#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tconn"]
    key, value = lines[5].split("\t")
    assert key == "#open" and HEADER_TIME.fullmatch(value)
    assert lines[6] == "#fields\t" + "\t".join(ZEEK_FIELDS)
    assert lines[7] == "#types\t" + "\t".join(ZEEK_TYPES)
    key, value = lines[-2].split("\t")
    assert key == "#close" and HEADER_TIME.fullmatch(value)
    assert lines[-1] == ""
    assert all(not line.startswith("#") for line in lines[8:-2])


def _check_record(record: dict[str, Any], flow: dict[str, Any]) -> None:
    assert record["ts"] == pytest.approx(flow["first_ts"], abs=5e-7)
    assert re.fullmatch(r"C[0-9A-Za-z]{1,17}", record["uid"])
    assert (record["id.orig_h"], record["id.orig_p"], record["id.resp_h"], record["id.resp_p"]) == (
        flow["orig_h"], flow["orig_p"], flow["resp_h"], flow["resp_p"],
    )  # fmt: skip
    assert record["proto"] == flow["proto"]
    assert record["conn_state"] == flow["conn_state"]
    assert record["history"] == (flow["history"] or None)
    assert (record["orig_pkts"], record["resp_pkts"]) == (flow["orig_pkts"], flow["resp_pkts"])
    lasted = flow["last_ts"] > flow["first_ts"]
    if lasted:  # Zeek sets duration and the byte counts only when the connection lasted
        assert record["duration"] == pytest.approx(flow["last_ts"] - flow["first_ts"], abs=1e-6)
        assert (record["orig_bytes"], record["resp_bytes"]) == (flow["orig_bytes"], flow["resp_bytes"])
    else:
        assert (record["duration"], record["orig_bytes"], record["resp_bytes"]) == (None, None, None)
    # Zeek counts IP-level bytes whatever the duration.
    assert (record["orig_ip_bytes"], record["resp_ip_bytes"]) == (flow["orig_ip_bytes"], flow["resp_ip_bytes"])
    # The tunnels a flow came through, as a set of uids; unset for a flow that was not tunnelled.
    assert record["tunnel_parents"] == (set(flow["tunnel_parents"].split(",")) if flow["tunnel_parents"] else None)
    # Content-gap bytes are always written, 0 when none, as Zeek does.
    assert record["missed_bytes"] == flow["missed_bytes"]
    # What the flow table does not hold is unset, never made up.
    for field in ("service", "local_orig", "local_resp"):
        assert record[field] is None, field


@pytest.fixture(scope="module")
def conn_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of ``diag flows --format conn.log -o DIR`` over every capture of the conn.log tests."""
    out = tmp_path_factory.mktemp("conn-logs")
    result = run_diag("flows", *REFERENCE, *_corpus_captures(), "--format", "conn.log", "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    return out


@pytest.mark.parametrize("capture", REFERENCE + _corpus_captures(), ids=lambda p: p.name)
def test_conn_log_read_back_equals_the_flow_table(capture: Path, conn_logs: Path) -> None:
    ((point, flows),) = point_flows(capture).items()
    log = read_zeek_log((conn_logs / f"{point}.conn.log").read_text())
    assert log["separator"] == "\t"
    assert log["meta"]["path"] == "conn"
    assert log["fields"] == ZEEK_FIELDS and log["types"] == ZEEK_TYPES
    assert len(log["records"]) == len(flows) > 0
    for record, flow in zip(log["records"], flows.to_dict(orient="records"), strict=True):
        _check_record(record, flow)
    assert len({record["uid"] for record in log["records"]}) == len(flows)


def test_conn_log_uids_are_the_same_on_every_run(conn_logs: Path) -> None:
    """Another process, with the capture alone and on stdout: the same uids."""
    capture = PROJECT / "captures" / "natgw.pcapng"
    first = [r["uid"] for r in read_zeek_log((conn_logs / "natgw.conn.log").read_text())["records"]]
    again = [r["uid"] for r in read_zeek_log(_conn_log(capture))["records"]]
    assert first == again


def test_conn_log_covers_tcp_udp_icmp_ipv6_and_single_packet_flows() -> None:
    """The corpus files above exercise every branch of the mapping (or the test would prove less than it says)."""
    captures = _corpus_captures()
    if not captures:
        pytest.skip(f"public capture corpus not found at {CORPUS}")
    flows = pd.concat([next(iter(point_flows(c).values())) for c in captures])
    assert set(flows["proto"]) == {"tcp", "udp", "icmp"}
    assert flows["orig_h"].str.contains(":").any()
    assert (flows["first_ts"] == flows["last_ts"]).any() and (flows["first_ts"] < flows["last_ts"]).any()


def test_zeek_field_rendering() -> None:
    assert format_time(1.5) == "1.500000"  # trailing zeros kept, as Zeek renders time and interval
    assert format_time(1795796985.1213350) == "1795796985.121335"
    assert escape_text("") == "(empty)"
    # A value that would read as a marker, or holds the separator, is escaped.
    assert escape_text("-") == "\\x2d" and escape_text("(empty)") == "\\x28empty)"
    assert escape_text("a\tb\n") == "a\\x09b\\x0a"
    assert escape_text("ShADadfF") == "ShADadfF"


def test_conn_log_unset_rules() -> None:
    """An empty history and a flow of no duration are unset, as Zeek leaves them; the rest stays."""
    (flows,) = point_flows(PROJECT / "captures" / "pod-b.pcapng").values()
    flows = flows.head(1).copy()
    flows["history"] = ""
    flows["last_ts"] = flows["first_ts"]
    (line,) = conn_log_lines(flows)
    record = dict(zip(ZEEK_FIELDS, line.split("\t"), strict=True))
    assert record["history"] == record["duration"] == record["orig_bytes"] == record["resp_bytes"] == "-"
    assert record["conn_state"] == flows["conn_state"].iloc[0] and record["orig_pkts"] != "-"


def test_no_zeek_log_in_the_corpus_to_compare_with() -> None:
    """The brief asked to compare with a Zeek-made conn.log where the corpus has one; when one appears, do."""
    if not CORPUS.is_dir():
        pytest.skip(f"public capture corpus not found at {CORPUS}")
    made_by_zeek = [p for p in CORPUS.rglob("*conn*.log") if p.read_text(errors="replace").startswith("#separator")]
    for path in made_by_zeek:
        theirs = read_zeek_log(path.read_text())
        assert theirs["fields"][: len(ZEEK_FIELDS)] == ZEEK_FIELDS
        assert theirs["types"][: len(ZEEK_TYPES)] == ZEEK_TYPES
        assert {k: theirs["meta"][k] for k in ("set_separator", "empty_field", "unset_field", "path")} == {
            "set_separator": ",", "empty_field": "(empty)", "unset_field": "-", "path": "conn",
        }  # fmt: skip


# --- CSV, Parquet, JSON -------------------------------------------------------------------------------------------


def _rsts_as_lists(table: pd.DataFrame) -> pd.DataFrame:
    if "rsts" in table:
        table = table.copy()
        table["rsts"] = [[dict(item) for item in cell] for cell in table["rsts"]]
    return table


def _read_csv(path: Path, declared: dict[str, str]) -> pd.DataFrame:
    """A CSV as the table it was written from: declared dtypes, empty strings kept, ``rsts`` from JSON."""
    plain = {name: ("str" if dtype in ("category", "object") else dtype) for name, dtype in declared.items()}
    table = pd.read_csv(path, keep_default_na=False, dtype=plain)
    if "rsts" in table:
        table["rsts"] = table["rsts"].map(json.loads)
    return table


def _assert_same(back: pd.DataFrame, table: pd.DataFrame) -> None:
    """Equal column by column; categoricals compared by value (a CSV has no categories)."""
    assert list(back.columns) == list(table.columns)
    assert len(back) == len(table)
    for column in table.columns:
        ours = table[column]
        if isinstance(ours.dtype, pd.CategoricalDtype):
            ours = ours.astype(str)
        theirs = back[column]
        if ours.dtype == object:
            assert list(theirs) == list(ours), column
        else:
            pd.testing.assert_series_equal(theirs, ours, check_dtype=False, check_names=False, obj=column)


def test_flows_csv_parquet_json_equal_the_flow_table(tmp_path: Path) -> None:
    captures = ["client=captures/client.pcapng", "pod=captures/pod-b.pcapng", "natgw=captures/natgw.pcapng"]
    expected = point_flows(*captures)
    declared = {name: dtype for name, (dtype, _meaning) in FLOW_COLUMNS.items()}
    for fmt in ("csv", "parquet", "json"):
        result = run_diag("flows", *captures, "--format", fmt, "-o", tmp_path / "out")
        assert result.returncode == 0, result.stderr.decode()
        for point, flows in expected.items():
            path = tmp_path / "out" / f"{point}.flows.{fmt}"
            if fmt == "parquet":
                back = _rsts_as_lists(pd.read_parquet(path))
                pd.testing.assert_frame_equal(back, flows, check_dtype=False)
                assert list(back.dtypes.astype(str)) == list(flows.dtypes.astype(str))
            elif fmt == "csv":
                _assert_same(_read_csv(path, declared), flows)
            else:
                assert json.loads(path.read_text()) == flows_to_json(flows)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{point}.flows.{fmt}" for point in expected for fmt in ("csv", "parquet", "json")
    )


def test_one_point_goes_to_stdout() -> None:
    result = run_diag("flows", "captures/client.pcapng", "--format", "json")
    assert result.returncode == 0
    (flows,) = point_flows("captures/client.pcapng").values()
    assert json.loads(result.stdout) == flows_to_json(flows)


# --- analyze --export ---------------------------------------------------------------------------------------------


def test_analyze_export_writes_the_three_tables(tmp_path: Path) -> None:
    captures = [str(path.relative_to(PROJECT)) for path in REFERENCE]
    result = run_diag("analyze", "pcap", *captures, "--export", tmp_path / "export")
    assert result.returncode == 0, result.stderr.decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = analyze([str(PROJECT / c) for c in captures])
    assert report.matches is not None and len(report.matches) > 0
    tables = {"packets": report.packets, "flows": report.flows, "matches": report.matches}
    declared = {
        "packets": {name: dtype for name, (dtype, _m) in PACKET_COLUMNS.items()},
        "flows": {name: dtype for name, (dtype, _m) in FLOW_COLUMNS.items()},
        "matches": {name: str(dtype) for name, dtype in report.matches.dtypes.items()},
    }
    written = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert written == sorted(f"{name}.{suffix}" for name in tables for suffix in ("csv", "parquet"))
    for name, table in tables.items():
        back = _rsts_as_lists(pd.read_parquet(tmp_path / "export" / f"{name}.parquet"))
        pd.testing.assert_frame_equal(back, table.reset_index(drop=True), check_dtype=False)
        assert list(back.dtypes.astype(str)) == list(table.dtypes.astype(str)), name
        _assert_same(_read_csv(tmp_path / "export" / f"{name}.csv", declared[name]), table.reset_index(drop=True))


def test_analyze_export_refuses_existing_files(tmp_path: Path) -> None:
    (tmp_path / "flows.csv").write_text("mine\n")
    result = run_diag("analyze", "pcap", "captures/client.pcapng", "--export", tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and "flows.csv" in result.stderr.decode()
    assert (tmp_path / "flows.csv").read_text() == "mine\n"
    assert not (tmp_path / "packets.csv").exists(), "nothing is written when one target is refused"
    forced = run_diag("analyze", "pcap", "captures/client.pcapng", "--export", tmp_path, "--force")
    assert forced.returncode == 0 and forced.stderr == b"", forced.stderr.decode()
    assert (tmp_path / "flows.csv").read_text().startswith('"flow_id","capture",')
    assert len(pd.read_parquet(tmp_path / "packets.parquet")) > 0


# --- bad input ----------------------------------------------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert stderr.startswith("diag: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and result.stdout == b""
    return stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert "missing.pcap" in _one_line_error(run_diag("flows", tmp_path / "missing.pcap", "--format", "conn.log"))
    assert "unknown format 'xml'" in _one_line_error(run_diag("flows", "captures/client.pcapng", "--format", "xml"))
    assert "--format" in _one_line_error(run_diag("flows", "captures/client.pcapng"))
    two = _one_line_error(run_diag("flows", "captures/client.pcapng", "captures/natgw.pcapng", "--format", "csv"))
    assert "-o DIR" in two
    text = tmp_path / "not-a-capture.pcap"
    text.write_text("hello\n")
    _one_line_error(run_diag("flows", text, "--format", "csv"))
    _one_line_error(run_diag("flows", "a/b=captures/client.pcapng", "--format", "csv", "-o", tmp_path))
    (tmp_path / "file").write_text("")
    _one_line_error(run_diag("flows", "captures/client.pcapng", "--format", "csv", "-o", tmp_path / "file"))


def test_a_cut_capture_is_written_with_warnings_saying_what_was_skipped(tmp_path: Path) -> None:
    """flows warns as analyze does: the count, and where the file was cut (not a count alone)."""
    whole = (PROJECT / "captures" / "pod-b.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(whole[:-20])  # the last block loses its end
    flows = run_diag("flows", cut, "--format", "csv")
    analysis = run_diag("analyze", "pcap", "--json", "/dev/null", cut)
    assert flows.returncode == analysis.returncode == 0, (flows.stderr, analysis.stderr)
    lines = flows.stderr.decode().splitlines()
    assert lines and all(line.startswith(f"diag: warning: {cut}: ") for line in lines), lines
    assert re.search(r"read \d+ packets, skipped 1 record \(1 problem\)$", lines[0]), lines[0]
    assert len(lines) == 2 and "ends" in lines[1], lines  # what was skipped, and where
    assert lines == analysis.stderr.decode().splitlines()
    assert flows.stdout.count(b"\n") > 1  # the flows that could be read were written


def test_existing_outputs_are_kept_unless_force(tmp_path: Path) -> None:
    target = tmp_path / "client.conn.log"
    target.write_text("mine\n")
    stderr = _one_line_error(run_diag("flows", "captures/client.pcapng", "--format", "conn.log", "-o", tmp_path))
    assert "--force" in stderr and target.read_text() == "mine\n"
    forced = run_diag("flows", "captures/client.pcapng", "--format", "conn.log", "-o", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr.decode()
    assert target.read_text().startswith("#separator \\x09\n")
    # Not even --force writes over an input.
    capture = tmp_path / "pod.flows.json"
    capture.write_bytes((PROJECT / "captures" / "client.pcapng").read_bytes())
    before = capture.read_bytes()
    stderr = _one_line_error(run_diag("flows", f"pod={capture}", "--format", "json", "-o", tmp_path, "--force"))
    assert "input" in stderr and capture.read_bytes() == before
