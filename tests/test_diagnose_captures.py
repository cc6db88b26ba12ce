"""Verdicts on the reference captures the lab recorded (real kernel, real iptables, real tcpdump).

Each subset is what an engineer might have in hand: the client's capture
alone, the pod's alone, the node and the pod, and so on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROJECT

from diag.analysis import analyze

CAPTURES = PROJECT / "captures"
INCIDENT_POINTS = ("client", "internet", "nlb", "vpc-router", "node-a", "node-b", "pod-b", "natgw")

# subset -> (cause, origin): origin None means "not a captured point" (a description is given instead).
INCIDENT_SUBSETS = {
    INCIDENT_POINTS: ("asymmetric-return", "natgw"),
    ("pod-b",): ("asymmetric-return", None),
    ("node-b",): ("asymmetric-return", None),
    ("natgw",): ("asymmetric-return", "natgw"),
    ("node-b", "pod-b"): ("asymmetric-return", None),
    ("client", "pod-b"): ("asymmetric-return", None),
    ("client", "natgw"): ("asymmetric-return", "natgw"),
    ("node-b", "natgw"): ("asymmetric-return", "natgw"),
    ("vpc-router",): ("asymmetric-return", None),
    # Only the client's SYNs: a silent drop and an asymmetric return cannot be told apart.
    ("client",): ("silent-drop", None),
    # node-a shows the SYN leaving DNATed to the pod with the client's address kept, and nothing back:
    # the asymmetric return's signature from the forwarding box (at lower confidence, see below).
    ("node-a",): ("asymmetric-return", None),
}


def paths(points: tuple[str, ...], directory: Path = CAPTURES) -> list[str]:
    chosen = [f"{p}={directory / (p + '.pcapng')}" for p in points if (directory / f"{p}.pcapng").exists()]
    if len(chosen) != len(points):
        pytest.skip(f"reference captures missing in {directory}")
    return chosen


@pytest.mark.parametrize("subset", list(INCIDENT_SUBSETS), ids=["+".join(s) for s in INCIDENT_SUBSETS])
def test_incident_reference_captures(subset: tuple[str, ...]) -> None:
    report = analyze(paths(subset))
    cause, origin = INCIDENT_SUBSETS[subset]
    assert [f.cause for f in report.findings] == [cause]
    finding = report.findings[0]
    if origin is not None:
        assert finding.origin == origin
    elif cause == "asymmetric-return" and subset != ("node-a",):  # node-a: no RST, so nothing was made anywhere
        assert finding.origin and "hop" in finding.origin
    assert finding.client.startswith("203.0.113.10:")


def test_incident_from_every_point_is_confident_and_names_what_it_saw() -> None:
    (finding,) = analyze(paths(INCIDENT_POINTS)).findings
    assert finding.confidence >= 0.9
    text = "\n".join(finding.evidence)
    assert "never shows this RST" in text
    assert "natgw saw the reply but never the request" in text
    assert finding.packet is not None and finding.packet.capture == "natgw"


def test_healthy_reference_capture_gives_no_finding() -> None:
    report = analyze(paths(("client",), CAPTURES / "fix-snat"))
    assert report.findings == ()
