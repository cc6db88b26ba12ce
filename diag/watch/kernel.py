"""The kernel's own account of a reset: its tracepoint lines parsed, and a RST on the wire tagged with it. Pure.

Linux says which resets its TCP stack sent and why (``tcp:tcp_send_reset``,
with ``reason=`` on kernels since 6.10), which resets its sockets took
(``tcp:tcp_receive_reset``) and which packets it dropped and why
(``skb:kfree_skb``). Tracepoints are global: one kernel serves every network
namespace, so an event is attributed to a RST on the wire by its addresses
and ports and by time, not by where it happened. A RST that an iptables
``REJECT --reject-with tcp-reset`` rule makes is built by netfilter and never
passes ``tcp_send_reset``: a RST on the wire with no such event, from a box
whose REJECT rule counted packets, was made by netfilter. One with neither
was not made on this host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from diag.capture.proto import RST as RST_FLAG
from diag.report import Finding

# Where a RST came from, as the kernel account tells it.
TCP_STACK = "tcp-stack"
NETFILTER = "netfilter"
NOT_THIS_HOST = "not-this-host"

# How far apart (seconds) a tracepoint event and the capture of its RST may be.
MATCH_S = 1.0

_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+"
                   r"(?P<event>\w+):\s+(?P<body>.*)$")
_FIELD = re.compile(r"(\w+)[=:]\s?(\S+)")


@dataclass(frozen=True)
class KernelEvent:
    """One tracepoint hit: a reset sent or received by a socket, or a packet dropped."""

    kind: str  # "send_reset", "receive_reset", "drop"
    ts: float  # Unix time (converted from the trace clock by the reader)
    src: str | None = None  # "addr:port" as the kernel printed it
    dst: str | None = None
    reason: str | None = None
    state: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def parse_line(line: str, clock_to_unix: float) -> KernelEvent | None:
    """A ``trace_pipe`` line as an event (timestamp moved onto the Unix clock), None for other lines."""
    match = _LINE.match(line)
    if match is None:
        return None
    event = match["event"]
    fields = dict(_FIELD.findall(match["body"]))
    ts = float(match["ts"]) + clock_to_unix
    if event == "tcp_send_reset":
        return KernelEvent("send_reset", ts, _endpoint(fields.get("src")), _endpoint(fields.get("dest")),
                           fields.get("reason"), fields.get("state"))
    if event == "tcp_receive_reset":
        src = _join(fields.get("saddr"), fields.get("sport"))
        dst = _join(fields.get("daddr"), fields.get("dport"))
        return KernelEvent("receive_reset", ts, src, dst)
    if event == "kfree_skb":
        return KernelEvent("drop", ts, reason=fields.get("reason"))
    return None


def _endpoint(text: str | None) -> str | None:
    """``198.18.2.10:80`` stays; ``[2001:db8::1]:80`` (IPv6, as %pISpc prints) loses its brackets' quirks."""
    if not text:
        return None
    return text.replace("[", "").replace("]", "")


def _join(address: str | None, port: str | None) -> str | None:
    return f"{address}:{port}" if address and port else None


@dataclass(frozen=True)
class WireRst:
    """A RST as some capture point saw it: addresses and ports, and when."""

    src: str  # "addr:port"
    dst: str
    ts: float


def account(rsts: Iterable[WireRst], events: Iterable[KernelEvent], origin: str | None,
            reject_counts: Mapping[str, int]) -> dict[str, Any]:
    """What the kernel says about a RST seen on the wire (the same RST at several points, NAT between them).

    ``reject_counts`` is, per box (point) on this host, how many packets its
    ``REJECT --reject-with tcp-reset`` rules have matched; ``origin`` the
    point the diagnosis named as the RST's maker, if any.
    """
    copies = list(rsts)
    sent_as = {(rst.src, rst.dst) for rst in copies}
    # tcp_receive_reset prints the receiving socket's view: its own address first, the RST's sender second.
    taken_as = {(rst.dst, rst.src) for rst in copies}
    times = [rst.ts for rst in copies]
    sent = [event for event in events if event.kind == "send_reset" and _near(event.ts, times)
            and (event.src, event.dst) in sent_as]
    received = [event for event in events if event.kind == "receive_reset" and _near(event.ts, times)
                and (event.src, event.dst) in taken_as]
    note: dict[str, Any]
    if sent:
        event = sent[0]
        reason = event.reason or "not given by this kernel"
        note = {"made_by": TCP_STACK, "reason": event.reason, "state": event.state, "src": event.src,
                "account": f"sent by this kernel's TCP stack (reason {reason}, socket state {event.state})"}
    else:
        rejecting = [box for box, count in reject_counts.items() if count > 0]
        box = origin if origin in rejecting else (rejecting[0] if len(rejecting) == 1 else None)
        if box is not None:
            note = {"made_by": NETFILTER, "reason": "REJECT --reject-with tcp-reset", "box": box,
                    "account": f"made by netfilter on this host ({box}'s REJECT rule; no tcp_send_reset for it)"}
        else:
            note = {"made_by": NOT_THIS_HOST, "reason": None,
                    "account": "not from this host (no tcp_send_reset for it, no REJECT rule that matched)"}
    note["received_by_socket"] = bool(received)
    return note


