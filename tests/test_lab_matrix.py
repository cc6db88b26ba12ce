"""Connectivity through the NLB, TCP and UDP on the same port, for every shipped topology.

Each topology states what a client sees (its ``expect`` table); these tests
build it for real and check the kernel agrees, then check the devices' own
state (rule counters, conntrack) and, for the incident, the packets themselves
as tshark reads them at the client and at the pod.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tools

from diag.lab import Lab, load_topology, parse_topology
from diag.lab.probe import ProbeResult, tcp_probe, udp_probe

pytestmark = pytest.mark.lab

TOPOLOGIES = ["incident", "fix-snat", "fix-local", "fix-ip-targets", "fix-connmark", "fix-no-preservation"]
PROBE_TIMEOUT = 2.0
PROBES = 4  # several flows, so hashing across targets and endpoints gets exercised


def probe(lab: Lab, proto: str) -> ProbeResult:
    address, port = lab.topology.service
    function = tcp_probe if proto == "tcp" else udp_probe
    return lab.call("client", functools.partial(function, address, port, PROBE_TIMEOUT))


def counters(lab: Lab, node: str) -> dict[tuple[str, str, str], int]:
    return {(c["table"], c["chain"], c["rule"]): c["packets"] for c in lab.state(node)["counters"]}


@pytest.fixture(scope="module")
def labs() -> Iterator[Callable[[str], Lab]]:
    """Each shipped topology built once for the whole module, on first use; all torn down at the end."""
    require_root()
    require_tools("ip", "iptables-restore", "iptables-save", "conntrack")
    built: dict[str, Lab] = {}
    with contextlib.ExitStack() as stack:
        def get(name: str) -> Lab:
            if name not in built:
                built[name] = stack.enter_context(Lab(load_topology(name)))
            return built[name]

        yield get


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_tcp_and_udp_match_the_design(labs: Callable[[str], Lab], name: str) -> None:
    lab = labs(name)
    expect = lab.topology.expect
    for proto in ("tcp", "udp"):
        outcomes = {probe(lab, proto).outcome for _ in range(PROBES if expect[proto] in ("connected", "answered")
                                                             else 1)}
        assert outcomes == {expect[proto]}, f"{lab.topology.name} {proto}"


@pytest.mark.parametrize("name", [name for name in TOPOLOGIES if name != "fix-no-preservation"])
def test_who_the_pod_sees(labs: Callable[[str], Lab], name: str) -> None:
    """The whoami answer tells whether the client's address survived the path."""
    lab = labs(name)
    result = probe(lab, "udp")
    peer = result.reply.split("peer=")[1].split(":")[0]
    if name == "fix-snat":
        assert peer != "203.0.113.10", "Cluster masquerades: the pod sees a node address"
    else:
        assert peer == "203.0.113.10", "the client's address is preserved all the way"
    if name == "incident":
        # The reply left by the NAT gateway, which re-sourced it to its public address.
        assert result.outcome == "re-sourced"
        assert result.source.startswith("192.0.2.10:")


def test_incident_reset_comes_from_the_nat_gateway(labs: Callable[[str], Lab]) -> None:
    lab = labs("incident")
    reset_rule = ("filter", "NATGW-NO-STATE", "")
    before = counters(lab, "natgw")
    assert probe(lab, "tcp").outcome == "timeout"
    after = counters(lab, "natgw")
    resets = [key for key in after if key[1] == reset_rule[1] and "REJECT" in key[2]]
    assert len(resets) == 1
    # At least one SYN-ACK per SYN the client sent in the probe's 2 s (the kernel's SYN timing varies).
    assert after[resets[0]] - before[resets[0]] >= 2
    # UDP is translated instead: the gateway keeps a flow from the pod, rewritten to its public address.
    assert probe(lab, "udp").outcome == "re-sourced"
    entries = [line for line in lab.state("natgw")["conntrack"] if " udp " in line]
    assert any("src=198.18.102.10 dst=203.0.113.10 sport=80" in line and "dst=192.0.2.10" in line
               for line in entries), entries


def test_incident_packets_at_client_and_pod(labs: Callable[[str], Lab], tmp_path: Path) -> None:
    """The client sees only its SYNs; the pod sees SYN, SYN-ACK and a RST "from the client" (read by tshark)."""
    lab = labs("incident")
    require_tools("tcpdump", "tshark")
    captures = {"client": (lab.interfaces("client")[0], tmp_path / "client.pcap"),
                "pod-b": (lab.interfaces("pod-b")[0], tmp_path / "pod.pcap")}
    dumps = []
    for node, (interface, path) in captures.items():
        dump = lab.popen(node, ["tcpdump", "-n", "-U", "-i", interface, "-w", str(path), "tcp port 80"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert dump.stderr is not None
        assert "listening on" in dump.stderr.readline()
        dumps.append(dump)
    assert probe(lab, "tcp").outcome == "timeout"
    time.sleep(0.2)
    for dump in dumps:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=5)

    def packets(path: Path) -> list[tuple[str, str, str]]:
        fields = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "ip.dst",
                                 "-e", "tcp.flags.str"], capture_output=True, text=True, check=True).stdout
        return [tuple(line.split("\t")) for line in fields.splitlines()]  # type: ignore[misc]

    client = packets(captures["client"][1])
    assert client, "the client's SYNs were captured"
    assert all(src == "203.0.113.10" and "S" in flags and "A" not in flags for src, _, flags in client), client
    pod = packets(captures["pod-b"][1])
    resets = [(src, dst) for src, dst, flags in pod if "R" in flags]
    syn_acks = [(src, dst) for src, dst, flags in pod if "S" in flags and "A" in flags]
    assert syn_acks and all(pair == ("198.18.102.10", "203.0.113.10") for pair in syn_acks)
    assert resets and all(pair == ("203.0.113.10", "198.18.102.10") for pair in resets), pod


