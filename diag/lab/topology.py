"""Topologies as data: load a TOML file into validated, immutable objects.

A topology names its nodes (each with a role and the role's settings), the
point-to-point links between them (one address per end) and each node's
routes. Everything a role needs to compile into kernel state is checked here,
so a mistake is reported with the file, the key and the problem before any
namespace exists; so are routes that loop (``find_routing_loop``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from diag.datafiles import find_lab_file, lab_file_names
from diag.errors import LabError
from diag.lab import grammar

ROLES = ("client", "internet", "nlb", "vpc-router", "natgw", "k8s-node", "pod")
# Roles whose namespace forwards packets (ip_forward=1); the others are hosts.
ROUTER_ROLES = frozenset({"internet", "nlb", "vpc-router", "natgw", "k8s-node"})
LISTENER_PROTOCOLS = ("TCP", "UDP", "TCP_UDP")
# What a client sees when it talks to the service (the `expect` table of a topology).
TCP_OUTCOMES = ("connected", "timeout", "reset")
UDP_OUTCOMES = ("answered", "re-sourced", "refused", "timeout")
POD_BEHAVIOURS = ("normal", "no-listener", "abort", "slow")
IFNAME_MAX = 15  # IFNAMSIZ - 1
OVERLAY_TYPES = ("vxlan",)
VNI_MAX = 2**24 - 1
MAX_DELAY = 3600.0  # seconds a "slow" pod may wait before answering


@dataclass(frozen=True)
class LinkEnd:
    node: str
    interface: str  # name inside the node's namespace, after the peer (eth-<peer>)
    address: IPv4Interface


@dataclass(frozen=True)
class Link:
    a: LinkEnd
    b: LinkEnd

    def end(self, node: str) -> LinkEnd:
        return self.a if self.a.node == node else self.b

    def peer(self, node: str) -> LinkEnd:
        return self.b if self.a.node == node else self.a


@dataclass(frozen=True)
class Route:
    destination: str  # "default" or a CIDR
    gateway: IPv4Address


@dataclass(frozen=True)
class RouteTable:
    """A policy-routing table: packets entering by ``iif`` or sourced from ``sources`` use ``routes``."""

    name: str
    number: int
    routes: tuple[Route, ...]
    iif: tuple[str, ...]  # interface names
    sources: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class TargetGroup:
    target_type: str  # "instance" (node address + port) or "ip" (pod address + port)
    port: int
    targets: tuple[str, ...]  # node names
    preserve_client_ip: bool


@dataclass(frozen=True)
class NlbConfig:
    protocol: str  # TCP, UDP or TCP_UDP
    address: IPv4Address
    port: int
    target_group: TargetGroup
    idle_timeout: int  # seconds, TCP flows

    @property
    def protocols(self) -> tuple[str, ...]:
        return {"TCP": ("tcp",), "UDP": ("udp",), "TCP_UDP": ("tcp", "udp")}[self.protocol]


@dataclass(frozen=True)
class NatGwConfig:
    public_interface: str
    public_address: IPv4Address
    idle_timeout: int


@dataclass(frozen=True)
class KubeService:
    """A NodePort Service as kube-proxy (iptables mode) programs it."""

    name: str
    node_port: int
    protocols: tuple[str, ...]
    policy: str  # externalTrafficPolicy: Cluster or Local
    endpoints: tuple[str, ...]  # pod node names


@dataclass(frozen=True)
class HandwrittenDnat:
    """The incident's rule: DNAT the NodePort straight to a pod, TCP and UDP, no SNAT."""

    port: int
    to: str  # pod node name
    protocols: tuple[str, ...]


@dataclass(frozen=True)
class K8sNodeConfig:
    services: tuple[KubeService, ...]
    dnat: HandwrittenDnat | None
    connmark: bool  # return replies of NodePort connections by the interface they came in on


