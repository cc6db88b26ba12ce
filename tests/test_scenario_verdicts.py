"""Verdicts from subsets of capture points on the lab's real captures, for every shipped scenario.

Each scenario's run (shared with ``test_scenarios``, once per session) is
analysed from the points an engineer might have in hand: every point; the
client and the pod that served; the client, the node that received from the
NLB and that pod; the pod alone; the client alone. The table below says, for
each scenario and subset, what those points can establish and therefore what
the verdict must be. The same captures are then analysed with clocks shifted
by seconds (``editcap -t``) and rewritten as Linux cooked v2 (``tcpdump -i
any``'s link type): the verdicts must not change, and the recovered clock
offsets must hold the shifts within their stated uncertainty.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_tools
from scenario_runs import Run

from diag import read_capture
from diag.analysis import analyze
from diag.lab.topology import load_topology
from diag.report import Finding, Report
from diag.scenario.spec import available_scenarios

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SUBSETS = ("all", "client+pod", "client+node+pod", "pod", "client")
HEALTHY = ("fix-snat", "fix-local", "fix-ip-targets", "fix-connmark")


@dataclass(frozen=True)
class Want:
    """What one connection's finding must be: acceptable causes, a confidence band, what it must admit."""

    causes: frozenset[str]
    low: float = 0.0
    high: float = 1.0
    origin: str | None = None  # the capture point that made the symptom, where it was captured
    says: str = ""  # a phrase the evidence must contain (what could not be established)


def want(*causes: str, low: float = 0.0, high: float = 1.0, origin: str | None = None, says: str = "") -> Want:
    return Want(frozenset(causes), low, high, origin, says)


# Confidence bands, from what the points can establish:
# ESTABLISHED: the point that made the symptom, or its absence where it should be, was captured.
ESTABLISHED = 0.8
# ONE_SIDE: one host's view; single-point signals (TTL, ISN, timing) carry the verdict.
ONE_SIDE = (0.5, 0.85)
# CANNOT_TELL: the points cannot separate the causes; the finding must say so.
CANNOT_TELL = 0.45

ASYMMETRIC = "asymmetric-return"

# One TCP connection's SYNs seen only at the client: a SYN lost on the way in and a SYN-ACK sent
# astray (reset by the NAT gateway or the NLB) look the same.
CLIENT_SEES_ONLY_SYNS = want("silent-drop", high=CANNOT_TELL, says="not established")


def asymmetric_tcp(maker: str) -> dict[str, dict[str, Want]]:
    """The reply leaves by a path the request did not take, and ``maker`` resets it in the client's name."""
    return {
        "all": {"tcp": want(ASYMMETRIC, low=0.9, origin=maker)},
        # The pod answered; the client never got the answer nor sent the RST the pod received.
        "client+pod": {"tcp": want(ASYMMETRIC, low=ESTABLISHED)},
        # node-a saw the SYN go to the pod but never the SYN-ACK come back.
        "client+node+pod": {"tcp": want(ASYMMETRIC, low=ESTABLISHED)},
        # The pod alone: the RST's TTL is out of line with the client's SYNs, and the same-ISN SYN comes
        # again after it; the client did not send it, but where the reply went is inferred, not seen.
        "pod": {"tcp": want(ASYMMETRIC, low=ONE_SIDE[0], high=ONE_SIDE[1])},
        "client": {"tcp": CLIENT_SEES_ONLY_SYNS},
    }


