"""Compile a topology into the exact kernel configuration of each namespace.

A ``Plan`` is pure data: the namespaces and veth pairs to create, and for each
namespace its sysctls, its ``ip -batch`` lines (addresses, links, routes,
policy rules) and its ``iptables-restore`` input. Building a lab executes a
plan; ``diag lab up --dry-run`` prints it as shell.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from diag.lab import rules
from diag.lab.topology import (
    ROUTER_ROLES,
    K8sNodeConfig,
    NatGwConfig,
    NlbConfig,
    Node,
    Overlay,
    OverlayMember,
    PodConfig,
    Topology,
)

NETNS_PREFIX = "diag-"
SUPPRESS_DEFAULT_PREF = 900  # main table first, but without its default route
TABLE_RULE_PREF = 1000
NLB_RETURN_PREF = 500
CONNMARK_PREF = 100


def netns_name(lab: str, node: str) -> str:
    return f"{NETNS_PREFIX}{lab}-{node}"


@dataclass
class NamespacePlan:
    node: str
    role: str
    netns: str
    interfaces: list[str]
    sysctls: dict[str, str]  # dotted name -> value, applied in order
    ip_batch: list[str]
    iptables: str
    server: list[str] = field(default_factory=list)  # arguments of diag.lab.servers, for pods
    # Overlay tunnel devices: tx checksum offload off like the veths, but not captured (captures stay on the underlay).
    devices: list[str] = field(default_factory=list)
    bridge_batch: list[str] = field(default_factory=list)  # `bridge -batch` lines: the tunnel's static FDB


@dataclass
class Plan:
    lab: str
    topology: str
    setup_batch: list[str]  # root `ip -batch`: namespaces and veth pairs, created directly inside them
    namespaces: list[NamespacePlan]

    def netns(self, node: str) -> str:
        return netns_name(self.lab, node)


def base_sysctls(node: Node, interfaces: list[str]) -> dict[str, str]:
    sysctls = {
        # No IPv6 at all: no router solicitations or MLD reports in the captures.
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
        # Asymmetric paths are the point of the lab: reverse-path filtering would hide them.
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.ipv4.ip_forward": "1" if node.role in ROUTER_ROLES else "0",
    }
    for interface in interfaces:
        strict = interface in node.strict_rp_interfaces
        # Strict reverse-path filtering stands for AWS's source/destination check on that ENI.
        sysctls[f"net.ipv4.conf.{interface}.rp_filter"] = "1" if strict else "0"
    if isinstance(node.config, NlbConfig):
        sysctls["net.netfilter.nf_conntrack_tcp_timeout_established"] = str(node.config.idle_timeout)
        sysctls["net.netfilter.nf_conntrack_udp_timeout_stream"] = "120"  # NLB UDP flows idle out after 120 s
    if isinstance(node.config, NatGwConfig):
        timeout = str(node.config.idle_timeout)
        sysctls["net.netfilter.nf_conntrack_tcp_timeout_established"] = timeout
        sysctls["net.netfilter.nf_conntrack_udp_timeout"] = timeout
        sysctls["net.netfilter.nf_conntrack_udp_timeout_stream"] = timeout
    sysctls.update(node.sysctls)
    return sysctls


def ip_batch(topology: Topology, node: Node) -> list[str]:
    lines = ["link set lo up"]
    for link in topology.links_of(node.name):
        end = link.end(node.name)
        lines.append(f"address add {end.address} dev {end.interface}")
        lines.append(f"link set {end.interface} up")
    for route in node.routes:
        lines.append(f"route add {route.destination} via {route.gateway}")
    if isinstance(node.config, K8sNodeConfig) and node.config.connmark:
        lines.append(f"rule add pref {CONNMARK_PREF} fwmark {rules.CONNMARK_BIT}/{rules.CONNMARK_BIT} lookup main")
    if node.role == "vpc-router":
        for mark, nlb_address, number in rules.nlb_return_routes(topology, node):
            lines.append(f"rule add pref {NLB_RETURN_PREF} fwmark {mark}/{mark} lookup {number}")
            lines.append(f"route add default via {nlb_address} table {number}")
    if node.tables:
        lines.append(f"rule add pref {SUPPRESS_DEFAULT_PREF} lookup main suppress_prefixlength 0")
    for table in node.tables:
        for interface in table.iif:
            lines.append(f"rule add pref {TABLE_RULE_PREF} iif {interface} lookup {table.number}")
        for source in table.sources:
            lines.append(f"rule add pref {TABLE_RULE_PREF} from {source} lookup {table.number}")
        for route in table.routes:
            lines.append(f"route add {route.destination} via {route.gateway} table {table.number}")
    return lines


def overlay_mac(member: OverlayMember) -> str:
    """A stable, locally administered MAC for a member's tunnel device: 02:00 and its underlay address."""
    return "02:00:" + ":".join(f"{byte:02x}" for byte in member.underlay.address.ip.packed)


