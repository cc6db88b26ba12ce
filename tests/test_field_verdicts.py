"""Verdicts from single points and odd vantage points, on captures made here for the test.

The labs (``field_labs``) carry their own addresses, so nothing here leans on
the shipped lab's numbers. Each case is what a user meets in the field:

- a forged RST+ACK answers the SYN with a TTL out of line and the server's
  genuine SYN-ACK arrives after it: an injector raced the server;
- the incident seen from the forwarding node alone (named interfaces, and
  ``tcpdump -i any``'s Linux cooked capture) or from the load balancer alone:
  the request leaves DNATed with the client's address kept and nothing comes
  back, the asymmetric return's signature from that box;
- a healthy NAT (kube-proxy's DNAT and SNAT) from every single point: nothing;
- a packet that passes a point twice is listed twice on the path line;
- a node connecting straight to a closed port on its pod, seen from the pod's
  link alone: both ends send with initial TTLs, the pod's stack refused it.

tshark reads the same files independently to check that each capture shows
what the case claims before the verdict is judged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_root, require_tools
from field_labs import (
    ROUTER_LAB,
    build,
    captured,
    moved_topology,
    race_reset,
    tcp_connect,
    tshark_lines,
    udp_retries,
)

from diag import read_capture
from diag.analysis import analyze
from diag.lab.topology import NlbConfig
from diag.report import Finding, Report
from diag.scenario.client import run_udp

pytestmark = pytest.mark.lab

INCIDENT_POINTS = ("client", "nlb", "vpc-router", "node-a", "node-b", "pod-b", "natgw")
CLOSED_PORT = 81  # pod-b serves 80 only


@dataclass(frozen=True)
class FieldRun:
    files: dict[str, Path]
    outcome: dict[str, object]
    addresses: dict[str, str]

    def analyze(self, *points: str) -> Report:
        return analyze([f"{point}={self.files[point]}" for point in points])


def _service_run(out: Path, snat: bool) -> FieldRun:
    require_root()
    require_tools("tcpdump", "tshark", "iptables-restore")
    with build(moved_topology("incident", snat=snat, lab_name="fieldsnat" if snat else "fieldasym")) as lab:
        nlb = lab.topology.node("nlb").config
        assert isinstance(nlb, NlbConfig)
        service = str(nlb.address)
        outcome: dict[str, object] = {}

        def traffic() -> None:
            outcome["tcp"] = lab.call("client", functools.partial(tcp_connect, service, 80, 2.5))
            outcome["udp"] = lab.call("client", functools.partial(udp_retries, service, 80))
            # The shipped client's way: two different requests, the next sent as soon as anything answers.
            outcome["udp-shipped"] = lab.call("client", functools.partial(run_udp, service, 80, "whoami", 2, 1.0))

        files = captured(lab, out, INCIDENT_POINTS, traffic, any_on=["node-a"])
        addresses = {name: lab.address(name) for name in ("client", "node-a", "pod-b", "natgw")} | {"nlb": service}
    return FieldRun(files, outcome, addresses)


@pytest.fixture(scope="module")
def asymmetric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldRun]:
    """The incident's shape on other addresses: node-a DNATs the NodePort to pod-b, no SNAT."""
    run = _service_run(tmp_path_factory.mktemp("field-asymmetric"), snat=False)
    # The client saw what the incident makes: no SYN-ACK, and UDP answers from the NAT gateway only.
    assert run.outcome["tcp"] == "timeout"
    assert run.outcome["udp"] == [f"{run.addresses['natgw']}:80"] * 3
    assert run.outcome["udp-shipped"]["outcome"] == "re-sourced"  # type: ignore[index]
    yield run


@pytest.fixture(scope="module")
def healthy_nat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldRun]:
    """The same network with kube-proxy on node-a: DNAT and SNAT, so replies come back and are un-NATed."""
    run = _service_run(tmp_path_factory.mktemp("field-snat"), snat=True)
    assert run.outcome["tcp"] == "connected"
    assert run.outcome["udp"] == [f"{run.addresses['nlb']}:80"] * 3
    assert run.outcome["udp-shipped"]["outcome"] == "ok"  # type: ignore[index]
    yield run


