"""Tunnels: the reader opens VXLAN, Geneve, GRE, GRE in UDP and IP in IP, checked against tshark.

Each tunnelled row must hold the innermost packet's headers exactly as the
same packet captured without the tunnel, plus the outer addresses, tunnel
type and VNI or key as tshark decodes them. Damaged tunnels keep the outer
packet and say so.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, require_tools
from reader_reference import compare_with_tshark, tshark_packets
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import ARP, GRE, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet
from scapy.utils import rdpcap
from test_corpus import KNOWN_DIFFERENCES
from test_dissect_cuts import write_cut_capture
from test_reader import write_pcap

from diag.analysis import analyze, concat_packets
from diag.capture import read_capture
from diag.correlate import correlate
from diag.diagnose.connections import build_connections
from diag.diagnose.forwarding import path_points
from diag.diagnose.signals import distinct_packets
from diag.flows import build_flows
from diag.flows.copies import packet_keys
from diag.report import Report

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
NODE_A, NODE_B = "198.18.0.1", "198.18.0.2"
NODE_A6, NODE_B6 = "2001:db8:18::1", "2001:db8:18::2"
SYN_OPTIONS = [("MSS", 1410), ("SAckOK", b""), ("Timestamp", (11, 0)), ("NOP", None), ("WScale", 7)]
# Fields of the packet itself: a tunnelled row must carry the carried packet's values.
HEADER_COLUMNS = [
    "ip_version", "src", "dst", "proto", "sport", "dport", "ttl", "ip_id", "frag_offset", "more_fragments", "ip_len",
    "tcp_flags", "seq", "ack", "win", "mss", "wscale", "sack_perm", "tsval", "tsecr", "payload_len", "payload_digest",
    "icmp_type", "icmp_code", "inner_src", "inner_dst", "inner_proto", "inner_sport", "inner_dport",
]  # fmt: skip
CORPUS_TUNNELS = (
    "vxlan.pcap", "vxlan_port_8472.pcap", "geneve.pcap", "geneve-gcp.pcap", "various_gre.pcap",
    "gre-heapoverflow-1.pcap", "gre-heapoverflow-2.pcap", "wccp_redirect_gre.pcap", "erspan-type-ii-1.pcap",
    "gso-ipv4-vxlan-ipv4.pcap", "gso-ipv4-geneve-ipv6.pcap", "gso-ipv6-vxlan-ipv6.pcap", "gso-ipv6-geneve-ipv4.pcap",
    "bigtcp-ipv4-vxlan-ipv6.pcap", "bigtcp-ipv6-geneve-ipv4.pcap",
)  # fmt: skip
# tcpdump's -v decode: a packet's first line, then one line per IP header a tunnel carries.
PACKET_START = re.compile(r"^\s*(?P<number>\d+)\s+\d{4}-\d\d-\d\d ")
IPV4_HEADER = re.compile(
    r"^(?:\s*\d+\s+\S+ \S+ |\s*)IP \(tos 0x[0-9a-f]+(?:, [A-Z]+(?:\(\d\))?)?, ttl (?P<ttl>\d+), id (?P<id>\d+), "
    r"offset (?P<offset>\d+), flags \[[^\]]*\], proto [^(]*\((?P<proto>\d+)\), length (?P<length>\d+)"
)
IPV6_HEADER = re.compile(
    r"^(?:\s*\d+\s+\S+ \S+ |\s*)IP6 \((?:class 0x[0-9a-f]+, )?(?:flowlabel 0x[0-9a-f]+, )?hlim (?P<hlim>\d+), "
    r"next-header [^(]*\((?P<next>\d+)\), payload length (?P<plen>\d+)\)(?: \[real length (?P<real>\d+))?"
)


def pod_packets() -> list[Packet]:
    """Pod traffic as a node would see it before encapsulating it."""
    return [
        IP(src="10.244.1.5", dst="10.244.2.7", ttl=63, id=4242)
        / TCP(sport=40000, dport=8080, flags="S", seq=1000, window=64800, options=SYN_OPTIONS),
        IP(src="10.244.2.7", dst="10.244.1.5", ttl=62, id=0, flags="DF")
        / TCP(sport=8080, dport=40000, flags="SA", seq=5000, ack=1001, options=SYN_OPTIONS),
        IPv6(src="fd00::5", dst="fd00::7", hlim=60) / UDP(sport=5353, dport=53) / b"query",
        IP(src="10.244.2.1", dst="10.244.1.5", ttl=64)
        / ICMP(type=3, code=3)
        / IP(src="10.244.1.5", dst="10.244.2.7", ttl=1)
        / UDP(sport=33434, dport=33435),
        IP(src="10.244.1.5", dst="10.244.2.7", ttl=63, id=4243)
        / TCP(sport=40000, dport=8080, flags="PA", seq=1001, ack=5001)
        / (b"GET / HTTP/1.1\r\n" * 8),
    ]


def tunnelled(inner: Packet, number: int) -> tuple[Packet, str, int]:
    """``inner`` in the ``number``-th kind of tunnel (cycling), with the tunnel type and id expected."""
    outer4 = ETH / IP(src=NODE_A, dst=NODE_B, ttl=64, id=7)
    outer6 = ETH / IPv6(src=NODE_A6, dst=NODE_B6)
    frame = ETH / inner
    kinds: list[tuple[Packet, str, int]] = [
        (outer4 / UDP(sport=49152 + number, dport=4789) / VXLAN(vni=42) / frame, "vxlan", 42),
        (outer4 / UDP(sport=49152 + number, dport=8472) / VXLAN(vni=1) / ETH / Dot1Q(vlan=5) / inner, "vxlan", 1),
        (outer6 / UDP(sport=49152 + number, dport=4789) / VXLAN(vni=0xABCDE) / frame, "vxlan", 0xABCDE),
        (
            outer4
            / UDP(sport=49152 + number, dport=6081)
            / GENEVE(vni=99, proto=0x6558, optionlen=2, options=b"\x01\x02\x03\x04\x05\x06\x07\x08")
            / frame,
            "geneve",
            99,
        ),
        (
            outer6 / UDP(sport=49152 + number, dport=6081) / GENEVE(vni=100, proto=_ethertype(inner)) / inner,
            "geneve",
            100,
        ),
        (
            outer4 / GRE(key_present=1, key=0x1234, seqnum_present=1, sequence_number=5, chksum_present=1) / inner,
            "gre",
            0x1234,
        ),
        (outer4 / GRE() / inner, "gre", -1),
        (outer6 / GRE(proto=0x6558, key_present=1, key=7) / frame, "gre", 7),
        (outer4 / UDP(sport=49152 + number, dport=4754) / GRE(key_present=1, key=9) / inner, "gre-udp", 9),
        (ETH / IP(src=NODE_A, dst=NODE_B, proto=4 if inner.version == 4 else 41) / inner, "ip-in-ip", -1),
        (outer6 / inner, "ip-in-ip", -1),
        (outer6 / IPv6ExtHdrDestOpt() / inner, "ip-in-ip", -1),
    ]
    return kinds[number % len(kinds)]


def _ethertype(packet: Packet) -> int:
    return 0x0800 if packet.version == 4 else 0x86DD


def every_tunnel() -> tuple[list[Packet], list[Packet], list[str], list[int]]:
    """(plain frames, the same packets tunnelled, tunnel types, ids): each pod packet in each kind of tunnel."""
    plain, wrapped, kinds, ids = [], [], [], []
    packets = pod_packets()
    for number in range(12 * len(packets)):
        inner = packets[number % len(packets)]
        frame, kind, ident = tunnelled(inner, number // len(packets))
        plain.append(ETH / inner)
        wrapped.append(frame)
        kinds.append(kind)
        ids.append(ident)
    return plain, wrapped, kinds, ids


@pytest.fixture(scope="module")
def tunnel_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str], list[int]]:
    folder = tmp_path_factory.mktemp("tunnels")
    plain, wrapped, kinds, ids = every_tunnel()
    plain_path = write_pcap(folder / "plain.pcap", [bytes(frame) for frame in plain])
    tunnel_path = write_pcap(folder / "tunnels.pcap", [bytes(frame) for frame in wrapped])
    return plain_path, tunnel_path, kinds, ids


def test_a_tunnelled_row_holds_the_carried_packet_as_captured_without_the_tunnel(
    tunnel_capture: tuple[Path, Path, list[str], list[int]],
) -> None:
    plain_path, tunnel_path, kinds, ids = tunnel_capture
    plain, wrapped = read_capture(plain_path), read_capture(tunnel_path)
    assert len(plain) == len(wrapped) == len(kinds)
    assert wrapped.tunnel.astype(str).tolist() == kinds
    assert wrapped.tunnel_id.tolist() == ids
    assert not wrapped.tunnel_broken.any()
    outer6 = wrapped.outer_src.astype(str).str.contains(":")
    assert set(wrapped.outer_src[~outer6].astype(str)) == {NODE_A} and set(wrapped.outer_dst[~outer6]) == {NODE_B}
    assert set(wrapped.outer_src[outer6].astype(str)) == {NODE_A6} and set(wrapped.outer_dst[outer6]) == {NODE_B6}
    for column in HEADER_COLUMNS:
        assert wrapped[column].astype(object).tolist() == plain[column].astype(object).tolist(), column
    # The cross-capture packet key and the flow table see the pod's packets, not the tunnel.
    assert (packet_keys(wrapped) == packet_keys(plain)).all()
    assert (packet_keys(wrapped) != 0).all()
    flow_columns = ["proto", "orig", "resp", "history", "conn_state", "orig_pkts", "resp_pkts", "orig_bytes"]
    assert build_flows(wrapped)[flow_columns].equals(build_flows(plain)[flow_columns])
    assert len(plain) == 0 or (plain.tunnel.astype(str).eq("").all() and plain.outer_src.astype(str).eq("").all())


def test_tunnelled_rows_agree_with_tshark_field_by_field(
    tunnel_capture: tuple[Path, Path, list[str], list[int]],
) -> None:
    require_tools("tshark")
    _plain, tunnel_path, _kinds, _ids = tunnel_capture
    table = read_capture(tunnel_path)
    assert compare_with_tshark(table, tshark_packets(tunnel_path)) == []


def test_tunnel_captures_of_the_public_corpus_agree_with_tshark(corpus: Path) -> None:
    require_tools("tshark")
    folder = corpus / "tcpdump" / "tests"
    opened = 0
    report = []
    for name in CORPUS_TUNNELS:
        path = folder / name
        if not path.exists():
            continue
        table = read_capture(path)
        opened += int((table.outer_src.astype(str) != "").sum())
        problems = compare_with_tshark(table, tshark_packets(path), frozenset(KNOWN_DIFFERENCES.get(name, {})))
        if problems:
            report.append(f"{name}: {len(problems)} disagreement(s): " + "; ".join(problems[:3]))
    assert not report, "\n".join(report)
    assert opened > 50


def innermost_headers(output: str) -> dict[int, dict[str, str]]:
    """0-based packet number -> the fields of the last IP header line tcpdump -v printed for it."""
    headers: dict[int, dict[str, str]] = {}
    number = -1
    for line in output.splitlines():
        start = PACKET_START.match(line)
        if start:
            number = int(start["number"]) - 1
        match = IPV4_HEADER.match(line) or IPV6_HEADER.match(line)
        if match and number >= 0:
            headers[number] = {key: value for key, value in match.groupdict().items() if value is not None}
    return headers


def test_opened_corpus_tunnels_agree_with_tcpdumps_decode_of_the_carried_header(corpus: Path) -> None:
    """tcpdump -v prints each carried IP header on its own line; BIG TCP tunnels too, which tshark leaves closed."""
    folder = corpus / "tcpdump" / "tests"
    checked = 0
    problems = []
    for line in (folder / "TESTLIST").read_text().splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] not in ("-v", "-vv") or not re.search("vxlan|geneve|gre", fields[1]):
            continue
        if "gpe" in fields[1]:
            continue  # VXLAN-GPE (UDP 4790) is a different protocol, not opened
        table = read_capture(folder / fields[1])
        headers = innermost_headers((folder / fields[2]).read_text(errors="replace"))
        opened = (table.outer_src.astype(str) != "") & (table.ip_version != 0)  # a carried IP packet
        for row in table[opened].itertuples():
            header = headers[row.index]
            if "ttl" in header:
                seen = (row.ip_version, row.ttl, row.ip_id, row.frag_offset, row.proto, row.ip_len)
                wanted = (4, int(header["ttl"]), int(header["id"]), int(header["offset"]), int(header["proto"]),
                          int(header["length"]))  # fmt: skip
            else:
                seen = (row.ip_version, row.ttl, row.ip_len)
                wanted = (6, int(header["hlim"]), int(header.get("real", 40 + int(header["plen"]))))
            if seen != wanted:
                problems.append(f"{fields[1]} packet {row.index}: read_capture {seen}, tcpdump {wanted}")
            checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 50


def test_a_cut_tunnel_packet_keeps_the_outer_packet_or_whole_inner_values(tmp_path: Path) -> None:
    _plain, wrapped, _kinds, _ids = every_tunnel()
    frames = [bytes(frame) for frame in wrapped[:: len(pod_packets()) + 1]]  # each kind once, with varied payloads
    table, whole = write_cut_capture(tmp_path / "cuts.pcap", frames, 1)
    assert len(table) == len(whole)
    outer = table.outer_src.astype(str).to_numpy()
    whole_outer = outer[whole]
    opened = outer != ""
    # Opened: the same outer header as the whole packet, and the carried headers decoded whole or not at all.
    assert (outer[opened] == whole_outer[opened]).all()
    for column in ("src", "dst", "proto", "ttl", "ip_id", "ip_len"):
        values = table[column].astype(object).to_numpy()
        assert (values[opened] == values[whole][opened]).all(), column
    # Not opened: a tunnel recognised but cut short is flagged, and the row describes the outer packet.
    recognised = ~opened & (table.tunnel.astype(str).to_numpy() != "")
    assert table.tunnel_broken.to_numpy()[recognised].all()
    sources = table.src.astype(str).to_numpy()
    assert np.isin(sources[~opened], ["", NODE_A, NODE_A6]).all()
    assert (table.tunnel_id.to_numpy()[recognised] == table.tunnel_id.to_numpy()[whole][recognised]).sum() > 0


def test_malformed_tunnel_headers_keep_the_outer_packet_and_mark_it(tmp_path: Path) -> None:
    outer = ETH / IP(src=NODE_A, dst=NODE_B)
    inner = pod_packets()[0]
    frames = [
        outer / UDP(sport=50000, dport=6081) / GENEVE(version=3, proto=0x0800) / inner,  # unknown Geneve version
        outer / UDP(sport=50000, dport=6081) / GENEVE(optionlen=63, proto=0x0800) / inner,  # options past the end
        outer / GRE(routing_present=1) / inner,  # RFC 2784: routing present is dropped
        outer / UDP(sport=50000, dport=4789) / VXLAN(vni=5) / (b"\x00" * 10),  # inner Ethernet header cut short
        outer
        / UDP(sport=50000, dport=4789)
        / VXLAN(vni=5)
        / Ether(type=0x0800)
        / b"\x45\x00",  # inner IPv4 header cut short
        outer / UDP(sport=50000, dport=4754) / GRE(proto=0x0800) / IPv6(src="fd00::1", dst="fd00::2"),  # not IPv4
    ]
    table = read_capture(write_pcap(tmp_path / "bad.pcap", [bytes(frame) for frame in frames]))
    assert table.tunnel.astype(str).tolist() == ["geneve", "geneve", "gre", "vxlan", "vxlan", "gre-udp"]
    assert table.tunnel_broken.all()
    assert (table.outer_src.astype(str) == "").all()
    assert (table.src.astype(str) == NODE_A).all() and (table.dst.astype(str) == NODE_B).all()
    assert table.proto.tolist() == [17, 17, 47, 17, 17, 17]
    assert table.dport.tolist() == [6081, 6081, -1, 4789, 4789, 4754]


def test_a_tunnel_that_carries_no_ip_is_opened_to_a_row_without_ip(tmp_path: Path) -> None:
    """ARP inside VXLAN is no more an IP packet than bare ARP: no UDP flow between the nodes appears."""
    frames = [
        ETH / IP(src=NODE_A, dst=NODE_B) / UDP(sport=50000, dport=4789) / VXLAN(vni=3) / ETH / ARP(),
        ETH / IP(src=NODE_A, dst=NODE_B) / GRE(proto=0x88BE, key_present=1, key=4) / (b"\x10" * 12),  # ERSPAN
        ETH / IP(src=NODE_A, dst=NODE_B) / GRE(version=1, proto=0x880B) / (b"\x00" * 12),  # PPTP: not a tunnel
        # VXLAN-GPE (UDP 4790) is another protocol: not opened
        ETH / IP(src=NODE_A, dst=NODE_B) / UDP(sport=50000, dport=4790) / (b"\x0c" + b"\x00" * 40),
    ]
    table = read_capture(write_pcap(tmp_path / "noip.pcap", [bytes(frame) for frame in frames]))
    assert table.tunnel.astype(str).tolist() == ["vxlan", "gre", "", ""]
    assert table.tunnel_id.tolist() == [3, 4, -1, -1]
    assert not table.tunnel_broken.any()
    assert table.ip_version.tolist() == [0, 0, 4, 4]
    assert table.src.astype(str).tolist() == ["", "", NODE_A, NODE_A]
    assert table.proto.tolist() == [-1, -1, 47, 17]
    assert table.outer_src.astype(str).tolist() == [NODE_A, NODE_A, "", ""]
    assert build_flows(table)["proto"].tolist() == ["udp"]  # the VXLAN-GPE datagram; no flow between the nodes


def test_tunnels_inside_tunnels_are_opened_to_the_innermost_packet(tmp_path: Path) -> None:
    inner = pod_packets()[0]
    vxlan = IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=50000, dport=4789) / VXLAN(vni=8) / ETH / inner
    frames = [
        ETH / IP(src=NODE_A, dst=NODE_B) / GRE(key_present=1, key=77) / vxlan,
        ETH / IP(src=NODE_A, dst=NODE_B) / UDP(sport=50000, dport=4789) / VXLAN(vni=77) / ETH / vxlan,
        ETH / IP(src=NODE_A, dst=NODE_B) / UDP(sport=50000, dport=6081) / GENEVE(vni=77) / ETH / vxlan,
    ]
    table = read_capture(write_pcap(tmp_path / "nested.pcap", [bytes(frame) for frame in frames]))
    assert table.tunnel.astype(str).tolist() == ["gre", "vxlan", "geneve"]
    for row in table.itertuples():
        assert (row.tunnel_id, row.outer_src, row.outer_dst) == (77, NODE_A, NODE_B)
        assert (row.src, row.dst, row.sport, row.dport, row.seq) == ("10.244.1.5", "10.244.2.7", 40000, 8080, 1000)
        assert not row.tunnel_broken


def test_an_empty_capture_has_the_tunnel_columns(tmp_path: Path) -> None:
    table = read_capture(write_pcap(tmp_path / "empty.pcap", []))
    assert isinstance(table.tunnel.dtype, pd.CategoricalDtype) and table.tunnel_id.dtype == np.int64


def write_nanosecond_pcap(path: Path, records: list[tuple[int, bytes]]) -> Path:
    parts = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)]
    for ts_ns, frame in records:
        seconds, nanos = divmod(ts_ns, 1_000_000_000)
        parts.append(struct.pack("<IIII", seconds, nanos, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(parts))
    return path


def test_the_incident_reads_the_same_when_one_point_saw_it_inside_vxlan(tmp_path: Path) -> None:
    """node-b's packets as its underlay would carry them, between two node addresses, against the same packets bare.

    Both copies are rewritten the same way (one nanosecond pcap), so the tunnel is the only difference.
    """
    points = ["client", "nlb", "node-a", "node-b", "pod-b", "natgw", "vpc-router", "internet"]
    shipped = PROJECT / "captures"
    original = shipped / "node-b.pcapng"
    stamps = read_capture(original)["ts_ns"].tolist()
    frames = [bytes(packet) for packet in rdpcap(str(original))]
    assert len(frames) == len(stamps) > 0
    outer = ETH / IP(src="198.18.11.10", dst="198.18.10.10", ttl=64)
    bare = write_nanosecond_pcap(tmp_path / "bare.pcap", list(zip(stamps, frames, strict=True)))
    wrapped = write_nanosecond_pcap(
        tmp_path / "vxlan.pcap",
        [(ts, bytes(outer / UDP(sport=40000 + n, dport=8472) / VXLAN(vni=1) / Ether(frame)))
         for n, (ts, frame) in enumerate(zip(stamps, frames, strict=True))],
    )  # fmt: skip
    reports = {}
    for kind, node_b in (("bare", bare), ("vxlan", wrapped)):
        captures = {point: str(shipped / f"{point}.pcapng") for point in points}
        captures["node-b"] = str(node_b)
        reports[kind] = analyze(captures)
    bare_report, vxlan_report = reports["bare"], reports["vxlan"]
    assert (vxlan_report.packets["tunnel"].astype(str) == "vxlan").sum() == len(frames)

    def summary(report: Report) -> list[tuple[object, ...]]:
        return [(f.cause, f.origin, f.client, f.server, f.packet) for f in report.findings]

    assert vxlan_report.findings and summary(vxlan_report) == summary(bare_report)
    assert vxlan_report.findings[0].evidence == bare_report.findings[0].evidence
    assert len(vxlan_report.matches) == len(bare_report.matches)
    flow_columns = ["capture", "proto", "orig", "resp", "history", "conn_state"]
    assert flow_rows(vxlan_report, flow_columns) == flow_rows(bare_report, flow_columns)


def flow_rows(report: Report, columns: list[str]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(value) for value in row) for row in report.flows[columns].itertuples(index=False))


def test_the_diagnosis_orders_a_tunnelled_stretch_by_the_outer_ttl(tmp_path: Path) -> None:
    """The lab's overlay in miniature: a router passed twice, once bare and once inside VXLAN.

    client -> router -> node-a, which routes the SYN into VXLAN back through the router to node-b, which
    sends it on bare to the pod. Between node-a's way out and node-b's way in the carried TTL stays 62 at three
    copies, so only the outer TTL orders them; node-b's clock runs 5 ms behind, so the time would put node-b
    before the router's second pass. The path a verdict's evidence draws must be the one the packet took.
    """

    def syn(ttl: int) -> IP:
        return IP(src="203.0.113.10", dst="10.244.2.7", ttl=ttl, id=777) / TCP(
            sport=40000, dport=8080, flags="S", seq=1000, options=[("MSS", 1460)]
        )

    def bare(ttl: int) -> bytes:
        return bytes(Ether() / syn(ttl))

    def vxlan(outer_ttl: int) -> bytes:
        underlay = IP(src="192.0.2.1", dst="192.0.2.2", ttl=outer_ttl) / UDP(sport=51000, dport=8472)
        return bytes(Ether() / underlay / VXLAN(vni=1) / Ether() / syn(62))

    start = 1_700_000_000_000_000_000
    captures = {
        "client": [(start, bare(64))],
        "router": [(start + 10_000, bare(64)), (start + 20_000, bare(63)),
                   (start + 60_000, vxlan(64)), (start + 70_000, vxlan(63))],
        "node-a": [(start + 30_000, bare(63)), (start + 50_000, vxlan(64))],
        "node-b": [(start - 5_000_000 + 80_000, vxlan(63)), (start - 5_000_000 + 90_000, bare(61))],
        "pod": [(start + 100_000, bare(61))],
    }
    packets = concat_packets([
        read_capture(write_nanosecond_pcap(tmp_path / f"{name}.pcap", frames), name=name)
        for name, frames in captures.items()
    ])
    corr = correlate(packets)
    (conn,) = build_connections(packets, corr)
    (packet,) = [p for p in distinct_packets(conn) if p.is_pure_syn]
    assert path_points(conn, packet) == ("client", "router", "node-a", "router", "node-b", "pod")
