"""``--filter`` (pcap-filter expressions as masks) and ``--flow`` (one endpoint's connections).

The masks are checked against two independent readings of the same files:
tcpdump's own compiler and BPF (``tcpdump -r FILE -w OUT EXPR``, the matching
packets read back and compared one by one) and tshark's display filters
(frame numbers). Captures: the shipped incident, a busy generated capture,
and public traces from the shared corpus.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, require_tools

from diag.analysis import analyze
from diag.capture import read_capture
from diag.capture.filter import (
    Addr,
    And,
    Field,
    FilterError,
    Not,
    Or,
    Port,
    Relation,
    filter_mask,
    parse_filter,
)
from diag.errors import DiagError
from diag.report.focus import focus_report, parse_flow_selector, split_endpoint

SHIPPED = sorted((PROJECT / "captures").glob("*.pcapng"))
CORPUS_FILES = (
    "afs.pcap",  # IPv4 UDP and ICMP
    "mptcp-v0.pcap",  # TCP with options
    "bgp-4byte-asn.pcap",  # TCP, and non-IP frames
    "dcb_ets.pcap",  # IPv6, ICMPv6 and UDP
    "babel_update_oobr.pcap",  # IPv4 TCP/UDP and other protocols, 15 addresses
    "dhcp-rfc4388.pcap",  # DHCP over UDP, ICMP
    "vrrp.pcap",  # IPv4 and IPv6
    "forces2.pcap",  # SCTP over Linux cooked capture
    "pim-packet-assortment.pcap",  # IPv6 multicast
)


def run_diag(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: its own process, exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "diag.cli", *map(str, args)],
        cwd=PROJECT, capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"), timeout=300,
    )  # fmt: skip


def read(path: Path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_capture(path)


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hundreds of TCP connections (some reset) and DNS-like UDP, from the reader benchmark's generator."""
    path = tmp_path_factory.mktemp("busy") / "busy.pcap"
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_capture.py"), "--packets", "4000", "--out", str(path)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return path


# ---------------------------------------------------------------------------------------------- the parser


def test_and_or_have_equal_precedence_left_to_right() -> None:
    # pcap-filter(7): "a or b and c" is "(a or b) and c", not the C reading.
    assert parse_filter("tcp or udp and port 53") == And(
        Or(Field("proto", 6), Field("proto", 17)), Port(53, 53, "src or dst", None)
    )
    assert parse_filter("tcp || udp && port 53") == parse_filter("tcp or udp and port 53")
    assert parse_filter("tcp or (udp and port 53)") == Or(
        Field("proto", 6), And(Field("proto", 17), Port(53, 53, "src or dst", None))
    )


def test_not_binds_tightest() -> None:
    assert parse_filter("not tcp and udp") == And(Not(Field("proto", 6)), Field("proto", 17))
    assert parse_filter("!tcp") == Not(Field("proto", 6))
    assert parse_filter("not not tcp") == Not(Not(Field("proto", 6)))


def test_bare_identifiers_reuse_the_latest_qualifiers() -> None:
    def host(text: str, direction: str = "src or dst") -> Addr:
        return Addr(ipaddress.ip_network(text), direction)

    # The man page's own example: "not host vs and ace" is "not host vs and host ace".
    assert parse_filter("not host 192.0.2.1 and 192.0.2.2") == And(Not(host("192.0.2.1")), host("192.0.2.2"))
    assert parse_filter("tcp dst port 80 or 443") == Or(Port(80, 80, "dst", 6), Port(443, 443, "dst", 6))
    assert parse_filter("port 80 and not 443") == And(
        Port(80, 80, "src or dst", None), Not(Port(443, 443, "src or dst", None))
    )
    assert parse_filter("port 80 or (443)") == parse_filter("port 80 or port 443")
    assert parse_filter("host (192.0.2.1 or 192.0.2.2)") == Or(host("192.0.2.1"), host("192.0.2.2"))
    # A bare address starts as a host, as in tcpdump.
    assert parse_filter("192.0.2.1") == host("192.0.2.1")
    assert parse_filter("src 192.0.2.1 or dst 2001:db8::1") == Or(host("192.0.2.1", "src"), host("2001:db8::1", "dst"))


