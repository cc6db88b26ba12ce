"""The lab's VXLAN overlay: the incident with its nodes joined as Flannel joins them, captured on the underlay.

The topology ``incident-vxlan`` is the incident with an ``[overlay]`` table:
node-a reaches pod-b's network through a ``flannel.1`` VXLAN device (VNI 1,
UDP 8472, static FDB and neighbour entries). The captures of the nodes are
taken on their veths, so node-a, the VPC router and node-b see the DNATed SYN
only inside UDP; tshark (told that 8472 is VXLAN) is the independent witness
of that, and the diagnosis must be the plain incident's.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PROJECT, require_root, require_tools
from scenario_runs import Run

from diag.datafiles import shipped_lab_dir
from diag.errors import LabError
from diag.lab import Lab, build_plan, load_topology, parse_topology
from diag.lab.probe import tcp_probe, udp_probe
from diag.scenario.spec import load_scenario

INCIDENT = (shipped_lab_dir() / "topologies" / "incident.toml").read_text()
OVERLAY = "\n[overlay]\n"
VXLAN = ["-d", "udp.port==8472,vxlan"]


def tshark_fields(capture: Path, display_filter: str, *fields: str) -> list[list[str]]:
    command = ["tshark", "-n", "-r", str(capture), *VXLAN, "-o", "tcp.check_checksum:TRUE", "-Y", display_filter,
               "-T", "fields", "-E", "separator=|"]
    for name in fields:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("|") for line in result.stdout.splitlines()]


# -- the option, as data -------------------------------------------------------

def test_incident_vxlan_is_the_incident_with_an_overlay() -> None:
    plain, overlay = load_topology("incident"), load_topology("incident-vxlan")
    assert overlay.overlay is not None and plain.overlay is None
    assert (overlay.overlay.kind, overlay.overlay.vni, overlay.overlay.port, overlay.overlay.device) == \
        ("vxlan", 1, 8472, "flannel.1")
    members = {m.node: m for m in overlay.overlay.members}
    assert set(members) == {node.name for node in overlay.nodes_with_role("k8s-node")}
    for name, member in members.items():
        assert member.underlay.address.ip == overlay.address(name)
        pods = [link.end(name).address.network for link in overlay.links_of(name)
                if overlay.node(link.peer(name).node).role == "pod"]
        assert list(member.pod_networks) == pods
    # Everything but the overlay is the incident's: the same nodes, links and rules.
    assert plain.nodes == overlay.nodes and plain.links == overlay.links


def test_plan_programs_a_static_vxlan_per_node() -> None:
    topology = load_topology("incident-vxlan")
    plain = {ns.node: ns for ns in build_plan(load_topology("incident"), "t1").namespaces}
    for ns in build_plan(topology, "t1").namespaces:
        assert ns.interfaces == plain[ns.node].interfaces  # the tunnel device is never a capture point
        assert ns.iptables == plain[ns.node].iptables
        assert ns.ip_batch[:len(plain[ns.node].ip_batch)] == plain[ns.node].ip_batch
        if ns.role != "k8s-node":
            assert ns.ip_batch == plain[ns.node].ip_batch and not ns.devices and not ns.bridge_batch
            continue
        extra = ns.ip_batch[len(plain[ns.node].ip_batch):]
        other = "node-b" if ns.node == "node-a" else "node-a"
        assert topology.overlay is not None
        peer = topology.overlay.member(other)
        assert peer is not None
        other_pods = str(peer.pod_networks[0])
        assert ns.devices == ["flannel.1"]
        assert re.fullmatch(rf"link add flannel\.1 address \S+ type vxlan id 1 local {topology.address(ns.node)} "
                            r"dev eth-vpc-router dstport 8472 nolearning", extra[0])
        assert "group" not in extra[0]  # no multicast: peers are found through static entries only
        assert f"route add {other_pods} via {other_pods.split('/')[0]} dev flannel.1 onlink" in extra
        assert any(line.startswith(f"neighbour add {other_pods.split('/')[0]} lladdr ") and
                   line.endswith("nud permanent") for line in extra)
        assert ns.bridge_batch == [line for line in ns.bridge_batch if line.startswith("fdb add ")]
        assert [line.split(" dst ")[1] for line in ns.bridge_batch] == [str(topology.address(other))]


@pytest.mark.parametrize(("overlay", "message"), [
    ('type = "geneve"', "overlay.type: 'geneve': the lab builds vxlan overlays only"),
    ("vni = 16777216", "overlay.vni: must be between 0 and 16777215"),
    ("port = 0", "overlay.port: must be between 1 and 65535"),
    ('device = ".1"', "overlay.device: '.1': 1-15 letters"),
    ('device = "eth-vpc-router"', "overlay.device: node-a already has an interface 'eth-vpc-router'"),
    ('nodes = ["node-a"]', "overlay.nodes: an overlay joins at least two k8s-node nodes"),
    ('nodes = ["node-a", "pod-b"]', "overlay.nodes: 'pod-b' is not a k8s-node node"),
    ('nodes = ["node-a", "node-a"]', "overlay.nodes: a node is named twice"),
    ('mode = "l3"', "overlay.mode: unknown key"),
])
def test_overlay_mistakes_name_the_key(overlay: str, message: str) -> None:
    with pytest.raises(LabError) as caught:
        parse_topology(INCIDENT + OVERLAY + overlay + "\n", origin="t.toml")
    assert str(caught.value).startswith(f"t.toml: {message}"), str(caught.value)


def test_overlay_mistake_on_the_command_line_is_one_line_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(INCIDENT + OVERLAY + "vni = -1\n")
    result = subprocess.run([sys.executable, "-m", "diag.cli", "lab", "up", str(bad), "--dry-run"],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"diag: {bad}: overlay.vni: must be between 0 and 16777215, not -1"]


# -- the overlay, built ---------------------------------------------------------

@pytest.mark.lab
def test_built_overlay_is_static_vxlan_inside_the_nodes_only() -> None:
    require_root()
    require_tools("ethtool", "bridge")
    root_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    with Lab(load_topology("incident-vxlan")) as lab:
        details = lab.run("node-a", ["ip", "-d", "link", "show", "flannel.1"]).stdout
        assert re.search(r"vxlan id 1 local 198\.18\.10\.10 dev eth-vpc-router .*dstport 8472", details), details
        vxlan = next(line for line in details.splitlines() if "vxlan id" in line)
        # No multicast group and no single remote: the peers come from the static FDB alone.
        assert "nolearning" in vxlan and " group " not in vxlan and " remote " not in vxlan, vxlan
        fdb = lab.run("node-a", ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
        assert re.search(rf"dst {lab.address('node-b')} self permanent", fdb), fdb
        offload = lab.run("node-b", ["ethtool", "-k", "flannel.1"]).stdout
        assert "tx-checksumming: off" in offload, offload
        route = lab.run("node-a", ["ip", "route", "get", lab.address("pod-b")]).stdout
        assert "dev flannel.1" in route, route
        assert lab.run("pod-a", ["ip", "-o", "link", "show", "flannel.1"], check=False).returncode != 0
        # What the client sees through the service is what the topology's [expect] promises (the incident's).
        address, port = lab.topology.service
        for proto, function in (("tcp", tcp_probe), ("udp", udp_probe)):
            outcome = lab.call("client", functools.partial(function, address, port, 2.0)).outcome
            assert outcome == lab.topology.expect[proto] == load_topology("incident").expect[proto], proto
        # The root namespace gets nothing: the same links as before the lab.
        assert subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                              check=True).stdout == root_links


@pytest.mark.lab
@pytest.mark.slow
def test_node_captures_hold_the_pod_traffic_inside_vxlan(run_of: Callable[[str], Run]) -> None:
    run = run_of("incident-vxlan")
    addresses = run.record["addresses"]
    pod, node_a, node_b = addresses["pod-b"], addresses["node-a"], addresses["node-b"]
    syn = "tcp.flags.syn==1 && tcp.flags.ack==0"
    for point in ("node-a", "vpc-router", "node-b"):
        capture = run.capture_path(point)
        inside = tshark_fields(capture, f"vxlan && {syn}", "ip.src", "ip.dst", "udp.dstport", "vxlan.vni",
                               "tcp.checksum.status")
        assert len(inside) >= 2, point
        for outer_inner_src, outer_inner_dst, port, vni, checksum in inside:
            assert outer_inner_dst == f"{node_b},{pod}" and outer_inner_src.startswith(f"{node_a},")
            assert (port, vni, checksum) == ("8472", "1", "1")  # checksum status 1: tshark verified it good
        # The reader finds the same SYNs, with the tunnel in its own columns.
        table = run.tables()[point]
        tunnelled = table[(table["tunnel"].astype(str) == "vxlan") & (table["dst"].astype(str) == pod)
                          & ((table["tcp_flags"] & 0x12) == 0x02)]
        assert len(tunnelled) == len(inside)
        assert set(tunnelled["tunnel_id"].astype(int)) == {1}
        assert set(tunnelled["outer_src"].astype(str)) == {node_a}
        assert set(tunnelled["outer_dst"].astype(str)) == {node_b}
    # On node-b's underlay the SYN to the pod is never bare; it is bare only on the link to the pod.
    bare = tshark_fields(run.capture_path("node-b"), f"!vxlan && {syn} && ip.dst=={pod}", "frame.interface_name")
    assert bare and {interface for (interface,) in bare} == {"eth-pod-b"}
    # The SYN-ACK is no pod-to-pod traffic: it leaves node-b bare, towards the NAT gateway.
    synack = "vxlan && tcp.flags.syn==1 && tcp.flags.ack==1"
    assert not tshark_fields(run.capture_path("node-b"), synack, "frame.number")


def _paths(report: dict) -> list[list[str]]:  # type: ignore[type-arg]
    """The chains of points ("a → b → c") the verdict's evidence draws."""
    chains = []
    for line in report["findings"][0]["evidence"]:
        chains += [chain.split(" → ") for chain in re.findall(r"[a-z][\w-]*(?: → [a-z][\w-]*)+", str(line))]
    return chains