def _injected_run(out: Path, server_ignores_syns: bool) -> FieldRun:
    require_root()
    require_tools("tcpdump", "tshark", "iptables")
    with build(ROUTER_LAB) as lab:
        if server_ignores_syns:
            # The server's capture sees each SYN arrive (before netfilter); its stack never answers.
            lab.run("server", ["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "80", "--syn", "-j", "DROP"])
        outcome: dict[str, object] = {}

        def traffic() -> None:
            outcome["tcp"], outcome["injector"] = race_reset(lab, 80, 2.0 if server_ignores_syns else 6.0)

        files = captured(lab, out, ("client", "router", "server"), traffic)
        addresses = {name: lab.address(name) for name in ("client", "server")}
    assert outcome["tcp"] == "refused"
    assert outcome["injector"] == {"rst": 1, "synack": 0 if server_ignores_syns else 1, "rst_ttl": 64}
    return FieldRun(files, outcome, addresses)


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldRun]:
    """A router that injects: a forged RST+ACK to the client's SYN, the genuine SYN-ACK passed on after it."""
    yield _injected_run(tmp_path_factory.mktemp("field-raced"), server_ignores_syns=False)


@pytest.fixture(scope="module")
def let_through(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldRun]:
    """The same injector, but the server never answers: the RST stands alone, the SYN still went on."""
    yield _injected_run(tmp_path_factory.mktemp("field-let-through"), server_ignores_syns=True)


@pytest.fixture(scope="module")
def closed_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FieldRun]:
    """node-b connects straight to a port nothing listens on at pod-b, its neighbour on the pod's link."""
    require_root()
    require_tools("tcpdump", "tshark")
    out = tmp_path_factory.mktemp("field-closed")
    with build(moved_topology("incident", lab_name="fieldclosed")) as lab:
        pod = lab.address("pod-b")
        outcome: dict[str, object] = {}

        def traffic() -> None:
            outcome["tcp"] = lab.call("node-b", functools.partial(tcp_connect, pod, CLOSED_PORT, 2.0))

        files = captured(lab, out, ("pod-b", "node-b"), traffic, any_on=["pod-b"])
        addresses = {name: lab.address(name) for name in ("node-b", "pod-b")}
    assert outcome["tcp"] == "refused"
    yield FieldRun(files, outcome, addresses)


def of_proto(report: Report, proto: str, count: int) -> list[Finding]:
    chosen = [f for f in report.findings if f.proto == proto]
    assert len(chosen) == count, [(f.proto, f.cause, f.summary) for f in report.findings]
    return chosen


def only(report: Report, proto: str) -> Finding:
    return of_proto(report, proto, 1)[0]


# --- a RST that races the server's genuine SYN-ACK ----------------------------------------------------


def test_the_raced_capture_shows_the_rst_before_the_genuine_synack(raced: FieldRun) -> None:
    """tshark's reading: at the client a RST+ACK from the server's address with TTL 64, then its SYN-ACK with 63."""
    lines = tshark_lines(raced.files["client"], ("ip.src", "ip.ttl", "tcp.flags.str"),
                         f"ip.src=={raced.addresses['server']} && tcp")
    kinds = [(ttl, "R" if "R" in flags else "SA") for _src, ttl, flags in (line.split("\t") for line in lines)]
    assert kinds == [("64", "R"), ("63", "SA")]
    # The server's own capture never shows a RST leaving it.
    assert tshark_lines(raced.files["server"], ("frame.number",),
                        f"ip.src=={raced.addresses['server']} && tcp.flags.reset==1") == []


@pytest.mark.parametrize("points", [("client",), ("client", "server"), ("client", "router", "server"), ("router",)],
                         ids="+".join)
def test_a_rst_racing_the_genuine_synack_is_injected_reset(raced: FieldRun, points: tuple[str, ...]) -> None:
    finding = only(raced.analyze(*points), "tcp")
    assert finding.cause == "injected-reset"
    # From the client: the SYN-ACK after the RST and the TTL out of line; the server's capture adds its absence.
    assert finding.confidence >= (0.85 if "client" in points else 0.7)
    text = "\n".join(finding.evidence)
    assert "the server accepted that same SYN" in text
    if "client" in points:
        assert "after the RST" in text and "hop(s) closer than the server" in text
    if "server" in points:
        assert "never shows this RST" in text
    ruled = {r.cause for r in finding.ruled_out}
    assert {"policy-reject", "port-closed"} <= ruled
    if points == ("router",):
        assert finding.origin == "router"  # it shows the RST leaving with an initial TTL, made there


