"""Read the Network Load Balancers of one region and the path their targets' replies take.

Every list call goes through a paginator; ``page_size`` only exists so tests
can force several pages on a small account.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import botocore.exceptions

from diag.aws.model import (
    NLB_TCP_IDLE_TIMEOUT_S,
    TCP_PROTOCOLS,
    Instance,
    Inventory,
    Listener,
    LoadBalancer,
    NatGateway,
    Route,
    RouteTable,
    Setting,
    Subnet,
    Target,
    TargetGroup,
    default_preserve_client_ip,
)
from diag.aws.session import AwsClients, is_access_denied, is_unsupported_operation, translate
from diag.errors import DiagError

# EC2 filters take at most 200 values; chunk longer id lists.
_FILTER_CHUNK = 200


def read_inventory(clients: AwsClients, lb: str | None = None, page_size: int | None = None) -> Inventory:
    """Every Network Load Balancer of the region (or only ``lb``, a name or ARN) and what surrounds it."""
    notes: list[str] = []
    paging: dict[str, Any] = {"PaginationConfig": {"PageSize": page_size}} if page_size else {}
    # EC2 list calls refuse pages smaller than 5.
    ec2_paging: dict[str, Any] = {"PaginationConfig": {"PageSize": max(page_size, 5)}} if page_size else {}
    balancers = list(_load_balancers(clients, lb, paging, notes))
    target_groups: dict[str, TargetGroup] = {}
    for balancer in balancers:
        for group in _target_groups(clients, balancer.arn, paging, notes):
            target_groups[group.arn] = group
    instance_ids = sorted(
        {t.id for g in target_groups.values() if g.target_type == "instance" for t in g.targets}
    )
    instances = _instances(clients, instance_ids, ec2_paging)
    vpc_ids = sorted({b.vpc_id for b in balancers} | {i.vpc_id for i in instances.values()} - {""})
    route_tables = _route_tables(clients, vpc_ids, ec2_paging)
    subnet_ids = sorted({i.subnet_id for i in instances.values()} | {s for b in balancers for s in b.subnet_ids})
    subnets = _subnets(clients, subnet_ids, route_tables, ec2_paging)
    nat_ids = sorted(
        {
            route.target
            for table in route_tables.values()
            for route in table.routes
            if route.kind == "nat-gateway"
        }
    )
    return Inventory(
        region=clients.region,
        load_balancers=tuple(balancers),
        target_groups=target_groups,
        instances=instances,
        subnets=subnets,
        route_tables=route_tables,
        nat_gateways=_nat_gateways(clients, nat_ids, ec2_paging),
        vpc_cidrs=_vpc_cidrs(clients, vpc_ids, ec2_paging),
        notes=tuple(dict.fromkeys(notes)),
    )


def _load_balancers(
    clients: AwsClients, lb: str | None, paging: dict[str, Any], notes: list[str]
) -> Iterator[LoadBalancer]:
    selector: dict[str, Any] = {}
    if lb:
        selector = {"LoadBalancerArns": [lb]} if lb.startswith("arn:") else {"Names": [lb]}
    paginator = clients.elbv2.get_paginator("describe_load_balancers")
    try:
        pages = list(paginator.paginate(**selector, **paging))
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if lb and code in ("LoadBalancerNotFound", "ValidationError"):
            raise DiagError(f"no load balancer {lb!r} in region {clients.region}") from error
        raise
    for page in pages:
        for raw in page.get("LoadBalancers", []):
            kind = raw.get("Type", "")
            if kind != "network":
                if lb:
                    raise DiagError(f"{lb!r} is an {kind} load balancer; diag aws check reads Network Load Balancers")
                continue
            arn = raw["LoadBalancerArn"]
            yield LoadBalancer(
                arn=arn,
                name=raw.get("LoadBalancerName", ""),
                type=kind,
                scheme=raw.get("Scheme", ""),
                vpc_id=raw.get("VpcId", ""),
                dns_name=raw.get("DNSName", ""),
                subnet_ids=tuple(z["SubnetId"] for z in raw.get("AvailabilityZones", []) if z.get("SubnetId")),
                listeners=tuple(_listeners(clients, arn, paging, notes)),
            )


def _listeners(clients: AwsClients, lb_arn: str, paging: dict[str, Any], notes: list[str]) -> Iterator[Listener]:
    paginator = clients.elbv2.get_paginator("describe_listeners")
    for page in paginator.paginate(LoadBalancerArn=lb_arn, **paging):
        for raw in page.get("Listeners", []):
            protocol = raw.get("Protocol", "")
            yield Listener(
                arn=raw["ListenerArn"],
                protocol=protocol,
                port=int(raw.get("Port", 0)),
                target_group_arns=_forwarded_groups(raw.get("DefaultActions", [])),
                idle_timeout_s=_listener_idle_timeout(clients, raw["ListenerArn"], protocol, notes),
            )


def _forwarded_groups(actions: Iterable[Any]) -> tuple[str, ...]:
    arns: list[str] = []
    for action in actions:
        if action.get("TargetGroupArn"):
            arns.append(action["TargetGroupArn"])
        for weighted in action.get("ForwardConfig", {}).get("TargetGroups", []):
            arns.append(weighted["TargetGroupArn"])
    return tuple(dict.fromkeys(arns))


def _listener_idle_timeout(clients: AwsClients, listener_arn: str, protocol: str, notes: list[str]) -> Setting:
    """The listener's TCP idle timeout: read where possible, else AWS's default (only an aside to the check)."""
    if protocol not in TCP_PROTOCOLS:
        return Setting(None, "default")
    if not hasattr(clients.elbv2, "describe_listener_attributes"):  # botocore older than the API
        return Setting(NLB_TCP_IDLE_TIMEOUT_S, "default")
    try:
        attributes = clients.elbv2.describe_listener_attributes(ListenerArn=listener_arn).get("Attributes", [])
    except botocore.exceptions.ClientError as error:
        # Listener attributes arrived in 2024: older API versions lack them, and read-only policies written
        # before then lack the permission. Neither is worth stopping the check for.
        if is_unsupported_operation(error):
            return Setting(NLB_TCP_IDLE_TIMEOUT_S, "default")
        if is_access_denied(error):
            notes.append(
                f"{translate(error)}; listener idle timeouts are assumed to be AWS's default "
                f"{NLB_TCP_IDLE_TIMEOUT_S} s"
            )
            return Setting(NLB_TCP_IDLE_TIMEOUT_S, "default")
        raise
    value = _attribute(attributes, "tcp.idle_timeout.seconds")
    if value is None:
        return Setting(NLB_TCP_IDLE_TIMEOUT_S, "default")
    return Setting(int(value), "api")


def _attribute(attributes: Iterable[Any], key: str) -> str | None:
    return next((a.get("Value") for a in attributes if a.get("Key") == key), None)


def _target_groups(clients: AwsClients, lb_arn: str, paging: dict[str, Any], notes: list[str]) -> Iterator[TargetGroup]:
    paginator = clients.elbv2.get_paginator("describe_target_groups")
    try:
        pages = list(paginator.paginate(LoadBalancerArn=lb_arn, **paging))
    except botocore.exceptions.ClientError as error:
        # Some API implementations answer "not found" rather than an empty list for a balancer without groups.
        if error.response.get("Error", {}).get("Code", "") == "TargetGroupNotFound":
            return
        raise
    for page in pages:
        for raw in page.get("TargetGroups", []):
            arn = raw["TargetGroupArn"]
            protocol = raw.get("Protocol", "")
            target_type = raw.get("TargetType", "instance")
            attributes = clients.elbv2.describe_target_group_attributes(TargetGroupArn=arn).get("Attributes", [])
            preserve = _attribute(attributes, "preserve_client_ip.enabled")
            if preserve is None:
                default = default_preserve_client_ip(target_type, protocol)
                preservation = Setting(default, "default")
                notes.append(
                    f"{raw.get('TargetGroupName', arn)}: preserve_client_ip.enabled not returned by the API; "
                    f"using AWS's documented default ({str(default).lower()} for {target_type} targets over {protocol})"
                )
            else:
                preservation = Setting(preserve.lower() == "true", "api")
            proxy = _attribute(attributes, "proxy_protocol_v2.enabled")
            proxy_v2 = Setting(proxy.lower() == "true", "api") if proxy is not None else Setting(False, "default")
            yield TargetGroup(
                arn=arn,
                name=raw.get("TargetGroupName", ""),
                protocol=protocol,
                port=int(raw.get("Port", 0) or 0),
                target_type=target_type,
                vpc_id=raw.get("VpcId", ""),
                preserve_client_ip=preservation,
                proxy_protocol_v2=proxy_v2,
                targets=tuple(_targets(clients, arn)),
            )


def _targets(clients: AwsClients, tg_arn: str) -> Iterator[Target]:
    # DescribeTargetHealth is not paginated: one call returns every target of the group.
    for raw in clients.elbv2.describe_target_health(TargetGroupArn=tg_arn).get("TargetHealthDescriptions", []):
        target = raw.get("Target", {})
        health = raw.get("TargetHealth", {})
        yield Target(
            id=target.get("Id", ""),
            port=int(target.get("Port", 0) or 0),
            availability_zone=target.get("AvailabilityZone", ""),
            health=health.get("State", ""),
            health_reason=health.get("Reason", ""),
        )


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _FILTER_CHUNK):
        yield ids[start : start + _FILTER_CHUNK]


def _instances(clients: AwsClients, ids: list[str], paging: dict[str, Any]) -> dict[str, Instance]:
    found: dict[str, Instance] = {}
    paginator = clients.ec2.get_paginator("describe_instances")
    for chunk in _chunks(ids):
        # A filter (not InstanceIds) so a target whose instance is gone is skipped, not an error.
        for page in paginator.paginate(Filters=[{"Name": "instance-id", "Values": chunk}], **paging):
            for reservation in page.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    found[raw["InstanceId"]] = Instance(
                        id=raw["InstanceId"],
                        vpc_id=raw.get("VpcId", ""),
                        subnet_id=raw.get("SubnetId", ""),
                        private_ip=raw.get("PrivateIpAddress", ""),
                        public_ip=raw.get("PublicIpAddress", ""),
                        source_dest_check=bool(raw.get("SourceDestCheck", True)),
                    )
    return found


def _route_kind(raw: Any) -> tuple[str, str]:
    gateway = raw.get("GatewayId", "")
    if raw.get("NatGatewayId"):
        return "nat-gateway", raw["NatGatewayId"]
    if gateway == "local":
        return "local", "local"
    if gateway.startswith("igw-"):
        return "internet-gateway", gateway
    if gateway.startswith("vpce-"):
        return "vpc-endpoint", gateway
    if raw.get("EgressOnlyInternetGatewayId"):
        return "egress-only-igw", raw["EgressOnlyInternetGatewayId"]
    if raw.get("TransitGatewayId"):
        return "transit-gateway", raw["TransitGatewayId"]
    if raw.get("VpcPeeringConnectionId"):
        return "vpc-peering", raw["VpcPeeringConnectionId"]
    if raw.get("InstanceId"):
        return "instance", raw["InstanceId"]
    if raw.get("NetworkInterfaceId"):
        return "network-interface", raw["NetworkInterfaceId"]
    return "other", gateway or raw.get("CarrierGatewayId", "") or raw.get("LocalGatewayId", "")


def _route_tables(clients: AwsClients, vpc_ids: list[str], paging: dict[str, Any]) -> dict[str, RouteTable]:
    tables: dict[str, RouteTable] = {}
    if not vpc_ids:
        return tables
    paginator = clients.ec2.get_paginator("describe_route_tables")
    for chunk in _chunks(vpc_ids):
        for page in paginator.paginate(Filters=[{"Name": "vpc-id", "Values": chunk}], **paging):
            for raw in page.get("RouteTables", []):
                routes = []
                for route in raw.get("Routes", []):
                    kind, target = _route_kind(route)
                    destination = (
                        route.get("DestinationCidrBlock")
                        or route.get("DestinationIpv6CidrBlock")
                        or route.get("DestinationPrefixListId", "")
                    )
                    routes.append(Route(destination, kind, target, route.get("State", "active")))
                tables[raw["RouteTableId"]] = RouteTable(
                    id=raw["RouteTableId"],
                    vpc_id=raw.get("VpcId", ""),
                    main=any(a.get("Main") for a in raw.get("Associations", [])),
                    subnet_ids=tuple(a["SubnetId"] for a in raw.get("Associations", []) if a.get("SubnetId")),
                    routes=tuple(routes),
                )
    return tables


def _subnets(
    clients: AwsClients, ids: list[str], tables: dict[str, RouteTable], paging: dict[str, Any]
) -> dict[str, Subnet]:
    found: dict[str, Subnet] = {}
    if not ids:
        return found
    main_by_vpc = {table.vpc_id: table.id for table in tables.values() if table.main}
    explicit = {subnet_id: table.id for table in tables.values() for subnet_id in table.subnet_ids}
    paginator = clients.ec2.get_paginator("describe_subnets")
    for chunk in _chunks(ids):
        for page in paginator.paginate(Filters=[{"Name": "subnet-id", "Values": chunk}], **paging):
            for raw in page.get("Subnets", []):
                subnet_id = raw["SubnetId"]
                vpc_id = raw.get("VpcId", "")
                table_id = explicit.get(subnet_id) or main_by_vpc.get(vpc_id, "")
                found[subnet_id] = Subnet(
                    id=subnet_id,
                    vpc_id=vpc_id,
                    cidr=raw.get("CidrBlock", ""),
                    availability_zone=raw.get("AvailabilityZone", ""),
                    route_table_id=table_id,
                    explicit_association=subnet_id in explicit,
                )
    return found


def _nat_gateways(clients: AwsClients, ids: list[str], paging: dict[str, Any]) -> dict[str, NatGateway]:
    found: dict[str, NatGateway] = {}
    paginator = clients.ec2.get_paginator("describe_nat_gateways")
    for chunk in _chunks(ids):
        # The API's parameter is "Filter" (singular); some type stubs spell it otherwise.
        selector: dict[str, Any] = {"Filter": [{"Name": "nat-gateway-id", "Values": chunk}]}
        for page in paginator.paginate(**selector, **paging):
            for raw in page.get("NatGateways", []):
                addresses = raw.get("NatGatewayAddresses", [])
                found[raw["NatGatewayId"]] = NatGateway(
                    id=raw["NatGatewayId"],
                    vpc_id=raw.get("VpcId", ""),
                    subnet_id=raw.get("SubnetId", ""),
                    state=raw.get("State", ""),
                    connectivity=raw.get("ConnectivityType", "public"),
                    private_ips=tuple(a["PrivateIp"] for a in addresses if a.get("PrivateIp")),
                    public_ips=tuple(a["PublicIp"] for a in addresses if a.get("PublicIp")),
                    network_interfaces=tuple(
                        a["NetworkInterfaceId"] for a in addresses if a.get("NetworkInterfaceId")
                    ),
                )
    return found


def _vpc_cidrs(clients: AwsClients, vpc_ids: list[str], paging: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    paginator = clients.ec2.get_paginator("describe_vpcs")
    for chunk in _chunks(vpc_ids):
        for page in paginator.paginate(Filters=[{"Name": "vpc-id", "Values": chunk}], **paging):
            for raw in page.get("Vpcs", []):
                blocks = [b["CidrBlock"] for b in raw.get("CidrBlockAssociationSet", []) if b.get("CidrBlock")]
                found[raw["VpcId"]] = tuple(blocks or [raw.get("CidrBlock", "")])
    return found
