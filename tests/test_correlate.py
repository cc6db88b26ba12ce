"""Matching the same packet across capture points and NAT."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import synthetic
from conftest import require_tools
from packets import make_packets
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from test_tunnels import write_nanosecond_pcap

from diag import read_capture
from diag.analysis import concat_packets
from diag.correlate import Correlation, correlate, describe_rewrite
from diag.flows.copies import packet_keys

ORDER = ["client", "nlb", "node-a", "node-b", "pod"]


@pytest.fixture(scope="module")
def incident_corr() -> tuple[pd.DataFrame, Correlation]:
    packets = synthetic.incident().packets()
    return packets, correlate(packets)


def test_the_syn_is_followed_through_both_dnats_in_path_order(incident_corr: tuple[pd.DataFrame, Correlation]) -> None:
    packets, corr = incident_corr
    syn_rows = packets[(packets["tcp_flags"] == 0x02)]
    syn_matches = set(corr.row_match[syn_rows.index.to_numpy()])
    assert -1 not in syn_matches
    assert len(syn_matches) == 4  # four retransmissions stay four packets
    paths = corr.paths.set_index("match_id")
    for match_id in syn_matches:
        assert paths.loc[match_id, "points"] == tuple(ORDER)


def test_nat_map_shows_each_box_rewrite(incident_corr: tuple[pd.DataFrame, Correlation]) -> None:
    _, corr = incident_corr
    nat = corr.nat_map
    nlb = nat[(nat["from_capture"] == "nlb") & (nat["to_capture"] == "nlb")]
    assert list(zip(nlb["side"], nlb["before"], nlb["after"], strict=True)) == [
        ("dst", f"{synthetic.VIP}:80", f"{synthetic.NODE_A}:{synthetic.NODE_PORT}")
    ]
    assert int(nlb["packets"].iloc[0]) == 4
    node_a = nat[(nat["from_capture"] == "node-a") & (nat["to_capture"] == "node-a")]
    assert list(node_a["after"]) == [f"{synthetic.POD}:80"]
    # The client's address is kept all the way (client IP preservation): no src rewrite anywhere.
    assert not (nat["side"] == "src").any()
    matches = corr.matches
    assert set(matches.loc[matches["capture"] == "node-a", "nat"]) >= {
        f"dst {synthetic.NODE_A}:{synthetic.NODE_PORT}→{synthetic.POD}:80"
    }
    # The NAT gateway forwards nothing: no rewrite is attributed to it.
    assert not (nat["to_capture"] == "natgw").any()


def test_copies_inside_one_capture_are_one_sighting(incident_corr: tuple[pd.DataFrame, Correlation]) -> None:
    _, corr = incident_corr
    matches = corr.matches
    node_b = matches[matches["capture"] == "node-b"]
    # node-b records every packet on the way in and out: two rows, one hop.
    per_match = node_b.groupby("match_id").agg(rows=("row", "size"), hops=("hop", "nunique"), dups=("duplicate", "sum"))
    assert (per_match["rows"] == 2).all()
    assert (per_match["hops"] == 1).all()
    assert (per_match["dups"] == 1).all()
    first = node_b[~node_b["duplicate"]]
    copy = node_b[node_b["duplicate"]]
    assert (first.set_index("match_id")["ttl"] - copy.set_index("match_id")["ttl"] == 1).all()


def test_retransmissions_pair_in_order_between_points(incident_corr: tuple[pd.DataFrame, Correlation]) -> None:
    packets, corr = incident_corr
    matches = corr.matches
    syns = matches[matches["row"].isin(packets.index[packets["tcp_flags"] == 0x02]) & ~matches["duplicate"]]
    client = syns[syns["capture"] == "client"].sort_values("ts_ref_ns")
    pod = syns[syns["capture"] == "pod"].set_index("match_id")
    pod_times = [int(packets.loc[pod.loc[m, "row"], "ts_ns"]) for m in client["match_id"]]
    assert pod_times == sorted(pod_times)
    assert len(set(pod_times)) == 4


def test_points_not_captured_leave_shorter_paths() -> None:
    packets = synthetic.incident().packets(["client", "pod"])
    corr = correlate(packets)
    syn_paths = corr.paths[corr.paths["first_capture"] == "client"]
    assert len(syn_paths) == 4
    assert set(syn_paths["points"]) == {("client", "pod")}


def test_a_box_that_rewrites_the_ip_id_does_not_break_matching() -> None:
    packets = synthetic.incident().packets(["client", "pod"])
    pod = packets["capture"] == "pod"
    packets.loc[pod, "ip_id"] = packets.loc[pod, "ip_id"] + 1000
    corr = correlate(packets)
    syn_paths = corr.paths[corr.paths["first_capture"] == "client"]
    assert len(syn_paths) == 4


def test_non_ip_frames_are_never_matched() -> None:
    packets = synthetic.healthy().packets()
    corr = correlate(packets)
    not_ip = packets.index[packets["ip_version"] == 0]
    assert len(not_ip) > 0
    assert (corr.row_match[not_ip.to_numpy()] == -1).all()
    assert (packet_keys(packets)[not_ip.to_numpy()] == 0).all()


def test_udp_reply_is_followed_through_the_nat_gateway_rewrite() -> None:
    packets = synthetic.udp_asymmetric().packets()
    corr = correlate(packets)
    natgw = corr.nat_map[corr.nat_map["to_capture"] == "natgw"]
    assert len(natgw) == 3
    assert set(natgw["side"]) == {"src"}
    assert all(after.startswith(f"{synthetic.NATGW_PUBLIC}:6100") for after in natgw["after"])
    replies = corr.paths[corr.paths["first_capture"] == "pod"]
    assert set(replies["points"]) == {("pod", "node-b", "natgw", "client")}


def test_icmp_error_key_ignores_the_quoted_header_nat_rewrites() -> None:
    rows = [
        dict(capture="a", src="198.18.0.1", dst="203.0.113.10", proto="icmp", icmp_type=3, icmp_code=3, ip_id=77,
             inner_src="203.0.113.10", inner_dst="198.51.100.10", inner_proto=17, payload_len=28, payload_digest=11),
        dict(capture="b", src="198.18.0.1", dst="203.0.113.10", proto="icmp", icmp_type=3, icmp_code=3, ip_id=77,
             inner_src="203.0.113.10", inner_dst="198.18.102.10", inner_proto=17, payload_len=28, payload_digest=22,
             ttl=63),
        dict(capture="b", src="198.18.0.1", dst="203.0.113.10", proto="icmp", icmp_type=3, icmp_code=1, ip_id=78,
             inner_src="203.0.113.10", inner_dst="198.18.102.10", inner_proto=17, payload_len=28, payload_digest=22),
    ]  # fmt: skip
    corr = correlate(make_packets(rows))
    assert list(corr.row_match) == [0, 0, -1]


def test_one_capture_or_none_gives_an_empty_correlation() -> None:
    packets = synthetic.incident().packets(["pod"])
    corr = correlate(packets)
    assert corr.matches.empty and corr.reference == "pod"
    assert corr.offsets["pod"].offset_s == 0.0
    assert (corr.ts_ref_ns == packets["ts_ns"].to_numpy()).all()


def test_describe_rewrite() -> None:
    assert describe_rewrite("a", "b", 1, 2, "a", "b", 1, 2) == ""
    assert describe_rewrite("a", "b", 1, 2, "a", "c", 1, 3) == "dst b:2→c:3"
    assert describe_rewrite("2001:db8::1", "b", 1, 2, "a", "b", 1, 2) == "src [2001:db8::1]:1→a:1"


def test_matches_agree_with_tshark_on_real_files(tmp_path: Path) -> None:
    """Every match's frames carry the same raw seq/ack/flags in tshark's dissection, and the NAT
    column agrees with tshark's addresses."""
    require_tools("tshark")
    scenario = synthetic.incident()
    arguments = scenario.write_pcaps(tmp_path)
    tables = [read_capture(arg.split("=", 1)[1], name=arg.split("=", 1)[0]) for arg in arguments]
    packets = concat_packets(tables)
    corr = correlate(packets)
    fields = ["frame.number", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "ip.src", "ip.dst", "ip.ttl"]
    dissected: dict[str, list[list[str]]] = {}
    for argument in arguments:
        name, path = argument.split("=", 1)
        command = ["tshark", "-r", path, "-T", "fields", *[x for f in fields for x in ("-e", f)]]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        dissected[name] = [line.split("\t") for line in output.splitlines()]
    matches = corr.matches
    assert len(matches) > 0
    for _, group in matches.groupby("match_id"):
        seen = set()
        for _, row in group.iterrows():
            index = int(packets.loc[row["row"], "index"])
            frame = dissected[row["capture"]][index]
            assert int(frame[0]) == index + 1
            seen.add((frame[1], frame[2], frame[3]))
            assert (frame[4], frame[5], int(frame[6])) == (row["src"], row["dst"], row["ttl"])
        assert len(seen) == 1


