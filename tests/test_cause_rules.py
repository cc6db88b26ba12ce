"""Each cause's rules over the facts: UDP verdicts decided by the registry, and "ruled out" following from the facts.

The findings come from crafted captures (``synthetic``: every cause's scenario
from every subset of its points); the JSON facts of each must render to its
evidence, and every cause its facts exclude must be in its ruled-out lines.
The rules are also fed crafted facts, one case a cause, so each module's
exclusion is checked on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import synthetic

from diag.diagnose import diagnose
from diag.diagnose.causes import REGISTRY, decide, ruled_out, spec_of
from diag.report import Cause, Finding
from diag.report.facts import Fact, render, render_all

CASES = [
    pytest.param(name, subset, id=f"{name}:{'+'.join(subset)}")
    for name, build in synthetic.SCENARIOS.items()
    for subset in (*build().subsets, *((point,) for point in build().points))
]


def _from_json(record: dict[str, Any]) -> Fact:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k != "kind"}
    return Fact.of(record["kind"], **values)


def _findings(name: str, subset: tuple[str, ...]) -> list[Finding]:
    return diagnose(synthetic.SCENARIOS[name]().packets(subset))


@pytest.mark.parametrize(("name", "subset"), CASES)
def test_json_facts_render_to_the_evidence_and_rule_out_what_they_exclude(name: str, subset: tuple[str, ...]) -> None:
    for finding in _findings(name, subset):
        document = finding.to_json()
        facts = [_from_json(record) for record in document["facts"]]
        assert [render(fact) for fact in facts] == document["evidence"]
        if finding.proto == "udp":
            assert all(fact.kind != "note" for fact in facts), "UDP evidence is all structured facts"
        # The finding's own cause is never excluded by the facts it stands on.
        own = spec_of(finding.cause).excluded_by
        assert own is None or own(facts) is None, (finding.cause, own(facts) if own else None)
        listed = {r.cause: r.why for r in finding.ruled_out}
        for cause, spec in REGISTRY.items():
            if cause in (finding.cause, Cause.HEALTHY) or spec.excluded_by is None:
                continue
            why = spec.excluded_by(facts)
            if why is not None:
                assert cause in listed, f"{cause} is excluded by the facts ({why}) but not ruled out"
        assert Cause.HEALTHY not in listed


@pytest.mark.parametrize("name", list(synthetic.SCENARIOS))
def test_a_findings_ruled_out_lines_are_exactly_those_of_its_facts(name: str) -> None:
    """Nothing but the facts speaks: no rule states a reason of its own, and no line says a cause is not excluded."""
    for point in synthetic.SCENARIOS[name]().points:
        for finding in _findings(name, (point,)):
            assert finding.ruled_out == ruled_out(finding.cause, finding.facts)
            assert not any("not excluded" in r.why for r in finding.ruled_out), finding.ruled_out


def test_a_closed_port_seen_from_the_client_alone_does_not_rule_out_a_firewall() -> None:
    """From the client's capture alone a server refusing the SYN and a firewall refusing it in the server's name
    look the same (the finding says so in its evidence), so policy-reject is not in its ruled-out lines at all."""
    (finding,) = _findings("port-closed", ("client",))
    assert finding.cause is Cause.PORT_CLOSED
    assert any("a firewall rejecting in the server's name" in line for line in finding.evidence)
    assert Cause.POLICY_REJECT not in {r.cause for r in finding.ruled_out}, finding.ruled_out
    # With the server's capture the SYN is seen reaching it, and that fact rules the firewall out.
    (finding,) = _findings("port-closed", ("client", "pod"))
    listed = {r.cause: r.why for r in finding.ruled_out}
    assert listed[Cause.POLICY_REJECT] == "the SYN reached the server's capture (pod)"


# One crafted case a cause: facts that exclude it, with the reason, and facts that say nothing about it.
REQUESTS = Fact.of("requests", count=3, to="198.51.100.10:80", packet="client frame 1")
FOREIGN = Fact.of(
    "reply-foreign", count=3, src="203.0.113.9:61000", packet="client frame 4", expected="198.51.100.10:80"
)
RESOURCED = Fact.of(
    "reply-resourced", point="natgw", packet="natgw frame 2", sources=("10.0.2.5:80", "203.0.113.9:61000")
)
LOST = Fact.of("reply-lost", count=3, packet="pod frame 2", last="node-b", client_point="client")
LEFT = Fact.of("left-own", side="server", packet="pod frame 9", ttl=64)
RST = Fact.of("rst", side="server", claimed="10.0.2.5", packet="client frame 3", ttl=61, ip_id=0)
RETRIED = Fact.of("syn-retried", isn=1000, times=2)
ABSENT_CLIENT = Fact.of("absent-at-own", side="client", point="client")
ABSENT_SERVER = Fact.of("absent-at-own", side="server", point="pod")
REFUSED = Fact.of(
    "unreachable",
    count=2,
    reason="port",
    code=3,
    sender="198.51.100.10",
    quoted="198.51.100.10:80",
    packet="client frame 2",
)

EXCLUSIONS: dict[Cause, tuple[list[Fact], str, list[Fact]]] = {
    Cause.ASYMMETRIC_RETURN: ([REQUESTS, LOST], "only on the request's own path", [REQUESTS, FOREIGN]),
    Cause.SILENT_DROP: ([REQUESTS, FOREIGN], "arrived from the wrong source", [REQUESTS, LOST]),
    Cause.HEALTHY: ([REQUESTS, RESOURCED], "re-sourced", [REQUESTS, LOST]),
    Cause.IDLE_TIMEOUT: ([RST, RETRIED], "never got established", [RST]),
    Cause.INJECTED_RESET: ([RST, LEFT], "shows the RST leaving it", [RST, ABSENT_SERVER]),
    Cause.TUPLE_REUSE: ([RST, ABSENT_CLIENT], "client's stack sends it", [RST, ABSENT_SERVER]),
    Cause.PEER_RESET: ([RST, ABSENT_SERVER], "server's capture never shows it leaving", [RST, LEFT]),
    Cause.PORT_CLOSED: ([REQUESTS, FOREIGN], "something listens on the port", [REQUESTS, REFUSED]),
    Cause.POLICY_REJECT: ([REQUESTS, LOST], "nothing on the way refused them", [REQUESTS, REFUSED]),
}


@pytest.mark.parametrize("cause", list(EXCLUSIONS), ids=str)
def test_each_cause_is_excluded_by_its_facts_only(cause: Cause) -> None:
    spec = spec_of(cause)
    assert spec.excluded_by is not None
    excluding, reason, silent = EXCLUSIONS[cause]
    why = spec.excluded_by(excluding)
    assert why is not None and reason in why
    assert spec.excluded_by(silent) is None
    # Ruled out in a finding of another cause, in those words.
    other = Cause.UNKNOWN
    assert any(r.cause is cause and r.why == why for r in ruled_out(other, excluding)) or cause is Cause.HEALTHY


def _every_fact_seen() -> list[list[Fact]]:
    return [list(f.facts) for name, subset in [c.values for c in CASES] for f in _findings(str(name), subset)]  # type: ignore[arg-type]


def test_exclusions_read_only_the_kinds_they_declare() -> None:
    crafted = [facts for facts, _, _ in EXCLUSIONS.values()] + [silent for _, _, silent in EXCLUSIONS.values()]
    for facts in crafted + _every_fact_seen():
        for spec in REGISTRY.values():
            if spec.excluded_by is None or spec.cause is Cause.PEER_RESET:  # peer-reset: see test_facts
                continue
            declared = [fact for fact in facts if fact.kind in spec.excluded_kinds]
            assert spec.excluded_by(facts) == spec.excluded_by(declared), spec.cause


# The UDP rules: which cause the registry decides from crafted facts.
FORWARDED = [
    REQUESTS,
    Fact.of("no-reply", last="node-a", left_for="10.0.2.5:80", retried=True),
    Fact.of(
        "forwarded",
        box="node-a",
        arrived="10.0.1.4:30080",
        target="10.0.2.5:80",
        ttl_in=62,
        ttl_out=61,
        client="203.0.113.50",
    ),
    Fact.of("none-back", count=3, box="node-a"),
    Fact.of("confirm-at", box="node-a", target="10.0.2.5"),
]
NO_REPLY = [REQUESTS, Fact.of("no-reply", last="node-a", left_for=None, retried=True)]


def unreachable(reason: str, code: int, sender: str = "198.51.100.10") -> Fact:
    return Fact.of(
        "unreachable",
        count=1,
        reason=reason,
        code=code,
        sender=sender,
        quoted="198.51.100.10:80",
        packet="client frame 2",
    )


ANSWERED = Fact.of("answered", count=3, src="198.51.100.10:80", packet="client frame 2")


@pytest.mark.parametrize(
    ("facts", "cause", "confidence"),
    [
        ([REQUESTS, FOREIGN], Cause.ASYMMETRIC_RETURN, 0.7),
        (
            [REQUESTS, FOREIGN, Fact.of("reply-rewritten", point="natgw", sources=("a:1", "b:2"))],
            Cause.ASYMMETRIC_RETURN,
            0.8,
        ),
        ([REQUESTS, ANSWERED, RESOURCED], Cause.ASYMMETRIC_RETURN, 0.75),
        ([REQUESTS, ANSWERED], Cause.HEALTHY, 1.0),
        ([REQUESTS, LOST], Cause.SILENT_DROP, 0.7),
        (FORWARDED, Cause.ASYMMETRIC_RETURN, 0.5),
        ([*FORWARDED, Fact.of("not-retried")], Cause.ASYMMETRIC_RETURN, 0.45),
        (NO_REPLY, Cause.SILENT_DROP, 0.6),
        ([*NO_REPLY, Fact.of("single-point")], Cause.SILENT_DROP, 0.4),
        ([REQUESTS, Fact.of("no-reply", last="client", left_for=None, retried=False)], None, None),
        ([*NO_REPLY, REFUSED], Cause.PORT_CLOSED, 0.85),
        ([*FORWARDED, REFUSED], Cause.PORT_CLOSED, 0.85),
        ([*NO_REPLY, unreachable("port", 3, sender="198.51.100.1")], Cause.POLICY_REJECT, 0.75),
        ([*NO_REPLY, unreachable("prohibited", 13)], Cause.POLICY_REJECT, 0.85),
        ([*NO_REPLY, unreachable("other", 1, sender="198.51.100.1")], Cause.UNKNOWN, 0.5),
    ],
    ids=[
        "foreign",
        "foreign+rewritten",
        "resourced",
        "answered",
        "lost",
        "forwarded",
        "forwarded-once",
        "no-reply",
        "no-reply-one-point",
        "one-way",
        "port-unreachable",
        "port-unreachable-through-a-forwarder",
        "port-unreachable-from-a-box",
        "prohibited",
        "host-unreachable",
    ],
)
def test_the_udp_rules_decide(facts: Sequence[Fact], cause: Cause | None, confidence: float | None) -> None:
    decided = decide(facts, lambda spec: spec.udp)
    if cause is None:
        assert decided is None
        return
    assert decided is not None
    assert decided[0] is cause and decided[1].confidence == pytest.approx(confidence)
    # The facts a decision cites are the observed ones, in their order, and render to sentences.
    cited = list(decided[1].facts)
    assert cited == [fact for fact in facts if fact in cited]
    assert all(render_all(cited))


def test_a_reply_rewritten_names_the_origin() -> None:
    rewritten = Fact.of("reply-rewritten", point="natgw", sources=("10.0.2.5:80", "203.0.113.9:61000"))
    decided = decide([REQUESTS, FOREIGN, rewritten], lambda spec: spec.udp)
    assert decided is not None and decided[1].origin == "natgw"


@pytest.mark.parametrize(("address", "port"), [("10.0.0.1", 53), ("10.0.0.1", -1), ("fd00::1", 53), ("fd00::1", -1)])
def test_udp_endpoints_read_back_as_reports_write_them(address: str, port: int) -> None:
    """A datagram with no port to show (a later fragment) is written as its address alone and read back so."""
    from diag.capture.addresses import endpoint_text
    from diag.diagnose.udp import _endpoint

    assert _endpoint(endpoint_text(address, port)) == (address, port)
