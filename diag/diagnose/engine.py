"""The diagnosis: one finding per connection that ended badly, with its cause and evidence."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from diag.capture.proto import TCP
from diag.correlate import Correlation, correlate
from diag.diagnose.causes import ruled_out, spec_of
from diag.diagnose.connections import PacketLinks, build_connections
from diag.diagnose.context import Context, Verdict
from diag.diagnose.signals import Seen
from diag.diagnose.tcp_columns import Outcome, judge_by_columns
from diag.diagnose.tcp_packets import build_packets
from diag.diagnose.tcp_signals import compute_signals
from diag.diagnose.udp import analyze_udp
from diag.report import Finding, PacketRef
from diag.report.facts import Fact, note, render


def diagnose(
    packets: pd.DataFrame,
    flows: pd.DataFrame | None = None,
    corr: Correlation | None = None,
    order_hint: Sequence[str] | None = None,
    links: PacketLinks | None = None,
) -> list[Finding]:
    """Findings for every RST, unanswered SYN and lost or re-sourced UDP reply in ``packets``.

    ``flows`` (the flow table) is accepted for the pipeline's signature; the
    diagnosis rebuilds connections across points from ``corr`` (computed here
    when not given). ``order_hint`` names the capture points in the order a
    request passes them, when the caller knows the topology. ``links``: what
    linking the connections reads of ``packets`` alone
    (``connections.packet_links``), when it was made ahead. Healthy
    connections produce nothing.
    """
    del flows
    if corr is None:
        corr = correlate(packets, order_hint)
    if len(packets) == 0:
        return []
    ctx = Context.build(packets, corr, order_hint)
    connections = build_connections(packets, corr, suspects_only=True, links=links)
    outcomes: dict[int, Outcome] = {}
    if any(conn.proto == TCP for conn in connections):
        # The TCP signals of every connection at once; the registry's rules judge them all.
        signals = compute_signals(build_packets(connections[0].table, connections), connections, ctx)
        outcomes = judge_by_columns(connections, signals, ctx)
    findings: list[tuple[int, int, Finding]] = []
    # The same last fact of every finding, and its sentence: made once.
    captures = Fact.of("captures", points=ctx.captures)
    captures_line = render(captures)
    for k, conn in enumerate(connections):
        result = outcomes[k] if conn.proto == TCP else analyze_udp(conn, ctx)
        if result is None:
            continue
        verdict, symptom, _occurrences = result
        findings.append(
            (
                symptom.ts_ref,
                k,
                _finding(conn.proto, conn.client, conn.server, verdict, symptom, captures, captures_line),
            )
        )
    findings.sort(key=lambda item: (item[0], item[1]))
    return [finding for _, _, finding in findings]


def _finding(
    proto: int, client: str, server: str, verdict: Verdict, symptom: Seen, captures: Fact, captures_line: str
) -> Finding:
    first = symptom.first
    spec = spec_of(verdict.cause)
    origin = verdict.origin
    if origin is None and verdict.origin_description and spec.forged:
        # The maker was not captured: say where it is, as far as the TTL tells.
        origin = verdict.origin_description
    # Every line becomes a fact (sentences not yet broken into values as notes); the evidence is their rendering.
    facts = [line if isinstance(line, Fact) else note(line) for line in verdict.evidence]
    evidence = (*map(render, facts), captures_line)
    facts.append(captures)
    return Finding.of(
        spec,
        confidence=round(min(verdict.confidence, 0.97), 3),
        proto="tcp" if proto == TCP else "udp",
        client=client,
        server=server,
        packet=PacketRef(capture=first.capture, index=first.index, ts=first.ts_ns / 1e9, file=first.file),
        claimed_src=first.src_addr,
        origin=origin,
        summary=verdict.summary,
        facts=tuple(facts),
        evidence=evidence,
        # Every cause the facts exclude (each cause's ``excluded_by``), from the facts alone.
        ruled_out=ruled_out(verdict.cause, facts),
        fixes=spec.fixes,
    )