def overlay_ip_batch(overlay: Overlay, member: OverlayMember) -> list[str]:
    """Flannel's VXLAN backend by hand: one device, and for every other node a route, a neighbour and an FDB entry.

    No multicast group and no learning: the device knows each peer's MAC and underlay address statically,
    as flanneld programs them from the Kubernetes node objects.
    """
    device = overlay.device
    lines = [
        f"link add {device} address {overlay_mac(member)} type vxlan id {overlay.vni} "
        f"local {member.underlay.address.ip} dev {member.underlay.interface} dstport {overlay.port} nolearning",
        f"link set {device} up",
    ]
    # The tunnel's own address is the network address of the node's pod subnet, as flannel.1's is.
    lines += [f"address add {network.network_address}/32 dev {device}" for network in member.pod_networks]
    for peer in overlay.members:
        if peer is member:
            continue
        for network in peer.pod_networks:
            gateway = network.network_address
            lines.append(f"neighbour add {gateway} lladdr {overlay_mac(peer)} dev {device} nud permanent")
            lines.append(f"route add {network} via {gateway} dev {device} onlink")
    return lines


def overlay_fdb(overlay: Overlay, member: OverlayMember) -> list[str]:
    """Where each peer's MAC lives: its underlay address (the outer packet's destination)."""
    return [f"fdb add {overlay_mac(peer)} dev {overlay.device} dst {peer.underlay.address.ip}"
            for peer in overlay.members if peer is not member]


def server_arguments(topology: Topology, node: Node) -> list[str]:
    if not isinstance(node.config, PodConfig):
        return []
    config = node.config
    return ["--address", str(topology.address(node.name)), "--tcp", str(config.port), "--udp", str(config.port),
            "--behaviour", config.behaviour, "--delay", str(config.delay), "--name", node.name]


def build_plan(topology: Topology, lab: str) -> Plan:
    setup = [f"netns add {netns_name(lab, node.name)}" for node in topology.nodes]
    for link in topology.links:
        setup.append(
            f"link add {link.a.interface} netns {netns_name(lab, link.a.node)} type veth "
            f"peer name {link.b.interface} netns {netns_name(lab, link.b.node)}"
        )
    namespaces = []
    for node in topology.nodes:
        interfaces = topology.interfaces(node.name)
        member = topology.overlay.member(node.name) if topology.overlay else None
        batch = ip_batch(topology, node)
        if topology.overlay and member:
            batch += overlay_ip_batch(topology.overlay, member)
        namespaces.append(NamespacePlan(
            node=node.name,
            role=node.role,
            netns=netns_name(lab, node.name),
            interfaces=interfaces,
            sysctls=base_sysctls(node, interfaces),
            ip_batch=batch,
            iptables=rules.ruleset_for(topology, node),
            server=server_arguments(topology, node),
            devices=[topology.overlay.device] if topology.overlay and member else [],
            bridge_batch=overlay_fdb(topology.overlay, member) if topology.overlay and member else [],
        ))
    return Plan(lab=lab, topology=topology.name, setup_batch=setup, namespaces=namespaces)


def heredoc(command: str, text: str) -> str:
    body = text if text.endswith("\n") else text + "\n"
    return f"{command} <<'EOF'\n{body}EOF"


def render_shell(plan: Plan) -> str:
    """The plan as a shell script a user can read or run by hand (as root)."""
    out = [
        "#!/bin/sh",
        f"# diag lab {plan.lab}: topology {plan.topology}",
        "set -e",
        "",
        "# Namespaces, and veth pairs created directly inside them (the root namespace gets nothing).",
        heredoc("ip -batch -", "\n".join(plan.setup_batch)),
    ]
    for ns in plan.namespaces:
        out += ["", f"# --- {ns.node} ({ns.role}) ---"]
        out.append(f"mkdir -p /etc/netns/{ns.netns} && : > /etc/netns/{ns.netns}/resolv.conf  # no resolver")
        settings = " ".join(f"{key}={value}" for key, value in ns.sysctls.items())
        out.append(f"ip netns exec {ns.netns} sysctl -qw {settings}")
        out.append(heredoc(f"ip -n {ns.netns} -batch -", "\n".join(ns.ip_batch)))
        if ns.bridge_batch:
            out.append(heredoc(f"ip netns exec {ns.netns} bridge -batch -", "\n".join(ns.bridge_batch)))
        if ns.iptables:
            out.append(heredoc(f"ip netns exec {ns.netns} iptables-restore", ns.iptables))
        for interface in ns.interfaces + ns.devices:
            out.append(f"ip netns exec {ns.netns} ethtool -K {interface} tx off >/dev/null")
        if ns.server:
            args = " ".join(shlex.quote(arg) for arg in ns.server)
            out.append(f"ip netns exec {ns.netns} python3 -m diag.lab.servers {args} &")
    return "\n".join(out) + "\n"
