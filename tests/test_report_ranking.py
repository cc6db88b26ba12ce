"""The verdict is the most significant finding, not the most confident; findings group by cause and service.

Two levels: the ranking (``diag.report.significance``) on hand-made finding
lists, and the whole command on a field-shaped capture: the incident's real
pod capture merged with mergecap into a generated busy background of
thousands of ordinary resets, some of them to the incident's own service.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from busy_background import SERVICE, Plan, write_background
from conftest import PROJECT, require_tools

import diag.report.significance as significance
from diag.capture.info import CaptureInfo
from diag.diagnose.causes import REGISTRY, spec_of
from diag.report import Cause, Finding, PacketRef, Report, Severity
from diag.report.significance import Group, Ranking
from diag.report.text import render_text

T0 = 1_764_257_655.0
SERVICE_A = "198.18.102.10:80"
SERVICE_B = "198.18.103.20:443"
SERVICE_TEXT = f"{SERVICE[0]}:{SERVICE[1]}"  # the background's share of the incident's service
FORGED = sorted(str(cause) for cause, spec in REGISTRY.items() if spec.forged)


def finding(cause: str, confidence: float, server: str = SERVICE_A, n: int = 0, proto: str = "tcp") -> Finding:
    """A finding of ``cause`` on ``server``, classed as the registry classes it; ``n`` makes the client port and the
    time distinct."""
    spec = spec_of(Cause(cause))
    return Finding(
        cause=spec.cause,
        confidence=confidence,
        proto=proto,
        client=f"203.0.113.{20 + n % 200}:{30000 + n}",
        server=server,
        packet=PacketRef("pod", n, T0 + n * 0.001),
        claimed_src=None,
        origin=None,
        summary=f"{cause} number {n}",
        severity=spec.severity,
        forged=spec.forged,
    )


def many(cause: str, confidence: float, count: int, server: str = SERVICE_A, start: int = 0) -> list[Finding]:
    return [finding(cause, confidence, server, start + i) for i in range(count)]


def verdict_of(findings: list[Finding]) -> Finding | None:
    return Ranking(findings).verdict


def most_significant(findings: list[Finding]) -> int | None:
    return Ranking(findings).top


def ranked(findings: list[Finding]) -> list[int]:
    return Ranking(findings).order


def group_findings(findings: list[Finding]) -> list[Group]:
    return Ranking(findings).groups


def rarity_weights(findings: list[Finding]) -> list[float]:
    return Ranking(findings).rarity


def verdict_cause(findings: list[Finding]) -> str:
    verdict = verdict_of(findings)
    assert verdict is not None
    return verdict.cause


# --------------------------------------------------------------------------- ranking


def test_no_findings_no_verdict_and_a_lone_finding_is_the_verdict() -> None:
    assert most_significant([]) is None
    lone = [finding("peer-reset", 0.4)]
    assert verdict_of(lone) is lone[0]


def test_every_cause_has_a_class_and_forged_resets_and_silent_drops_are_the_incident_class() -> None:
    assert set(REGISTRY) == set(Cause) and all(isinstance(spec.severity, Severity) for spec in REGISTRY.values())
    assert FORGED, "some causes forge their RST"
    assert all(spec_of(Cause(cause)).severity is Severity.INCIDENT for cause in (*FORGED, "silent-drop"))
    assert spec_of(Cause.PEER_RESET).severity is spec_of(Cause.PORT_CLOSED).severity is Severity.ORDINARY
    assert spec_of(Cause.HEALTHY).severity is Severity.NONE


@pytest.mark.parametrize("serious", [*FORGED, "silent-drop"])
def test_a_forged_reset_or_silent_drop_outranks_more_confident_and_more_numerous_ordinary_resets(serious: str) -> None:
    findings = many("peer-reset", 0.95, 500) + many("port-closed", 0.9, 300, SERVICE_B, 500)
    findings.insert(123, finding(serious, 0.45, n=900))
    assert verdict_of(findings) is findings[123]


def test_a_serious_cause_pervasive_on_its_service_still_outranks_a_rare_ordinary_one() -> None:
    """Class is strict: 2000 asymmetric returns are the incident, not the one peer reset among them."""
    findings = [*many("asymmetric-return", 0.75, 2000), finding("peer-reset", 0.95, n=2000)]
    assert verdict_cause(findings) == "asymmetric-return"


def test_unknown_and_tuple_reuse_sit_between_the_incident_class_and_ordinary_resets() -> None:
    assert verdict_cause([finding("peer-reset", 0.95), finding("unknown", 0.3, n=1)]) == "unknown"
    assert verdict_cause([finding("tuple-reuse", 0.9), finding("silent-drop", 0.3, n=1)]) == "silent-drop"


def test_a_cause_seen_once_on_a_service_outranks_one_seen_on_thousands_of_its_connections() -> None:
    """The issue's example: 1 of 3000 findings of a service ranks above 2900 of them, at lower confidence."""
    common = many("peer-reset", 0.8, 2900)
    rare = finding("port-closed", 0.55, n=2900)
    findings = [*common[:1000], rare, *common[1000:]]
    assert verdict_of(findings) is rare
    # and the other way round: a peer reset among thousands of refused SYNs
    refused = many("port-closed", 0.8, 2900)
    odd = finding("peer-reset", 0.55, n=2900)
    assert verdict_of([*refused, odd]) is odd


