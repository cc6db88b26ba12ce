"""An account's load balancer, subnets and NAT gateway as a lab topology (the TOML ``diag lab up`` reads).

The lab has one shape: client, internet, NLB, VPC router, NAT gateway, nodes
and pods. The export fills it from the account: the listener's protocol and
port, the target group's type, port and client IP preservation, one lab node
per registered target, and the route table each node's subnet uses. Addresses
are the lab's own plan (documentation and benchmark ranges), never the
account's; comments map every lab node to the AWS resource it stands for.

What AWS cannot tell (how the nodes forward to pods) is a choice, ``forwarding``:
``dnat`` (default) is the failure mode the check warns about, each node DNATs
its NodePort to the pod on the next node without SNAT; ``cluster`` and
``local`` are kube-proxy with that externalTrafficPolicy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from diag.aws.findings import exposed_paths
from diag.aws.model import Inventory, Listener, LoadBalancer, TargetGroup
from diag.errors import DiagError
from diag.lab.addressing import EDGE_LINKS, links_toml, node_link

FORWARDING = ("dnat", "cluster", "local")
MAX_NODES = 16  # a lab beyond this takes long to build and says nothing more about the return path
LAB_PROTOCOLS = {"TCP": "TCP", "UDP": "UDP", "TCP_UDP": "TCP_UDP", "TLS": "TCP"}
POD_PORT = 80  # the container port is Kubernetes' business; AWS does not know it


@dataclass(frozen=True)
class LabNode:
    name: str
    aws: str  # the resource it stands for, for the comment
    default_route: str  # 'nat-gateway', 'internet-gateway', ... or 'none'
    route_target: str


def choose_path(inventory: Inventory) -> tuple[LoadBalancer, Listener, TargetGroup]:
    """The listener to export: the first one exposed to a NAT gateway, else the first the lab can model."""
    for path in exposed_paths(inventory):
        return path.balancer, path.listener, path.group
    for balancer in inventory.load_balancers:
        for listener in balancer.listeners:
            if listener.protocol not in LAB_PROTOCOLS:
                continue
            for arn in listener.target_group_arns:
                group = inventory.target_groups.get(arn)
                if group is not None and group.target_type in ("instance", "ip") and group.targets:
                    return balancer, listener, group
    raise DiagError("no Network Load Balancer listener with instance or ip targets to export")


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug[:40] or "account"


def _node_name(index: int, prefix: str) -> str:
    return f"{prefix}-{chr(ord('a') + index)}" if index < 26 else f"{prefix}-{index:02d}"


def _toml_list(names: list[str]) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def _lab_nodes(inventory: Inventory, group: TargetGroup, notes: list[str]) -> list[LabNode]:
    nodes: list[LabNode] = []
    targets = list(group.targets)
    if len(targets) > MAX_NODES:
        notes.append(f"{len(targets)} targets registered; the lab gets the first {MAX_NODES}")
        targets = targets[:MAX_NODES]
    for index, target in enumerate(targets):
        name = _node_name(index, "node")
        if group.target_type == "instance":
            instance = inventory.instances.get(target.id)
            route = inventory.default_route_of(instance.subnet_id) if instance else None
            aws = (
                f"{target.id} ({instance.private_ip}, {instance.subnet_id})" if instance else f"{target.id} (not found)"
            )
        else:
            # An ip target's host instance is not read; each address gets a node of its own, in the
            # subnet that holds it when that subnet is known.
            route = None
            aws = f"ip target {target.id} (its host is not read: one lab node per address)"
        nodes.append(LabNode(name, aws, route.kind if route else "none", route.target if route else ""))
    return nodes


def export_topology(
    inventory: Inventory, lb: str | None = None, forwarding: str = "dnat"
) -> tuple[str, list[str]]:
    """The TOML text and notes on what the lab does not reproduce."""
    if forwarding not in FORWARDING:
        raise DiagError(f"forwarding {forwarding!r}: one of {', '.join(FORWARDING)}")
    notes: list[str] = []
    balancer, listener, group = choose_path(inventory)
    others = [b.name for b in inventory.load_balancers if b.arn != balancer.arn]
    if others and not lb:
        notes.append(f"exported {balancer.name}; also in the region: {', '.join(others)} (choose with --lb)")
    if len(balancer.listeners) > 1:
        notes.append(f"exported listener {listener.protocol}:{listener.port} of {len(balancer.listeners)}")
    protocol = LAB_PROTOCOLS.get(listener.protocol)
    if protocol is None:
        raise DiagError(f"listener protocol {listener.protocol} has no lab equivalent (TCP, UDP, TCP_UDP, TLS)")
    if listener.protocol == "TLS":
        notes.append("TLS listener exported as TCP: the lab does not terminate TLS")
    nodes = _lab_nodes(inventory, group, notes)
    if group.target_type == "instance" and not any(inventory.instances.get(t.id) for t in group.targets):
        notes.append("no target instance could be read: the nodes' route tables are unknown")
    unmodelled = sorted({n.default_route for n in nodes} - {"nat-gateway"})
    if unmodelled:
        notes.append(
            f"nodes whose default route is {', '.join(unmodelled)}: the lab models only the NAT gateway path; "
            "their replies that miss the NLB have no route in the lab and are dropped"
        )
    pods = [_node_name(index, "pod") for index in range(len(nodes))]
    idle = listener.idle_timeout_s.value if isinstance(listener.idle_timeout_s.value, int) else 350
    natted = [n.name for n in nodes if n.default_route == "nat-gateway"]
    nat_ids = sorted({n.route_target for n in nodes if n.default_route == "nat-gateway"})
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = f"aws-{_slug(balancer.name)}"
    description = (
        f"{balancer.name} {listener.protocol}:{listener.port}, {group.target_type} targets, client IP preservation "
        f"{'on' if group.preserve_client_ip.value else 'off'}, exported from {inventory.region}"
    )
    out = [
        f"# Exported by `diag aws export-lab` from {inventory.region} on {stamp}.",
        f"# Load balancer {balancer.arn}",
        f"# Listener {listener.arn}",
        f"# Target group {group.arn}",
        "# Addresses are the lab's own plan; the comments name the AWS resource behind each node.",
        f"# Node forwarding ({forwarding}) is not in the AWS API: "
        + {
            "dnat": "each node DNATs its NodePort to the pod on the next node without SNAT (the risky case).",
            "cluster": "kube-proxy, externalTrafficPolicy Cluster (masquerades forwarded connections).",
            "local": "kube-proxy, externalTrafficPolicy Local (each node serves only its own pod).",
        }[forwarding],
        f'name = "{name}"',
        f'description = "{description}"',
        "",
        '[[nodes]]\nname = "client"\nrole = "client"\nroutes = { default = "internet" }\n',
        '[[nodes]]\nname = "internet"\nrole = "internet"\n',
        f"# {balancer.name} ({balancer.scheme})",
        '[[nodes]]\nname = "nlb"\nrole = "nlb"',
        f'listener = {{ protocol = "{protocol}", port = {listener.port} }}',
        f'target_group = {{ type = "{group.target_type}", port = {group.port}, '
        f"targets = {_toml_list([n.name for n in nodes] if group.target_type == 'instance' else pods)}, "
        f"preserve_client_ip = {str(bool(group.preserve_client_ip.value)).lower()} }}",
        f"idle_timeout = {idle}",
        'routes = { default = "internet", "198.18.0.0/15" = "vpc-router" }\n',
        "# The VPC's routing: pod networks behind their nodes; the nodes' subnets' route table after.",
        '[[nodes]]\nname = "vpc-router"\nrole = "vpc-router"',
        "routes = { " + ", ".join(f'"198.19.{i}.0/24" = "{n.name}"' for i, n in enumerate(nodes, start=1)) + " }",
    ]
    if natted:
        out.append(f"# default route 0.0.0.0/0 -> {', '.join(nat_ids)}")
        out.append(f'tables.private = {{ iif = {_toml_list(natted)}, routes = {{ default = "natgw" }} }}')
    out += [
        "",
        "# " + (", ".join(nat_ids) or "no NAT gateway on the targets' default route"),
        '[[nodes]]\nname = "natgw"\nrole = "natgw"\npublic = "internet"',
        'routes = { default = "internet", "198.18.0.0/15" = "vpc-router" }\n',
    ]
    for index, node in enumerate(nodes):
        route_text = f"{node.default_route} {node.route_target}".strip()
        out += [
            f"# {node.aws}; default route: {route_text}",
            f'[[nodes]]\nname = "{node.name}"\nrole = "k8s-node"\nroutes = {{ default = "vpc-router" }}',
        ]
        if group.target_type == "instance":
            out += _forwarding_lines(forwarding, index, pods, group.port, protocol)
        out.append("")
    for index, pod in enumerate(pods):
        port = group.port if group.target_type == "ip" else POD_PORT
        host = nodes[index].name
        out.append(f'[[nodes]]\nname = "{pod}"\nrole = "pod"\nport = {port}\nroutes = {{ default = "{host}" }}\n')
    links = list(EDGE_LINKS)
    for index, node in enumerate(nodes, start=1):
        links.append(node_link(index, node.name))
        links.append((pods[index - 1], f"198.19.{index}.10/24", node.name, f"198.19.{index}.1/24"))
    out += links_toml(links)
    text = "\n".join(out)
    _validate(text)
    return text, notes


def _forwarding_lines(forwarding: str, index: int, pods: list[str], node_port: int, protocol: str) -> list[str]:
    protocols = {"TCP": ["tcp"], "UDP": ["udp"], "TCP_UDP": ["tcp", "udp"]}[protocol]
    if forwarding == "dnat":
        target = pods[(index + 1) % len(pods)]
        return [f'dnat = {{ port = {node_port}, to = "{target}", protocols = {_toml_list(protocols)} }}']
    endpoints = pods if forwarding == "cluster" else [pods[index]]
    policy = "Cluster" if forwarding == "cluster" else "Local"
    return [
        "[[nodes.services]]",
        f'name = "default/exported"\nnode_port = {node_port}\nprotocols = {_toml_list(protocols)}\n'
        f'policy = "{policy}"\nendpoints = {_toml_list(endpoints)}',
    ]


def _validate(text: str) -> None:
    """The lab's own loader must accept what we write; a refusal is a bug here, said plainly."""
    from diag.lab import parse_topology

    try:
        parse_topology(text, origin="exported topology")
    except DiagError as error:
        raise DiagError(f"the exported topology does not load in the lab ({error}); please report this") from error
