"""Evidence as facts: the JSON facts render to exactly the evidence the text shows, and "ruled out" reads facts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import PROJECT
from test_analyze_cli import run_diag

from diag.diagnose.causes import spec_of
from diag.report import Cause
from diag.report.facts import RENDERERS, Fact, render

CAPTURES = PROJECT / "captures"
ALL_POINTS = ("client", "internet", "nlb", "vpc-router", "node-a", "node-b", "pod-b", "natgw")


def _args(points: tuple[str, ...]) -> list[str]:
    if not all((CAPTURES / f"{p}.pcapng").exists() for p in points):
        pytest.skip("reference captures missing")
    return [f"{p}={CAPTURES / (p + '.pcapng')}" for p in points]


def _fact(record: dict[str, Any]) -> Fact:
    """A fact back from its JSON object (lists were tuples)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k != "kind"}
    return Fact.of(record["kind"], **values)


@pytest.mark.parametrize("points", [ALL_POINTS, ("pod-b",), ("client", "natgw"), ("client",)], ids="+".join)
def test_json_facts_render_to_the_text_evidence(points: tuple[str, ...]) -> None:
    result = run_diag("analyze", "pcap", "--json", "-", *_args(points))
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert findings
    text = " ".join(run_diag("analyze", "pcap", *_args(points)).stdout.split())
    verdict = findings[0]  # the only finding of these captures, shown in full in the text
    for finding in findings:
        rendered = [render(_fact(record)) for record in finding["facts"]]
        assert rendered == finding["evidence"]
        assert all(record["kind"] in RENDERERS for record in finding["facts"])
    for sentence in verdict["evidence"]:
        assert " ".join(sentence.split()) in text


def test_the_incident_evidence_is_facts_with_values() -> None:
    result = run_diag("analyze", "pcap", "--json", "-", *_args(ALL_POINTS))
    (finding,) = json.loads(result.stdout)["findings"]
    by_kind = {record["kind"]: record for record in finding["facts"]}
    assert by_kind["absent-at-own"] == {"kind": "absent-at-own", "side": "client", "point": "client"}
    ttl = by_kind["ttl-hops"]
    assert ttl["side"] == "client" and ttl["rst_hops"] < ttl["claimed_hops"]
    assert by_kind["origin"]["point"] == "natgw"
    assert by_kind["rst"]["side"] == "client" and by_kind["answers"]["segment"] == "SYN-ACK"
    paths = by_kind["paths"]
    assert "natgw" in paths["reply_only"] and "natgw" not in paths["request_path"]
    assert sorted(by_kind["captures"]["points"]) == sorted(ALL_POINTS)
    (peer,) = [r["why"] for r in finding["ruled_out"] if r["cause"] == "peer-reset"]
    hops = ttl["claimed_hops"] - ttl["rst_hops"]
    assert f"its TTL puts its sender {hops} hop(s) closer than the client" in peer
    assert "natgw made it" in peer and "never shows it leaving" in peer


def test_peer_reset_is_excluded_by_facts_only() -> None:
    excluded = spec_of(Cause.PEER_RESET).excluded_by
    assert excluded is not None
    further = Fact.of("ttl-hops", point="pod", side="client", rst_ttl=60, rst_hops=4, claimed_ttl=62, claimed_hops=2)
    closer = Fact.of("ttl-hops", point="pod", side="client", rst_ttl=62, rst_hops=2, claimed_ttl=58, claimed_hops=6)
    assert excluded([further]) is None  # a RST from further away than the client says nothing here
    assert excluded([Fact.of("origin", point=None, text="a device 3 hops from pod")]) is None
    assert (
        excluded([closer])
        == "a genuine client reset is ruled out: its TTL puts its sender 4 hop(s) closer than the client"
    )
    reason = excluded([Fact.of("absent-at-own", side="server", point="pod"), Fact.of("origin", point="fw", text="x")])
    assert reason == "a genuine server reset is ruled out: the server's capture never shows it leaving; fw made it"


def test_a_finding_made_from_sentences_carries_them_as_notes() -> None:
    from diag.report import Finding

    spec = spec_of(Cause.UNKNOWN)
    finding = Finding(
        spec.cause, 0.3, "tcp", "a:1", "b:2", None, None, None, "s", evidence=("one", "two"),
        severity=spec.severity, forged=spec.forged,
    )
    assert [render(f) for f in finding.facts] == ["one", "two"]
    assert finding.to_json()["facts"] == [{"kind": "note", "text": "one"}, {"kind": "note", "text": "two"}]