def test_networks_in_every_spelling() -> None:
    expected = Addr(ipaddress.ip_network("172.16.0.0/16"), "src or dst")
    for text in ("net 172.16.0.0/16", "net 172.16/16", "net 172.16", "net 172.16.0.0 mask 255.255.0.0"):
        assert parse_filter(text) == expected, text
    assert parse_filter("net 10") == Addr(ipaddress.ip_network("10.0.0.0/8"), "src or dst")
    assert parse_filter("ip6 src net 2001:db8::/32") == Addr(ipaddress.ip_network("2001:db8::/32"), "src")
    assert parse_filter("src and dst net 10.0.0.0/8") == Addr(ipaddress.ip_network("10.0.0.0/8"), "src and dst")


def test_protocols_ports_and_header_fields() -> None:
    assert parse_filter("icmp") == And(Field("ip_version", 4), Field("proto", 1))
    assert parse_filter("ip6 proto 17") == And(Field("ip_version", 6), Field("proto", 17))
    assert parse_filter("ip proto \\tcp") == And(Field("ip_version", 4), Field("proto", 6))
    assert parse_filter("proto 47") == Field("proto", 47)
    assert parse_filter("udp portrange 1000-2000") == Port(1000, 2000, "src or dst", 17)
    assert parse_filter("port http") == Port(80, 80, "src or dst", None)
    rst = parse_filter("tcp[tcpflags] & tcp-rst != 0")
    assert isinstance(rst, Relation)
    assert rst == parse_filter("tcp[13] & 4 != 0") == parse_filter("(tcp[13:1] & 0x4) != 0")
    assert parse_filter("(tcp[13] & 4 != 0)") == rst  # parentheses around the whole relation
    assert parse_filter("less 100") == parse_filter("len <= 100")


