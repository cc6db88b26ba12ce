"""Focus a report on the connections of one endpoint: what ``--flow ADDR[:PORT]`` shows.

The selector names an address, optionally with a port, as it appears at any
capture point. The connections it picks are those with a packet to or from
that endpoint anywhere, together with the copies of those packets that the
correlation found at other points: so the pod's address picks the client's
connection even where the client only ever addressed the load balancer.
The focused report keeps every packet (the ladder needs them) and narrows
what is shown: the findings about those connections (the verdict is the most
significant of them) and their rows in the flow table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd

from diag.capture.filter import Addr, And, Or, Port, filter_mask
from diag.errors import DiagError
from diag.report.model import Finding, Report

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FlowSelector:
    address: Address
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 and self.port is not None else str(self.address)
        return host if self.port is None else f"{host}:{self.port}"

    def matches(self, endpoint: str) -> bool:
        """Does an endpoint text of the report (``192.0.2.1:80``, ``[2001:db8::1]:443``, ``192.0.2.1``) match."""
        try:
            address, port = split_endpoint(endpoint)
        except ValueError:
            return False
        return address == self.address and (self.port is None or port == self.port)


def split_endpoint(text: str) -> tuple[Address, int | None]:
    """``192.0.2.1:80`` -> (address, 80); ``[2001:db8::1]:443``; a bare address has no port. ValueError otherwise."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(text)
        return ipaddress.ip_address(host), _port(rest[1:]) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return ipaddress.ip_address(host), _port(port)
    return ipaddress.ip_address(text), None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(text)
    return int(text)


def parse_flow_selector(text: str) -> FlowSelector:
    """``ADDR[:PORT]`` (IPv6 with a port in brackets); ``DiagError`` with one line otherwise."""
    try:
        address, port = split_endpoint(text)
    except ValueError:
        raise DiagError(
            f"--flow {text}: expected ADDR or ADDR:PORT (192.0.2.1:80, [2001:db8::1]:443, 2001:db8::1)"
        ) from None
    return FlowSelector(address, port)


def _endpoint_rows(packets: pd.DataFrame, selector: FlowSelector) -> np.ndarray:
    """Rows whose source or destination is the selected endpoint."""
    network = ipaddress.ip_network(selector.address)
    if selector.port is None:
        return filter_mask(packets, Addr(network, "src or dst"))
    port = selector.port
    tree = Or(
        And(Addr(network, "src"), Port(port, port, "src", None)),
        And(Addr(network, "dst"), Port(port, port, "dst", None)),
    )
    return filter_mask(packets, tree)


def _with_copies(report: Report, rows: np.ndarray) -> np.ndarray:
    """``rows`` and the rows the correlation found to be the same packets at other points."""
    matches = report.matches
    if matches is None or matches.empty or not {"row", "match_id"} <= set(matches.columns):
        return rows
    positions = report.packets.index.get_indexer(pd.Index(matches["row"]))
    known = positions >= 0
    positions, ids = positions[known], matches["match_id"].to_numpy()[known]
    wanted = np.isin(ids, ids[rows[positions]])
    grown = rows.copy()
    grown[positions[wanted]] = True
    return grown


def _flow_mask(flows: pd.DataFrame, packets: pd.DataFrame) -> np.ndarray:
    """Flow rows that hold one of ``packets`` (same capture and endpoints, either direction)."""
    if flows.empty or packets.empty:
        return np.zeros(len(flows), dtype=bool)
    key = ["capture", "orig_h", "orig_p", "resp_h", "resp_p"]
    seen = pd.DataFrame({
        "capture": packets["capture"].astype(str).to_numpy(),
        "src": packets["src"].astype(str).to_numpy(), "sport": packets["sport"].to_numpy(),
        "dst": packets["dst"].astype(str).to_numpy(), "dport": packets["dport"].to_numpy(),
    })  # fmt: skip
    forward = seen.set_axis(key, axis=1)
    backward = seen[["capture", "dst", "dport", "src", "sport"]].set_axis(key, axis=1)
    wanted = pd.concat([forward, backward]).drop_duplicates()
    table = flows[key].astype({"capture": str, "orig_h": str, "resp_h": str})
    table = table.astype({"orig_p": "int64", "resp_p": "int64"})
    wanted = wanted.astype({"orig_p": "int64", "resp_p": "int64"})
    merged = table.reset_index(drop=True).merge(wanted, on=key, how="left", indicator=True)
    return np.asarray((merged["_merge"] == "both").to_numpy(), dtype=bool)


class FlowRows(Protocol):
    """A flow table kept on disk (``diag.spilled.SpilledFlows``), read back a block at a time."""

    def load_where(self, keep: Callable[[pd.DataFrame], np.ndarray]) -> pd.DataFrame: ...


def focus_report(report: Report, selector: FlowSelector, flow_table: FlowRows | None = None) -> Report:
    """The report narrowed to the selected endpoint's connections; ``DiagError`` when no packet has it.

    ``flow_table``: every flow row, on disk (``Report.flow_store`` of an analysis in passes), of which only
    the selected connections' rows are read back; the report then holds them as its whole flow table.
    """
    packets = report.packets
    seeds = _endpoint_rows(packets, selector)
    if not seeds.any():
        raise DiagError(f"--flow {selector}: no packet to or from it in the captures")
    rows = _with_copies(report, seeds)
    chosen = packets[rows]
    # A packet is its capture point, its file in that point (several files count from 0 each) and its index;
    # a table without file numbers (-1) names the packet by point and index alone.
    files = chosen["file"].to_numpy().tolist() if "file" in chosen.columns else [-1] * len(chosen)
    symptoms = set(zip(chosen["capture"].astype(str), files, chosen["index"].to_numpy().tolist(), strict=True))

    def about(finding: Finding) -> bool:
        if selector.matches(finding.client) or selector.matches(finding.server):
            return True
        ref = finding.packet
        if ref is None:
            return False
        return (ref.capture, ref.file, ref.index) in symptoms or (ref.capture, -1, ref.index) in symptoms

    findings = [finding for finding in report.findings if about(finding)]
    if flow_table is not None:
        flows = flow_table.load_where(lambda block: _flow_mask(block, chosen))
        return replace(report, findings=findings, flows=flows, flow_digest=None, flow_store=None)
    flows = report.flows
    if flows is not None and not flows.empty and {"orig_h", "orig_p", "resp_h", "resp_p"} <= set(flows.columns):
        flows = flows[_flow_mask(flows, chosen)]
    return replace(report, findings=findings, flows=flows)
