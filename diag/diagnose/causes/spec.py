"""What the registry holds for one cause, and the shape of the rules it declares."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_findings import Writer
    from diag.diagnose.tcp_signals import TcpSignals


@dataclass(frozen=True)
class Decision:
    """What a cause's rule concludes from the facts: how sure, in one sentence, and which facts it rests on.

    ``facts`` are the observed facts the finding shows as its evidence (in the
    order observed); ``origin`` names the capture point that made the symptom,
    when one did.
    """

    confidence: float
    summary: str
    facts: tuple[Fact, ...]
    origin: str | None = None


# A rule reads the facts observed on one connection and says whether they are this cause's signature.
Rule = Callable[[Sequence[Fact]], Decision | None]
# Reads the facts a finding stands on and says why they exclude this cause, or None when they do not.
Exclusion = Callable[[Sequence[Fact]], str | None]


@dataclass(frozen=True)
class CauseSpec:
    """One cause: how serious it is, whether its RST is forged, what fixes it (each with its price), and what
    rules it in or out.

    ``severity`` is its class in the verdict's ranking (``diag.report.significance``)
    and ``forged`` says its RST is made by a box in someone else's name; every
    finding of the cause is made from its spec (``Finding.of(spec, ...)``),
    which sets both on it (``Finding.severity``, ``Finding.forged``): that is
    how the report and the plots, below the diagnosis, know them. ``absence`` says its symptom is something that never
    came (an answer): a live watch waits a retransmission's time before it is
    sure of it.

    ``udp`` is the rule that recognises the cause in a UDP conversation's
    facts (``diag.diagnose.udp`` observes them); the registry's ``decide``
    runs every cause's rule and keeps the most confident one the facts do not
    exclude. ``excluded_by`` reads the facts a finding of *another* cause
    stands on and says why they exclude this one; the diagnosis puts every
    such reason in the finding's ``ruled_out``, so the ruled-out lines follow
    from the facts in the JSON. ``excluded_kinds`` names the fact kinds
    ``excluded_by`` reads (the tests hold it to that).

    ``tcp_rule`` says, over the signal columns of every TCP connection at
    once (``diag.diagnose.tcp_signals.TcpSignals``), which connections this
    cause explains; every TCP connection is claimed by exactly one rule.
    ``tcp_finding`` writes a claimed connection's finding from the packets it
    names (``diag.diagnose.tcp_findings``), choosing among the cause's shapes
    by the columns, never deciding the cause again.
    """

    cause: Cause
    forged: bool  # the RST is made by a box in someone else's name
    severity: Severity  # its class in the ranking: a higher class always ranks first
    absence: bool = False  # its symptom is an answer that never came
    fixes: tuple[str, ...] = ()
    excluded_by: Exclusion | None = None
    excluded_kinds: frozenset[str] = frozenset()
    udp: Rule | None = None
    tcp_rule: Callable[[TcpSignals], np.ndarray] | None = None
    tcp_finding: Writer | None = None
    tcp_finding_reads_every_packet: bool = False  # its findings read all their connection's packets (rare ones)


def kinds(facts: Sequence[Fact], *wanted: str) -> list[Fact]:
    """The facts of the wanted kinds, in their order."""
    return [fact for fact in facts if fact.kind in wanted]


def first(facts: Sequence[Fact], kind: str) -> Fact | None:
    """The first fact of that kind, or None."""
    for fact in facts:
        if fact.kind == kind:
            return fact
    return None


def firsts(facts: Sequence[Fact]) -> dict[str, Fact]:
    """The first fact of each kind, by kind: what an exclusion asks of several kinds, found in one pass.

    The exclusions are asked of every finding for every other cause, a hundred thousand times on a busy capture:
    one dictionary each, not a scan of the facts for every kind they ask about.
    """
    return {fact.kind: fact for fact in reversed(facts)}


def left_its_sender(seen: Mapping[str, Fact]) -> str | None:
    """The claimed sender's own capture shows the RST leaving it: genuine, so no box forged it (``seen``: the
    facts by kind, ``firsts``)."""
    left = seen.get("left-own")
    return None if left is None else f"the {left['side']}'s own capture shows the RST leaving it: it is genuine"


def rst_phase(seen: Mapping[str, Fact]) -> str | None:
    """Whether the finding's RST ended an established connection or came during the handshake (None: no RST)."""
    rst = seen.get("rst")
    return None if rst is None else str(rst.values.get("phase"))


def answered_with(seen: Mapping[str, Fact], segment: str, side: str) -> Fact | None:
    """The ``answers`` fact when the RST answers that segment of that side (the server's SYN-ACK, say)."""
    answers = seen.get("answers")
    return answers if answers is not None and answers["segment"] == segment and answers["side"] == side else None


def listed(value: object) -> str:
    """A fact's tuple of names as text ("a, b")."""
    return ", ".join(str(item) for item in value) if isinstance(value, tuple) else str(value)


def host_of(endpoint: str) -> str:
    """The address of an "addr:port" endpoint (IPv6 as "[addr]:port")."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


def udp_answered(seen: Mapping[str, Fact]) -> bool:
    """The server answered a UDP conversation's requests (whether or not the answer reached the client)."""
    return not seen.keys().isdisjoint(("answered", "reply-foreign", "reply-resourced", "reply-lost"))
