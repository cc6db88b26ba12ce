"""VPC flow log parsing (versions 2 to 5) and the forged-reset pattern, on records written out by hand.

Record layouts follow the AWS documentation's field list; the values are the
incident's (node 198.18.1.10, client 203.0.113.10).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from diag.aws.flowlogs import (
    DEFAULT_FORMAT,
    FlowRecord,
    find_forged_resets,
    parse_format,
    parse_lines,
    read_file,
)
from diag.errors import DiagError

V2_RECORD = (
    "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK"
)
V2_NODATA = "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"
V5_HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action "
    "log-status vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr region az-id "
    "sublocation-type sublocation-id pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path"
)
NODE, CLIENT = "198.18.1.10", "203.0.113.10"


def v5(eni: str, src: str, dst: str, sport: int, dport: int, flags: int, direction: str, packets: int = 2) -> str:
    """One version 5 record in the full field order of ``V5_HEADER``."""
    return (
        f"5 123456789012 {eni} {src} {dst} {sport} {dport} 6 {packets} {packets * 60} 1764257600 1764257660 "
        f"ACCEPT OK vpc-1 subnet-1 i-node {flags} IPv4 {src} {dst} eu-west-1 euw1-az1 - - - - {direction} 8"
    )


def handshake(client_flags: int, node_flags: int = 18, client: str = CLIENT, port: int = 38622) -> list[str]:
    return [
        v5("eni-node", NODE, client, 30080, port, node_flags, "egress"),
        v5("eni-node", client, NODE, port, 30080, client_flags, "ingress"),
    ]


def records(lines: list[str]) -> list[FlowRecord]:
    return parse_lines([V5_HEADER, *lines]).records


def test_default_version_2_record() -> None:
    log = parse_lines([V2_RECORD, V2_NODATA])
    (record,) = log.records
    assert log.fields == DEFAULT_FORMAT and log.skipped == 1 and log.bad_lines == 0
    assert (record.srcaddr, record.srcport) == ("172.31.16.139", 20641)
    assert (record.dstaddr, record.dstport) == ("172.31.16.21", 22)
    assert (record.protocol, record.packets, record.action) == (6, 20, "ACCEPT")
    assert (record.tcp_flags, record.flow_direction, record.pkt_srcaddr) == (-1, "", "")
    assert record.source == "172.31.16.139"
    assert any("no tcp-flags" in w for w in log.warnings)


def test_header_line_sets_a_version_5_format() -> None:
    log = parse_lines([V5_HEADER, v5("eni-node", NODE, CLIENT, 30080, 38622, 18, "egress")])
    (record,) = log.records
    assert len(log.fields) == 29
    assert (record.version, record.tcp_flags, record.flow_direction, record.traffic_path) == (5, 18, "egress", 8)
    assert (record.instance_id, record.subnet_id) == ("i-node", "subnet-1")
    assert log.warnings == []


def test_custom_format_in_the_consoles_notation() -> None:
    fmt = parse_format("${version} ${interface-id} ${pkt-srcaddr} ${srcaddr} ${dstaddr} ${srcport} ${dstport} "
                       "${protocol} ${tcp-flags}")
    (record,) = parse_lines(["3 eni-nat 198.18.1.10 198.18.0.5 203.0.113.10 30080 38622 6 18"], fmt).records
    # At a NAT gateway's interface srcaddr is not the packet's source; pkt-srcaddr is.
    assert (record.srcaddr, record.source, record.tcp_flags) == ("198.18.0.5", "198.18.1.10", 18)


def test_bad_lines_are_counted_not_fatal() -> None:
    log = parse_lines([V2_RECORD, "garbage", V2_RECORD.replace(" 22 6 ", " ssh 6 "), "", V2_RECORD])
    assert len(log.records) == 2
    assert log.bad_lines == 2
    assert "2 flow log line(s)" in log.warnings[0] and "line 2" in log.warnings[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("version srcaddr dstaddr bogus", "unknown field 'bogus'"), ("version srcaddr", "lacks 'dstaddr'")],
)
def test_unusable_formats_are_refused(text: str, message: str) -> None:
    with pytest.raises(DiagError, match=message):
        parse_format(text)


def test_gzipped_file_as_delivered_to_s3(tmp_path: Path) -> None:
    path = tmp_path / "flow.log.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([V5_HEADER, *handshake(client_flags=6)]) + "\n")
    log = read_file(path)
    assert len(log.records) == 2
    assert len(find_forged_resets(log.records)) == 1


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DiagError, match="not found"):
        read_file(tmp_path / "absent.log")


def test_reset_from_a_client_that_never_acknowledged_is_forged() -> None:
    (reset,) = find_forged_resets(records(handshake(client_flags=6)))  # SYN | RST, no ACK
    assert (reset.client, reset.client_port, reset.server, reset.server_port) == (CLIENT, 38622, NODE, 30080)
    assert reset.interface_id == "eni-node" and reset.confidence == 0.85 and reset.nat_interface == ""


def test_nat_gateway_interface_seeing_the_syn_ack_names_it() -> None:
    lines = [*handshake(client_flags=20), v5("eni-nat", NODE, CLIENT, 30080, 38622, 18, "ingress")]
    (reset,) = find_forged_resets(records(lines), nat_interfaces={"eni-nat"})
    assert reset.nat_interface == "eni-nat" and reset.confidence == 0.95


def test_rst_ack_answering_bare_syn_acks_is_weaker_evidence() -> None:
    (reset,) = find_forged_resets(records(handshake(client_flags=20)))
    assert reset.confidence == 0.6


def test_flags_are_compared_as_bits_because_they_are_ored() -> None:
    # SYN-ACK and FIN in one interval (19); the client's SYN and RST (6).
    assert len(find_forged_resets(records(handshake(client_flags=6, node_flags=19)))) == 1


@pytest.mark.parametrize(
    ("client_flags", "node_flags"),
    [
        pytest.param(30, 26, id="client-aborted-after-data"),
        pytest.param(27, 27, id="healthy-close"),
        pytest.param(18, 18, id="no-reset"),
        pytest.param(22, 27, id="rst-ack-after-node-sent-data"),
    ],
)
def test_genuine_client_behaviour_is_not_flagged(client_flags: int, node_flags: int) -> None:
    assert find_forged_resets(records(handshake(client_flags, node_flags))) == []


def test_reset_on_another_interface_or_tuple_is_not_matched() -> None:
    lines = [
        v5("eni-node", NODE, CLIENT, 30080, 38622, 18, "egress"),
        v5("eni-other", CLIENT, NODE, 38622, 30080, 4, "ingress"),
        v5("eni-node", CLIENT, NODE, 38623, 30080, 4, "ingress"),
    ]
    assert find_forged_resets(records(lines)) == []


def test_version_3_without_flow_direction_still_matches() -> None:
    fmt = parse_format("version interface-id srcaddr dstaddr srcport dstport protocol tcp-flags")
    log = parse_lines(
        [f"3 eni-node {NODE} {CLIENT} 30080 38622 6 18", f"3 eni-node {CLIENT} {NODE} 38622 30080 6 6"], fmt
    )
    assert len(find_forged_resets(log.records)) == 1