@pytest.mark.parametrize("points", [("client", "server"), ("client", "router", "server"), ("router",)], ids="+".join)
def test_a_rst_for_a_syn_that_went_on_is_injected_reset(let_through: FieldRun, points: tuple[str, ...]) -> None:
    """No SYN-ACK to race, but the SYN was seen past the device that refused it in the server's name."""
    assert tshark_lines(let_through.files["server"], ("frame.number",), "tcp.flags.syn==1 && tcp.flags.ack==0")
    assert tshark_lines(let_through.files["server"], ("frame.number",), f"ip.src=={let_through.addresses['server']}") \
        == []
    finding = only(let_through.analyze(*points), "tcp")
    assert finding.cause == "injected-reset" and finding.confidence >= 0.7
    assert {"policy-reject", "port-closed"} <= {r.cause for r in finding.ruled_out}
    if "router" in points:
        assert finding.origin == "router"


def test_the_client_alone_cannot_tell_a_let_through_reset_from_a_reject(let_through: FieldRun) -> None:
    finding = only(let_through.analyze("client"), "tcp")
    assert finding.cause == "policy-reject" and finding.confidence <= 0.8
    assert "not established" in "\n".join(finding.evidence)


# --- the incident seen from the forwarding box alone -------------------------------------------------------


def test_node_a_captures_show_the_dnat_and_nothing_back(asymmetric: FieldRun) -> None:
    """tshark's reading of node-a: SYNs to the NodePort, the same SYNs to the pod from the client, nothing back."""
    for point in ("node-a", "node-a-any"):
        lines = tshark_lines(asymmetric.files[point], ("ip.src", "ip.dst", "tcp.dstport", "tcp.flags.str"), "tcp")
        rows = [line.split("\t") for line in lines]
        assert rows and all(src == asymmetric.addresses["client"] for src, *_ in rows)
        destinations = {(dst, port) for _src, dst, port, _flags in rows}
        assert destinations == {(asymmetric.addresses["node-a"], "30080"), (asymmetric.addresses["pod-b"], "80")}
    # tcpdump -i any wrote Linux cooked captures: the reader sees the direction of every copy.
    table = read_capture(asymmetric.files["node-a-any"])
    assert set(table["direction"].astype(str)) >= {"in", "out"}


