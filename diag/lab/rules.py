"""Each role's packet filter and NAT rules, as ``iptables-restore`` input.

The whole ruleset of a namespace is loaded in one atomic ``iptables-restore``
so a lab never runs half-configured. Comments inside the rules say what each
one stands for in the real network, so ``diag lab show`` reads like the story.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from diag.lab import kube_proxy
from diag.lab.kube_proxy import Endpoint
from diag.lab.topology import K8sNodeConfig, NatGwConfig, NlbConfig, Node, PodConfig, Topology

BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
# Marks the VPC router puts on replies from an NLB's registered targets (one bit per NLB).
NLB_RETURN_MARK_BASE = 0x1
NLB_RETURN_TABLE_BASE = 200
CONNMARK_BIT = "0x80"  # the value the AWS VPC CNI uses for the same purpose
HMARK_SEED = "0x4e4c4221"


@dataclass
class Ruleset:
    """Rules grouped by table, rendered in iptables-save format."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)

    def chain(self, table: str, *names: str) -> None:
        chains = self.chains.setdefault(table, [])
        chains.extend(name for name in names if name not in chains)

    def add(self, table: str, *rules: str) -> None:
        self.rules.setdefault(table, []).extend(rules)

    def render(self) -> str:
        if not self.rules:
            return ""
        lines = []
        for table in ("raw", "mangle", "nat", "filter"):
            if table not in self.rules:
                continue
            lines.append(f"*{table}")
            lines.extend(f":{chain} ACCEPT [0:0]" for chain in BUILTIN_CHAINS[table])
            lines.extend(f":{chain} - [0:0]" for chain in self.chains.get(table, []))
            lines.extend(self.rules[table])
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def ruleset_for(topology: Topology, node: Node) -> str:
    """The iptables-restore input for one node ('' when the role needs no rules)."""
    rules = Ruleset()
    if isinstance(node.config, NlbConfig):
        nlb_rules(topology, node, node.config, rules)
    elif isinstance(node.config, NatGwConfig):
        natgw_rules(node.config, rules)
    elif isinstance(node.config, K8sNodeConfig):
        k8s_node_rules(topology, node, node.config, rules)
    elif node.role == "vpc-router":
        vpc_router_rules(topology, rules)
    return rules.render()


def registered_targets(topology: Topology, config: NlbConfig) -> list[tuple[str, int]]:
    """The (address, port) pairs the NLB sends to, as its target group registers them."""
    group = config.target_group
    return [(str(topology.address(target)), group.port) for target in group.targets]


def nlb_private_interface(topology: Topology, nlb: Node) -> tuple[str, str]:
    """The NLB's interface and address on the VPC side: its link to the VPC router."""
    for link in topology.links_of(nlb.name):
        peer = topology.node(link.peer(nlb.name).node)
        if peer.role == "vpc-router":
            end = link.end(nlb.name)
            return end.interface, str(end.address.ip)
    end = topology.links_of(nlb.name)[-1].end(nlb.name)
    return end.interface, str(end.address.ip)


def nlb_rules(topology: Topology, node: Node, config: NlbConfig, rules: Ruleset) -> None:
    listener = f"{config.address}/32"
    targets = registered_targets(topology, config)
    rules.chain("nat", "NLB-LISTENER")
    rules.add("nat", f'-A PREROUTING -d {listener} -m comment --comment "listener {config.protocol}:{config.port}" '
                     "-j NLB-LISTENER")
    # A TCP segment that is not a SYN and has no flow here (never seen, or idle past the timeout) gets no
    # target: it falls through to the local stack, where the filter rule below answers with a RST.
    rules.add("nat", '-A NLB-LISTENER -p tcp ! --syn -m comment --comment "no flow: not for a target" -j RETURN')
    for proto in config.protocols:
        if len(targets) > 1:
            # Flow hashing: the same 5-tuple always lands on the same target, as on an NLB.
            rules.add("mangle", f"-A PREROUTING -d {listener} -p {proto} --dport {config.port} -m conntrack "
                                f"--ctstate NEW -j HMARK --hmark-tuple src,dst,sport,dport,proto "
                                f"--hmark-mod {len(targets)} --hmark-offset 1 --hmark-rnd {HMARK_SEED}")
        for index, (address, port) in enumerate(targets, start=1):
            pick = f"-m mark --mark {index} " if len(targets) > 1 else ""
            rules.add("nat", f"-A NLB-LISTENER -p {proto} --dport {config.port} {pick}-m comment --comment "
                             f'"target {config.target_group.targets[index - 1]}" '
                             f"-j DNAT --to-destination {address}:{port}")
    if not config.target_group.preserve_client_ip:
        interface, private = nlb_private_interface(topology, node)
        rules.add("nat", f"-A POSTROUTING -o {interface} -m conntrack --ctstate DNAT -m comment --comment "
                         f'"client IP preservation off" -j SNAT --to-source {private}')
    rules.add("filter", f"-A INPUT -d {listener} -p tcp --dport {config.port} -m conntrack --ctstate NEW,INVALID "
                        '-m comment --comment "segment of no known flow (idle timeout)" '
                        "-j REJECT --reject-with tcp-reset")


