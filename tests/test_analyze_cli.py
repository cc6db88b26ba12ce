"""``diag analyze pcap`` and ``diag.analyze`` end to end, on pcaps written with scapy.

The command runs as a separate process, as a user runs it: exit status,
stdout and stderr are what is checked. Flow membership is compared with
tshark's own TCP/UDP stream numbering on the same file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import PROJECT, require_tools
from packets import make_packets

from diag.analysis import analyze, concat_packets, parse_capture_args
from diag.capture.addresses import endpoint_text
from diag.capture.info import CaptureInfo
from diag.diagnose.causes import spec_of
from diag.errors import DiagError
from diag.flows import build_flows, flow_ids
from diag.report import CAUSES, SCHEMA, Cause, Finding, PacketRef, Report, RuledOut
from diag.report.flowkinds import problem_kind, problem_kinds
from diag.report.text import render_text

CLIENT, VIP, POD = "203.0.113.10", "198.18.102.10", "198.18.2.10"
T0 = 1_764_257_655.0


def _tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    flags: str,
    seq: int,
    ack: int = 0,
    ttl: int = 64,
    payload: bytes = b"",
    vlan: int | None = None,
) -> Any:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Dot1Q, Ether

    ip = IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    if payload:
        ip = ip / payload
    return (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=vlan) / ip
        if vlan is not None
        else Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip
    )


def _write(path: Path, packets: list[Any], start: float = T0, step: float = 0.001) -> Path:
    from scapy.utils import wrpcap

    for i, packet in enumerate(packets):
        packet.time = start + i * step
    wrpcap(str(path), packets)
    return path


def incident_at_pod(port: int = 38622) -> list[Any]:
    """SYN, SYN-ACK, RST "from the client" (forged on the way back), three times."""
    packets = []
    for _ in range(3):
        packets += [
            _tcp(CLIENT, POD, port, 80, "S", 1000, ttl=62),
            _tcp(POD, CLIENT, 80, port, "SA", 5000, 1001),
            _tcp(CLIENT, POD, port, 80, "R", 1001, ttl=253),
        ]
    return packets


def mixed_traffic() -> list[Any]:
    """Healthy and broken TCP, UDP, IPv6, a VLAN and an ICMP error, interleaved."""
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import ICMP, IP, UDP, UDPerror
    from scapy.layers.inet6 import TCP as TCP6
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    a, b = "192.0.2.5", "198.51.100.7"
    packets = [
        _tcp(a, b, 40001, 443, "S", 10),
        _tcp(b, a, 443, 40001, "SA", 90, 11),
        _tcp(a, b, 40001, 443, "A", 11, 91),
        _tcp(a, b, 40002, 443, "S", 20),  # refused
        _tcp(a, b, 40001, 443, "PA", 11, 91, payload=b"x" * 100),
        _tcp(b, a, 443, 40002, "RA", 0, 21),
        _tcp(b, a, 443, 40001, "PA", 91, 111, payload=b"y" * 300),
        _tcp(a, b, 40003, 443, "S", 30, vlan=7),  # unanswered, tagged
        _tcp(a, b, 40001, 443, "FA", 111, 391),
        _tcp(b, a, 443, 40001, "FA", 391, 112),
        _tcp(a, b, 40001, 443, "A", 112, 392),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=a, dst="198.51.100.53")
        / UDP(sport=5353, dport=53)
        / DNS(qd=DNSQR(qname="lab.example")),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.51.100.53", dst=a)
        / UDP(sport=53, dport=5353)
        / DNS(qr=1),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=a, dst="198.51.100.9")
        / UDP(sport=5000, dport=9999)
        / b"ping",
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.51.100.9", dst=a)
        / ICMP(type=3, code=3)
        / UDPerror(),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / TCP6(sport=50000, dport=80, flags="S", seq=1),
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IPv6(src="2001:db8::2", dst="2001:db8::1")
        / TCP6(sport=80, dport=50000, flags="SA", seq=9, ack=2),
    ]
    return packets


def run_diag(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="100")
    return subprocess.run(
        [sys.executable, "-m", "diag.cli", *map(str, args)],
        cwd=cwd or PROJECT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def incident(tmp_path: Path) -> dict[str, Path]:
    pod = _write(tmp_path / "pod.pcap", incident_at_pod())
    client = _write(tmp_path / "laptop.pcap", [_tcp(CLIENT, VIP, 38622, 80, "S", 1000) for _ in range(3)], step=1.0)
    return {"client": client, "pod": pod}


# --------------------------------------------------------------------------- the command


def test_text_report_lists_resets_and_unanswered_syns_per_capture(incident: dict[str, Path]) -> None:
    result = run_diag("analyze", "pcap", f"client={incident['client']}", incident["pod"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("VERDICT")
    assert "CAPTURE client" in out and "CAPTURE pod" in out
    pod_part = out[out.index("CAPTURE pod") :]
    client_part = out[out.index("CAPTURE client") : out.index("CAPTURE pod")]
    # Each SYN after a RST opens a new connection (Zeek's rule): three reset flows at the pod, the later
    # two retransmissions of the first one's SYN.
    assert "RESET (3)" in pod_part and "ShR RSTO" in pod_part and "RST frame 3 from orig" in pod_part
    assert pod_part.count("1 SYN retransmissions") == 2
    assert "NO REPLY (1)" in client_part and "S S0" in client_part and "2 SYN retransmissions" in client_part
    assert result.stderr == ""


def test_json_to_stdout_follows_the_report_contract(incident: dict[str, Path]) -> None:
    result = run_diag("analyze", "pcap", "--json", "-", f"client={incident['client']}", f"pod={incident['pod']}")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # nothing but JSON on stdout
    assert document["schema"] == SCHEMA
    assert {"schema", "verdict", "findings", "captures", "flows", "clock"} <= set(document)
    assert document["verdict"]["cause"] in CAUSES
    assert [c["name"] for c in document["captures"]] == ["client", "pod"]
    assert [c["packets"] for c in document["captures"]] == [3, 9]
    contract_keys = {
        "capture", "proto", "orig", "resp", "vlan", "history", "conn_state", "orig_pkts", "resp_pkts",
        "orig_bytes", "resp_bytes", "first_ts", "last_ts", "syn_retransmits", "rsts",
    }  # fmt: skip
    for flow in document["flows"]:
        assert contract_keys <= set(flow)
    pods = [f for f in document["flows"] if f["capture"] == "pod"]
    assert [pod["vlan"] for pod in pods] == [None] * 3
    assert [(pod["history"], pod["conn_state"], pod["syn_retransmits"]) for pod in pods] == [
        ("ShR", "RSTO", 0), ("ShR", "RSTO", 1), ("ShR", "RSTO", 1),
    ]  # fmt: skip
    assert [pod["rsts"] for pod in pods] == [[{"index": index, "from": "orig"}] for index in (2, 5, 8)]
    assert [pod["prev_flow"] >= 0 for pod in pods] == [False, True, True]
    assert pods[0]["first_ts"] == pytest.approx(T0)


def _tshark_rst_flag(path: Path, frame: int) -> str:
    """tshark's own reading of frame ``frame`` (its 1-based frame.number): the TCP RST flag."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", f"frame.number == {frame}", "-T", "fields", "-e", "tcp.flags.reset"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return out.strip()