EXPECTED: dict[str, dict[str, dict[str, Want]]] = {
    **{name: {subset: {} for subset in SUBSETS} for name in HEALTHY},
    "incident": asymmetric_tcp("natgw"),
    # The same incident with the nodes joined by a VXLAN overlay, captured on the underlay.
    "incident-vxlan": asymmetric_tcp("natgw"),
    "fix-no-preservation": asymmetric_tcp("nlb"),
    "tcp-udp": {
        "all": {"tcp": want(ASYMMETRIC, low=0.9, origin="natgw"), "udp": want(ASYMMETRIC, low=0.85, origin="natgw")},
        "client+pod": {"tcp": want(ASYMMETRIC, low=ESTABLISHED), "udp": want(ASYMMETRIC, low=0.6)},
        "client+node+pod": {"tcp": want(ASYMMETRIC, low=ESTABLISHED), "udp": want(ASYMMETRIC, low=0.6)},
        # The pod answers each datagram from its own address: nothing it sees is wrong.
        "pod": {"tcp": want(ASYMMETRIC, low=ONE_SIDE[0], high=ONE_SIDE[1])},
        # The client sees the reply come from an address it never wrote to: re-sourced on the way.
        "client": {"tcp": CLIENT_SEES_ONLY_SYNS, "udp": want(ASYMMETRIC, low=0.5, high=0.8)},
    },
    "udp-asymmetric": {
        "all": {"udp": want(ASYMMETRIC, low=0.85, origin="natgw")},
        "client+pod": {"udp": want(ASYMMETRIC, low=0.6)},
        "client+node+pod": {"udp": want(ASYMMETRIC, low=0.6)},
        "pod": {},
        "client": {"udp": want(ASYMMETRIC, low=0.5, high=0.8)},
    },
    "replay-incident": {
        # One SYN, and the client's capture ends right after it (the replay gives up without a
        # retransmission): the client's side cannot show that it did not send the RST later.
        "all": {"tcp": want(ASYMMETRIC, low=ESTABLISHED, origin="natgw")},
        "client+pod": {"tcp": want(ASYMMETRIC, low=0.6)},
        "client+node+pod": {"tcp": want(ASYMMETRIC, low=0.6)},
        "pod": {"tcp": want(ASYMMETRIC, low=ONE_SIDE[0], high=ONE_SIDE[1])},
        # A single SYN as the capture's last packet: nothing shows it went unanswered.
        "client": {},
    },
    "idle-timeout": {
        "all": {"tcp": want("idle-timeout", low=0.85, origin="nlb")},
        # The pod never saw the segment the RST answers, and the connection had been idle for seconds.
        "client+pod": {"tcp": want("idle-timeout", low=ESTABLISHED)},
        "client+node+pod": {"tcp": want("idle-timeout", low=ESTABLISHED)},
        # The pod saw a finished exchange and then silence; the NLB's RST went to the client only.
        "pod": {},
        # The RST comes after a long idle gap, made closer than the server (its TTL).
        "client": {"tcp": want("idle-timeout", low=0.6, high=0.9)},
    },
    "injected-reset": {
        "all": {"tcp": want("injected-reset", low=0.85, origin="internet")},
        "client+pod": {"tcp": want("injected-reset", low=ESTABLISHED)},
        "client+node+pod": {"tcp": want("injected-reset", low=ESTABLISHED)},
        # The pod sees the client's kernel reset the server's late data: genuinely the client's RST,
        # after a teardown the pod cannot see. It must say a client capture would tell.
        "pod": {"tcp": want("peer-reset", "injected-reset", "unknown", high=0.6, says="capture at the client")},
        # The server's genuine data keeps arriving after the RST "from the server".
        "client": {"tcp": want("injected-reset", low=ESTABLISHED)},
    },
    "peer-reset": {
        "all": {"tcp": want("peer-reset", low=0.75, origin="pod-a")},
        "client+pod": {"tcp": want("peer-reset", low=0.75, origin="pod-a")},
        "client+node+pod": {"tcp": want("peer-reset", low=0.75, origin="pod-a")},
        "pod": {"tcp": want("peer-reset", low=0.75, origin="pod-a")},
        # The RST's TTL and IP ID fit the server's other packets.
        "client": {"tcp": want("peer-reset", low=0.6)},
    },
    "policy-reject": {
        "all": {"tcp": want("policy-reject", low=0.85, origin="internet")},
        # The pod (and its node) were capturing and never saw the SYN.
        "client+pod": {"tcp": want("policy-reject", low=ESTABLISHED)},
        "client+node+pod": {"tcp": want("policy-reject", low=ESTABLISHED)},
        "pod": {},
        # Only the RST's initial TTL says it was made next to the client.
        "client": {"tcp": want("policy-reject", low=0.6, high=0.8, says="not established")},
    },
    "port-closed": {
        "all": {"tcp": want("port-closed", low=0.9, origin="pod-a")},
        "client+pod": {"tcp": want("port-closed", low=0.9, origin="pod-a")},
        "client+node+pod": {"tcp": want("port-closed", low=0.9, origin="pod-a")},
        "pod": {"tcp": want("port-closed", low=0.9, origin="pod-a")},
        # A firewall refusing in the server's name would look the same from the client.
        "client": {"tcp": want("port-closed", high=0.7, says="could not establish")},
    },
    "silent-drop": {
        "all": {"tcp": want("silent-drop", low=ESTABLISHED)},
        # The pod was capturing and never saw the SYN; nothing came back.
        "client+pod": {"tcp": want("silent-drop", low=ESTABLISHED)},
        "client+node+pod": {"tcp": want("silent-drop", low=ESTABLISHED)},
        "pod": {},
        "client": {"tcp": CLIENT_SEES_ONLY_SYNS},
    },
    "tuple-reuse": {
        # The challenge ACK to a SYN on a held tuple, then the client's RST and a new SYN: every point sees it.
        subset: {"tcp": want("tuple-reuse", low=0.9)}
        for subset in SUBSETS
    },
}


