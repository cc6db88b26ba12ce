"""UDP requests refused with ICMP, on real namespaces: the server's own port unreachable, or a firewall's REJECT.

A client, a router and a server (``field_labs.ROUTER_LAB``, its own
addresses). The client retries one request to three ports: 81, where nothing
listens (the server's kernel answers with ICMP port unreachable); 82, which
the router rejects with ICMP administratively prohibited; 83, which the
router rejects with iptables' default, a port unreachable from the router's
own address. tshark reads each capture first, to check it shows what the
case claims; then the verdict from each point that saw the requests.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_root, require_tools
from field_labs import ROUTER_LAB, build, captured, tshark_lines, udp_retries

from diag.analysis import analyze
from diag.report import Cause, Finding

pytestmark = pytest.mark.lab

CLOSED, PROHIBITED, REJECTED = 81, 82, 83


@dataclass(frozen=True)
class Refused:
    files: dict[str, Path]
    addresses: dict[str, str]
    answers: dict[int, list[str]]

    def finding(self, port: int, *points: str) -> Finding:
        report = analyze([f"{point}={self.files[point]}" for point in points])
        chosen = [f for f in report.findings if f.proto == "udp" and f.server.endswith(f":{port}")]
        assert len(chosen) == 1, [(f.proto, f.server, f.cause, f.summary) for f in report.findings]
        return chosen[0]


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refused]:
    require_root()
    require_tools("tcpdump", "tshark", "iptables")
    out = tmp_path_factory.mktemp("udp-refused")
    with build(ROUTER_LAB.replace('name = "field-inject"', 'name = "field-refuse"', 1)) as lab:
        server = lab.address("server")
        rules = [
            [
                "FORWARD",
                "-p",
                "udp",
                "--dport",
                str(PROHIBITED),
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-admin-prohibited",
            ],
            ["FORWARD", "-p", "udp", "--dport", str(REJECTED), "-j", "REJECT"],
        ]
        for rule in rules:
            lab.run("router", ["iptables", "-I", *rule])
        answers: dict[int, list[str]] = {}

        def traffic() -> None:
            for port in (CLOSED, PROHIBITED, REJECTED):
                answers[port] = lab.call("client", functools.partial(udp_retries, server, port, 3, 0.6))

        files = captured(lab, out, ("client", "router", "server"), traffic)
        addresses = {name: lab.address(name) for name in ("client", "server")}
        facing_client = lab.topology.link_between("router", "client")
        assert facing_client is not None
        addresses["router"] = str(facing_client.end("router").address.ip)  # the REJECTs' ICMP leaves from there
    assert answers == {CLOSED: [], PROHIBITED: [], REJECTED: []}  # no datagram ever answered
    yield Refused(files, addresses, answers)


def _icmp(refused: Refused, point: str, port: int) -> set[tuple[str, str, str]]:
    """tshark's reading: (sender, type, code) of the ICMP errors at ``point`` quoting a request to ``port``."""
    lines = tshark_lines(refused.files[point], ("ip.src", "icmp.type", "icmp.code"), f"icmp && udp.dstport=={port}")
    return {(src.split(",")[0], kind, code) for src, kind, code in (line.split("\t") for line in lines)}


def test_the_captures_show_who_refused(refused: Refused) -> None:
    server, router = refused.addresses["server"], refused.addresses["router"]
    assert _icmp(refused, "client", CLOSED) == {(server, "3", "3")}
    assert _icmp(refused, "server", CLOSED) == {(server, "3", "3")}
    assert _icmp(refused, "client", PROHIBITED) == {(router, "3", "13")}
    assert _icmp(refused, "client", REJECTED) == {(router, "3", "3")}
    # The router's REJECTs stop the requests: the server never sees them.
    for port in (PROHIBITED, REJECTED):
        assert tshark_lines(refused.files["server"], ("frame.number",), f"udp.dstport=={port}") == []


@pytest.mark.parametrize(
    "points", [("client",), ("router",), ("server",), ("client", "router", "server")], ids="+".join
)
def test_the_servers_own_port_unreachable_is_port_closed(refused: Refused, points: tuple[str, ...]) -> None:
    finding = refused.finding(CLOSED, *points)
    assert finding.cause is Cause.PORT_CLOSED and finding.confidence >= 0.8
    text = "\n".join(finding.evidence)
    assert (
        "ICMP destination unreachable (port unreachable)" in text and f"sent by {refused.addresses['server']}" in text
    )
    assert {Cause.SILENT_DROP, Cause.ASYMMETRIC_RETURN} <= {r.cause for r in finding.ruled_out}


@pytest.mark.parametrize("points", [("client",), ("router",), ("client", "router", "server")], ids="+".join)
def test_a_routers_reject_is_policy_reject(refused: Refused, points: tuple[str, ...]) -> None:
    prohibited = refused.finding(PROHIBITED, *points)
    assert prohibited.cause is Cause.POLICY_REJECT and prohibited.confidence >= 0.8
    assert "administratively prohibited" in prohibited.summary
    # The default REJECT answers with a port unreachable, but from the router, not from the server it was sent to.
    rejected = refused.finding(REJECTED, *points)
    assert rejected.cause is Cause.POLICY_REJECT and 0.6 <= rejected.confidence < prohibited.confidence
    assert rejected.summary.startswith(f"{refused.addresses['router']} refused the requests to")
    assert f"{refused.addresses['server']}:{REJECTED}" in rejected.summary
    assert Cause.SILENT_DROP in {r.cause for r in rejected.ruled_out}