def test_symptom_frame_is_wiresharks_frame_number(incident: dict[str, Path]) -> None:
    require_tools("tshark")
    result = run_diag("analyze", "pcap", "--json", "-", incident["pod"])
    packet = json.loads(result.stdout)["findings"][0]["packet"]
    assert packet["frame"] == packet["index"] + 1 and packet["file"] is None  # one file: no name needed
    assert _tshark_rst_flag(incident["pod"], packet["frame"]) in ("1", "True")
    text = run_diag("analyze", "pcap", incident["pod"]).stdout
    assert f"symptom      pod frame {packet['frame']} at" in text
    assert f"#{packet['index']}" not in text


def test_symptom_in_a_point_of_several_files_names_its_file(tmp_path: Path) -> None:
    """A point made of two files: the frame number counts within the file the JSON names."""
    require_tools("tshark")
    packets = incident_at_pod()
    first = _write(tmp_path / "pod-1.pcap", packets[:2])
    second = _write(tmp_path / "pod-2.pcap", packets[2:], start=T0 + 0.002)
    result = run_diag("analyze", "pcap", "--json", "-", f"pod={first}", f"pod={second}")
    assert result.returncode == 0, result.stderr
    packet = json.loads(result.stdout)["findings"][0]["packet"]
    assert packet["file"] == str(second)  # the first RST is the third packet: in the second file
    assert packet["frame"] == packet["index"] + 1 == 1
    assert _tshark_rst_flag(second, packet["frame"]) in ("1", "True")
    # The text names the file too: "pod frame 1" alone would send the reader to the first file's SYN.
    text = run_diag("analyze", "pcap", f"pod={first}", f"pod={second}").stdout
    assert f"symptom      pod frame 1 of {second} at" in text