def test_every_shipped_scenario_has_expectations() -> None:
    assert set(EXPECTED) == set(available_scenarios())
    assert all(set(table) == set(SUBSETS) for table in EXPECTED.values())


# --- which points a subset means, from the run's own captures ---------------------------------------


def _service_packets(run: Run, point: str) -> int:
    table = read_capture(run.capture_path(point))
    return int((table["dport"].isin([80, 30080]) | table["sport"].isin([80, 30080])).sum())


def served_pod(run: Run) -> str:
    """The pod that got the service traffic (the NLB and kube-proxy pick by hash and at random)."""
    points = [c["point"] for c in run.record["captures"]]
    pods = sorted((_service_packets(run, p), p) for p in points if p.startswith("pod-"))
    count, busiest = pods[-1]
    # A request stopped before any pod (policy-reject, silent-drop) is for node-a's DNAT target, pod-a
    # on these topologies.
    return busiest if count else "pod-a"


def receiving_node(run: Run, pod: str) -> str:
    """The node the NLB sent to: the one that saw the NodePort; with ip targets, the pod's own node."""
    for point in (c["point"] for c in run.record["captures"]):
        if point.startswith("node-") and (read_capture(run.capture_path(point))["dport"] == 30080).any():
            return point
    return "node-" + pod.removeprefix("pod-")


def subset_points(run: Run, subset: str) -> list[str]:
    pod = served_pod(run)
    return {
        "all": [c["point"] for c in run.record["captures"]],
        "client+pod": ["client", pod],
        "client+node+pod": ["client", receiving_node(run, pod), pod],
        "pod": [pod],
        "client": ["client"],
    }[subset]


# --- checking a report against the table ---------------------------------------------------------------


def describe(finding: Finding) -> str:
    return f"{finding.proto} {finding.cause} {finding.confidence:.2f} origin={finding.origin}"


def problems(report: Report, wanted: dict[str, Want]) -> list[str]:
    """What differs between the report's findings and the table's row (empty when they agree)."""
    found: list[str] = []
    by_proto: dict[str, list[Finding]] = {}
    for finding in report.findings:
        by_proto.setdefault(finding.proto, []).append(finding)
    for proto in sorted(set(by_proto) | set(wanted)):
        got = by_proto.get(proto, [])
        if proto not in wanted:
            found.extend(f"unexpected finding: {describe(f)}" for f in got)
            continue
        if len(got) != 1:
            found.append(f"{proto}: {len(got)} findings, one wanted: {[describe(f) for f in got]}")
            continue
        finding, rule = got[0], wanted[proto]
        if finding.cause not in rule.causes:
            found.append(f"{describe(finding)}: cause not in {sorted(rule.causes)}")
        if not rule.low <= finding.confidence <= rule.high:
            found.append(f"{describe(finding)}: confidence outside [{rule.low}, {rule.high}]")
        if rule.origin is not None and finding.origin != rule.origin:
            found.append(f"{describe(finding)}: origin should be {rule.origin}")
        if rule.says and not any(rule.says in line for line in finding.evidence):
            found.append(f"{describe(finding)}: evidence never says {rule.says!r}: {finding.evidence}")
    return found


def captures_of(run: Run, points: list[str], files: dict[str, Path] | None = None) -> dict[str, str]:
    files = files or {}
    return {p: str(files.get(p, run.capture_path(p))) for p in points}


