"""The address plan that generated topologies share (the scale topology, AWS exports).

The edge of every generated lab is the same: client, NLB and NAT gateway on the
"internet" (documentation ranges), NLB and NAT gateway inside the VPC
(198.18.0.0/15), node N in 198.18.(N+1).0/24 and its pods in 198.19.N.0/24.
Keeping it in one place keeps exported accounts and generated clusters alike.
"""

from __future__ import annotations

Link = tuple[str, str, str, str]  # node, its address, peer, the peer's address

EDGE_LINKS: tuple[Link, ...] = (
    ("client", "203.0.113.10/24", "internet", "203.0.113.1/24"),
    ("nlb", "198.51.100.10/24", "internet", "198.51.100.1/24"),
    ("natgw", "192.0.2.10/24", "internet", "192.0.2.1/24"),
    ("nlb", "198.18.0.10/24", "vpc-router", "198.18.0.1/24"),
    ("natgw", "198.18.1.10/24", "vpc-router", "198.18.1.1/24"),
)


def node_link(index: int, node: str) -> Link:
    """Node number ``index`` (from 1) on its own subnet behind the VPC router."""
    return (node, f"198.18.{index + 1}.10/24", "vpc-router", f"198.18.{index + 1}.1/24")


def links_toml(links: list[Link]) -> list[str]:
    """``[[links]]`` tables for the topology file."""
    return [
        f'[[links]]\nendpoints = {{ {a} = "{a_address}", {b} = "{b_address}" }}\n'
        for a, a_address, b, b_address in links
    ]