def test_rarity_is_counted_per_service() -> None:
    """Peer resets are the norm on A; on B, where refused ports are the norm, one peer reset is unusual."""
    on_a = many("peer-reset", 0.8, 100)
    on_b = many("port-closed", 0.8, 50, SERVICE_B, 100)
    odd_on_b = finding("peer-reset", 0.7, SERVICE_B, 150)
    findings = [*on_a, *on_b, odd_on_b]
    assert verdict_of(findings) is odd_on_b
    weights = rarity_weights(findings)
    assert weights[0] == pytest.approx(1.0)  # the only cause on A
    assert weights[-1] > weights[100] > 1.0  # 1 of 51 on B above 50 of 51


def test_the_same_service_on_another_protocol_is_another_service() -> None:
    tcp = many("silent-drop", 0.6, 40)
    udp = finding("silent-drop", 0.6, n=40, proto="udp")
    weights = rarity_weights([*tcp, udp])
    assert weights == [pytest.approx(1.0)] * 41


def test_equal_class_and_weight_fall_to_confidence_then_the_earlier_symptom() -> None:
    early, late = finding("policy-reject", 0.7, n=5), finding("policy-reject", 0.7, n=6)
    sure = finding("policy-reject", 0.9, n=9)
    assert verdict_of([late, early]) is early
    assert verdict_of([late, early, sure]) is sure


def test_the_verdict_does_not_depend_on_the_order_of_the_findings() -> None:
    findings = (
        many("peer-reset", 0.8, 300)
        + many("port-closed", 0.55, 200, SERVICE_B, 300)
        + [finding("injected-reset", 0.6, n=600), finding("asymmetric-return", 0.7, SERVICE_B, 601)]
    )
    expected = verdict_of(findings)
    assert expected is not None and expected.cause == "asymmetric-return"  # rarer on its service than the injection
    rng = random.Random(5)
    for _ in range(5):
        shuffled = findings[:]
        rng.shuffle(shuffled)
        assert verdict_of(shuffled) is expected
        assert [shuffled[i] for i in ranked(shuffled)] == [findings[i] for i in ranked(findings)]


# --------------------------------------------------------------------------- groups


def test_groups_count_every_finding_once_by_cause_and_service_the_verdicts_group_first() -> None:
    findings = (
        many("peer-reset", 0.8, 30)
        + many("peer-reset", 0.6, 12, SERVICE_B, 30)
        + many("port-closed", 0.55, 7, SERVICE_B, 42)
        + many("asymmetric-return", 0.75, 3, SERVICE_A, 49)
    )
    findings[5] = finding("peer-reset", 0.9, n=5)
    groups = group_findings(findings)
    assert (groups[0].cause, groups[0].server, groups[0].count) == ("asymmetric-return", SERVICE_A, 3)
    assert sorted(i for g in groups for i in g.members) == list(range(len(findings)))
    assert len(groups) == 4
    by_key = {(g.cause, g.server): g for g in groups}
    peer_a = by_key[("peer-reset", SERVICE_A)]
    assert peer_a.count == 30 and peer_a.confidence == 0.9
    assert peer_a.examples[0] == 5 and len(peer_a.examples) == 3  # the most significant member first
    for group in groups:
        assert all(
            (findings[i].cause, findings[i].proto, findings[i].server) == (group.cause, group.proto, group.server)
            for i in group.members
        )
    assert most_significant(findings) == groups[0].members[0]


