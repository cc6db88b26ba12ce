"""The nat-table rules kube-proxy (iptables mode) writes for NodePort Services.

The shape follows kube-proxy's own: PREROUTING/OUTPUT → KUBE-SERVICES →
KUBE-NODEPORTS → KUBE-EXT-<hash> → KUBE-SVC-<hash> (or KUBE-SVL-<hash> for
externalTrafficPolicy Local) → KUBE-SEP-<hash> DNAT, with KUBE-MARK-MASQ
setting 0x4000 and KUBE-POSTROUTING masquerading what carries it. Chain names
are hashed the way kube-proxy hashes them, so they look familiar in
``iptables-save`` output.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass

MASQ_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class Endpoint:
    pod: str
    address: str
    port: int
    local: bool  # the pod runs on this node


@functools.lru_cache(maxsize=4096)
def chain_hash(*parts: str) -> str:
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def base_rules() -> tuple[list[str], list[str]]:
    """Chains and jump rules every kube-proxy node has, whatever its Services."""
    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    return chains, rules


def service_rules(
    name: str, proto: str, node_port: int, policy: str, endpoints: list[Endpoint], pod_cidr: str,
) -> tuple[list[str], list[str]]:
    """Chains and rules for one NodePort Service port and protocol."""
    port_name = f"{name}:{proto}"
    svc = f"KUBE-SVC-{chain_hash(port_name, proto)}"
    ext = f"KUBE-EXT-{chain_hash(port_name, proto)}"
    svl = f"KUBE-SVL-{chain_hash(port_name, proto)}"
    comment = f'-m comment --comment "{port_name}"'
    chains = [svc, ext]
    rules = [f"-A KUBE-NODEPORTS -p {proto} {comment} -m {proto} --dport {node_port} -j {ext}"]
    seps = {endpoint.pod: f"KUBE-SEP-{chain_hash(port_name, proto, endpoint.address)}" for endpoint in endpoints}
    chains.extend(seps.values())
    if policy == "Cluster":
        rules.append(f'-A {ext} -m comment --comment "masquerade traffic for {port_name} external destinations" '
                     "-j KUBE-MARK-MASQ")
        rules.append(f"-A {ext} -j {svc}")
    else:
        # Local: traffic from outside goes only to this node's pods and keeps its source address.
        chains.append(svl)
        rules.append(f'-A {ext} -s {pod_cidr} -m comment --comment "pod traffic for {port_name} external '
                     f'destinations" -j {svc}')
        rules.append(f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {port_name} external '
                     'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
        rules.append(f"-A {ext} -m addrtype --src-type LOCAL -j {svc}")
        rules.append(f"-A {ext} -j {svl}")
        rules.extend(_spread(svl, port_name, [e for e in endpoints if e.local], seps))
    rules.extend(_spread(svc, port_name, endpoints, seps))
    for endpoint in endpoints:
        sep = seps[endpoint.pod]
        rules.append(f"-A {sep} -s {endpoint.address}/32 {comment} -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} -p {proto} {comment} -m {proto} -j DNAT "
                     f"--to-destination {endpoint.address}:{endpoint.port}")
    return chains, rules


def _spread(chain: str, port_name: str, endpoints: list[Endpoint], seps: dict[str, str]) -> list[str]:
    """Pick an endpoint uniformly: rule i of n matches with probability 1/(n-i), the last always."""
    if not endpoints:
        return [f'-A {chain} -m comment --comment "{port_name} has no local endpoints" -j DROP']
    rules = []
    for index, endpoint in enumerate(endpoints):
        remaining = len(endpoints) - index
        chance = f"-m statistic --mode random --probability {1 / remaining:.11f} " if remaining > 1 else ""
        rules.append(f'-A {chain} -m comment --comment "{port_name} -> {endpoint.address}:{endpoint.port}" '
                     f"{chance}-j {seps[endpoint.pod]}")
    return rules


def nodeports_jump() -> str:
    """Goes last in KUBE-SERVICES, as kube-proxy puts it."""
    return ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule '
            'in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
