"""Judge an account's setup: where can a target's reply miss the load balancer and meet a NAT gateway?

Pure functions over ``Inventory`` values; each returns ``diag.report.Finding``
objects in the same vocabulary as the packet analysis.

The reasoning. With client IP preservation, a Network Load Balancer delivers
the client's own address to the target. The target's reply goes back through
the load balancer only if it leaves through the very target that received the
request: the VPC returns it to the NLB by matching that target's address. A
reply sent from anywhere else (a node that got the connection forwarded to its
pod by another node without SNAT, a pod address on a secondary ENI) is an
ordinary packet to an internet address and takes the subnet's default route.
When that route is a NAT gateway, the gateway has no state for the flow and
answers the SYN-ACK with a RST that carries the client's address.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from diag.aws.model import (
    PRESERVATION_FIXED_PROTOCOLS,
    Inventory,
    Listener,
    LoadBalancer,
    Route,
    TargetGroup,
)
from diag.diagnose.causes import spec_of
from diag.report import Cause, Finding, RuledOut

# Certainty that the setup resets some connections, from configuration alone.
# Whether any reply actually leaves through another node depends on the
# cluster's forwarding, which the AWS API cannot show.
CONFIDENCE_INTERNET_FACING = 0.8
# Internal NLB: clients inside the VPC are answered over the local route; only
# clients reached through the default route (on-premises, peered without a
# more specific route) are exposed.
CONFIDENCE_INTERNAL = 0.5

NAT_GATEWAY_NOTE = (
    "resets forged by a NAT gateway do not show in the load balancer's reset counters "
    "(TCP_Client_Reset_Count, TCP_ELB_Reset_Count, TCP_Target_Reset_Count): the RST never passes the NLB"
)


@dataclass(frozen=True)
class ExposedPath:
    """One (listener, target group, NAT gateway) combination where replies can meet the NAT gateway."""

    balancer: LoadBalancer
    listener: Listener
    group: TargetGroup
    nat_gateway_id: str
    subnet_ids: tuple[str, ...]
    route_table_ids: tuple[str, ...]
    instance_ids: tuple[str, ...]


def check(inventory: Inventory) -> list[Finding]:
    """Every finding for the inventory, most certain first; an empty list for a healthy setup."""
    findings = [asymmetric_return_finding(path, inventory) for path in exposed_paths(inventory)]
    return sorted(findings, key=lambda f: -f.confidence)


def exposed_paths(inventory: Inventory) -> Iterator[ExposedPath]:
    """Listener/target-group pairs whose instance targets sit behind a NAT-gateway default route."""
    for balancer in inventory.load_balancers:
        for listener in balancer.listeners:
            for group_arn in listener.target_group_arns:
                group = inventory.target_groups.get(group_arn)
                if group is None or group.target_type != "instance" or not group.preserve_client_ip.value:
                    continue
                by_nat: dict[str, list[tuple[str, str, str]]] = {}
                for target in group.targets:
                    instance = inventory.instances.get(target.id)
                    if instance is None:
                        continue
                    route = inventory.default_route_of(instance.subnet_id)
                    if not _is_nat_gateway(route):
                        continue
                    assert route is not None
                    table = inventory.route_table_of(instance.subnet_id)
                    by_nat.setdefault(route.target, []).append(
                        (instance.subnet_id, table.id if table else "", instance.id)
                    )
                for nat_id, places in sorted(by_nat.items()):
                    yield ExposedPath(
                        balancer=balancer,
                        listener=listener,
                        group=group,
                        nat_gateway_id=nat_id,
                        subnet_ids=tuple(sorted({p[0] for p in places})),
                        route_table_ids=tuple(sorted({p[1] for p in places})),
                        instance_ids=tuple(sorted({p[2] for p in places})),
                    )


def _is_nat_gateway(route: Route | None) -> bool:
    return route is not None and route.kind == "nat-gateway" and route.state != "blackhole"


def asymmetric_return_finding(path: ExposedPath, inventory: Inventory) -> Finding:
    balancer, listener, group = path.balancer, path.listener, path.group
    internet_facing = balancer.scheme == "internet-facing"
    confidence = CONFIDENCE_INTERNET_FACING if internet_facing else CONFIDENCE_INTERNAL
    nat = inventory.nat_gateways.get(path.nat_gateway_id)
    preserved = "on" if group.preserve_client_ip.source == "api" else "on (AWS default: attribute not returned)"
    evidence = [
        f"load balancer {balancer.name} ({balancer.scheme}): {balancer.arn}",
        f"listener {listener.protocol}:{listener.port} forwards to target group {group.name} "
        f"({group.protocol}, {group.target_type} targets): {group.arn}",
        f"client IP preservation {preserved}: targets receive the client's own address as source",
        f"targets {', '.join(path.instance_ids)} are in subnet(s) {', '.join(path.subnet_ids)}, "
        f"route table(s) {', '.join(path.route_table_ids)}, whose default route 0.0.0.0/0 is "
        f"NAT gateway {path.nat_gateway_id}" + (f" ({nat.state}, in {nat.subnet_id})" if nat else ""),
        "a reply that does not leave through the target that received the request (cross-node "
        "forwarding without SNAT, pod addresses on secondary ENIs) goes to that NAT gateway, which "
        "has no state for the flow and resets it with the client's address as source",
    ]
    if group.proxy_protocol_v2.value:
        evidence.append(
            "proxy protocol v2 is on; it only adds a header inside the connection and changes nothing "
            "about the packets' addresses or return path"
        )
    for subnet_id in path.subnet_ids:
        subnet = inventory.subnets.get(subnet_id)
        if subnet is not None and not subnet.explicit_association:
            evidence.append(f"subnet {subnet_id} has no route table association: the VPC's main table applies")
    if not internet_facing:
        evidence.append(
            "the load balancer is internal: only clients reached through the default route are exposed; "
            "clients inside the VPC are answered over the local route"
        )
    evidence.append(NAT_GATEWAY_NOTE)
    proto = "udp" if listener.protocol == "UDP" else "tcp"
    summary = (
        f"{balancer.name} {listener.protocol}:{listener.port}: replies from targets in "
        f"{', '.join(path.subnet_ids)} that do not return through the receiving target are reset by "
        f"NAT gateway {path.nat_gateway_id}, posing as the client"
    )
    spec = spec_of(Cause.ASYMMETRIC_RETURN)
    return Finding.of(
        spec,
        confidence=confidence,
        proto=proto,
        client="*",
        server=f"{balancer.dns_name or balancer.name}:{listener.port}",
        packet=None,
        claimed_src=None,
        origin=path.nat_gateway_id,
        summary=summary,
        evidence=tuple(evidence),
        ruled_out=tuple(_ruled_out(path)),
        fixes=tuple(fixes_for(group, listener)),
    )


def _ruled_out(path: ExposedPath) -> Iterator[RuledOut]:
    unhealthy = [t.id for t in path.group.targets if t.health not in ("healthy", "")]
    if not unhealthy and path.group.targets:
        yield RuledOut(
            Cause.PORT_CLOSED,
            f"every target of {path.group.name} passes the load balancer's health check, so the service listens",
        )


def fixes_for(group: TargetGroup, listener: Listener) -> list[str]:
    """The fixes, each with its trade-off, and whether this target group's protocol allows it."""
    fixes: list[str] = []
    if group.protocol in PRESERVATION_FIXED_PROTOCOLS:
        fixes.append(
            f"turning client IP preservation off is not possible here: AWS rejects "
            f"preserve_client_ip.enabled=false on a {group.protocol} target group"
        )
    else:
        fixes.append(
            f"turn client IP preservation off on {group.name} (preserve_client_ip.enabled=false): replies then "
            "return to the NLB's own address; enable proxy_protocol_v2 if the application needs the client "
            "address (it must then parse the header)"
        )
    fixes.extend(
        [
            "Kubernetes externalTrafficPolicy: Local on the Service: a node only delivers to its own pods, so the "
            "reply leaves through the node that received the request and keeps the client address; needs a ready "
            "endpoint on every node the NLB sends to (the health-check node port takes nodes without one out)",
            "register pods as ip targets (target type ip): the NLB sends straight to the pod, whose reply returns "
            f"through the NLB; needs pod addresses routable in the VPC (VPC CNI) and {listener.protocol} support "
            "for ip targets in the region",
            "SNAT on the forwarding node (externalTrafficPolicy: Cluster with masquerading): the reply returns "
            "through the receiving node, but the pod sees the node's address instead of the client's",
            "CONNMARK return routing on the nodes: mark connections that arrive from the NLB and policy-route "
            "their replies back through the receiving node; keeps the client address, more to operate",
        ]
    )
    return fixes