def _report(findings: list[Finding]) -> Report:
    return Report(captures=[CaptureInfo("pod", "pod.pcap", 0, "EN10MB")], packets=pd.DataFrame(), flows=pd.DataFrame(),
                  findings=findings)  # fmt: skip


def test_json_keeps_every_finding_and_adds_groups_whose_examples_point_into_findings() -> None:
    findings = many("peer-reset", 0.8, 40) + many("port-closed", 0.55, 25, SERVICE_B, 40)
    findings.insert(17, finding("silent-drop", 0.5, n=99, proto="udp"))
    document = json.loads(_report(findings).dumps())
    assert len(document["findings"]) == len(findings)
    assert document["verdict"]["cause"] == "silent-drop"
    groups = document["groups"]
    assert groups[0] == {"cause": "silent-drop", "proto": "udp", "server": SERVICE_A, "count": 1,
                         "confidence": 0.5, "examples": [17]}  # fmt: skip
    assert sum(g["count"] for g in groups) == len(findings)
    for group in groups:
        for index in group["examples"]:
            assert document["findings"][index]["cause"] == group["cause"]
            assert document["findings"][index]["flow"]["server"] == group["server"]


def test_text_shows_the_verdict_then_at_most_the_top_groups_and_all_findings_on_request() -> None:
    findings = [*many("peer-reset", 0.8, 60), finding("idle-timeout", 0.6, n=60)]
    findings += [finding("port-closed", 0.55, f"198.18.103.{i}:{1000 + i}", 61 + i) for i in range(40)]
    report = _report(findings)
    text = render_text(report, group_limit=5).splitlines()
    assert text[0] == "VERDICT: idle-timeout  (confidence 0.60)"
    start = text.index("OTHER FINDINGS (100)  in 41 groups of cause and service")
    group_lines = text[start + 1 : start + 6]
    assert "60 x peer-reset" in group_lines[0] and SERVICE_A in group_lines[0]
    assert text[start + 6] == "  ... and 36 more groups (36 port-closed); --all lists every finding"
    every = render_text(report, all_findings=True)
    assert "OTHER FINDINGS (100, most significant first)" in every
    assert all(f.summary in every for f in findings)