@dataclass(frozen=True)
class PodConfig:
    port: int
    behaviour: str
    delay: float  # seconds, for the "slow" behaviour


RoleConfig = NlbConfig | NatGwConfig | K8sNodeConfig | PodConfig | None


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    config: RoleConfig
    routes: tuple[Route, ...]
    tables: tuple[RouteTable, ...]
    sysctls: Mapping[str, str]
    strict_rp_interfaces: tuple[str, ...]  # interfaces with strict reverse-path filtering


@dataclass(frozen=True)
class OverlayMember:
    """One k8s node's end of the overlay (a VTEP in VXLAN's words)."""

    node: str
    underlay: LinkEnd  # the outer packets leave from this interface and address
    pod_networks: tuple[IPv4Network, ...]  # the subnets of the node's links to its pods


@dataclass(frozen=True)
class Overlay:
    """Pod networks joined through a tunnel between the k8s nodes, as Flannel's VXLAN backend does."""

    kind: str  # "vxlan"
    vni: int
    port: int  # outer UDP destination port
    device: str  # the tunnel device inside each member node
    members: tuple[OverlayMember, ...]

    def member(self, node: str) -> OverlayMember | None:
        for member in self.members:
            if member.node == node:
                return member
        return None


@dataclass(frozen=True)
class Topology:
    name: str
    description: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    expect: Mapping[str, str] = field(default_factory=dict)  # proto -> outcome through the service
    overlay: Overlay | None = None
    source: str = field(repr=False, default="")  # the TOML text, so another process can rebuild it

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"topology {self.name}: no node named {name!r} (nodes: {', '.join(self.node_names)})")

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)

    @functools.cached_property
    def _links_by_node(self) -> dict[str, list[Link]]:
        index: dict[str, list[Link]] = {}
        for link in self.links:
            index.setdefault(link.a.node, []).append(link)
            index.setdefault(link.b.node, []).append(link)
        return index

    def links_of(self, node: str) -> list[Link]:
        return list(self._links_by_node.get(node, ()))

    def interfaces(self, node: str) -> list[str]:
        return [link.end(node).interface for link in self.links_of(node)]

    def address(self, node: str) -> IPv4Address:
        """The node's primary address: the one on its first link."""
        links = self.links_of(node)
        if not links:
            raise LabError(f"topology {self.name}: node {node!r} has no links, hence no address")
        return links[0].end(node).address.ip

    def link_between(self, node: str, peer: str) -> Link | None:
        for link in self.links_of(node):
            if link.peer(node).node == peer:
                return link
        return None

    def nodes_with_role(self, role: str) -> list[Node]:
        return [node for node in self.nodes if node.role == role]

    @property
    def service(self) -> tuple[str, int]:
        """Where clients connect: the first NLB's listener."""
        for node in self.nodes:
            if isinstance(node.config, NlbConfig):
                return str(node.config.address), node.config.port
        raise LabError(f"topology {self.name}: no nlb node, hence no service address")


def topology_names() -> list[str]:
    return lab_file_names("topologies")


def topology_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or "/" in name_or_path:
        if not candidate.is_file():
            raise LabError(f"{name_or_path}: no such topology file")
        return candidate
    path = find_lab_file("topologies", name_or_path)
    if path is None:
        raise LabError(f"unknown topology {name_or_path!r} (known: {', '.join(topology_names())})")
    return path


