"""The account's load-balancing setup as plain values: what ``inventory`` reads, what ``findings`` judges.

Nothing here talks to AWS, so findings and the lab export can be tested and
reasoned about on hand-built values too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Documented defaults, used where the API does not return the attribute.
NLB_TCP_IDLE_TIMEOUT_S = 350  # listener tcp.idle_timeout.seconds
NLB_UDP_IDLE_TIMEOUT_S = 120  # fixed for UDP flows
NAT_GATEWAY_IDLE_TIMEOUT_S = 350  # fixed, not configurable

TCP_PROTOCOLS = frozenset({"TCP", "TLS", "TCP_UDP"})
# Target-group protocols on which AWS rejects preserve_client_ip.enabled=false.
PRESERVATION_FIXED_PROTOCOLS = frozenset({"UDP", "TCP_UDP"})


def default_preserve_client_ip(target_type: str, protocol: str) -> bool:
    """AWS's documented default for ``preserve_client_ip.enabled``.

    On for instance targets and for UDP/TCP_UDP target groups; off for ip
    targets with TCP or TLS. (Lambda and ALB targets have no such setting;
    they never see the client address at the IP layer.)
    """
    if target_type == "instance":
        return True
    if target_type == "ip":
        return protocol in PRESERVATION_FIXED_PROTOCOLS
    return False


@dataclass(frozen=True)
class Setting:
    """A value with where it came from: ``api`` (read) or ``default`` (documented default, attribute absent)."""

    value: int | bool | None
    source: str


@dataclass(frozen=True)
class Listener:
    arn: str
    protocol: str
    port: int
    target_group_arns: tuple[str, ...]
    idle_timeout_s: Setting  # TCP idle timeout; value None for UDP-only listeners


@dataclass(frozen=True)
class Target:
    id: str  # instance id, IP address, or ARN
    port: int
    availability_zone: str
    health: str  # healthy, unhealthy, initial, unused, draining, unavailable, or '' when unknown
    health_reason: str


@dataclass(frozen=True)
class TargetGroup:
    arn: str
    name: str
    protocol: str
    port: int
    target_type: str  # instance, ip, lambda, alb
    vpc_id: str
    preserve_client_ip: Setting
    proxy_protocol_v2: Setting
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Route:
    destination: str  # CIDR (IPv4 or IPv6) or prefix-list id
    # local, nat-gateway, internet-gateway, egress-only-igw, instance, network-interface,
    # transit-gateway, vpc-peering, vpc-endpoint, other
    kind: str
    target: str  # the target's id ('local' for the VPC route)
    state: str  # active or blackhole


@dataclass(frozen=True)
class RouteTable:
    id: str
    vpc_id: str
    main: bool
    routes: tuple[Route, ...]
    subnet_ids: tuple[str, ...] = ()  # explicitly associated subnets

    def default_route(self) -> Route | None:
        """The IPv4 default route, the one a reply to an internet client address takes."""
        return next((route for route in self.routes if route.destination == "0.0.0.0/0"), None)


@dataclass(frozen=True)
class Subnet:
    id: str
    vpc_id: str
    cidr: str
    availability_zone: str
    route_table_id: str  # the table in effect: explicit association, else the VPC's main table
    explicit_association: bool


@dataclass(frozen=True)
class Instance:
    id: str
    vpc_id: str
    subnet_id: str
    private_ip: str
    public_ip: str
    source_dest_check: bool


@dataclass(frozen=True)
class NatGateway:
    id: str
    vpc_id: str
    subnet_id: str
    state: str
    connectivity: str  # public or private
    private_ips: tuple[str, ...]
    public_ips: tuple[str, ...]
    network_interfaces: tuple[str, ...]


@dataclass(frozen=True)
class LoadBalancer:
    arn: str
    name: str
    type: str  # network, application, gateway
    scheme: str  # internet-facing or internal
    vpc_id: str
    dns_name: str
    subnet_ids: tuple[str, ...]
    listeners: tuple[Listener, ...]

    @property
    def dimension(self) -> str:
        """CloudWatch's LoadBalancer dimension: the ARN's resource part after ``loadbalancer/`` (``net/name/id``)."""
        return self.arn.split(":loadbalancer/", 1)[-1]


@dataclass(frozen=True)
class Inventory:
    """One region's Network Load Balancers and everything a reply from their targets passes through."""

    region: str
    load_balancers: tuple[LoadBalancer, ...]
    target_groups: dict[str, TargetGroup] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    subnets: dict[str, Subnet] = field(default_factory=dict)
    route_tables: dict[str, RouteTable] = field(default_factory=dict)
    nat_gateways: dict[str, NatGateway] = field(default_factory=dict)
    vpc_cidrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what could not be read, and which defaults stood in

    def route_table_of(self, subnet_id: str) -> RouteTable | None:
        subnet = self.subnets.get(subnet_id)
        return self.route_tables.get(subnet.route_table_id) if subnet else None

    def default_route_of(self, subnet_id: str) -> Route | None:
        table = self.route_table_of(subnet_id)
        return table.default_route() if table else None
