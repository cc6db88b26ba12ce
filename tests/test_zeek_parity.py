"""Zeek parity of the flow table on crafted packets: who is the originator, RSTOS0, IP bytes, tunnels.

No Zeek binary is available to compare with, so each case is worked from
Zeek's documented and implemented behaviour: ``likely_server_ports`` and the
``WantConnection`` flip of its TCP and UDP analyzers, ``conn_state()`` in
conn.zeek (RSTOS0 only for a history matching ``^?S[^HAFGIQ]*R``), its
ConnSize counts (IP total lengths), its zero-window rule, and
``tunnel_parents`` naming the tunnel a connection came through.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import PROJECT, require_tools
from packets import make_packets
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap
from test_reader import write_pcap

from diag.analysis import analyze
from diag.capture import read_capture
from diag.flows import build_flows
from diag.flows.carriers import tunnel_uid
from diag.report.text import render_text
from diag.report.zeeklog import conn_columns

HOST, SERVER = "192.0.2.5", "198.51.100.53"


def udp(src: str, sport: int, dst: str, dport: int, **fields: Any) -> dict[str, Any]:
    return {"proto": "udp", "src": src, "sport": sport, "dst": dst, "dport": dport, "payload_len": 40, **fields}


def one_flow(rows: list[dict[str, Any]]) -> pd.Series:
    flows = build_flows(make_packets(rows))
    assert len(flows) == 1, flows
    return flows.iloc[0]


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(
    ("first", "orig", "resp", "history"),
    [
        # A DHCP reply seen before its request: the client (68) still originates, towards the server (67).
        ((SERVER, 67, "255.255.255.255", 68), ("255.255.255.255", 68), (SERVER, 67), "^d"),
        # DNS: the answer first, from 53 to an ephemeral port: flipped.
        ((SERVER, 53, HOST, 40000), (HOST, 40000), (SERVER, 53), "^d"),
        # NTP 123 <-> 123: both likely servers, UDP never flips.
        ((SERVER, 123, HOST, 123), (SERVER, 123), (HOST, 123), "D"),
        # Neither port is a server's: the first sender originates.
        ((SERVER, 40001, HOST, 40002), (SERVER, 40001), (HOST, 40002), "D"),
        # A request towards a server port is the usual case: no flip.
        ((HOST, 40000, SERVER, 53), (HOST, 40000), (SERVER, 53), "D"),
    ],
)
def test_udp_originator_follows_zeeks_likely_server_ports(
    first: tuple[str, int, str, int], orig: tuple[str, int], resp: tuple[str, int], history: str
) -> None:
    flow = one_flow([udp(*first)])
    assert (flow.orig_h, flow.orig_p) == orig
    assert (flow.resp_h, flow.resp_p) == resp
    assert flow.history == history
    # The only packet came from the responder in a flipped flow: Zeek's SHR; else S0.
    assert flow.conn_state == ("SHR" if history.startswith("^") else "S0")
    assert (flow.orig_pkts, flow.resp_pkts) == ((0, 1) if history.startswith("^") else (1, 0))


@pytest.mark.parametrize(
    ("sport", "dport", "flags", "flipped"),
    [
        (443, 51000, "PA", True),  # midstream, server port first: flipped
        (51000, 443, "PA", False),  # midstream from the client
        (8080, 80, "PA", False),  # both servers, no SYN: flipped only when the source port is the lower
        (80, 8080, "PA", True),
        (80, 8080, "SA", False),  # both servers and a SYN-ACK: never (stealth scans)
        (9000, 51000, "SA", False),  # a SYN-ACK from no likely server port: its sender stays originator
        (80, 51000, "SA", True),
    ],
)
def test_tcp_first_packet_without_syn_flips_as_zeek_does(sport: int, dport: int, flags: str, flipped: bool) -> None:
    flow = one_flow([{"src": SERVER, "sport": sport, "dst": HOST, "dport": dport, "flags": flags, "seq": 7}])
    assert flow.history.startswith("^") == flipped
    assert flow.orig_p == (dport if flipped else sport)


def test_a_syn_ack_from_a_port_no_server_uses_stays_with_its_sender() -> None:
    # Zeek flips a SYN-ACK-first connection only for a likely server port: otherwise 'H' from the originator.
    rows = [
        {"src": SERVER, "sport": 9000, "dst": HOST, "dport": 51000, "flags": "SA", "seq": 5, "ack": 11},
        {"src": SERVER, "sport": 9000, "dst": HOST, "dport": 51000, "flags": "R", "seq": 6},
    ]
    flow = one_flow(rows)
    assert (flow.history, flow.orig_p) == ("HR", 9000)


# --------------------------------------------------------------------------- RSTOS0 or OTH


CLIENT = {"src": HOST, "sport": 40000, "dst": SERVER, "dport": 80}


@pytest.mark.parametrize(
    ("rows", "history", "state"),
    [
        ([{**CLIENT, "flags": "S", "seq": 1}, {**CLIENT, "flags": "R", "seq": 2}], "SR", "RSTOS0"),
        # A SYN, data, then a RST from the originator, nothing from the responder: 'D' is allowed.
        (
            [
                {**CLIENT, "flags": "S", "seq": 1},
                {**CLIENT, "flags": "P", "seq": 2, "payload_len": 10},
                {**CLIENT, "flags": "R", "seq": 12},
            ],
            "SDR",
            "RSTOS0",
        ),
        # No SYN (midstream ACK, then a RST): the originator reset, but this is no attempt: OTH.
        ([{**CLIENT, "flags": "A", "seq": 1, "ack": 9}, {**CLIENT, "flags": "R", "seq": 1}], "AR", "OTH"),
        # An ACK after the SYN breaks the pattern: OTH.
        (
            [
                {**CLIENT, "flags": "S", "seq": 1},
                {**CLIENT, "flags": "A", "seq": 2, "ack": 9},
                {**CLIENT, "flags": "R", "seq": 2},
            ],
            "SAR",
            "OTH",
        ),
    ],
)
def test_rstos0_needs_zeeks_history_pattern(rows: list[dict[str, Any]], history: str, state: str) -> None:
    flow = one_flow(rows)
    assert (flow.history, flow.conn_state) == (history, state)


# --------------------------------------------------------------------------- counts and letters


def test_ip_bytes_add_up_the_ip_total_lengths_per_direction() -> None:
    rows = [
        {**CLIENT, "flags": "S", "seq": 1, "ip_len": 60},
        {"src": SERVER, "sport": 80, "dst": HOST, "dport": 40000, "flags": "SA", "seq": 9, "ack": 2, "ip_len": 60},
        {**CLIENT, "flags": "PA", "seq": 2, "ack": 10, "payload_len": 100, "ip_len": 152},
    ]
    flow = one_flow(rows)
    assert (flow.orig_ip_bytes, flow.resp_ip_bytes) == (212, 60)
    # conn.log's orig_ip_bytes and resp_ip_bytes (fields 18 and 20 of 21) carry them.
    fields = conn_columns(flow.to_frame().T)
    assert (fields[17][0], fields[19][0]) == ("212", "60")


def test_a_zero_window_after_the_peer_closed_is_no_w() -> None:
    server = {"src": SERVER, "sport": 80, "dst": HOST, "dport": 40000}
    rows = [
        {**CLIENT, "flags": "S", "seq": 1},
        {**server, "flags": "SA", "seq": 9, "ack": 2},
        {**CLIENT, "flags": "A", "seq": 2, "ack": 10},
        {**CLIENT, "flags": "FA", "seq": 2, "ack": 10},
        {**server, "flags": "A", "seq": 10, "ack": 3, "win": 0},  # the client closed: no window matters
        {**CLIENT, "flags": "A", "seq": 3, "ack": 10, "win": 0},  # the client's own zero window after its FIN counts
    ]
    assert one_flow(rows).history == "ShAFaW"


# --------------------------------------------------------------------------- tunnels

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
NODE_A, NODE_B = "198.18.0.1", "198.18.0.2"
POD_A, POD_B = "10.244.1.5", "10.244.2.7"


def vxlan(inner: Any, sport: int = 49500) -> Any:
    return ETH / IP(src=NODE_A, dst=NODE_B) / UDP(sport=sport, dport=4789) / VXLAN(vni=1) / ETH / inner


@pytest.fixture
def overlay_capture(tmp_path: Path) -> Path:
    """node-b's underlay: the pod's SYNs in VXLAN, its SYN-ACKs bare; a cut VXLAN packet; a VXLAN-GPE datagram."""
    syn = IP(src=POD_A, dst=POD_B) / TCP(sport=40000, dport=8080, flags="S", seq=100)
    synack = IP(src=POD_B, dst=POD_A) / TCP(sport=8080, dport=40000, flags="SA", seq=900, ack=101)
    cut = bytes(vxlan(syn, sport=49501))[: 14 + 20 + 8 + 4]  # the VXLAN header cut short
    gpe_header = b"\x0c\x00\x00\x03" + bytes(4)  # VXLAN-GPE: flags, next protocol IPv4, VNI 0
    gpe = ETH / IP(src=NODE_A, dst=NODE_B) / UDP(sport=49502, dport=4790) / (gpe_header + bytes(syn))
    frames = [bytes(vxlan(syn)), bytes(ETH / synack), bytes(vxlan(syn)), bytes(ETH / synack), cut, bytes(gpe)]
    return write_pcap(tmp_path / "overlay.pcap", frames)


def test_a_tunnelled_flow_names_its_tunnel_and_carriers_are_no_problems(overlay_capture: Path) -> None:
    packets = read_capture(overlay_capture, name="node-b")
    flows = build_flows(packets)
    pod = flows[flows.resp_p == 8080].iloc[0]
    assert (pod.history, pod.conn_state, pod.carrier) == ("Sh", "S1", False)
    assert pod.tunnel_parents == tunnel_uid("node-b", -1, "vxlan", NODE_B, NODE_A)
    # The cut VXLAN packet and the VXLAN-GPE datagram stay outer UDP flows: carriers, one-way by nature.
    carriers = flows[flows.carrier]
    assert sorted(carriers.resp_p) == [4789, 4790]
    assert set(carriers.conn_state) == {"S0"} and all(not parents for parents in carriers.tunnel_parents)


def test_carrier_flows_are_not_listed_as_no_reply(overlay_capture: Path) -> None:
    report = analyze({"node-b": str(overlay_capture)})
    text = render_text(report, flows="problems")
    assert "4789" not in text and "4790" not in text, text
    assert "healthy: 2 flows (2 tunnel)" in render_text(report, flows="problems"), text
    assert report.flows is not None and report.flows.carrier.sum() == 2


# --------------------------------------------------------------------------- Zeek's timers


def test_an_unanswered_syn_is_given_up_after_5_s_and_its_retries_open_new_flows() -> None:
    # Linux retries an unanswered SYN after 1, 3, 7 and 15 s; Zeek's attempt timer (5 s) ends the first
    # connection, so the 7 s and 15 s retries each open one, each a retransmission of the SYN before it.
    flows = build_flows(make_packets([{**CLIENT, "flags": "S", "seq": 1, "t": t} for t in (0, 1, 3, 7, 15)]))
    assert list(flows.history) == ["S", "S", "S"]
    assert list(flows.orig_pkts) == [3, 1, 1]
    assert list(flows.syn_retransmits) == [2, 1, 1]
    assert list(flows.prev_flow) == [-1, 0, 1]
    assert set(flows.conn_state) == {"S0"}


def test_an_answered_syn_is_not_given_up() -> None:
    server = {"src": SERVER, "sport": 80, "dst": HOST, "dport": 40000}
    rows = [
        {**CLIENT, "flags": "S", "seq": 1, "t": 0},
        {**server, "flags": "SA", "seq": 9, "ack": 2, "t": 0.1},
        {**CLIENT, "flags": "A", "seq": 2, "ack": 10, "t": 6},
    ]
    assert one_flow(rows).history == "ShA"


@pytest.mark.parametrize(("after", "flows_expected"), [(1.0, 1), (5.0, 2)])
def test_a_closed_connection_is_forgotten_5_s_after_its_reset(after: float, flows_expected: int) -> None:
    server = {"src": SERVER, "sport": 80, "dst": HOST, "dport": 40000}
    rows = [
        {**CLIENT, "flags": "S", "seq": 1, "t": 0},
        {**server, "flags": "SA", "seq": 9, "ack": 2, "t": 0.1},
        {**server, "flags": "RA", "seq": 10, "ack": 2, "t": 0.2},
        {**CLIENT, "flags": "A", "seq": 2, "ack": 10, "t": 0.2 + after},  # a late ACK
    ]
    flows = build_flows(make_packets(rows))
    assert len(flows) == flows_expected
    if flows_expected == 2:
        assert (flows.history.iloc[1], flows.conn_state.iloc[1], flows.prev_flow.iloc[1]) == ("A", "OTH", 0)


@pytest.mark.parametrize(
    ("proto", "gap", "flows_expected"), [("udp", 59, 1), ("udp", 60, 2), ("tcp", 299, 1), ("tcp", 300, 2)]
)
def test_silence_longer_than_zeeks_inactivity_timeout_starts_a_new_flow(
    proto: str, gap: float, flows_expected: int
) -> None:
    if proto == "udp":
        rows = [
            udp(HOST, 40000, SERVER, 53, t=0),
            udp(SERVER, 53, HOST, 40000, t=0.01),
            udp(HOST, 40000, SERVER, 53, t=0.01 + gap),
        ]
    else:
        server = {"src": SERVER, "sport": 80, "dst": HOST, "dport": 40000}
        rows = [
            {**CLIENT, "flags": "S", "seq": 1, "t": 0},
            {**server, "flags": "SA", "seq": 9, "ack": 2, "t": 0.1},
            {**CLIENT, "flags": "A", "seq": 2, "ack": 10, "t": 0.2},
            {**CLIENT, "flags": "PA", "seq": 2, "ack": 10, "payload_len": 5, "t": 0.2 + gap},
        ]
    flows = build_flows(make_packets(rows))
    assert len(flows) == flows_expected
    assert list(flows.prev_flow) == [-1, 0][:flows_expected]


# --------------------------------------------------------------------------- ICMP


def icmp_capture(path: Path) -> Path:
    """Pings, a port unreachable quoting a UDP datagram, an ICMPv6 ping, and a ping after a minute of silence."""
    start = 1_700_000_000.0
    frames = [
        (0.0, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=1, seq=1) / (b"p" * 8)),
        (0.001, IP(src=SERVER, dst=HOST) / ICMP(type=0, id=1, seq=1) / (b"p" * 8)),
        (1.0, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=2, seq=1) / (b"p" * 56)),  # another id: the same connection
        (2.0, IP(src=HOST, dst=SERVER) / UDP(sport=40000, dport=53) / b"query"),
        (2.001, IP(src=SERVER, dst=HOST) / ICMP(type=3, code=3) / IP(src=HOST, dst=SERVER)
         / UDP(sport=40000, dport=53) / b"query"),
        (2.5, IP(src=HOST, dst=SERVER) / ICMP(type=3, code=3) / IP(src=SERVER, dst=HOST)
         / UDP(sport=53, dport=40000)),  # the same message the other way: one-way, so a connection of its own
        (3.0, IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest(id=7, seq=1, data=b"abcd")),
        (3.002, IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoReply(id=7, seq=1, data=b"abcd")),
        (62.0, IP(src=HOST, dst=SERVER) / ICMP(type=8, id=1, seq=9) / (b"p" * 8)),  # 61 s after the last ping
    ]
    packets = []
    for offset, packet in frames:
        framed = Ether() / packet
        framed.time = start + offset
        packets.append(framed)
    wrpcap(str(path), packets)
    return path


def conn_log_rows(capture: Path) -> list[dict[str, str]]:
    """``diag flows --format conn.log`` run as a user runs it, parsed back by its #fields line."""
    result = subprocess.run([sys.executable, "-m", "diag.cli", "flows", str(capture), "--format", "conn.log"],
                            capture_output=True, text=True, cwd=PROJECT, timeout=120, check=True)
    lines = result.stdout.splitlines()
    fields = next(line for line in lines if line.startswith("#fields")).split("\t")[1:]
    return [dict(zip(fields, line.split("\t"), strict=True)) for line in lines if not line.startswith("#")]


