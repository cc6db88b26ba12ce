"""Put configuration findings, metrics and flow-log evidence together into one ``diag.report/1`` report.

Pure: takes what ``inventory``, ``metrics`` and ``flowlogs`` read, returns a
``Report`` plus the facts the text output shows beside it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

import pandas as pd

from diag.aws.findings import NAT_GATEWAY_NOTE, check
from diag.aws.flowlogs import FlowLog, ForgedReset, find_forged_resets, flags_text
from diag.aws.metrics import MetricsWindow, describe
from diag.aws.model import NLB_TCP_IDLE_TIMEOUT_S, Inventory, LoadBalancer
from diag.diagnose.causes import spec_of
from diag.report import Cause, Finding, Report

# One finding per node interface and service port; the rest of the flows are counted in its evidence.
_EXAMPLES_PER_FINDING = 3


@dataclass
class Assessment:
    report: Report
    inventory: Inventory
    metrics: MetricsWindow | None = None
    flow_log: FlowLog | None = None
    forged_resets: list[ForgedReset] = field(default_factory=list)


def assess(inventory: Inventory, metrics: MetricsWindow | None = None, flow_log: FlowLog | None = None) -> Assessment:
    findings = check(inventory)
    warnings = list(inventory.notes)
    if metrics is not None:
        findings = [_with_metrics(f, metrics, inventory) for f in findings]
        findings += elb_reset_findings(inventory, metrics)
    forged: list[ForgedReset] = []
    if flow_log is not None:
        warnings += flow_log.warnings
        forged = find_forged_resets(flow_log.records, nat_interfaces(inventory))
        findings = confirm_with_flow_logs(findings, forged, inventory)
    findings.sort(key=lambda f: -f.confidence)
    report = Report(captures=[], packets=pd.DataFrame(), flows=pd.DataFrame(), findings=findings, warnings=warnings)
    return Assessment(report=report, inventory=inventory, metrics=metrics, flow_log=flow_log, forged_resets=forged)


def nat_interfaces(inventory: Inventory) -> set[str]:
    return {eni for nat in inventory.nat_gateways.values() for eni in nat.network_interfaces}


def _with_metrics(finding: Finding, metrics: MetricsWindow, inventory: Inventory) -> Finding:
    host = finding.server.rsplit(":", 1)[0]
    names = {b.name for b in inventory.load_balancers if host in (b.dns_name, b.name)}
    lines = [describe(t) for t in metrics.nat_gateways if t.resource == finding.origin]
    lines += [describe(t) for t in metrics.load_balancers if t.resource in names]
    if not lines:
        return finding
    window = f"CloudWatch {metrics.start:%Y-%m-%d %H:%M} to {metrics.end:%Y-%m-%d %H:%M} UTC: "
    return dataclasses.replace(finding, evidence=(*finding.evidence, *(window + line for line in lines)))


def elb_reset_findings(inventory: Inventory, metrics: MetricsWindow) -> list[Finding]:
    """Resets the load balancer itself sent: the classic one is an idle flow past the listener's idle timeout."""
    by_name = {b.name: b for b in inventory.load_balancers}
    findings = []
    for totals in metrics.load_balancers:
        count = totals.sums.get("TCP_ELB_Reset_Count") or 0.0
        balancer = by_name.get(totals.resource)
        if count <= 0 or balancer is None:
            continue
        timeouts = sorted({_idle_timeout(balancer, port) for port in _tcp_ports(balancer)})
        timeout_text = " / ".join(f"{t} s" for t in timeouts) or f"{NLB_TCP_IDLE_TIMEOUT_S} s"
        spec = spec_of(Cause.IDLE_TIMEOUT)
        findings.append(
            Finding.of(
                spec,
                confidence=0.4,
                proto="tcp",
                client="*",
                server=f"{balancer.dns_name or balancer.name}:*",
                packet=None,
                claimed_src=None,
                origin=balancer.name,
                summary=(
                    f"{balancer.name} itself reset {count:g} connections in the window; most often flows idle "
                    f"longer than the listener's TCP idle timeout ({timeout_text})"
                ),
                evidence=(
                    f"{describe(totals)} ({metrics.start:%Y-%m-%d %H:%M} to {metrics.end:%Y-%m-%d %H:%M} UTC)",
                    "TCP_ELB_Reset_Count also counts resets for connections to deregistered or unhealthy targets",
                ),
                fixes=(
                    f"TCP keepalive on clients or targets shorter than the idle timeout ({timeout_text}); "
                    "costs a few packets per idle connection",
                    "raise the listener's tcp.idle_timeout.seconds (60 to 6000 s): idle flows then hold "
                    "load balancer state longer",
                ),
            )
        )
    return findings