@pytest.mark.parametrize(
    ("expression", "word", "bad"),
    [
        ("tcp and prot 80", 3, "prot"),
        ("tcp port", 2, "port"),
        ("host 10.0.0.1 and", 3, "and"),
        ("(tcp or udp", 3, "udp"),
        ("tcp)", 1, ")"),
        ("80", 1, "80"),
        ("host example.com", 2, "example.com"),
        ("net 10.0.0.1/8", 2, "10.0.0.1"),
        ("ether host 02:00:00:00:00:01", 1, "ether"),
        ("tcp host 10.0.0.1", 3, "10.0.0.1"),
        ("ip6 host 10.0.0.1", 3, "10.0.0.1"),
        ("portrange 80", 2, "80"),
        ("port 70000", 2, "70000"),
        ("tcp[4] == 1", 1, "tcp[4]"),
        ("tcp[13] & 4", 3, "4"),
        ("host 10.0.0.1 garbage", 3, "garbage"),
    ],
)
def test_errors_name_the_word(expression: str, word: int, bad: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(expression)
    message = str(caught.value)
    assert "\n" not in message
    assert f"word {word}" in message, message
    assert f"'{bad}'" in message or bad in message.split(" at word")[0], message
    assert message.endswith(": " + expression), message


def test_empty_expression_is_an_error() -> None:
    with pytest.raises(FilterError, match="empty"):
        parse_filter("   ")


# ---------------------------------------------------------------------------------------------- tcpdump's BPF


def _templates(table: pd.DataFrame) -> list[tuple[str, str]]:
    """Expressions built from what the capture holds: its busiest addresses and ports, and a network."""
    ip = table[table["ip_version"] > 0]
    counts = Counter(list(ip["src"].astype(str)) + list(ip["dst"].astype(str)))
    v4 = [a for a, _ in counts.most_common() if a and ":" not in a]
    v6 = [a for a, _ in counts.most_common() if ":" in a]
    ports = [p for p, _ in Counter(list(ip["sport"]) + list(ip["dport"])).most_common() if p >= 0]
    expressions = [
        "tcp", "udp", "icmp", "ip", "ip6", "not tcp", "tcp or udp", "udp and not icmp", "less 100", "greater 200",
        "len > 120 and not ip6", "ip proto 17", "proto 6 or proto 1", "ip and tcp[tcpflags] & tcp-rst != 0",
        "ip and tcp[tcpflags] & (tcp-syn|tcp-fin) != 0", "ip and tcp[13] == 2", "icmp[icmptype] == icmp-echo",
    ]  # fmt: skip
    for a, b in itertools.pairwise(v4[:3]):
        net16, net24 = ".".join(a.split(".")[:2]), ".".join(a.split(".")[:3])
        expressions += [
            f"host {a}", f"src host {a}", f"dst {a}", f"host {a} or {b}", f"not host {a} and {b}",
            f"host {a} and not (udp or host {b})", f"host {a} and ({b} or {a})", f"not host {a} and not {b}",
            f"net {net16}.0.0/16", f"src net {net16}", f"dst net {net24}.0 mask 255.255.255.0",
            f"ip host {a} and tcp", f"src or dst host {a}", f"src and dst net {net16}.0.0/16",
        ]  # fmt: skip
    for a in v6[:2]:
        network = ipaddress.ip_network(f"{a}/64", strict=False)
        expressions += [f"host {a}", f"ip6 src {a} or tcp", f"net {network}", f"not dst host {a}"]
    for p, q in itertools.pairwise(ports[:4]):
        expressions += [
            f"port {p}", f"src port {p}", f"tcp dst port {p} or {q}", f"udp port {p} and not src port {q}",
            f"portrange {min(p, q)}-{max(p, q)}", f"tcp src portrange 1-{max(p, 1)}", f"port {p} or ({q})",
            f"ip and ip6 or port {p}", f"!(port {p} || port {q})",
        ]  # fmt: skip
    pairs = [(expression, expression) for expression in expressions]
    # tcpdump refuses a bare address ("syntax error"); the filter reads it as a host, as the man page's rule
    # that a missing type qualifier means host suggests.
    pairs += [(address, f"host {address}") for address in (v4[:1] + v6[:1])]
    return pairs


def _tcpdump_rows(path: Path, expression: str, out: Path) -> pd.DataFrame:
    # The IP restriction leaves out what we never match on purpose: ARP senders and targets (tcpdump's host and
    # net look at them; the packet table keeps no ARP addresses).
    subprocess.run(
        ["tcpdump", "--time-stamp-precision=nano", "-r", str(path), "-w", str(out), f"({expression}) and (ip or ip6)"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return read(out)


KEY = ["ts_ns", "wire_len", "src", "dst", "sport", "dport", "proto", "tcp_flags"]


def _compare_with_tcpdump(path: Path, tmp_path: Path) -> int:
    table = read(path)
    # tcpdump's BPF does not look past a VLAN tag or into a tunnel; the filter does (the rows hold the inner
    # headers). Files used here have neither, so the two must agree packet for packet.
    assert (table["vlan"] < 0).all() and (table["tunnel"].astype(str) == "").all(), path
    compared = 0
    for expression, spelled in _templates(table):
        ours = table[filter_mask(table, expression) & (table["ip_version"] > 0).to_numpy()]
        theirs = _tcpdump_rows(path, spelled, tmp_path / "out.pcap")
        mine = ours[KEY].astype({"src": str, "dst": str}).reset_index(drop=True)
        reference = theirs[KEY].astype({"src": str, "dst": str}).reset_index(drop=True)
        assert len(mine) == len(reference), f"{path.name}: {expression!r}: {len(mine)} rows, tcpdump {len(reference)}"
        pd.testing.assert_frame_equal(mine, reference, check_dtype=False, obj=f"{path.name}: {expression!r}")
        compared += 1
    return compared


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_masks_equal_tcpdump_on_shipped_captures(path: Path, tmp_path: Path) -> None:
    require_tools("tcpdump")
    assert _compare_with_tcpdump(path, tmp_path) > 30


def test_masks_equal_tcpdump_on_a_busy_capture(busy: Path, tmp_path: Path) -> None:
    require_tools("tcpdump")
    assert _compare_with_tcpdump(busy, tmp_path) > 40


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_masks_equal_tcpdump_on_public_traces(name: str, corpus: Path, tmp_path: Path) -> None:
    require_tools("tcpdump")
    path = corpus / "tcpdump" / "tests" / name
    if not path.exists():
        pytest.skip(f"{name} not in the corpus")
    assert _compare_with_tcpdump(path, tmp_path) > 15


def test_tunnel_words_look_inside_like_tcpdump(corpus: Path, tmp_path: Path) -> None:
    # tcpdump's "geneve" shifts the rest of the expression to the encapsulated packet; rows already hold it.
    require_tools("tcpdump")
    path = corpus / "tcpdump" / "tests" / "geneve.pcap"
    if not path.exists():
        pytest.skip("geneve.pcap not in the corpus")
    table = read(path)
    inner = Counter(table["src"].astype(str)).most_common(1)[0][0]
    port = Counter(table.loc[table["sport"] >= 0, "sport"]).most_common(1)[0][0]
    sizes: list[int] = []
    expressions = (
        "geneve", "geneve 0xb", "geneve 11 and tcp", "geneve and icmp", f"geneve and host {inner}",
        f"geneve and not src host {inner}", f"geneve and tcp port {port}", "geneve and not tcp",
    )  # fmt: skip
    for expression in expressions:
        ours = table[filter_mask(table, expression) & (table["ip_version"] > 0).to_numpy()]
        theirs = _tcpdump_rows(path, expression, tmp_path / "out.pcap")
        sizes.append(len(ours))
        pd.testing.assert_frame_equal(
            ours[KEY].astype({"src": str, "dst": str}).reset_index(drop=True),
            theirs[KEY].astype({"src": str, "dst": str}).reset_index(drop=True),
            check_dtype=False, obj=expression,
        )  # fmt: skip
    assert sum(0 < size < len(table) for size in sizes) >= 5, sizes


def test_vxlan_word_equals_tshark(corpus: Path) -> None:
    # This tcpdump's libpcap (1.10) predates its "vxlan" word; tshark's decoder is the reference.
    require_tools("tshark")
    path = corpus / "tcpdump" / "tests" / "vxlan.pcap"
    if not path.exists():
        pytest.skip("vxlan.pcap not in the corpus")
    table = read(path)
    vni = int(table["tunnel_id"].iloc[0])
    for expression, display in (("vxlan", "vxlan"), (f"vxlan {vni}", f"vxlan.vni == {vni}"),
                                ("vxlan 99999 or geneve", "vxlan.vni == 99999 or geneve")):
        frames = subprocess.run(
            ["tshark", "-r", str(path), "-Y", display, "-T", "fields", "-e", "frame.number"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.split()  # fmt: skip
        ours = table.loc[filter_mask(table, expression), "index"].to_numpy() + 1
        assert ours.tolist() == [int(f) for f in frames], expression


def test_every_template_matches_something_somewhere(busy: Path) -> None:
    # Guards the comparison above against passing on empty results only.
    table = read(busy)
    hits = [int(filter_mask(table, expression).sum()) for expression, _ in _templates(table)]
    assert sum(h > 0 for h in hits) > 0.6 * len(hits)
    assert any(0 < h < len(table) // 10 for h in hits)


# ---------------------------------------------------------------------------------------------- tshark -Y

# (pcap-filter, Wireshark display filter) meaning the same thing, IPv6 included (tcpdump's tcp[] is IPv4 only).
DISPLAY_EQUIVALENTS = (
    ("tcp[tcpflags] & tcp-rst != 0", "tcp.flags.reset == 1"),
    ("tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn", "tcp.flags.syn == 1 and tcp.flags.ack == 0"),
    ("tcp and not port 80 and not port 443", "tcp and not (tcp.port == 80 or tcp.port == 443)"),
    ("udp or icmp", "udp or icmp"),
    ("len >= 1000", "frame.len >= 1000"),
    ("src net 10.0.0.0/8 and tcp", "ip.src == 10.0.0.0/8 and tcp"),
    ("dst net 198.18.0.0/15 and tcp dst portrange 1-1024", "ip.dst == 198.18.0.0/15 and tcp.dstport <= 1024"),
)


@pytest.mark.parametrize("path", [*SHIPPED[:3], None], ids=lambda p: p.name if p else "busy")
def test_masks_equal_tshark_display_filters(path: Path | None, busy: Path) -> None:
    require_tools("tshark")
    path = path or busy
    table = read(path)
    for expression, display in DISPLAY_EQUIVALENTS:
        frames = subprocess.run(
            ["tshark", "-r", str(path), "-Y", display, "-T", "fields", "-e", "frame.number"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.split()  # fmt: skip
        ours = table.loc[filter_mask(table, expression), "index"].to_numpy() + 1
        assert ours.tolist() == [int(f) for f in frames], f"{path.name}: {expression!r} vs {display!r}"


def test_ipv6_transport_fields_are_read_too() -> None:
    # tcpdump's tcp[...] looks at IPv4 only; the packet table has the fields for IPv6 as well.
    from packets import make_packets

    table = make_packets([
        {"ip_version": 6, "src": "2001:db8::1", "dst": "2001:db8::2", "proto": 6, "sport": 1, "dport": 2,
         "tcp_flags": 0x14},
        {"ip_version": 4, "src": "192.0.2.1", "dst": "192.0.2.2", "proto": 6, "sport": 1, "dport": 2,
         "tcp_flags": 0x02},
        {"ip_version": 4, "src": "192.0.2.1", "dst": "192.0.2.2", "proto": 17, "sport": 1, "dport": 2},
    ])  # fmt: skip
    assert filter_mask(table, "tcp[tcpflags] & tcp-rst != 0").tolist() == [True, False, False]
    assert filter_mask(table, "tcp[13] & 0xff != 0").tolist() == [True, True, False]
    assert filter_mask(table, "udp[2:2] == 2").tolist() == [False, False, True]
    assert filter_mask(table, "ip6 or udp dst port 2").tolist() == [True, False, True]


# ---------------------------------------------------------------------------------------------- the command


@pytest.mark.parametrize("expression", ["tcp and prot 80", "host", "(tcp", "port 80 or", "tcp[99] = 1", "net 10/33"])
def test_command_refuses_a_bad_filter_in_one_line(expression: str) -> None:
    result = run_diag("analyze", "pcap", "--filter", expression, *SHIPPED[:1])
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("diag: --filter: ") and "Traceback" not in result.stderr
    assert lines[0].endswith(expression)


def test_command_filters_before_flows_and_diagnosis(busy: Path) -> None:
    table = read(busy)
    reset = next(f for f in analyze([busy]).findings)
    client = split_endpoint(reset.client)[0]
    result = run_diag("analyze", "pcap", "--json", "-", "--filter", f"host {client}", busy)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    expected = table[filter_mask(table, f"host {client}")]
    # Every flow is a conversation of that host, and every packet of it was counted.
    assert document["flows"] and all(str(client) in (f["orig_h"], f["resp_h"]) for f in document["flows"])
    assert sum(f["orig_pkts"] + f["resp_pkts"] for f in document["flows"]) == (expected["proto"].isin([6, 17])).sum()
    assert [f["flow"] for f in document["findings"]] == [
        {"client": f.client, "server": f.server} for f in analyze([busy]).findings if str(client) in f.client
    ]


def test_filter_that_matches_nothing_is_healthy() -> None:
    report = analyze({p.stem: p for p in SHIPPED}, packet_filter="udp")
    assert report.packets.empty and report.flows.empty
    assert report.findings == ()
    assert report.verdict is None


def test_command_says_when_the_filter_left_no_flow() -> None:
    """The report of nothing reads 'healthy'; the command says on stderr that the filter left nothing."""
    result = run_diag("analyze", "pcap", "--filter", "udp", *SHIPPED[:2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("VERDICT: healthy")
    assert result.stderr.splitlines() == [
        "diag: warning: --filter 'udp' matched no TCP or UDP flow in the captures: the verdict below is of nothing"
    ]
    assert run_diag("analyze", "pcap", "--filter", "tcp", *SHIPPED[:2]).stderr == ""  # something left: nothing said


def test_analyze_takes_a_parsed_filter_and_rejects_a_bad_one_before_reading(tmp_path: Path) -> None:
    tree = parse_filter("tcp[tcpflags] & tcp-rst != 0")
    report = analyze({p.stem: p for p in SHIPPED}, packet_filter=tree)
    assert len(report.packets) > 0
    assert (report.packets["tcp_flags"] & 4 != 0).all()
    with pytest.raises(FilterError):
        analyze([tmp_path / "missing.pcap"], packet_filter="tcp and")  # the filter fails first, not the file


# ---------------------------------------------------------------------------------------------- --flow


def test_flow_selector_spellings() -> None:
    assert str(parse_flow_selector("192.0.2.1:80")) == "192.0.2.1:80"
    assert str(parse_flow_selector("[2001:db8::1]:443")) == "[2001:db8::1]:443"
    assert str(parse_flow_selector("2001:db8::1")) == "2001:db8::1"
    assert parse_flow_selector("192.0.2.1").port is None
    for bad in ("192.0.2.1:http", "example.com", "[2001:db8::1", "192.0.2.1:70000", ""):
        with pytest.raises(DiagError, match="--flow"):
            parse_flow_selector(bad)


def test_flow_narrows_the_text_and_the_json(busy: Path) -> None:
    full = analyze([busy])
    assert len(full.findings) >= 2, "the generated capture should hold several resets"
    chosen = full.findings[-1]
    result = run_diag("analyze", "pcap", "--json", "-", "--flow", chosen.client, busy)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [f["flow"] for f in document["findings"]] == [{"client": chosen.client, "server": chosen.server}]
    assert document["verdict"]["summary"] == chosen.summary
    assert 0 < len(document["flows"]) < len(full.flows)
    assert all(chosen.client in (f["orig"], f["resp"]) for f in document["flows"])

    text = run_diag("analyze", "pcap", "--flows", "all", "--flow", chosen.client, busy)
    assert text.returncode == 0
    assert chosen.client in text.stdout
    others = [f.client for f in full.findings if f.client != chosen.client]
    assert not any(other in text.stdout for other in others)
    assert f"1 of {len(full.findings)} findings" in text.stderr

    # A server address alone picks every connection to it.
    server = split_endpoint(chosen.server)[0]
    wide = focus_report(full, parse_flow_selector(str(server)))
    assert chosen in wide.findings
    assert all(str(server) in (f.client + " " + f.server) for f in wide.findings)


def test_flow_follows_the_connection_through_nat() -> None:
    # The pod's own address after DNAT names the client's connection, whose finding speaks of the NLB.
    report = analyze({p.stem: p for p in SHIPPED})
    pod_side = focus_report(report, parse_flow_selector("198.18.102.10:80"))
    assert pod_side.findings == report.findings and report.findings
    assert "198.18.102.10" not in pod_side.findings[0].server
    assert set(pod_side.flows["capture"]) == set(report.flows["capture"])
    with pytest.raises(DiagError, match="no packet"):
        focus_report(report, parse_flow_selector("203.0.113.10:1"))


def test_flow_picks_the_ladder(busy: Path, tmp_path: Path) -> None:
    from diag.plot import flow_view

    full = analyze([busy])
    chosen = full.findings[-1]
    focused = focus_report(full, parse_flow_selector(chosen.client))
    view = flow_view(focused)
    assert (view.client, view.server) == (chosen.client, chosen.server)
    assert flow_view(full).client != chosen.client or full.verdict == chosen
    result = run_diag("analyze", "pcap", "--flow", chosen.client, "--plot", tmp_path / "l.svg", busy)
    assert result.returncode == 0, result.stderr
    assert chosen.client.split(":")[0] in (tmp_path / "l.svg").read_text()


def test_flow_with_no_packet_is_bad_usage() -> None:
    result = run_diag("analyze", "pcap", "--flow", "192.0.2.99:1", *SHIPPED[:1])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == "diag: --flow 192.0.2.99:1: no packet to or from it in the captures"
    malformed = run_diag("analyze", "pcap", "--flow", "pod:80", *SHIPPED[:1])
    assert malformed.returncode == 2 and len(malformed.stderr.strip().splitlines()) == 1


def test_masks_are_numpy_bools_of_the_table_length(busy: Path) -> None:
    table = read(busy)
    mask = filter_mask(table, "tcp or not tcp")
    assert mask.dtype == np.bool_ and mask.all() and len(mask) == len(table)
    assert not filter_mask(table.iloc[:0], "host 10.0.0.1").any()
