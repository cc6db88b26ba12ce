"""Check a scenario's expected packets against what was really captured.

Used by the tests (never by the diagnosis): each expectation counts packets of
one kind at one capture point, either in diag's packet table or, as an
independent cross-check, with tshark and a display filter on the same file.
"""

from __future__ import annotations

import functools
import operator
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diag.capture.proto import ACK, FIN, ICMP, ICMP_DEST_UNREACHABLE, RST, SYN, TCP, UDP
from diag.scenario.spec import PacketExpectation

# tshark display filters per kind. ICMP errors quote a TCP/UDP header, which
# tshark dissects as tcp/udp too; "!icmp" keeps only the real segments.
TSHARK_FILTERS: dict[str, str] = {
    "syn": "tcp && !icmp && tcp.flags.syn==1 && tcp.flags.ack==0",
    "syn-ack": "tcp && !icmp && tcp.flags.syn==1 && tcp.flags.ack==1",
    "rst": "tcp && !icmp && tcp.flags.reset==1",
    "ack": "tcp && !icmp && tcp.flags.ack==1 && tcp.flags.syn==0 && tcp.flags.reset==0 && tcp.flags.fin==0"
    " && tcp.len==0",
    "data": "tcp && !icmp && tcp.len>0",
    "fin": "tcp && !icmp && tcp.flags.fin==1",
    "udp": "udp && !icmp",
    "icmp-unreachable": "icmp.type==3",
}

_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": operator.eq, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}


def kind_mask(packets: pd.DataFrame, kind: str) -> pd.Series:
    """Rows of the packet table that are packets of ``kind`` (same meaning as TSHARK_FILTERS)."""
    flags = packets["tcp_flags"]
    tcp = packets["proto"] == TCP
    masks = {
        "syn": tcp & (flags & SYN != 0) & (flags & ACK == 0),
        "syn-ack": tcp & (flags & SYN != 0) & (flags & ACK != 0),
        "rst": tcp & (flags & RST != 0),
        "ack": tcp & (flags & ACK != 0) & (flags & (SYN | RST | FIN) == 0) & (packets["payload_len"] == 0),
        "data": tcp & (packets["payload_len"] > 0),
        "fin": tcp & (flags & FIN != 0),
        "udp": packets["proto"] == UDP,
        "icmp-unreachable": (packets["proto"] == ICMP) & (packets["icmp_type"] == ICMP_DEST_UNREACHABLE),
    }
    return masks[kind]


@dataclass(frozen=True)
class Seen:
    """What one capture point showed for one kind: how many packets, on which interfaces."""

    count: int
    interfaces: frozenset[str]


def seen_in_table(packets: pd.DataFrame, kind: str, src: str = "") -> Seen:
    mask = kind_mask(packets, kind)
    if src:
        mask &= packets["src"].astype(str) == src
    chosen = packets[mask]
    return Seen(len(chosen), frozenset(chosen["iface"].astype(str)))


def seen_by_tshark(path: Path, kind: str, src: str = "") -> Seen:
    """The same question answered by tshark's dissector and display filter (the source compared here)."""
    rows = _tshark_rows(path, path.stat().st_mtime_ns, kind)
    chosen = [interface for interface, source in rows if not src or source == src]
    return Seen(len(chosen), frozenset(chosen))


@functools.lru_cache(maxsize=512)
def _tshark_rows(path: Path, mtime_ns: int, kind: str) -> tuple[tuple[str, str], ...]:
    """(interface, IP source) of every packet of ``kind``; cached per file version, tshark is slow to start."""
    result = subprocess.run(
        ["tshark", "-r", str(path), "-n", "-Y", TSHARK_FILTERS[kind], "-T", "fields",
         "-e", "frame.interface_name", "-e", "ip.src"],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"tshark failed on {path}: {result.stderr.strip()}")
    rows = []
    for line in result.stdout.splitlines():
        interface, _, source = line.partition("\t")
        rows.append((interface, source.split(",")[0]))  # an ICMP error lists the quoted source too
    return tuple(rows)


def _satisfied(count: int, rule: str, counts_here: Callable[[str], int]) -> bool:
    match = re.match(r"^(==|>=|<=|>|<)?\s*(\S+)$", rule)
    assert match is not None, rule  # validated when the scenario was loaded
    compare = _COMPARE[match.group(1) or "=="]
    target = match.group(2)
    return compare(count, int(target) if target.isdigit() else counts_here(target))


def check(
    expectations: tuple[PacketExpectation, ...],
    seen: Callable[[str, str, str], Seen],
    addresses: Mapping[str, str],
) -> list[str]:
    """Every expectation that does not hold, described in one line each.

    ``seen(point, kind, src_address)`` answers from a packet table or from tshark;
    ``addresses`` turns node names in ``src`` into addresses.
    """
    failures = []
    for expected in expectations:
        src = addresses.get(expected.src, expected.src)
        got = seen(expected.at, expected.kind, src)
        def count_at(kind: str, at: str = expected.at) -> int:
            return seen(at, kind, "").count

        if not _satisfied(got.count, expected.count, count_at):
            origin = f" from {expected.src}" if expected.src else ""
            failures.append(f"{expected.at}: {got.count} {expected.kind}{origin}, expected {expected.count}")
        if expected.interfaces is not None and len(got.interfaces) != expected.interfaces:
            failures.append(
                f"{expected.at}: {expected.kind} seen on {sorted(got.interfaces)}, "
                f"expected on {expected.interfaces} interface(s)"
            )
    return failures