def _tcp_ports(balancer: LoadBalancer) -> list[int]:
    return [listener.port for listener in balancer.listeners if listener.idle_timeout_s.value is not None]


def _idle_timeout(balancer: LoadBalancer, port: int) -> int:
    for listener in balancer.listeners:
        if listener.port == port and isinstance(listener.idle_timeout_s.value, int):
            return listener.idle_timeout_s.value
    return NLB_TCP_IDLE_TIMEOUT_S


def _nat_of_server(server: str, inventory: Inventory) -> str:
    """The NAT gateway on the default route of the subnet holding ``server`` ('' if none is known)."""
    try:
        address = ipaddress.ip_address(server)
    except ValueError:
        return ""
    for subnet in inventory.subnets.values():
        try:
            inside = address in ipaddress.ip_network(subnet.cidr, strict=False)
        except ValueError:
            continue
        if inside:
            route = inventory.default_route_of(subnet.id)
            return route.target if route is not None and route.kind == "nat-gateway" else ""
    return ""


def _nat_of_interface(eni: str, inventory: Inventory) -> str:
    return next((nat.id for nat in inventory.nat_gateways.values() if eni in nat.network_interfaces), "")


def confirm_with_flow_logs(findings: list[Finding], forged: list[ForgedReset], inventory: Inventory) -> list[Finding]:
    """One finding per node interface and port that saw forged resets; a matching configuration finding
    (same NAT gateway) absorbs it and takes its confidence."""
    groups: dict[tuple[str, str, int], list[ForgedReset]] = {}
    for reset in forged:
        groups.setdefault((reset.interface_id, reset.server, reset.server_port), []).append(reset)
    result = list(findings)
    for (interface, server, port), resets in sorted(groups.items()):
        best = max(resets, key=lambda r: r.confidence)
        nat = _nat_of_interface(best.nat_interface, inventory) or _nat_of_server(server, inventory)
        evidence = [
            f"VPC flow logs: {len(resets)} flow(s) where {interface or 'a node interface'}"
            + (f" ({best.instance_id})" if best.instance_id else "")
            + f" sent a SYN-ACK from {server}:{port} toward a client and a RST came back 'from' that client",
        ]
        for example in resets[:_EXAMPLES_PER_FINDING]:
            evidence.append(
                f"  {example.server}:{example.server_port} -> {example.client}:{example.client_port}: "
                f"egress tcp-flags {flags_text(example.synack.tcp_flags)} (line {example.synack.line}), "
                f"ingress tcp-flags {flags_text(example.reset.tcp_flags)} (line {example.reset.line})"
            )
        evidence.append(best.reason)
        evidence.append("flow log tcp-flags are OR-ed over the aggregation interval; only flag bits are compared")
        match = next(
            (i for i, f in enumerate(result) if f.cause is Cause.ASYMMETRIC_RETURN and nat and f.origin == nat), None
        )
        if match is not None:
            base = result[match]
            result[match] = dataclasses.replace(
                base,
                confidence=max(base.confidence, best.confidence),
                client=f"{best.client}:{best.client_port}",
                claimed_src=best.client,
                evidence=(*base.evidence, *evidence),
            )
            continue
        spec = spec_of(Cause.ASYMMETRIC_RETURN)
        result.append(
            Finding.of(
                spec,
                confidence=best.confidence,
                proto="tcp",
                client=f"{best.client}:{best.client_port}",
                server=f"{server}:{port}",
                packet=None,
                claimed_src=best.client,
                origin=nat or None,
                summary=(
                    f"{server}:{port} answered clients with SYN-ACKs and got RSTs the clients did not send"
                    + (f": NAT gateway {nat} reset them" if nat else ": a box on the return path reset them")
                ),
                evidence=tuple(evidence),
                fixes=(
                    "make replies leave through the node that received the request (externalTrafficPolicy: Local, "
                    "ip targets, or CONNMARK return routing), or SNAT forwarded connections (loses the client address)",
                ),
            )
        )
    return result


def metric_lines(metrics: MetricsWindow) -> list[str]:
    """What every counter says, and the caveat that makes the load balancer's counters misleading here."""
    return [describe(t) for t in (*metrics.load_balancers, *metrics.nat_gateways)] + [NAT_GATEWAY_NOTE]
