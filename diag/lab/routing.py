"""Routing loops in a topology, found before anything is built.

Each node's main routing table (its ``routes``; policy tables are left out)
is followed hop by hop, longest prefix first, for one address of every
destination a node routes, and for an address no link holds (the default
routes). A walk that comes back to a node it passed is a loop: the packets
would bounce until their TTL runs out, which in a lab looks like a silent
drop and would be misread. Pure: it only reads the Topology.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from diag.lab.topology import Node, Route, Topology

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