@pytest.mark.lab
@pytest.mark.slow
def test_diagnosis_is_the_plain_incidents(run_of: Callable[[str], Run]) -> None:
    overlay, plain = run_of("incident-vxlan"), run_of("incident")
    reports = [json.loads((run.out / "report.json").read_text()) for run in (overlay, plain)]
    assert overlay.scenario.expect_cause == load_scenario("incident").expect_cause
    assert reports[0]["verdict"]["cause"] == reports[1]["verdict"]["cause"] == overlay.scenario.expect_cause
    first = [report["findings"][0] for report in reports]
    assert first[0]["origin"] == first[1]["origin"]
    assert first[0]["claimed_src"] == first[1]["claimed_src"]
    overlay_paths, plain_paths = _paths(reports[0]), _paths(reports[1])
    assert len(overlay_paths) == len(plain_paths) >= 2
    # The SYN's path, hop for hop, the router passed twice, as without the overlay: inside the tunnelled stretch
    # the carried TTL does not drop from box to box, so the order there comes from the outer TTL, not the clocks.
    assert overlay_paths[0] == plain_paths[0]
    assert overlay_paths[0].count("vpc-router") == 2
    # The SYN-ACK never enters the tunnel: its path is the plain incident's too.
    assert overlay_paths[1:] == plain_paths[1:]