def test_icmp_connections_are_keyed_by_type_and_answer_as_zeek_does(tmp_path: Path) -> None:
    rows = conn_log_rows(icmp_capture(tmp_path / "icmp.pcap"))
    icmp = [(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"], r["orig_pkts"], r["resp_pkts"],
             r["orig_bytes"], r["resp_bytes"], r["orig_ip_bytes"], r["resp_ip_bytes"]) for r in rows
            if r["proto"] == "icmp"]
    assert icmp == [
        # Echo request 8 answered by 0: both directions and both ids in one connection; bytes after the 8-byte
        # ICMP header (8 + 56 from the originator), IP total lengths (36 + 84).
        (HOST, "8", SERVER, "0", "2", "1", "64", "8", "120", "36"),
        # Port unreachable (3, code 3): no answer type, so the code is resp_p and the direction is the key's.
        (SERVER, "3", HOST, "3", "1", "0", "-", "-", "61", "0"),
        (HOST, "3", SERVER, "3", "1", "0", "-", "-", "56", "0"),
        ("2001:db8::1", "128", "2001:db8::2", "129", "1", "1", "4", "4", "52", "52"),
        # A minute of silence (Zeek's icmp_inactivity_timeout) ended the first connection.
        (HOST, "8", SERVER, "0", "1", "0", "-", "-", "36", "0"),
    ]
    assert {(r["conn_state"], r["history"]) for r in rows if r["proto"] == "icmp"} == {("OTH", "-")}
    assert [r["proto"] for r in rows].count("udp") == 1