@pytest.mark.parametrize("point", ["node-a", "node-a-any", "nlb"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_forwarding_box_alone_sees_the_asymmetric_return(asymmetric: FieldRun, point: str, proto: str) -> None:
    # TCP: one connection. UDP: the retried request, and the shipped client's two different ones.
    findings = of_proto(asymmetric.analyze(point), proto, 1 if proto == "tcp" else 2)
    forwarded_to = asymmetric.addresses["node-a" if point == "nlb" else "pod-b"]  # the NLB's target; node-a's DNAT
    for finding in findings:
        assert finding.cause == "asymmetric-return"
        assert 0.4 <= finding.confidence <= 0.6  # one box's view: the reply's way is inferred, not seen
        text = "\n".join(finding.evidence)
        # It says where the request went, and which capture would confirm it.
        assert f"sent {'it' if proto == 'tcp' else 'them'} on to {forwarded_to}:" in text
        assert f"A capture on {forwarded_to}" in text and "would confirm it" in text
        assert "last seen at" not in text
    if proto == "udp":
        # Different requests sent back to back could be a one-way exchange: the finding says so, and only that one.
        caveat = ["that replies were expected" in "\n".join(f.evidence) for f in findings]
        assert sorted(caveat) == [False, True]
        assert min(findings, key=lambda f: f.confidence) is findings[caveat.index(True)]


def test_the_incident_path_lists_the_router_twice(asymmetric: FieldRun) -> None:
    report = asymmetric.analyze(*INCIDENT_POINTS)
    tcp, udps = only(report, "tcp"), of_proto(report, "udp", 2)
    assert tcp.cause == "asymmetric-return" and {u.cause for u in udps} == {"asymmetric-return"}
    twice = "client → nlb → vpc-router → node-a → vpc-router → node-b → pod-b"
    assert any(f"the SYN came {twice};" in line for line in tcp.evidence), tcp.evidence
    for udp in udps:
        assert any(f"the request came {twice};" in line for line in udp.evidence), udp.evidence
    assert any("the SYN-ACK went pod-b → node-b → vpc-router → natgw" in line for line in tcp.evidence)


# --- a healthy NAT, from wherever it is seen --------------------------------------------------------------


def test_the_snat_captures_show_both_translations(healthy_nat: FieldRun) -> None:
    """tshark's reading of node-a: requests arrive for the NodePort and leave from node-a to the pod (DNAT+SNAT)."""
    lines = tshark_lines(healthy_nat.files["node-a"], ("ip.src", "ip.dst", "udp.srcport", "udp.dstport"), "udp")
    rows = {tuple(line.split("\t")) for line in lines}
    client, node, pod = (healthy_nat.addresses[n] for n in ("client", "node-a", "pod-b"))
    assert any(src == client and dst == node and dport == "30080" for src, dst, _sport, dport in rows)
    assert any(src == node and dst == pod and dport == "80" for src, dst, _sport, dport in rows)
    # ...and the replies come back the same way and leave un-NATed, from the NodePort to the client.
    assert any(src == pod and dst == node for src, dst, _sport, _dport in rows)
    assert any(src == node and dst == client and sport == "30080" for src, dst, sport, _dport in rows)


# The NAT gateway is left out: once node-a SNATs, none of this traffic passes it.
@pytest.mark.parametrize("point", ["client", "nlb", "vpc-router", "node-a", "node-a-any", "node-b", "pod-b"])
def test_a_healthy_nat_is_no_finding_from_any_single_point(healthy_nat: FieldRun, point: str) -> None:
    report = healthy_nat.analyze(point)
    assert [(f.proto, f.cause, f.summary) for f in report.findings] == []


def test_a_healthy_nat_is_no_finding_from_every_point(healthy_nat: FieldRun) -> None:
    assert healthy_nat.analyze(*INCIDENT_POINTS, "node-a-any").findings == ()


# --- tuple reuse names the point that made its RST ------------------------------------------------------


def test_tuple_reuse_names_its_origin(run_of) -> None:  # type: ignore[no-untyped-def]
    run = run_of("tuple-reuse")
    points = [c["point"] for c in run.record["captures"]]
    report = analyze([f"{p}={run.capture_path(p)}" for p in points])
    (finding,) = [f for f in report.findings if f.cause == "tuple-reuse"]
    assert finding.origin == "client"  # the client's own stack answered the challenge ACK
    client_only = only(analyze([f"client={run.capture_path('client')}"]), "tcp")
    assert client_only.cause == "tuple-reuse" and client_only.origin == "client"
    # The server's pod alone: not captured where it was made, but the RST is in line with the client's packets.
    pods = [analyze([f"{p}={run.capture_path(p)}"]).findings for p in points if p.startswith("pod-")]
    (at_pod,) = [f for findings in pods for f in findings if f.cause == "tuple-reuse"]
    assert at_pod.origin is None and "origin: the client's stack (" in "\n".join(at_pod.evidence)


# --- a closed port on a neighbour, seen from the link between them ------------------------------------------


def test_the_closed_port_capture_shows_both_ends_at_initial_ttls(closed_port: FieldRun) -> None:
    """tshark's reading of pod-b: node-b's SYN and pod-b's RST+ACK (ack = ISN + 1), both with TTL 64."""
    fields = ("ip.src", "ip.dst", "ip.ttl", "tcp.flags.str", "tcp.seq_raw", "tcp.ack_raw")
    rows = [line.split("\t") for line in tshark_lines(closed_port.files["pod-b"], fields, f"tcp.port=={CLOSED_PORT}")]
    pod = closed_port.addresses["pod-b"]
    assert [(dst == pod, src == pod, ttl) for src, dst, ttl, *_ in rows] == [(True, False, "64"), (False, True, "64")]
    rows = [row[2:] for row in rows]
    (_, syn_flags, isn, _), (_, rst_flags, _, ack) = rows
    assert "S" in syn_flags and "R" in rst_flags and "A" in rst_flags and int(ack) == int(isn) + 1


@pytest.mark.parametrize("point", ["pod-b", "pod-b-any", "node-b"])
def test_a_closed_port_on_a_neighbour_is_port_closed_from_its_link(closed_port: FieldRun, point: str) -> None:
    """The pod's own stack refused the SYN (the kernel's reason is NO_SOCKET), whichever end's capture is read.

    On a capture without link direction (pod-b, node-b) the SYN and the RST
    both arrive with initial TTLs, so the TTL cannot say which host made the
    RST; the two ends share a subnet, which makes the server a neighbour whose
    own RST looks exactly so. A firewall forging it would have to sit on that
    very link.
    """
    finding = only(closed_port.analyze(point), "tcp")
    assert finding.cause == "port-closed", (finding.cause, finding.evidence)
    assert finding.confidence >= 0.85
    assert "policy-reject" in {r.cause for r in finding.ruled_out}
    assert finding.claimed_src == closed_port.addresses["pod-b"]
    if point != "pod-b-any":  # the direction-less captures say why the TTL was not held against the server
        assert any("share a subnet" in line for line in finding.evidence), finding.evidence