def _agrees(finding: Finding, note: Mapping[str, Any]) -> bool:
    made_by = note["made_by"]
    if not finding.forged:
        return bool(made_by == TCP_STACK)
    if made_by == NETFILTER:
        return finding.origin is None or note.get("box") == finding.origin or note.get("box") is None
    if made_by == TCP_STACK:
        endpoints = {finding.client.rpartition(":")[0], finding.server.rpartition(":")[0]}
        return str(note.get("src", "")).rpartition(":")[0] not in endpoints
    return True


def _near(ts: float, times: list[float]) -> bool:
    return any(abs(ts - when) <= MATCH_S for when in times)


def reject_rule_matches(iptables_save: str) -> int:
    """Packets matched by ``REJECT --reject-with tcp-reset`` rules in ``iptables-save -c`` output."""
    total = 0
    for line in iptables_save.splitlines():
        if "-j REJECT" in line and "tcp-reset" in line:
            counters = re.match(r"^\[(\d+):(\d+)\]", line)
            total += int(counters[1]) if counters else 0
    return total


def wire_rsts(packets: pd.DataFrame, capture: str, index: int, client_port: int) -> list[WireRst]:
    """The symptom RST (``capture``/``index``) and its copies at the other points, from the packet table.

    A copy is a RST with the same sequence number within ``MATCH_S`` of it,
    on the client's port, at any point (NAT may rewrite the addresses between
    points, not the sequence number, nor this port where boxes DNAT without
    SNAT). Empty when the symptom is no RST.
    """
    rst = (packets["tcp_flags"].to_numpy() & RST_FLAG) != 0
    symptom = packets[rst & (packets["capture"] == capture).to_numpy() & (packets["index"] == index).to_numpy()]
    if symptom.empty:
        return []
    ts = float(symptom["ts_ns"].iloc[0]) / 1e9
    near = np.abs(packets["ts_ns"].to_numpy() / 1e9 - ts) <= MATCH_S
    same = (packets["seq"] == symptom["seq"].iloc[0]).to_numpy()
    on_port = (packets["sport"] == client_port).to_numpy() | (packets["dport"] == client_port).to_numpy()
    rows = packets[rst & near & same & on_port] if client_port > 0 else symptom
    return [WireRst(f"{row.src}:{row.sport}", f"{row.dst}:{row.dport}", float(row.ts_ns) / 1e9)
            for row in rows.itertuples()]


def ground_truth(findings: Iterable[Finding], packets: pd.DataFrame, events: Iterable[KernelEvent],
                 reject_counts: Mapping[str, int]) -> dict[str, Any]:
    """The kernel's account of every RST the findings stand on, and whether it agrees with the diagnosis.

    The diagnosis says who really sent each RST; the kernel can contradict
    it. A reset it calls genuine (a closed port, a peer's abort) must come
    from a TCP stack. One it calls forged or made on the path must not come
    from either endpoint's TCP stack: netfilter (at the box it names, when
    both name one), something this kernel's stack and netfilter do not see
    (a raw socket, another host), or the TCP stack of a middle box answering
    in its own name for a connection it never had.
    """
    kept = list(events)
    rsts: list[dict[str, Any]] = []
    agrees = True
    for finding in findings:
        if finding.packet is None or finding.proto != "tcp":
            continue
        client_port = int(finding.client.rpartition(":")[2] or 0)
        copies = wire_rsts(packets, finding.packet.capture, finding.packet.index, client_port)
        if not copies:
            continue
        note = account(copies, kept, finding.origin, reject_counts)
        agreed = _agrees(finding, note)
        agrees = agrees and agreed
        rsts.append({"point": finding.packet.capture, "index": finding.packet.index, "cause": finding.cause,
                     "made_by": note["made_by"], "reason": note.get("reason"), "agrees": agreed})
    return {"rsts": rsts, "agrees": agrees}