def test_icmp_types_and_codes_are_tsharks(tmp_path: Path) -> None:
    """The port columns of the ICMP flows come from the type and code tshark decodes."""
    require_tools("tshark")
    capture = icmp_capture(tmp_path / "icmp.pcap")
    decoded = subprocess.run(["tshark", "-n", "-r", str(capture), "-Y", "icmp || icmpv6", "-T", "fields",
                              "-e", "icmp.type", "-e", "icmpv6.type", "-e", "icmp.code", "-e", "icmpv6.code"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
    firsts = {(t4 or t6, c4 or c6) for t4, t6, c4, c6 in (line.split("\t") for line in decoded if line)}
    types = {(r["id.orig_p"], r["id.resp_p"]) for r in conn_log_rows(capture) if r["proto"] == "icmp"}
    # Each flow's orig_p is the type of a message tshark saw; a one-way message's resp_p is its code.
    assert {orig for orig, _ in types} <= {kind for kind, _ in firsts}
    assert ("3", "3") in types and ("3", "3") in firsts


def test_analyze_keeps_icmp_out_of_the_flow_list_and_reads_the_errors(tmp_path: Path) -> None:
    """The report's flows are TCP and UDP; the port unreachable still answers the UDP request for the diagnosis."""
    capture = icmp_capture(tmp_path / "icmp.pcap")
    report = analyze([capture])
    assert set(report.flows["proto"]) == {"udp"}
    assert [finding.cause.value for finding in report.findings] == ["port-closed"]
    assert "ICMP port unreachable" in report.findings[0].summary
    assert set(build_flows(read_capture(capture), icmp=True)["proto"]) == {"udp", "icmp"}