def test_json_file_and_text_together(incident: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    result = run_diag("analyze", "pcap", "--json", target, incident["pod"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("VERDICT")
    assert json.loads(target.read_text())["captures"][0]["name"] == "pod"


def test_flows_all_lists_healthy_flows_too(tmp_path: Path) -> None:
    capture = _write(tmp_path / "mixed.pcap", mixed_traffic())
    problems = run_diag("analyze", "pcap", capture).stdout
    everything = run_diag("analyze", "pcap", "--flows", "all", capture).stdout
    assert "192.0.2.5:40001 -> 198.51.100.7:443" not in problems  # the healthy SF flow is only counted
    assert "ShADdFf SF" in everything
    assert "1 tcp SF" in problems


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "absent.pcap", "no such file"),
        (lambda d: (d / "notes.pcap").write_text("hello, not a capture\n") and d / "notes.pcap", "not a pcap"),
        (lambda d: (d / "empty.pcap").write_bytes(b"") is not None and d / "empty.pcap", "empty"),
        (lambda d: d, "directory"),
    ],
    ids=["missing", "text", "empty", "directory"],
)
def test_unreadable_input_is_one_line_and_status_2(tmp_path: Path, make: Any, reason: str) -> None:
    path = make(tmp_path)
    result = run_diag("analyze", "pcap", path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"diag: {path}:") and reason in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_duplicate_names_are_refused(incident: dict[str, Path]) -> None:
    result = run_diag("analyze", "pcap", f"pod={incident['client']}", incident["pod"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "two captures are named 'pod'" in result.stderr


def test_json_output_never_overwrites_an_input(incident: dict[str, Path]) -> None:
    before = incident["pod"].read_bytes()
    result = run_diag("analyze", "pcap", "--json", incident["pod"], incident["pod"])
    assert result.returncode == 2 and "input capture" in result.stderr
    assert incident["pod"].read_bytes() == before


def test_truncated_capture_reports_what_was_read_and_warns(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.pcap", incident_at_pod())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:-20])  # the last record loses its end
    result = run_diag("analyze", "pcap", "--json", "-", cut)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line]
    assert warnings and all(line.startswith("diag: warning: ") for line in warnings)
    assert "read 8 packets" in warnings[0]
    document = json.loads(result.stdout)
    assert document["captures"][0]["packets"] == 8
    assert sum(flow["orig_pkts"] + flow["resp_pkts"] for flow in document["flows"]) == 8


def test_a_capture_of_no_packets_is_analysed_with_a_warning(tmp_path: Path) -> None:
    """A header and nothing after it reads as healthy; stderr says there was nothing to read."""
    empty = _write(tmp_path / "empty.pcap", [])
    whole = _write(tmp_path / "pod.pcap", incident_at_pod())
    result = run_diag("analyze", "pcap", "--json", "-", whole, empty)
    assert result.returncode == 0, result.stderr
    said = f"diag: warning: {empty}: the capture holds no packets (nothing after its header)"
    assert result.stderr.splitlines() == [said]
    assert [capture["packets"] for capture in json.loads(result.stdout)["captures"]] == [9, 0]


def test_help_teaches_names_vantage_points_and_exit_codes() -> None:
    result = run_diag("analyze", "pcap", "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "NAME=" in text and "vantage point" in text
    assert "client=" in text and "node-a=" in text and "pod=" in text  # the three-point example
    assert "exit status" in text and "0 " in text and "2 " in text
    assert "--json" in text and "stdout" in text


# --------------------------------------------------------------------------- the Python API


def test_analyze_names_captures_from_mapping_and_name_equals_path(incident: dict[str, Path]) -> None:
    by_mapping = analyze({"client": incident["client"], "pod": incident["pod"]})
    by_items = analyze([f"client={incident['client']}", str(incident["pod"])])
    for report in (by_mapping, by_items):
        assert [c.name for c in report.captures] == ["client", "pod"]
        assert list(dict.fromkeys(report.flows.capture)) == ["client", "pod"]
        assert list(report.packets.capture.cat.categories) == ["client", "pod"]
        assert isinstance(report.packets.src.dtype, pd.CategoricalDtype)
        assert len(report.packets) == 12


def test_capture_names_default_to_the_stem_and_must_be_unique(tmp_path: Path) -> None:
    assert parse_capture_args(["a/b/pod.pcap.gz", "node-a=x.pcapng"]) == [
        ("pod", Path("a/b/pod.pcap.gz")),
        ("node-a", Path("x.pcapng")),
    ]
    with pytest.raises(DiagError, match="two captures are named 'pod'"):
        parse_capture_args(["pod.pcap", "other/pod.pcap"])
    with pytest.raises(DiagError):
        parse_capture_args([])


def test_concat_keeps_categories_from_every_capture(incident: dict[str, Path]) -> None:
    report = analyze(incident)
    both = concat_packets([report.packets[report.packets.capture == "client"], report.packets])
    assert isinstance(both.dst.dtype, pd.CategoricalDtype)
    assert set(both.dst.astype(str)) == {VIP, POD, CLIENT}


def test_flows_match_tshark_stream_numbering(tmp_path: Path) -> None:
    require_tools("tshark")
    capture = _write(tmp_path / "mixed.pcap", mixed_traffic() + incident_at_pod(41000))
    fields = subprocess.run(
        ["tshark", "-r", str(capture), "-T", "fields", "-E", "separator=,", "-e", "frame.number",
         "-e", "tcp.stream", "-e", "udp.stream", "-e", "icmp.type"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    reference: dict[int, str] = {}
    for line in fields.splitlines():
        number, tcp_stream, udp_stream, icmp_type = [*line.split(","), "", "", ""][:4]
        # tshark also numbers the UDP header quoted in an ICMP error; diag counts that under ICMP.
        if icmp_type:
            continue
        if tcp_stream:
            reference[int(number) - 1] = f"tcp{tcp_stream}"
        elif udp_stream:
            reference[int(number) - 1] = f"udp{udp_stream}"
    report = analyze([capture])
    ids = flow_ids(report.packets)
    assert ids.tolist() == [int(flow_id) for flow_id in _flow_of_rows(report)]
    # tshark keeps a SYN retried after a RST in its stream; Zeek's rule, and diag, open a new flow for it
    # and link it to the one before (prev_flow): the 5-tuples, the chains of flows, are tshark's streams.
    previous = report.flows["prev_flow"].tolist()
    chain_start = list(range(len(previous)))
    for flow, before in enumerate(previous):
        if before >= 0:
            chain_start[flow] = chain_start[before]
    ours = {int(i): chain_start[int(f)] for i, f in zip(report.packets["index"], ids, strict=True) if f >= 0}
    assert set(ours) == set(reference)
    # The same partition of packets into 5-tuples, whatever the numbering.
    pairs = {(ours[i], reference[i]) for i in ours}
    assert len(pairs) == len({f for f, _ in pairs}) == len({r for _, r in pairs})
    assert len(set(chain_start)) == len(pairs)
    # The incident at the pod: its three attempts are three flows of one stream.
    assert len(report.flows) == len(pairs) + 2


def _flow_of_rows(report: Any) -> list[int]:
    """Each packet's flow as ``build_flows`` counted it: the flow whose 5-tuple and time span hold it."""
    flows = report.flows
    out = []
    for row in report.packets.itertuples():
        if row.proto not in (6, 17) or row.sport < 0 or row.frag_offset:
            out.append(-1)
            continue
        ends = {endpoint_text(str(row.src), row.sport), endpoint_text(str(row.dst), row.dport)}
        proto = "tcp" if row.proto == 6 else "udp"
        t = row.ts_ns / 1e9
        match = flows[
            (flows.proto == proto)
            & flows.orig.isin(ends)
            & flows.resp.isin(ends)
            & (flows.first_ts <= t + 1e-9)
            & (flows.last_ts >= t - 1e-9)
        ]
        out.append(int(match.flow_id.iloc[0]) if len(match) else -2)
    return out


def test_plot_option_writes_the_ladder_diagram(incident: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "ladder.png"
    result = run_diag("analyze", "pcap", "--plot", target, f"client={incident['client']}", incident["pod"])
    assert result.returncode == 0, result.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the text report


def _report_with_finding(flows: pd.DataFrame) -> Report:
    finding = Finding(
        cause="asymmetric-return",
        confidence=0.9,
        proto="tcp",
        client=f"{CLIENT}:38622",
        server=f"{VIP}:80",
        packet=PacketRef("pod", 2, T0 + 0.002),
        claimed_src=CLIENT,
        origin="natgw",
        summary="the reply left by another path and a NAT gateway reset it",
        evidence=("the client's capture never shows the RST",),
        ruled_out=(RuledOut("peer-reset", "the client retransmitted its SYN"),),
        fixes=("SNAT on the node; trade-off: the pod loses the client address",),
        severity=spec_of(Cause.ASYMMETRIC_RETURN).severity,
        forged=True,
    )
    drop = spec_of(Cause.SILENT_DROP)
    weaker = Finding(
        drop.cause, 0.4, "udp", "192.0.2.5:5000", "198.51.100.9:9999", None, None, None, "lost",
        severity=drop.severity, forged=drop.forged,
    )
    info = CaptureInfo("pod", "pod.pcap", 9, "EN10MB")
    return Report(captures=[info], packets=pd.DataFrame(), flows=flows, findings=[weaker, finding])


def test_text_report_puts_the_verdict_first_with_evidence_ruled_out_and_fixes() -> None:
    flows = build_flows(make_packets(_crafted_pod_rows()))
    text = render_text(_report_with_finding(flows))
    lines = text.splitlines()
    assert lines[0] == "VERDICT: asymmetric-return  (confidence 0.90)"
    order = [text.index(word) for word in ("evidence:", "ruled out:", "fixes:", "OTHER FINDINGS (1)", "CAPTURE pod")]
    assert order == sorted(order)
    assert "generated at natgw" in text and "claimed from 203.0.113.10" in text
    assert "    - peer-reset: the client retransmitted its SYN" in text
    assert "silent-drop" in text and "\033[" not in text
    assert "\033[" in render_text(_report_with_finding(flows), color=True)


def test_text_report_lists_problem_kinds_in_order_and_counts_healthy_flows() -> None:
    flows = build_flows(make_packets(_crafted_pod_rows()))
    text = render_text(Report([CaptureInfo("pod", "pod.pcap", 9, "EN10MB")], pd.DataFrame(), flows))
    assert text.startswith(
        "VERDICT: not diagnosed  problem flows seen (1 reset, 1 no reply, 1 one-sided, 1 SYN retried)"
    )
    kinds = [text.index(label) for label in ("RESET (1)", "NO REPLY (1)", "ONE-SIDED (1)", "SYN RETRIED (1)")]
    assert kinds == sorted(kinds)
    assert "healthy: 1 flows (1 tcp SF)" in text
    assert [problem_kind(row) for _, row in flows.iterrows()] == problem_kinds(flows)


def test_text_report_of_nothing_wrong_is_healthy() -> None:
    healthy = build_flows(make_packets(_crafted_pod_rows()[-4:]))
    text = render_text(Report([CaptureInfo("pod", "pod.pcap", 4, "EN10MB")], pd.DataFrame(), healthy))
    assert text.startswith("VERDICT: healthy")


def _crafted_pod_rows() -> list[dict[str, Any]]:
    """One flow of each problem kind, and one healthy flow last."""
    c = {"src": CLIENT, "dst": POD, "dport": 80, "capture": "pod"}
    s = {"src": POD, "dst": CLIENT, "sport": 80, "capture": "pod"}
    return [
        {**c, "sport": 1, "flags": "S", "seq": 10},
        {**s, "dport": 1, "flags": "SA", "seq": 50, "ack": 11},
        {**c, "sport": 1, "flags": "R", "seq": 11},
        {**c, "sport": 2, "flags": "S", "seq": 20},  # no reply
        {**s, "dport": 3, "flags": "PA", "seq": 70, "ack": 5, "payload_len": 10},  # one-sided
        {**c, "sport": 4, "flags": "S", "seq": 40},
        {**c, "sport": 4, "flags": "S", "seq": 40},
        {**s, "dport": 4, "flags": "SA", "seq": 90, "ack": 41},  # answered after a retried SYN
        {**c, "sport": 5, "flags": "S", "seq": 60},
        {**s, "dport": 5, "flags": "SA", "seq": 80, "ack": 61},
        {**c, "sport": 5, "flags": "FA", "seq": 61, "ack": 81},
        {**s, "dport": 5, "flags": "FA", "seq": 81, "ack": 62},
    ]


# --------------------------------------------------------------------------- the public corpus


@pytest.mark.slow
def test_every_corpus_file_is_analyzed_or_refused_cleanly(corpus: Path) -> None:
    """Each file of tcpdump's test corpus gives a report (text and JSON) or a DiagError, never a crash."""
    files = sorted(path for path in (corpus / "tcpdump" / "tests").iterdir() if path.is_file())
    assert len(files) > 1000
    reports = refused = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                report = analyze({"point": path})
            except DiagError:
                refused += 1
                continue
            assert render_text(report).startswith("VERDICT"), path
            json.loads(report.dumps())
            reports += 1
    assert reports > 500 and refused > 0


def test_damaged_and_foreign_corpus_files_through_the_command(corpus: Path) -> None:
    tests = corpus / "tcpdump" / "tests"
    names = ["802.1ad_QinQ.pcap", "802.1ad_QinQ.out", "02-sunrise-sunset-esp.pcap"]
    names += sorted(p.name for p in tests.iterdir() if "trunc" in p.name or "overflow" in p.name)[:3]
    result = run_diag("analyze", "pcap", "--json", "-", *[tests / name for name in names])
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2)
    if result.returncode == 2:
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("diag: ")


# --------------------------------------------------------------------------- progress on stderr


def _run_with_terminal_stderr(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``diag`` with stderr on a real pseudo-terminal (stdout a pipe); what the terminal received."""
    import pty
    import threading

    master, slave = pty.openpty()
    # Progress normally waits 2 s so quick runs stay quiet; 0 makes it appear whatever this machine's speed.
    env = dict(os.environ, NO_COLOR="1", TERM="xterm", COLUMNS="120", DIAG_PROGRESS_AFTER="0")
    process = subprocess.Popen(
        [sys.executable, "-m", "diag.cli", *map(str, args)], cwd=PROJECT, stdout=subprocess.PIPE, stderr=slave,
        env=env, text=True,
    )  # fmt: skip
    os.close(slave)
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the process and its terminal are gone
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, "")
    return completed, b"".join(received).decode(errors="replace")


STAGE_LINES = ("1/4 read: pod", "2/4 flows:", "3/4 correlate:", "4/4 diagnose:")


def test_progress_names_every_stage_on_a_terminal(incident: dict[str, Path]) -> None:
    result, terminal = _run_with_terminal_stderr("analyze", "pcap", f"client={incident['client']}", incident["pod"])
    assert result.returncode == 0
    for stage in STAGE_LINES:
        assert stage in terminal, terminal
    assert "1/4 read: client" in terminal
    # the report itself is unchanged and goes to stdout only
    piped = run_diag("analyze", "pcap", f"client={incident['client']}", incident["pod"])
    assert result.stdout == piped.stdout


def test_no_progress_on_a_pipe_nor_with_quiet(incident: dict[str, Path]) -> None:
    env = dict(os.environ, NO_COLOR="1", DIAG_PROGRESS_AFTER="0")
    piped = subprocess.run(
        [sys.executable, "-m", "diag.cli", "analyze", "pcap", str(incident["pod"])],
        cwd=PROJECT, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert piped.returncode == 0 and piped.stderr == ""
    result, terminal = _run_with_terminal_stderr("analyze", "pcap", "--quiet", incident["pod"])
    assert result.returncode == 0 and result.stdout.startswith("VERDICT")
    assert not any(stage.split(":")[0] in terminal for stage in STAGE_LINES), terminal


def test_all_lists_every_finding_and_the_default_groups_them(tmp_path: Path) -> None:
    """Forged resets on one service, refused ports on others: grouped by default, one line each with --all."""
    packets = []
    for n in range(3):  # distinct ISNs: equal ones would be taken for one packet seen again after NAT
        port, isn = 38622 + n, 1000 + 7919 * n
        packets += [
            _tcp(CLIENT, POD, port, 80, "S", isn, ttl=62),
            _tcp(POD, CLIENT, 80, port, "SA", 5000 + n, isn + 1),
            _tcp(CLIENT, POD, port, 80, "R", isn + 1, ttl=253),
        ]
    for port in (81, 82, 83):
        packets += [
            _tcp(CLIENT, POD, 40000 + port, port, "S", 77 * port, ttl=62),
            _tcp(POD, CLIENT, port, 40000 + port, "RA", 0, 77 * port + 1),
        ]
    pod = _write(tmp_path / "pod.pcap", packets)
    document = json.loads(run_diag("analyze", "pcap", "--json", "-", pod).stdout)
    grouped = run_diag("analyze", "pcap", pod).stdout
    every = run_diag("analyze", "pcap", "--all", pod).stdout
    findings, groups = document["findings"], document["groups"]
    assert len(findings) >= 4 and sum(g["count"] for g in groups) == len(findings)
    assert findings[groups[0]["examples"][0]]["cause"] == document["verdict"]["cause"]
    others = len(findings) - 1
    group_word = "group" if len(groups) - (groups[0]["count"] == 1) == 1 else "groups"
    assert f"OTHER FINDINGS ({others})  in {len(groups) - (groups[0]['count'] == 1)} {group_word}" in grouped
    assert "OTHER FINDINGS" in every and f"({others}, most significant first)" in every
    section = every[every.index("OTHER FINDINGS") :].split("\n\n")[0].splitlines()[1:]
    assert len(section) == others
    for finding in findings[1:]:
        assert finding["flow"]["client"] in every
