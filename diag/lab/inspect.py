"""Read a node's kernel state: what ``diag lab show`` prints and tests assert on.

The device's own state (rule counters, conntrack entries) is evidence: a
counter that moved on the NAT gateway's reset rule says who sent a RST.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from diag.lab import netns

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv6.conf.all.disable_ipv6",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
)
COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")


@dataclass(frozen=True)
class RuleCounter:
    table: str
    chain: str
    rule: str
    packets: int
    bytes: int


def parse_counters(iptables_save: str) -> list[RuleCounter]:
    """Rules with their counters from ``iptables-save -c`` output."""
    counters = []
    table = ""
    for line in iptables_save.splitlines():
        if line.startswith("*"):
            table = line[1:]
            continue
        match = COUNTED_RULE.match(line)
        if match:
            packets, size, chain, rule = match.groups()
            counters.append(RuleCounter(table, chain, rule, int(packets), int(size)))
    return counters


def _output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return ""
    return result.stdout


def _json(command: list[str]) -> Any:
    text = _output(command)
    try:
        return json.loads(text) if text.strip() else []
    except ValueError:
        return []


def _read_sysctl(key: str) -> str:
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as value:
            return value.read().strip()
    except OSError:
        return ""


def _collect() -> dict[str, Any]:
    """Runs in a thread inside the node's namespace."""
    iptables = _output(["iptables-save", "-c"])
    conntrack = _output(["conntrack", "-L", "-o", "extended"])
    return {
        "addresses": _json(["ip", "-j", "address", "show"]),
        "routes": _json(["ip", "-j", "route", "show", "table", "all"]),
        "rules": _json(["ip", "-j", "rule", "show"]),
        "iptables": iptables,
        "counters": [asdict(counter) for counter in parse_counters(iptables)],
        "conntrack": [line for line in conntrack.splitlines() if line.strip()],
        "sysctls": {key: _read_sysctl(key) for key in SYSCTLS},
    }


def node_state(namespace: str) -> dict[str, Any]:
    return netns.in_namespaces([(namespace, _collect)])[0]


def render_state(node: str, namespace: str, snapshot: dict[str, Any]) -> str:
    """Readable text, one section per kind of state."""
    out = [f"{node} ({namespace})", "", "addresses:"]
    for interface in snapshot["addresses"]:
        addresses = [f"{info['local']}/{info['prefixlen']}" for info in interface.get("addr_info", [])]
        out.append(f"  {interface['ifname']:<15} {interface.get('operstate', ''):<8} {' '.join(addresses)}")
    out += ["", "routes:"]
    for route in snapshot["routes"]:
        if route.get("table") == "local":
            continue
        words = [route.get("dst", "")]
        for key in ("gateway", "dev", "table", "protocol", "scope", "prefsrc"):
            if key in route:
                words.append(f"{'via' if key == 'gateway' else key} {route[key]}")
        out.append("  " + " ".join(words))
    out += ["", "policy rules:"]
    for rule in snapshot["rules"]:
        words = [f"{rule.get('priority')}:"]
        if rule.get("src", "all") != "all":
            words.append(f"from {rule['src']}" + (f"/{rule['srclen']}" if "srclen" in rule else ""))
        for key in ("iif", "fwmark"):
            if key in rule:
                words.append(f"{key} {rule[key]}" + (f"/{rule['fwmask']}" if key == "fwmark" and "fwmask" in rule
                                                     else ""))
        words.append(f"lookup {rule.get('table')}")
        if "suppress_prefixlen" in rule:
            words.append(f"suppress_prefixlength {rule['suppress_prefixlen']}")
        out.append("  " + " ".join(words))
    out += ["", "iptables (packets bytes chain rule):"]
    counters = snapshot["counters"]
    for counter in counters:
        out.append(f"  {counter['packets']:>6} {counter['bytes']:>8} {counter['table']}/{counter['chain']} "
                   f"{counter['rule']}")
    if not counters:
        out.append("  (none)")
    out += ["", "conntrack:"]
    out += [f"  {line}" for line in snapshot["conntrack"]] or ["  (none)"]
    out += ["", "sysctls:"]
    out += [f"  {key} = {value}" for key, value in snapshot["sysctls"].items() if value != ""]
    return "\n".join(out) + "\n"


def namespace_exists(namespace: str) -> bool:
    return netns.namespace_inode(namespace) is not None