def natgw_rules(config: NatGwConfig, rules: Ruleset) -> None:
    public = config.public_interface
    rules.chain("filter", "NATGW-NO-STATE")
    rules.add("filter",
              f"-A FORWARD -i {public} -m conntrack --ctstate NEW,INVALID "
              '-m comment --comment "unsolicited from the internet" -j DROP',
              '-A FORWARD -p tcp -m conntrack --ctstate INVALID -j NATGW-NO-STATE',
              '-A FORWARD -p tcp ! --syn -m conntrack --ctstate NEW -j NATGW-NO-STATE',
              '-A NATGW-NO-STATE -p tcp -m comment --comment "TCP segment of a flow this gateway never saw start: '
              'reset it" -j REJECT --reject-with tcp-reset')
    rules.add("nat", f"-A POSTROUTING -o {public} -m comment --comment \"translate to the gateway's public address\" "
                     f"-j SNAT --to-source {config.public_address}")


def vpc_router_rules(topology: Topology, rules: Ruleset) -> None:
    """Mark replies from each NLB's registered targets so policy routing returns them to that NLB."""
    for index, nlb in enumerate(topology.nodes_with_role("nlb")):
        assert isinstance(nlb.config, NlbConfig)
        mark = hex(NLB_RETURN_MARK_BASE << index)
        for address, port in registered_targets(topology, nlb.config):
            for proto in nlb.config.protocols:
                rules.add("mangle", f"-A PREROUTING -s {address}/32 -p {proto} --sport {port} "
                                    f'-m comment --comment "reply from a target of {nlb.name}" '
                                    f"-j MARK --set-xmark {mark}/{mark}")


def nlb_return_routes(topology: Topology, router: Node) -> list[tuple[str, str, int]]:
    """(mark, NLB address next to the router, table) for each NLB reachable from the router."""
    routes = []
    for index, nlb in enumerate(topology.nodes_with_role("nlb")):
        link = topology.link_between(router.name, nlb.name)
        if link is not None:
            mark = hex(NLB_RETURN_MARK_BASE << index)
            routes.append((mark, str(link.peer(router.name).address.ip), NLB_RETURN_TABLE_BASE + index))
    return routes


def _pod_endpoint(topology: Topology, node: Node, pod_name: str) -> Endpoint:
    pod = topology.node(pod_name)
    port = pod.config.port if isinstance(pod.config, PodConfig) else 80
    return Endpoint(pod_name, str(topology.address(pod_name)), port, topology.link_between(node.name, pod_name)
                    is not None)


def pod_cidr(topology: Topology) -> str:
    """The smallest network holding every pod address (kube-proxy's --cluster-cidr)."""
    addresses = [topology.address(pod.name) for pod in topology.nodes_with_role("pod")]
    if not addresses:
        return "0.0.0.0/32"
    network = ipaddress.IPv4Network(f"{addresses[0]}/32")
    while not all(address in network for address in addresses):
        network = network.supernet()
    return str(network)


def k8s_node_rules(topology: Topology, node: Node, config: K8sNodeConfig, rules: Ruleset) -> None:
    if config.services:
        chains, base = kube_proxy.base_rules()
        rules.chain("nat", *chains)
        rules.add("nat", *base)
        cluster_cidr = pod_cidr(topology)
        for service in config.services:
            endpoints = [_pod_endpoint(topology, node, pod) for pod in service.endpoints]
            for proto in service.protocols:
                chains, service_rules = kube_proxy.service_rules(
                    service.name, proto, service.node_port, service.policy, endpoints, cluster_cidr)
                rules.chain("nat", *chains)
                rules.add("nat", *service_rules)
        rules.add("nat", kube_proxy.nodeports_jump())
    if config.dnat is not None:
        pod = _pod_endpoint(topology, node, config.dnat.to)
        for proto in config.dnat.protocols:
            rules.add("nat", f"-A PREROUTING -d {topology.address(node.name)}/32 -p {proto} --dport {config.dnat.port} "
                             f'-m comment --comment "hand-written: NodePort to {pod.pod}, no SNAT" '
                             f"-j DNAT --to-destination {pod.address}:{pod.port}")
    if config.connmark:
        primary = topology.links_of(node.name)[0].end(node.name).interface
        pod_interfaces = [link.end(node.name).interface for link in topology.links_of(node.name)
                          if topology.node(link.peer(node.name).node).role == "pod"]
        rules.add("mangle", f"-A PREROUTING -i {primary} -m addrtype --dst-type LOCAL --limit-iface-in "
                            f'-m comment --comment "connection came in on the primary interface" '
                            f"-j CONNMARK --set-xmark {CONNMARK_BIT}/{CONNMARK_BIT}")
        for interface in pod_interfaces:
            rules.add("mangle", f'-A PREROUTING -i {interface} -m comment --comment "reply leaves the way the '
                                f'connection came" -j CONNMARK --restore-mark --nfmask {CONNMARK_BIT} '
                                f"--ctmask {CONNMARK_BIT}")