@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_verdict_from_a_subset_of_points(run_of: Callable[[str], Run], name: str, subset: str) -> None:
    run = run_of(name)
    points = subset_points(run, subset)
    report = analyze(captures_of(run, points))
    wanted = EXPECTED[name][subset]
    assert problems(report, wanted) == [], f"{name} from {'+'.join(points)}"
    # The one-line verdict of the JSON document: one of the wanted causes, or healthy when none is wanted.
    allowed = set().union(*(w.causes for w in wanted.values())) if wanted else {"healthy"}
    assert report.verdict_json()["cause"] in allowed


# --- shifted clocks ------------------------------------------------------------------------------------

# Seconds added to each point's clock: more than a SYN retransmission interval, in both directions.
SHIFTS = {"client": 2.5, "pod-a": -3.25, "pod-b": -3.25, "node-a": 1.75, "node-b": -1.5, "natgw": 0.8}


def shifted_copies(run: Run, directory: Path) -> dict[str, Path]:
    """Each shifted point's capture copied with ``editcap -t``; the run's own files are left alone."""
    copies = {}
    for point, seconds in SHIFTS.items():
        if point in {c["point"] for c in run.record["captures"]}:
            copies[point] = directory / f"{point}.pcapng"
            subprocess.run(["editcap", "-t", str(seconds), str(run.capture_path(point)), str(copies[point])],
                           check=True, capture_output=True)  # fmt: skip
    return copies


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_clocks_shifted_by_seconds_give_the_same_verdicts_and_the_offsets(
    run_of: Callable[[str], Run], name: str, tmp_path: Path
) -> None:
    require_tools("editcap")
    run = run_of(name)
    copies = shifted_copies(run, tmp_path)
    for subset in SUBSETS:
        points = subset_points(run, subset)
        report = analyze(captures_of(run, points, copies))
        assert problems(report, EXPECTED[name][subset]) == [], f"{name} from {'+'.join(points)}, clocks shifted"
        # Every capture of the run shares the machine's clock, so the true offset is the shift difference.
        reference = SHIFTS.get(report.clock_reference or "", 0.0)
        for point, offset in report.clock_offsets.items():
            true_offset = reference - SHIFTS.get(point, 0.0)
            assert abs(offset.offset_s - true_offset) <= offset.uncertainty_s, (point, offset, true_offset)
        if subset == "client+pod" and _service_packets(run, points[1]):
            # The client and the pod saw the same packets: the pod's shifted clock was recovered.
            assert set(report.clock_offsets) | {report.clock_reference} >= set(points)


# --- Linux cooked v2 ---------------------------------------------------------------------------------------

PCAP_NANO_MAGIC = 0xA1B23C4D
LINKTYPE_LINUX_SLL2 = 276
ETHERNET_HEADER = 14
SLL2_HEADER = 20
ETHERTYPE_IPV4, ETHERTYPE_ARP = 0x0800, 0x0806
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OUTGOING = 0, 1, 2, 4


def _ethernet_frames(path: Path) -> Iterator[tuple[str, int, int, bytes]]:
    """(interface name, timestamp ns, original length, frame bytes) of each packet of a pcapng capture."""
    from scapy.utils import PcapNgReader

    with PcapNgReader(str(path)) as reader:
        for packet in reader:
            frame = bytes(packet)
            yield str(packet.sniffed_on), int(packet.time * 1_000_000_000), int(packet.wirelen or len(frame)), frame


def _sender_address(frame: bytes) -> bytes:
    """The IPv4 address that sent an ARP or IPv4 frame (empty for anything else)."""
    ethertype = int.from_bytes(frame[12:14])
    if ethertype == ETHERTYPE_ARP:
        return frame[ETHERNET_HEADER + 14 : ETHERNET_HEADER + 18]
    if ethertype == ETHERTYPE_IPV4:
        return frame[ETHERNET_HEADER + 12 : ETHERNET_HEADER + 16]
    return b""


def own_macs(run: Run, point: str) -> dict[str, bytes]:
    """Per interface of the point's node, its own MAC: the sender of frames from its address on that link.

    The lab gives veths random MACs and tcpdump on one interface records no
    direction, but the node's address on each link is in the topology, and
    the node speaks from it on every link it uses (ARP at least).
    """
    topology = load_topology(run.scenario.topology)
    own = {link.end(point).interface: link.end(point).address.ip.packed for link in topology.links_of(point)}
    macs: dict[str, bytes] = {}
    for interface, _, _, frame in _ethernet_frames(run.capture_path(point)):
        if interface in own and _sender_address(frame) == own[interface]:
            macs.setdefault(interface, frame[6:12])
    return macs