def test_a_report_ranks_its_findings_once_and_keeps_nothing_after_it_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text and the JSON both rank; the table is built once per report and lives (and dies) with it."""
    built = []
    build = significance._build_table
    monkeypatch.setattr(significance, "_build_table", lambda findings: built.append(1) or build(findings))
    findings = [*many("peer-reset", 0.8, 30), finding("silent-drop", 0.5, n=30, proto="udp")]
    report = _report(findings)
    render_text(report)
    render_text(report, all_findings=True)
    document = json.loads(report.dumps())
    assert document["verdict"]["cause"] == "silent-drop" and len(built) == 1
    assert report.ranking is report.ranking and report.verdict is findings[30]
    # Another report of the same findings ranks them afresh: nothing is shared between reports.
    assert _report(findings).verdict is findings[30] and len(built) == 2
    # Nothing outside the report holds its findings once it is gone (a long watch makes a report a window).
    alive = weakref.ref(findings[0])
    del report, findings, document
    gc.collect()
    assert alive() is None


def test_a_reports_findings_cannot_change_under_its_ranking() -> None:
    """The ranking is worked out once per report, so the findings it ranks are a tuple: a caller cannot change
    them in place and leave the verdict and the groups describing other findings."""
    findings = [*many("peer-reset", 0.8, 5), finding("silent-drop", 0.5, n=5, proto="udp")]
    report = _report(findings)
    assert isinstance(report.findings, tuple) and report.findings == tuple(findings)
    assert report.verdict is findings[5]
    findings.clear()  # the list given stays the caller's
    assert len(report.findings) == 6 and report.verdict is report.findings[5]
    with pytest.raises(TypeError):
        report.findings[5] = finding("idle-timeout", 0.9)  # type: ignore[index]
    # Other findings make another report, ranked afresh.
    other = dataclasses.replace(report, findings=[*report.findings[:5], finding("idle-timeout", 0.9, n=9)])
    assert isinstance(other.findings, tuple) and other.verdict is not None and other.verdict.cause == "idle-timeout"
    assert report.verdict is report.findings[5]


# --------------------------------------------------------------------------- a busy capture


def _analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``diag analyze pcap`` as a user runs it; a generous timeout, as the machine may be busy with other work."""
    env = dict(os.environ, NO_COLOR="1", COLUMNS="100")
    command = [sys.executable, "-m", "diag.cli", "analyze", "pcap", *map(str, args)]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pod capture of the incident merged into a busy background spanning its time; its analysis."""
    require_tools("mergecap", "capinfos")
    tmp = tmp_path_factory.mktemp("busy")
    pod = PROJECT / "captures" / "pod-b.pcapng"
    first = float(
        subprocess.run(
            ["capinfos", "-a", "-T", "-r", "-S", str(pod)], capture_output=True, text=True, check=True
        ).stdout.split("\t")[-1]
    )
    plan = Plan()
    background = tmp / "background.pcap"
    packets = write_background(background, start=first - 20.0, seconds=40.0, plan=plan)
    merged = tmp / "busy.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), str(pod), str(background)], check=True)
    report_json = tmp / "busy.json"
    text = _analyze("--json", report_json, f"pod-b={merged}").stdout
    alone = json.loads(_analyze("--json", "-", f"pod-b={pod}").stdout)
    return {"plan": plan, "packets": packets, "merged": merged, "text": text,
            "json": json.loads(report_json.read_text()), "alone": alone}  # fmt: skip


def _verdict_finding(document: dict[str, Any]) -> dict[str, Any]:
    """The finding the verdict stands for: the first of the first group."""
    return document["findings"][document["groups"][0]["examples"][0]]  # type: ignore[no-any-return]


def test_the_incident_is_the_verdict_of_the_busy_capture(busy: dict[str, Any]) -> None:
    document, alone = busy["json"], busy["alone"]
    assert alone["verdict"]["cause"] == "asymmetric-return"
    assert document["verdict"] == alone["verdict"]
    verdict = _verdict_finding(document)
    assert verdict["flow"] == _verdict_finding(alone)["flow"]
    assert verdict["flow"]["server"] == SERVICE_TEXT  # the background shares its service
    # the most confident finding is an ordinary one: ranking by confidence would have missed the incident
    assert max(f["confidence"] for f in document["findings"]) > document["verdict"]["confidence"]


def test_the_busy_json_lists_every_finding_and_groups_them(busy: dict[str, Any]) -> None:
    document, plan = busy["json"], busy["plan"]
    findings = document["findings"]
    assert len(findings) == plan.resets + 1  # every background reset, and the incident
    assert sum(group["count"] for group in document["groups"]) == len(findings)
    on_service = [g for g in document["groups"] if g["server"] == SERVICE_TEXT]
    assert {g["cause"] for g in on_service} == {"asymmetric-return", "peer-reset"}
    assert max(g["count"] for g in on_service) == plan.peer_resets_to_service


def test_the_busy_text_report_stays_short_with_the_verdict_first(busy: dict[str, Any]) -> None:
    lines = busy["text"].splitlines()
    findings = len(busy["json"]["findings"])
    assert lines[0].startswith("VERDICT: asymmetric-return")
    assert len(lines) < 150, len(lines)  # verdict block, 10 groups, 20 flows per problem kind
    assert f"OTHER FINDINGS ({findings - 1})" in busy["text"]
    assert "--all lists every finding" in busy["text"]


def test_all_lists_every_finding_of_the_busy_capture(busy: dict[str, Any]) -> None:
    text = _analyze("--all", f"pod-b={busy['merged']}").stdout
    findings = busy["json"]["findings"]
    start = text.index("OTHER FINDINGS")
    listed = text[start:].split("\n\n")[0].splitlines()[1:]
    assert len(listed) == len(findings) - 1
    verdict = _verdict_finding(busy["json"])
    assert sum(verdict["flow"]["client"] in line for line in listed) == 0  # shown in full above, not again


def test_a_forged_reset_on_every_connection_is_the_incident_not_background() -> None:
    # Rarity demotes the ordinary resets a service always has; inside the incident class a cause repeated
    # on thousands of connections is the incident itself, so a lone, less certain forged reset does not win.
    findings = [finding("injected-reset", 0.5, n=0), *many("asymmetric-return", 0.95, 2000, start=1)]
    verdict = most_significant(findings)
    assert verdict is not None and findings[verdict].cause == "asymmetric-return"
    weights = rarity_weights(findings)
    assert weights[0] == 1.0 and weights[1] == 1.0
    ordinary = [finding("port-closed", 0.9, n=0), *many("peer-reset", 0.9, 2000, start=1)]
    assert rarity_weights(ordinary)[0] > 4.0  # 1 in 2001 findings of the service