@pytest.mark.parametrize("name", ["fix-snat", "fix-local"])
def test_kube_proxy_chains_exist_and_count(labs: Callable[[str], Lab], name: str) -> None:
    lab = labs(name)
    before = counters(lab, "node-a")
    chains = {chain for _, chain, _ in before}
    for prefix in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXT-", "KUBE-SVC-", "KUBE-SEP-", "KUBE-MARK-MASQ",
                   "KUBE-POSTROUTING"):
        assert any(chain.startswith(prefix) for chain in chains), prefix
    # Flow hashing decides which node gets each flow: probe until node-a has seen a few.
    for _ in range(20):
        assert probe(lab, "tcp").outcome == "connected"
        after = counters(lab, "node-a")
        nodeports = sum(after[key] - before[key] for key in after if key[1] == "KUBE-NODEPORTS")
        if nodeports >= 2:
            break
    assert nodeports >= 2
    dnat = sum(after[key] - before[key] for key in after if key[1].startswith("KUBE-SEP-") and "DNAT" in key[2])
    assert dnat == nodeports
    masq = sum(after[key] - before[key] for key in after if key[1] == "KUBE-MARK-MASQ")
    if lab.topology.name == "fix-snat":
        assert masq >= nodeports
    else:
        assert masq == 0, "Local keeps the client's address: nothing is marked for masquerade"


def test_nlb_spreads_flows_over_its_targets(labs: Callable[[str], Lab]) -> None:
    lab = labs("fix-ip-targets")
    pods = {probe(lab, "tcp").reply.split()[0] for _ in range(16)}
    assert pods == {"pod=pod-a", "pod=pod-b"}


def test_connmark_is_what_makes_it_work() -> None:
    """Without the CONNMARK rules the same topology loses every reply (silent drop at the source check)."""
    require_root()
    topology = load_topology("fix-connmark")
    broken = parse_topology(topology.source.replace("connmark = true", "connmark = false"))
    with Lab(broken) as lab:
        assert probe(lab, "tcp").outcome == "timeout"
        assert probe(lab, "udp").outcome == "timeout"


def test_nlb_idle_timeout_resets_the_next_segment() -> None:
    """After the NLB's idle timeout the next segment gets a RST from the listener address."""
    require_root()
    text = load_topology("fix-ip-targets").source.replace('listener = { protocol = "TCP_UDP", port = 80 }',
                                                          'listener = { protocol = "TCP_UDP", port = 80 }\n'
                                                          "idle_timeout = 1")
    with Lab(parse_topology(text)) as lab:
        address, port = lab.topology.service

        def idle_then_send() -> str:
            import socket

            with socket.create_connection((address, port), timeout=PROBE_TIMEOUT) as sock:
                sock.sendall(b"whoami\n")
                assert sock.recv(100).startswith(b"pod=")
                time.sleep(2.5)  # the NLB's conntrack entry expires after 1 s idle
                sock.sendall(b"whoami\n")
                try:
                    sock.recv(100)
                except ConnectionResetError:
                    return "reset"
                return "answered"

        assert lab.call("client", idle_then_send) == "reset"
        rejected = [c for c in lab.state("nlb")["counters"] if c["chain"] == "INPUT" and "REJECT" in c["rule"]]
        assert rejected and rejected[0]["packets"] >= 1


def test_scale_topology_builds_and_serves() -> None:
    """95 namespaces: every one exists, flows spread over many pods, and teardown leaves none."""
    require_root()
    from diag.lab.netns import existing_namespaces

    with Lab(load_topology("scale")) as lab:
        prefix = f"diag-{lab.name}-"
        assert len([ns for ns in existing_namespaces() if ns.startswith(prefix)]) == 95
        replies = [probe(lab, "tcp") for _ in range(8)] + [probe(lab, "udp") for _ in range(4)]
        assert {result.outcome for result in replies} == {"connected", "answered"}
        assert len({result.reply.split()[0] for result in replies}) >= 4, "flows land on many pods"
    assert not [ns for ns in existing_namespaces() if ns.startswith(prefix)]