def checked_paths(inventory: Inventory) -> list[str]:
    """One line per listener and target group: what was checked and why it is (or is not) exposed."""
    lines = []
    for balancer in inventory.load_balancers:
        if not balancer.listeners:
            lines.append(f"{balancer.name}: no listeners")
        for listener in balancer.listeners:
            for group_arn in listener.target_group_arns or ("",):
                group = inventory.target_groups.get(group_arn)
                head = f"{balancer.name} {listener.protocol}:{listener.port}"
                if group is None:
                    lines.append(f"{head}: forwards to no target group diag could read")
                    continue
                lines.append(f"{head} -> {group.name}: {_path_verdict(group, inventory)}")
    return lines


def _path_verdict(group: TargetGroup, inventory: Inventory) -> str:
    if group.target_type != "instance":
        return (
            f"{group.target_type} targets: the NLB sends to the target address itself, so the reply leaves "
            "from the address the NLB expects"
        )
    if not group.preserve_client_ip.value:
        return "client IP preservation off: replies go to the NLB's own address, never to the default route"
    routes = set()
    for target in group.targets:
        instance = inventory.instances.get(target.id)
        if instance is None:
            continue
        route = inventory.default_route_of(instance.subnet_id)
        routes.add(f"{route.kind} {route.target}" if route else "no default route")
    if not routes:
        return "no target instance found"
    verdict = "exposed" if any(r.startswith("nat-gateway") for r in routes) else "not exposed"
    return f"{verdict}: client IP preserved; the targets' default route: {', '.join(sorted(routes))}"
