"""What a name, an address or a number in a topology or scenario may be.

Names end up in command lines and line-oriented inputs (``ip -batch``,
``iptables-restore``, the shell script of ``diag lab up --dry-run``), so each
kind has a grammar matched against the whole string (``re.fullmatch``: a
``$`` at the end of a pattern would also accept a trailing newline, which
splits one ``ip -batch`` line into two).

- lab name (``--name``): 1-12 lower-case letters and digits;
- topology name: 1-63 lower-case letters, digits and dashes, not starting with a dash;
- node name: 1-20 lower-case letters, digits and dashes, starting with a letter;
- interface name: 1-15 letters, digits, ``-`` and ``_``;
- overlay device name: the same and ``.`` (``flannel.1``), but not first;
- k8s service name: ``namespace/name``, each a DNS label (RFC 1123: 1-63
  lower-case letters, digits and dashes, a letter or digit at both ends);
- sysctl key: ``net.`` then letters, digits, ``_``, ``.`` and ``-``;
- sysctl value: an integer, or 0-64 letters, digits, spaces, ``.``, ``_``, ``:`` and ``-``.

Addresses on lab links (and an NLB's listener address) must lie in ranges
that can never be someone's real network: the documentation ranges
(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24), the benchmarking range
198.18.0.0/15, the private ranges (10.0.0.0/8, 172.16.0.0/12,
192.168.0.0/16) and the shared address space 100.64.0.0/10 (used inside
VPCs). Not loopback, multicast or anybody's public address; not a subnet's
network or broadcast address; no address twice in one topology.

Numbers must be finite (TOML allows ``nan`` and ``inf``), and a document may
nest tables and arrays at most ``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

LAB_NAME = re.compile(r"[a-z0-9]{1,12}")
TOPOLOGY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")
# A tunnel device may carry a dot like Flannel's flannel.1; not a leading one (the kernel refuses "." and "..").
DEVICE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}")
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
SERVICE_NAME = re.compile(rf"{_DNS_LABEL}/{_DNS_LABEL}")
SYSCTL_KEY = re.compile(r"net\.[A-Za-z0-9_.-]+")
SYSCTL_VALUE = re.compile(r"[A-Za-z0-9 ._:-]{0,64}")

LAB_RANGES = tuple(IPv4Network(cidr) for cidr in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # documentation (RFC 5737)
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space (RFC 6598)
))
MAX_DEPTH = 16


def matches(pattern: re.Pattern[str], value: object) -> bool:
    """``value`` is a string and all of it (no trailing newline) follows ``pattern``."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped, so an error stays one line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def sysctl_value_ok(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or matches(SYSCTL_VALUE, value)


def address_problem(address: IPv4Interface) -> str | None:
    """Why ``address`` cannot be put on a lab link, or None when it can."""
    network = address.network
    if not any(network.subnet_of(allowed) for allowed in LAB_RANGES):
        ranges = ", ".join(str(allowed) for allowed in LAB_RANGES)
        return f"{address}: the subnet {network} is outside the lab's ranges ({ranges})"
    if network.prefixlen <= 30 and address.ip in (network.network_address, network.broadcast_address):
        return f"{address}: is the {'network' if address.ip == network.network_address else 'broadcast'} " \
               f"address of {network}, not a host's"
    return None


def host_address_problem(address: IPv4Address) -> str | None:
    """Why ``address`` cannot be a lab address (a listener), or None when it can."""
    if not any(address in allowed for allowed in LAB_RANGES):
        return f"{address} is outside the lab's ranges ({', '.join(str(allowed) for allowed in LAB_RANGES)})"
    return None


def load_toml(text: str, fail: Callable[[str], Exception]) -> dict[str, Any]:
    """Parse TOML and check its shape; ``fail(problem)`` makes the one-line error to raise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise fail(f"not valid TOML: {error}") from None
    except RecursionError:  # the parser recurses once per nesting level
        raise fail(f"nested more than {MAX_DEPTH} levels deep") from None
    problem = shape_problem(data)
    if problem:
        raise fail(problem)
    return data


def shape_problem(data: object) -> str | None:
    """A nesting deeper than MAX_DEPTH or a non-finite number anywhere in a parsed document, else None.

    Walked with an explicit stack, so a deep document cannot exhaust Python's.
    """
    stack: list[tuple[object, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            return f"{where or 'the document'}: nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where}: must be a finite number, not {value}"
        if isinstance(value, dict):
            stack.extend((item, depth + 1, f"{where}.{key}" if where else str(key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{index}]") for index, item in enumerate(value))
    return None
