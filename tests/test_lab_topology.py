"""Topology files: the shipped ones load, mistakes are named precisely, plans hold what the roles promise.

No root needed: these tests only parse and compile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT

from diag.datafiles import shipped_lab_dir
from diag.errors import LabError
from diag.lab import build_plan, load_topology, parse_topology, render_shell, topology_names
from diag.lab.generate import scale_topology_text

SHIPPED = ["incident", "fix-snat", "fix-local", "fix-ip-targets", "fix-connmark", "fix-no-preservation", "scale"]
INCIDENT = (shipped_lab_dir() / "topologies" / "incident.toml").read_text()
# Runs the real entry point with only the lab command registered, so this file
# does not depend on the other commands being importable.
LAB_CLI = "import sys, diag.cli as cli; cli.COMMANDS = ('lab',); sys.exit(cli.main(sys.argv[1:]))"


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", LAB_CLI, "lab", *args], capture_output=True, text=True,
                          cwd=PROJECT, timeout=60)


def test_every_shipped_topology_loads() -> None:
    assert set(SHIPPED) <= set(topology_names())
    for name in SHIPPED:
        topology = load_topology(name)
        assert topology.name == name
        assert topology.service == ("198.51.100.10", 80)
        assert topology.expect["tcp"] in ("connected", "timeout", "reset")


def test_incident_shape() -> None:
    topology = load_topology("incident")
    roles = {node.name: node.role for node in topology.nodes}
    assert roles == {"client": "client", "internet": "internet", "nlb": "nlb", "vpc-router": "vpc-router",
                     "natgw": "natgw", "node-a": "k8s-node", "node-b": "k8s-node", "pod-a": "pod", "pod-b": "pod"}
    assert topology.interfaces("vpc-router") == ["eth-nlb", "eth-natgw", "eth-node-a", "eth-node-b"]
    assert str(topology.address("client")) == "203.0.113.10"
    assert str(topology.address("pod-b")) == "198.18.102.10"


def test_scale_topology_is_the_generator_output() -> None:
    shipped = (shipped_lab_dir() / "topologies" / "scale.toml").read_text()
    assert shipped == scale_topology_text(30, 2), "regenerate: python -m diag.lab.generate > lab/topologies/scale.toml"
    assert len(load_topology("scale").nodes) == 95


@pytest.mark.parametrize(("change", "message"), [
    (('protocol = "TCP_UDP"', 'protocol = "SCTP"'), "nodes[2].listener.protocol: must be one of TCP, UDP, TCP_UDP"),
    (('targets = ["node-a"] }', 'targets = ["node-a"], preserve_client_ip = false }'),
     "nodes[2].target_group.preserve_client_ip: client IP preservation cannot be turned off on a TCP_UDP"),
    (('targets = ["node-a"]', 'targets = ["pod-a"]'), "must be a k8s-node node for instance targets"),
    (('role = "natgw"', 'role = "firewall"'), "nodes[4].role: unknown role 'firewall'"),
    (('"198.18.101.0/24" = "node-a"', '"198.18.101.0/24" = "node-z"'),
     "nodes[3].routes.198.18.101.0/24: 'node-z' is neither a neighbour of vpc-router nor an IPv4 address"),
    (('pod-b = "198.18.102.10/24"', 'pod-b = "198.18.103.10/24"'), "are not on one subnet"),
    (('node-a = "198.18.10.10/24"', 'node-a = "198.18.10.10"'), "must be an IPv4 address with prefix length"),
    (('to = "pod-b"', 'to = "node-b"'), "endpoint 'node-b' is not a pod node"),
    (('port = 30080, to', 'port = 70000, to'), "nodes[5].dnat.port: must be between 1 and 65535, not 70000"),
    (('public = "internet"', 'public = "internet"\ncolour = "red"'), "nodes[4].colour: unknown key"),
    (('[expect]\ntcp = "timeout"', '[expect]\ntcp = "sometimes"'), "expect.tcp: one of connected, timeout, reset"),
])
def test_mistakes_name_file_key_and_problem(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in INCIDENT
    with pytest.raises(LabError) as raised:
        parse_topology(INCIDENT.replace(old, new, 1), origin="broken.toml")
    text = str(raised.value)
    assert text.startswith("broken.toml: ")
    assert message in text


def test_unreadable_files_are_lab_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(LabError, match=r"bad.toml: not valid TOML"):
        load_topology(str(bad))
    with pytest.raises(LabError, match="unknown topology 'nope'"):
        load_topology("nope")
    with pytest.raises(LabError, match="no such topology file"):
        load_topology(str(tmp_path / "missing.toml"))


def test_plan_of_the_incident() -> None:
    plan = build_plan(load_topology("incident"), "t1")
    by_node = {ns.node: ns for ns in plan.namespaces}
    assert plan.setup_batch[0] == "netns add diag-t1-client"
    assert ("link add eth-node-b netns diag-t1-pod-b type veth peer name eth-pod-b netns diag-t1-node-b"
            in plan.setup_batch)
    # No IPv6 anywhere, forwarding only in routers.
    for ns in plan.namespaces:
        assert ns.sysctls["net.ipv6.conf.all.disable_ipv6"] == "1"
        assert ns.sysctls["net.ipv4.ip_forward"] == ("0" if ns.role in ("client", "pod") else "1")
    # The NLB DNATs to node-a's NodePort and keeps the client's address (no SNAT rule).
    nlb = by_node["nlb"].iptables
    assert "-j DNAT --to-destination 198.18.10.10:30080" in nlb
    assert "SNAT" not in nlb
    assert by_node["nlb"].sysctls["net.netfilter.nf_conntrack_tcp_timeout_established"] == "350"
    # The VPC router: replies from the registered target go back to the NLB; the rest to the NAT gateway.
    router = by_node["vpc-router"]
    assert "-s 198.18.10.10/32 -p tcp --sport 30080" in router.iptables
    assert "rule add pref 500 fwmark 0x1/0x1 lookup 200" in router.ip_batch
    assert "route add default via 198.18.0.10 table 200" in router.ip_batch
    assert "route add default via 198.18.1.10 table 100" in router.ip_batch
    # The NAT gateway resets TCP it never saw start.
    assert "--ctstate INVALID -j NATGW-NO-STATE" in by_node["natgw"].iptables
    assert "-j REJECT --reject-with tcp-reset" in by_node["natgw"].iptables
    # node-a: hand-written DNAT to pod-b for both protocols, no kube-proxy chains, no MASQUERADE.
    node_a = by_node["node-a"].iptables
    assert node_a.count("--to-destination 198.18.102.10:80") == 2
    assert "MASQUERADE" not in node_a
    assert by_node["pod-b"].server[:2] == ["--address", "198.18.102.10"]


def test_plan_of_kube_proxy_cluster_and_local() -> None:
    cluster = {ns.node: ns for ns in build_plan(load_topology("fix-snat"), "t1").namespaces}["node-a"].iptables
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXT-", "KUBE-SVC-", "KUBE-SEP-", "KUBE-MARK-MASQ",
                  "KUBE-POSTROUTING"):
        assert f":{chain}" in cluster
    assert "-m statistic --mode random --probability 0.50000000000" in cluster
    assert "-j MARK --set-xmark 0x4000/0x4000" in cluster
    assert "-j MASQUERADE --random-fully" in cluster
    local = {ns.node: ns for ns in build_plan(load_topology("fix-local"), "t1").namespaces}["node-a"].iptables
    assert ":KUBE-SVL-" in local
    svl = [line for line in local.splitlines() if line.startswith("-A KUBE-SVL-")]
    # Local: only node-a's own pod (one rule per protocol), and no masquerade mark on the external path.
    assert len(svl) == 2 and all("-> 198.18.101.10:80" in line for line in svl)
    assert "masquerade traffic for default/web:tcp external destinations" not in local


def test_dry_run_prints_runnable_shell() -> None:
    result = lab_cli("up", "incident", "--dry-run", "--name", "demo")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("#!/bin/sh")
    assert script == render_shell(build_plan(load_topology("incident"), "demo"))
    assert "ip netns exec diag-demo-natgw iptables-restore <<'EOF'" in script
    assert "ip -n diag-demo-vpc-router -batch - <<'EOF'" in script
    assert "ethtool -K eth-vpc-router tx off" in script
    syntax = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("up", "no-such-topology", "--dry-run"), "diag: unknown topology 'no-such-topology'"),
    (("up", "incident", "--dry-run", "--name", "Bad-Name"), "diag: lab name 'Bad-Name'"),
    (("exec", "client"), "diag: give the command after --"),
])
def test_cli_bad_input_is_one_line_and_status_2(args: tuple[str, ...], message: str) -> None:
    result = lab_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_routing_loop_is_refused_before_anything_is_built() -> None:
    # The VPC router sends pod-b's subnet to node-a, whose default route points back at the router.
    looping = INCIDENT.replace('"198.18.102.0/24" = "node-b"', '"198.18.102.0/24" = "node-a"')
    assert looping != INCIDENT
    with pytest.raises(LabError) as refused:
        parse_topology(looping, origin="loop.toml")
    message = str(refused.value)
    assert message.startswith("loop.toml: routes: a routing loop: a packet for 198.18.102.1 goes ")
    assert "vpc-router → node-a → vpc-router" in message and "\n" not in message
    # Every shipped topology routes without a loop (they all load).
    for name in SHIPPED:
        load_topology(name)