@pytest.mark.parametrize("given", [("node-b", "router", "node-a", "pod-a"), ("pod-a", "node-a", "router", "node-b")])
def test_points_inside_a_vxlan_tunnel_are_ordered_by_the_outer_ttl(tmp_path: Path, given: tuple[str, ...]) -> None:
    """A pod's SYN leaves node-a in VXLAN and crosses a router to node-b; underlay captures all show the
    carried packet with the same TTL, so only the outer one tells the order, whatever order the captures
    come in and although node-b's clock runs behind (its copy looks earliest)."""

    def syn(ttl: int) -> IP:
        options = [("MSS", 1410), ("SAckOK", b""), ("Timestamp", (11, 0)), ("WScale", 7)]
        return IP(src="10.244.1.5", dst="10.244.2.7", ttl=ttl, id=4321) / TCP(
            sport=40000, dport=8080, flags="S", seq=1000, options=options
        )

    def vxlan(outer_ttl: int) -> bytes:
        underlay = IP(src="192.0.2.1", dst="192.0.2.2", ttl=outer_ttl) / UDP(sport=51000, dport=4789)
        return bytes(Ether() / underlay / VXLAN(vni=1) / Ether() / syn(63))

    start = 1_700_000_000_000_000_000
    frames = {
        "pod-a": (start, bytes(Ether() / syn(64))),  # before node-a routed it into the tunnel
        "node-a": (start + 40_000, vxlan(64)),
        "router": (start + 90_000, vxlan(63)),
        "node-b": (start - 5_000_000, vxlan(62)),  # a clock 5 ms behind
    }
    files = {name: write_nanosecond_pcap(tmp_path / f"{name}.pcap", [frame]) for name, frame in frames.items()}
    packets = concat_packets([read_capture(files[name], name=name) for name in given])
    outer_ttl = packets.set_index("capture")["outer_ttl"].to_dict()
    assert outer_ttl == {"pod-a": -1, "node-a": 64, "router": 63, "node-b": 62}
    paths = correlate(packets).paths
    assert paths["points"].tolist() == [("pod-a", "node-a", "router", "node-b")]