def write_linux_sll2(source: Path, target: Path, macs: dict[str, bytes]) -> None:
    """Rewrite an Ethernet capture as ``tcpdump -i any`` would have written it: Linux cooked v2, one file.

    ``editcap -T linux-sll2`` only relabels the link type (the bytes stay
    Ethernet), so the headers are rebuilt here: the EtherType moves into the
    SLL2 header, each pcapng interface becomes an interface index, the
    sender's MAC becomes the link-layer address, and a frame is outgoing when
    it left from the interface's own MAC (``macs``, per interface name).
    """
    ifindex: dict[str, int] = {}
    records = [struct.pack("<IHHiIII", PCAP_NANO_MAGIC, 2, 4, 0, 0, 262144, LINKTYPE_LINUX_SLL2)]
    for interface, ts_ns, wire_len, frame in _ethernet_frames(source):
        assert interface in macs, f"{source}: no frame shows {interface}'s own MAC; its direction is unknown"
        destination, sender, ethertype = frame[0:6], frame[6:12], int.from_bytes(frame[12:14])
        index = ifindex.setdefault(interface, len(ifindex) + 2)
        packet_type = (
            PACKET_OUTGOING if sender == macs[interface]
            else PACKET_BROADCAST if destination == b"\xff" * 6
            else PACKET_MULTICAST if destination[0] & 1
            else PACKET_HOST
        )  # fmt: skip
        header = struct.pack("!HHIHBB8s", ethertype, 0, index, 1, packet_type, 6, sender + b"\0\0")
        body = header + frame[ETHERNET_HEADER:]
        wire = wire_len - ETHERNET_HEADER + SLL2_HEADER
        records.append(struct.pack("<IIII", ts_ns // 10**9, ts_ns % 10**9, len(body), wire) + body)
    target.write_bytes(b"".join(records))


def cooked_copies(run: Run, directory: Path) -> dict[str, Path]:
    copies = {}
    for point in (c["point"] for c in run.record["captures"]):
        copies[point] = directory / f"{point}.pcap"
        write_linux_sll2(run.capture_path(point), copies[point], own_macs(run, point))
    return copies


def test_cooked_rewrite_keeps_every_packet_as_tshark_reads_it(run_of: Callable[[str], Run], tmp_path: Path) -> None:
    """The rewrite itself, against tshark: same packets, same IP and TCP fields, one SLL2 interface per original."""
    require_tools("tshark")
    run = run_of("incident")
    source, target = run.capture_path("node-b"), tmp_path / "node-b.pcap"
    write_linux_sll2(source, target, own_macs(run, "node-b"))
    fields = ["-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.ttl",
              "-e", "tcp.seq_raw", "-e", "tcp.flags"]  # fmt: skip

    def tshark(path: Path, *extra: str) -> str:
        return subprocess.run(["tshark", "-r", str(path), *fields, *extra], check=True, capture_output=True,
                              text=True).stdout  # fmt: skip

    assert tshark(target) == tshark(source)
    assert tshark(target, "-e", "sll.ifindex").count("\t3\n") > 0  # node-b's two interfaces kept apart
    assert set(read_capture(target)["link_type"].astype(int)) == {LINKTYPE_LINUX_SLL2}
    # On the pod (one interface), what leaves is exactly what its address sent.
    pod = tmp_path / "pod-b.pcap"
    write_linux_sll2(run.capture_path("pod-b"), pod, own_macs(run, "pod-b"))
    table = read_capture(pod)
    ip = table[table["ip_version"] == 4]
    address = run.record["addresses"]["pod-b"]
    assert ((ip["direction"].astype(str) == "out") == (ip["src"].astype(str) == address)).all()
    assert set(ip["direction"].astype(str)) == {"in", "out"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_linux_cooked_v2_captures_give_the_same_verdicts(
    run_of: Callable[[str], Run], name: str, tmp_path: Path
) -> None:
    run = run_of(name)
    cooked = cooked_copies(run, tmp_path)
    for subset in SUBSETS:
        points = subset_points(run, subset)
        report = analyze(captures_of(run, points, cooked))
        assert {c.link_type for c in report.captures} == {"LINUX_SLL2"}
        assert problems(report, EXPECTED[name][subset]) == [], f"{name} from {'+'.join(points)}, Linux cooked v2"
