"""asymmetric-return: the reply left by a path the request did not take.

A stateful box on that path forges a RST as the client (TCP) or re-sources the reply (UDP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import (
    CauseSpec,
    Decision,
    answered_with,
    first,
    firsts,
    kinds,
    left_its_sender,
    listed,
)
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.signals import Seen
from diag.diagnose.tcp import Sides
from diag.diagnose.tcp_findings import Outcome, client_syns, rst_outcome, unanswered_outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals

CAP = 0.97


def udp(facts: Sequence[Fact]) -> Decision | None:
    """A UDP reply that reached the client from the wrong source, was re-sourced off the request's path, or
    left by a point the request never passed; or, from a forwarding box alone, requests DNATed on with the
    client's address kept and not one reply back through the box.

    The path and the points that rewrote the reply each make it surer (and the
    last of those points made the symptom), as does the client refusing the
    reply with ICMP port unreachable.
    """
    requests = first(facts, "requests")
    foreign, resourced, paths = first(facts, "reply-foreign"), first(facts, "reply-resourced"), first(facts, "paths")
    forwarded = first(facts, "forwarded")
    if requests is None:
        return None
    cited: tuple[str, ...]
    if foreign is not None:
        confidence = 0.7
        summary = (
            f"the reply reached the client from {foreign['src']}, not from {requests['to']} it wrote to: "
            "it left by another path and was re-sourced on the way"
        )
        cited = ("reply-foreign", "paths", "reply-rewritten", "port-unreachable")
    elif resourced is not None:
        confidence = 0.75
        summary = f"the server's reply left by {resourced['point']}, which the request never passed, and was re-sourced"
        summary += " there"
        cited = ("reply-resourced", "paths", "reply-rewritten")
    elif paths is not None and paths["reply_only"] and first(facts, "answered") is None:
        confidence = 0.7
        summary = "the server's reply left by a path the request did not take and never reached the client"
        cited = ("paths", "reply-rewritten")
    elif forwarded is not None:
        box, target = forwarded["box"], forwarded["target"]
        return Decision(
            0.45 if first(facts, "not-retried") else 0.5,
            f"{box} forwarded the requests to {target} (DNAT, the client's address kept) and no reply ever came "
            "back through it: the reply most likely left by another path",
            tuple(kinds(facts, "requests", "forwarded", "none-back", "confirm-at", "not-retried")),
        )
    else:
        return None
    evidence = kinds(facts, "requests", *cited)
    for fact in evidence:
        weight = 0.1 if fact.kind in ("reply-rewritten", "port-unreachable") else 0.0
        weight = 0.1 if fact.kind == "paths" and fact["reply_only"] else weight
        confidence = min(CAP, confidence + weight)
    rewriters = [str(fact["point"]) for fact in evidence if fact.kind == "reply-rewritten"]
    return Decision(confidence, summary, tuple(evidence), origin=rewriters[-1] if rewriters else None)


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """Replies that went back only along the request's own path, and were lost there, were not sent astray;
    a RST its claimed sender's own capture shows leaving it was not forged by a box on the way back, nor was one
    answering a challenge ACK or the client's SYN itself; a SYN no capture further on saw got no reply."""
    seen = firsts(facts)
    if "reply-lost" in seen:
        return "the replies were seen only on the request's own path"
    if (refused := seen.get("unreachable")) is not None:
        return f"the requests were refused ({refused['sender']} sent an ICMP destination unreachable), not answered"
    if "challenge-ack" in seen:
        return "the server's answer reached the client; the client reset the stale connection itself"
    if answered_with(seen, "SYN", "client") is not None:
        return (
            "the RST answers the client's SYN in the server's name: no SYN-ACK went astray (an asymmetric return "
            "resets the server's SYN-ACK in the client's name)"
        )
    if (unseen := seen.get("syn-unseen-elsewhere")) is not None:
        return (
            f"the SYN never reached the server (captures further on, {listed(unseen['points'])}, never saw it), "
            "so there was no reply to go astray"
        )
    return left_its_sender(seen)


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """The server's SYN-ACK reset in the client's name by another device, or unanswered SYNs whose SYN-ACK went
    by another path (or that a forwarding box alone shows DNATed on with the client's address kept)."""
    rule: np.ndarray = s.synack_reset_astray() | s.reply_astray()
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """The server's SYN-ACK reset in the client's name, or the unanswered SYNs whose SYN-ACK went astray or
    that a forwarding box handed on: the columns say which."""
    p = s.packets
    if s.rst[k] >= 0:
        forged = bool(s.forged[k])

        def write(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
            assert trigger is not None
            return tcp.synack_reset(conn, sides, rst, trigger, forged, claim, base, ctx)

        return rst_outcome(s, k, ctx, write, every_packet=True)
    syns = client_syns(s, k)
    if s.synack[k] >= 0:
        return unanswered_outcome(tcp.synack_astray(conn, syns, p.seen(int(s.synack[k]))), syns)
    return unanswered_outcome(tcp.syn_handed_on(conn, syns), syns)


SPEC = CauseSpec(
    cause=Cause.ASYMMETRIC_RETURN,
    forged=True,
    severity=Severity.INCIDENT,
    udp=udp,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    tcp_finding_reads_every_packet=True,
    excluded_by=excluded_by,
    excluded_kinds=frozenset(
        {"reply-lost", "unreachable", "left-own", "challenge-ack", "answers", "syn-unseen-elsewhere"}
    ),
    fixes=(
        "Make the forwarding node SNAT what it sends on to another node (kube-proxy masquerade, "
        "externalTrafficPolicy: Cluster with SNAT) so the reply returns through it and the load balancer; "
        "trade-off: the pod sees the node's address instead of the client's.",
        "Set externalTrafficPolicy: Local so the load balancer only sends to nodes with a local endpoint and "
        "no second hop is needed; trade-off: every node that receives traffic needs a ready endpoint, nodes "
        "without one fail the health check, and load spreads per node rather than per pod.",
        "Route replies back through the node that received the request (CONNMARK on the forwarded flow plus a "
        "policy-routing rule); trade-off: the packet mark space is shared with kube-proxy and the CNI, so pick "
        "bits neither uses and keep the rule in step with node changes.",
        "Disabling client IP preservation on the target group is impossible on TCP_UDP and UDP target groups, and "
        "on its own it does not cure a second hop without SNAT: the pod would then answer the load balancer's "
        "private address straight from its own address, which the load balancer does not know either; pair it "
        "with SNAT on the node and a TCP-only listener (proxy protocol v2 if the client address matters).",
        "Register pods as IP targets (AWS Load Balancer Controller) so the load balancer reaches the pod directly; "
        "trade-off: needs a CNI with VPC-routable pod addresses.",
    ),
)