def load_topology(name_or_path: str) -> Topology:
    """A shipped topology by name (``incident``) or any TOML file by path."""
    path = topology_path(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise LabError(f"{path}: cannot read: {error}") from None
    return parse_topology(text, origin=str(path))


def parse_topology(text: str, origin: str = "<topology>") -> Topology:
    """Check everything (names and addresses per ``diag.lab.grammar``) before anything is built."""
    data = grammar.load_toml(text, lambda problem: LabError(f"{origin}: {problem}"))
    topology = _Parser(origin, text).topology(data)
    loop = find_routing_loop(topology)
    if loop is not None:
        raise LabError(grammar.printable(f"{origin}: routes: a routing loop: {loop}"))
    return topology


class _Parser:
    """Turns the TOML tree into a Topology; every error names the file and the key."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = origin
        self.text = text

    def fail(self, key: str, problem: str) -> LabError:
        # Keys and values come from the file: escaped, so the message stays one line whatever they hold.
        return LabError(grammar.printable(f"{self.origin}: {key}: {problem}"))

    # -- small typed getters -------------------------------------------------

    def table(self, data: Mapping[str, Any], key: str, where: str, required: bool = True) -> Mapping[str, Any]:
        value = data.get(key)
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"{where}.{key}", "missing table" if value is None else "must be a table")
        return value

    def string(self, data: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", "missing" if value is None else "must be a string")
        return value

    def integer(self, data: Mapping[str, Any], key: str, where: str, default: int | None = None,
                low: int = 0, high: int = 2**31) -> int:
        value = data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{where}.{key}", "missing" if value is None else "must be an integer")
        if not low <= value <= high:
            raise self.fail(f"{where}.{key}", f"must be between {low} and {high}, not {value}")
        return value

    def boolean(self, data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", "must be true or false")
        return value

    def strings(self, data: Mapping[str, Any], key: str, where: str, default: list[str] | None = None) -> list[str]:
        value = data.get(key, default)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(f"{where}.{key}", "missing" if value is None else "must be a list of strings")
        return list(value)

    def unknown_keys(self, data: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    # -- the topology --------------------------------------------------------

    def topology(self, data: Mapping[str, Any]) -> Topology:
        self.unknown_keys(data, {"name", "description", "nodes", "links", "expect", "overlay"}, "topology")
        name = self.string(data, "name", "topology")
        if not grammar.matches(grammar.TOPOLOGY_NAME, name):
            raise self.fail("name", f"{name!r}: use 1-63 lower-case letters, digits and dashes")
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise self.fail("nodes", "missing or empty: declare nodes as [[nodes]] tables")
        names: list[str] = []
        for index, raw in enumerate(raw_nodes):
            where = f"nodes[{index}]"
            if not isinstance(raw, Mapping):
                raise self.fail(where, "must be a table")
            node_name = self.string(raw, "name", where)
            if not grammar.matches(grammar.NODE_NAME, node_name):
                raise self.fail(f"{where}.name", f"{node_name!r}: use 1-20 lower-case letters, digits and dashes")
            if node_name in names:
                raise self.fail(f"{where}.name", f"duplicate node {node_name!r}")
            names.append(node_name)
        links = self.links(data.get("links"), names)
        skeleton = Topology(name=name, description="", nodes=(), links=links)
        nodes = tuple(self.node(raw, index, skeleton) for index, raw in enumerate(raw_nodes))
        topology = Topology(
            name=name,
            description=self.string(data, "description", "topology", default=""),
            nodes=nodes,
            links=links,
            expect=self.expect(data),
            source=self.text,
        )
        self.cross_check(topology)
        if "overlay" in data:
            topology = dataclasses.replace(topology, overlay=self.overlay(data, topology))
        return topology

    def overlay(self, data: Mapping[str, Any], topology: Topology) -> Overlay:
        spec = self.table(data, "overlay", "topology")
        self.unknown_keys(spec, {"type", "vni", "port", "device", "nodes"}, "overlay")
        kind = self.string(spec, "type", "overlay", default="vxlan")
        if kind not in OVERLAY_TYPES:
            raise self.fail("overlay.type", f"{kind!r}: the lab builds {', '.join(OVERLAY_TYPES)} overlays only")
        # Flannel's defaults: VNI 1 on the device flannel.1, and Linux's own VXLAN port 8472 (not IANA's 4789).
        vni = self.integer(spec, "vni", "overlay", default=1, low=0, high=VNI_MAX)
        port = self.integer(spec, "port", "overlay", default=8472, low=1, high=65535)
        device = self.string(spec, "device", "overlay", default=f"flannel.{vni}")
        if not grammar.matches(grammar.DEVICE_NAME, device):
            raise self.fail("overlay.device", f"{device!r}: 1-15 letters, digits, '.', '-' and '_', not starting "
                            "with '.'")
        default_nodes = [node.name for node in topology.nodes_with_role("k8s-node")]
        names = self.strings(spec, "nodes", "overlay", default=default_nodes)
        if len(set(names)) != len(names):
            raise self.fail("overlay.nodes", "a node is named twice")
        if len(names) < 2:
            raise self.fail("overlay.nodes", "an overlay joins at least two k8s-node nodes")
        members = []
        taken: dict[IPv4Network, str] = {}
        for name in names:
            if name not in topology.node_names or topology.node(name).role != "k8s-node":
                raise self.fail("overlay.nodes", f"{name!r} is not a k8s-node node")
            if device in topology.interfaces(name):
                raise self.fail("overlay.device", f"{name} already has an interface {device!r}")
            pod_links = [link for link in topology.links_of(name) if topology.node(link.peer(name).node).role == "pod"]
            underlay = [link for link in topology.links_of(name) if link not in pod_links]
            if not underlay:
                raise self.fail("overlay.nodes", f"{name} has no link but to its pods: no underlay for the tunnel")
            networks = tuple(link.end(name).address.network for link in pod_links)
            for network in networks:
                for other, owner in taken.items():
                    if network.overlaps(other):
                        raise self.fail("overlay.nodes", f"pod networks {network} of {name} and {other} of {owner} "
                                        "overlap: the overlay could not route between them")
                taken[network] = name
            members.append(OverlayMember(name, underlay[0].end(name), networks))
        return Overlay(kind, vni, port, device, tuple(members))

    def expect(self, data: Mapping[str, Any]) -> dict[str, str]:
        expect = self.table(data, "expect", "topology", required=False)
        self.unknown_keys(expect, {"tcp", "udp"}, "expect")
        for proto, outcomes in (("tcp", TCP_OUTCOMES), ("udp", UDP_OUTCOMES)):
            if proto in expect and expect[proto] not in outcomes:
                raise self.fail(f"expect.{proto}", f"one of {', '.join(outcomes)}")
        return dict(expect)

    def links(self, raw_links: Any, names: list[str]) -> tuple[Link, ...]:
        if not isinstance(raw_links, list):
            raise self.fail("links", "missing: declare links as [[links]] tables")
        used: dict[str, set[str]] = {name: set() for name in names}
        links: list[Link] = []
        addresses: dict[IPv4Address, str] = {}
        for index, raw in enumerate(raw_links):
            where = f"links[{index}]"
            if not isinstance(raw, Mapping):
                raise self.fail(where, "must be a table")
            self.unknown_keys(raw, {"endpoints", "interfaces"}, where)
            endpoints = self.table(raw, "endpoints", where)
            interfaces = self.table(raw, "interfaces", where, required=False)
            if len(endpoints) != 2:
                raise self.fail(f"{where}.endpoints", "a link joins exactly two nodes: {node = \"address/prefix\"}")
            ends: list[LinkEnd] = []
            (first, _), (second, _) = endpoints.items()
            for node, peer in ((first, second), (second, first)):
                if node not in used:
                    raise self.fail(f"{where}.endpoints.{node}", "no node with this name")
                address = self.interface_address(endpoints[node], f"{where}.endpoints.{node}")
                ifname = interfaces.get(node, f"eth-{peer}"[:IFNAME_MAX])
                if not grammar.matches(grammar.INTERFACE_NAME, ifname):
                    raise self.fail(f"{where}.interfaces.{node}", "interface names are 1-15 letters, digits, - and _")
                if ifname in used[node]:
                    raise self.fail(f"{where}.interfaces.{node}",
                                    f"{node} already has an interface {ifname!r}: name this one explicitly")
                used[node].add(ifname)
                ends.append(LinkEnd(node=node, interface=ifname, address=address))
            if ends[0].address.network != ends[1].address.network:
                raise self.fail(f"{where}.endpoints", f"{ends[0].address} and {ends[1].address} are not on one subnet")
            if ends[0].address.ip == ends[1].address.ip:
                raise self.fail(f"{where}.endpoints", "both ends have the same address")
            for end in ends:
                if end.address.ip in addresses:
                    raise self.fail(f"{where}.endpoints.{end.node}",
                                    f"{end.address.ip} is already the address of {addresses[end.address.ip]}")
                addresses[end.address.ip] = f"{end.node} ({end.interface})"
            links.append(Link(a=ends[0], b=ends[1]))
        return tuple(links)

    def interface_address(self, value: Any, where: str) -> IPv4Interface:
        if not isinstance(value, str) or "/" not in value:
            raise self.fail(where, "must be an IPv4 address with prefix length, like \"198.18.0.10/24\"")
        try:
            address = IPv4Interface(value)
        except ValueError as error:
            raise self.fail(where, str(error)) from None
        problem = grammar.address_problem(address)
        if problem:
            raise self.fail(where, problem)
        return address

    def gateway(self, value: Any, node: str, topology: Topology, where: str) -> IPv4Address:
        """A next hop given as a neighbour's name (its address on the shared link) or as an address."""
        if not isinstance(value, str):
            raise self.fail(where, "must be a neighbour's name or an IPv4 address")
        link = topology.link_between(node, value)
        if link is not None:
            return link.peer(node).address.ip
        try:
            address = IPv4Address(value)
        except ValueError:
            raise self.fail(where, f"{value!r} is neither a neighbour of {node} nor an IPv4 address") from None
        if not any(address in link.end(node).address.network for link in topology.links_of(node)):
            raise self.fail(where, f"{address} is not on any subnet of {node}")
        return address

    def routes(self, raw: Any, node: str, topology: Topology, where: str) -> tuple[Route, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            raise self.fail(where, "must be a table of destination = next hop")
        routes = []
        for destination, via in raw.items():
            if destination != "default":
                try:
                    IPv4Network(destination)
                except ValueError as error:
                    raise self.fail(f"{where}.{destination}", f"not a destination: {error}") from None
            routes.append(Route(destination, self.gateway(via, node, topology, f"{where}.{destination}")))
        return tuple(routes)

    def interface_of(self, value: str, node: str, topology: Topology, where: str) -> str:
        """One of the node's interfaces, named directly or by the neighbour at its other end."""
        if value in topology.interfaces(node):
            return value
        link = topology.link_between(node, value)
        if link is None:
            raise self.fail(where, f"{value!r} is neither an interface nor a neighbour of {node}")
        return link.end(node).interface

    def tables(self, raw: Any, node: str, topology: Topology, where: str) -> tuple[RouteTable, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            raise self.fail(where, "must be a table of route tables")
        tables = []
        for number, (name, spec) in enumerate(raw.items(), start=100):
            key = f"{where}.{name}"
            if not isinstance(spec, Mapping):
                raise self.fail(key, "must be a table with routes and iif/from")
            self.unknown_keys(spec, {"routes", "iif", "from"}, key)
            iif = tuple(self.interface_of(peer, node, topology, f"{key}.iif")
                        for peer in self.strings(spec, "iif", key, default=[]))
            try:
                sources = tuple(IPv4Network(cidr) for cidr in self.strings(spec, "from", key, default=[]))
            except ValueError as error:
                raise self.fail(f"{key}.from", str(error)) from None
            if not iif and not sources:
                raise self.fail(key, "say which packets use this table: iif = [neighbours] or from = [CIDRs]")
            routes = self.routes(spec.get("routes"), node, topology, f"{key}.routes")
            tables.append(RouteTable(name, number, routes, iif, sources))
        return tuple(tables)

    def node(self, raw: Mapping[str, Any], index: int, topology: Topology) -> Node:
        where = f"nodes[{index}]"
        name = raw["name"]
        role = self.string(raw, "role", where)
        if role not in ROLES:
            raise self.fail(f"{where}.role", f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        role_keys = {
            "nlb": {"listener", "target_group", "idle_timeout"},
            "natgw": {"public", "idle_timeout"},
            "k8s-node": {"services", "dnat", "connmark"},
            "pod": {"port", "behaviour", "delay"},
        }.get(role, set())
        self.unknown_keys(raw, {"name", "role", "routes", "tables", "sysctls", "strict_rp_filter"} | role_keys, where)
        if not topology.links_of(name):
            raise self.fail(where, f"node {name!r} has no links")
        sysctls = self.table(raw, "sysctls", where, required=False)
        for key, value in sysctls.items():
            if not grammar.matches(grammar.SYSCTL_KEY, key) or not grammar.sysctl_value_ok(value):
                raise self.fail(f"{where}.sysctls.{key}", "only net.* sysctls, with integer values or strings of "
                                "letters, digits, spaces and . _ : -")
        config: RoleConfig = None
        if role == "nlb":
            config = self.nlb(raw, name, topology, where)
        elif role == "natgw":
            config = self.natgw(raw, name, topology, where)
        elif role == "k8s-node":
            config = self.k8s_node(raw, where)
        elif role == "pod":
            behaviour = self.string(raw, "behaviour", where, default="normal")
            if behaviour not in POD_BEHAVIOURS:
                raise self.fail(f"{where}.behaviour", f"unknown behaviour {behaviour!r} ({', '.join(POD_BEHAVIOURS)})")
            delay = raw.get("delay", 2.0)
            if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= MAX_DELAY:
                raise self.fail(f"{where}.delay", f"must be a number of seconds from 0 to {MAX_DELAY}")
            config = PodConfig(self.integer(raw, "port", where, default=80, low=1, high=65535), behaviour,
                               float(delay))
        return Node(
            name=name,
            role=role,
            config=config,
            routes=self.routes(raw.get("routes"), name, topology, f"{where}.routes"),
            tables=self.tables(raw.get("tables"), name, topology, f"{where}.tables"),
            sysctls={key: str(value) for key, value in sysctls.items()},
            strict_rp_interfaces=tuple(
                self.interface_of(peer, name, topology, f"{where}.strict_rp_filter")
                for peer in self.strings(raw, "strict_rp_filter", where, default=[])
            ),
        )

    def nlb(self, raw: Mapping[str, Any], name: str, topology: Topology, where: str) -> NlbConfig:
        listener = self.table(raw, "listener", where)
        self.unknown_keys(listener, {"protocol", "port", "address"}, f"{where}.listener")
        protocol = self.string(listener, "protocol", f"{where}.listener")
        if protocol not in LISTENER_PROTOCOLS:
            raise self.fail(f"{where}.listener.protocol", f"must be one of {', '.join(LISTENER_PROTOCOLS)}")
        port = self.integer(listener, "port", f"{where}.listener", low=1, high=65535)
        address_text = self.string(listener, "address", f"{where}.listener", default=str(topology.address(name)))
        try:
            address = IPv4Address(address_text)
        except ValueError as error:
            raise self.fail(f"{where}.listener.address", str(error)) from None
        problem = grammar.host_address_problem(address)
        if problem:
            raise self.fail(f"{where}.listener.address", problem)
        group = self.table(raw, "target_group", where)
        gwhere = f"{where}.target_group"
        self.unknown_keys(group, {"type", "port", "targets", "preserve_client_ip"}, gwhere)
        target_type = self.string(group, "type", gwhere, default="instance")
        if target_type not in ("instance", "ip"):
            raise self.fail(f"{gwhere}.type", "must be \"instance\" or \"ip\"")
        targets = self.strings(group, "targets", gwhere)
        if not targets:
            raise self.fail(f"{gwhere}.targets", "register at least one target")
        # AWS defaults: preserved for instance targets, and always for UDP and TCP_UDP.
        default_preserve = target_type == "instance" or protocol != "TCP"
        preserve = self.boolean(group, "preserve_client_ip", gwhere, default=default_preserve)
        if not preserve and protocol != "TCP":
            raise self.fail(
                f"{gwhere}.preserve_client_ip",
                f"client IP preservation cannot be turned off on a {protocol} target group: AWS keeps it on for "
                "UDP and TCP_UDP, because the NLB does not translate the source of UDP flows",
            )
        return NlbConfig(
            protocol=protocol,
            address=address,
            port=port,
            target_group=TargetGroup(target_type, self.integer(group, "port", gwhere, low=1, high=65535),
                                     tuple(targets), preserve),
            # AWS accepts 60-6000 s; the lab also takes shorter ones so an experiment need not wait minutes.
            idle_timeout=self.integer(raw, "idle_timeout", where, default=350, low=1, high=6000),
        )

    def natgw(self, raw: Mapping[str, Any], name: str, topology: Topology, where: str) -> NatGwConfig:
        peer = self.string(raw, "public", where)
        link = topology.link_between(name, peer)
        if link is None:
            raise self.fail(f"{where}.public", f"{peer!r} is not a neighbour of {name}")
        end = link.end(name)
        return NatGwConfig(end.interface, end.address.ip,
                           self.integer(raw, "idle_timeout", where, default=350, low=1, high=86400))

    def protocols(self, data: Mapping[str, Any], where: str) -> tuple[str, ...]:
        protocols = tuple(self.strings(data, "protocols", where, default=["tcp", "udp"]))
        if not protocols or any(proto not in ("tcp", "udp") for proto in protocols):
            raise self.fail(f"{where}.protocols", "a list of \"tcp\" and/or \"udp\"")
        return protocols

    def k8s_node(self, raw: Mapping[str, Any], where: str) -> K8sNodeConfig:
        services = []
        raw_services = raw.get("services", [])
        if not isinstance(raw_services, list):
            raise self.fail(f"{where}.services", "declare services as [[nodes.services]] tables")
        for index, spec in enumerate(raw_services):
            swhere = f"{where}.services[{index}]"
            if not isinstance(spec, Mapping):
                raise self.fail(swhere, "must be a table")
            self.unknown_keys(spec, {"name", "node_port", "protocols", "policy", "endpoints"}, swhere)
            policy = self.string(spec, "policy", swhere, default="Cluster")
            if policy not in ("Cluster", "Local"):
                raise self.fail(f"{swhere}.policy", "externalTrafficPolicy is \"Cluster\" or \"Local\"")
            service_name = self.string(spec, "name", swhere, default="default/web")
            # The name goes into iptables-restore input (comments, chain hashes): one line, no quotes.
            if not grammar.matches(grammar.SERVICE_NAME, service_name):
                raise self.fail(f"{swhere}.name", f"{service_name!r}: write namespace/name, each 1-63 lower-case "
                                "letters, digits and dashes (a Kubernetes DNS label)")
            services.append(KubeService(
                name=service_name,
                node_port=self.integer(spec, "node_port", swhere, low=1, high=65535),
                protocols=self.protocols(spec, swhere),
                policy=policy,
                endpoints=tuple(self.strings(spec, "endpoints", swhere)),
            ))
        dnat = None
        if "dnat" in raw:
            spec = self.table(raw, "dnat", where)
            self.unknown_keys(spec, {"port", "to", "protocols"}, f"{where}.dnat")
            dnat = HandwrittenDnat(self.integer(spec, "port", f"{where}.dnat", low=1, high=65535),
                                   self.string(spec, "to", f"{where}.dnat"), self.protocols(spec, f"{where}.dnat"))
        return K8sNodeConfig(tuple(services), dnat, self.boolean(raw, "connmark", where, default=False))

    def cross_check(self, topology: Topology) -> None:
        """References between nodes: targets, endpoints and DNAT destinations must exist with the right role."""
        roles = {node.name: node.role for node in topology.nodes}
        for index, node in enumerate(topology.nodes):
            where = f"nodes[{index}]"
            config = node.config
            if isinstance(config, NlbConfig):
                wanted = "k8s-node" if config.target_group.target_type == "instance" else "pod"
                for target in config.target_group.targets:
                    if roles.get(target) != wanted:
                        raise self.fail(f"{where}.target_group.targets",
                                        f"{target!r} must be a {wanted} node for {config.target_group.target_type} "
                                        "targets")
            if isinstance(config, K8sNodeConfig):
                pods = [svc_pod for service in config.services for svc_pod in service.endpoints]
                if config.dnat is not None:
                    pods.append(config.dnat.to)
                for pod in pods:
                    if roles.get(pod) != "pod":
                        raise self.fail(f"{where}", f"endpoint {pod!r} is not a pod node")


# Routing loops, found before anything is built. Each node's main routing table (its ``routes``; policy
# tables are left out) is followed hop by hop, longest prefix first, for one address of every destination a
# node routes, and for an address no link holds (the default routes). A walk that comes back to a node it
# passed is a loop: the packets would bounce until their TTL runs out, which in a lab looks like a silent drop
# and would be misread. Pure: it only reads the Topology.

# Addresses to follow the default routes with: the first that no link or route of the topology holds.
_OUTSIDE_CANDIDATES = ("203.0.113.254", "198.51.100.254", "192.0.2.254", "100.127.255.254", "10.255.255.254")


def _network(route: Route) -> IPv4Network:
    return IPv4Network("0.0.0.0/0") if route.destination == "default" else IPv4Network(route.destination)


def _next_hop(node: Node, address: IPv4Address) -> IPv4Address | None:
    """The gateway of the longest route of ``node`` that holds ``address``; None when none does."""
    best: tuple[int, IPv4Address] | None = None
    for route in node.routes:
        network = _network(route)
        if address in network and (best is None or network.prefixlen > best[0]):
            best = (network.prefixlen, route.gateway)
    return None if best is None else best[1]


def _probes(topology: Topology) -> list[IPv4Address]:
    """One address inside every routed destination, and one outside everything for the default routes."""
    networks = {_network(route) for node in topology.nodes for route in node.routes if route.destination != "default"}
    probes = [network.network_address + (1 if network.num_addresses > 1 else 0) for network in networks]
    held = [end.address.network for link in topology.links for end in (link.a, link.b)] + list(networks)
    for text in _OUTSIDE_CANDIDATES:
        candidate = IPv4Address(text)
        if not any(candidate in network for network in held):
            probes.append(candidate)
            break
    return sorted(set(probes))


def find_routing_loop(topology: Topology) -> str | None:
    """A sentence describing the first loop found ('a packet for X goes a → b → a'), or None."""
    owner = {end.address.ip: end.node for link in topology.links for end in (link.a, link.b)}
    connected: dict[str, list[IPv4Network]] = {}
    for link in topology.links:
        for end in (link.a, link.b):
            connected.setdefault(end.node, []).append(end.address.network)
    for probe in _probes(topology):
        for start in topology.nodes:
            path = [start.name]
            current = start
            while not any(probe in network for network in connected.get(current.name, [])):
                gateway = _next_hop(current, probe)
                if gateway is None or gateway not in owner:
                    break  # unreachable from here, or leaves the lab: not a loop
                following = owner[gateway]
                if following in path:
                    return f"a packet for {probe} goes {' → '.join([*path, following])}"
                path.append(following)
                current = topology.node(following)
    return None
