"""injected-reset: A device on the path injected a RST in an endpoint's name while the genuine traffic went on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import CauseSpec, firsts, left_its_sender
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.signals import Seen
from diag.diagnose.tcp import Sides
from diag.diagnose.tcp_findings import Outcome, rst_outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """A forged RST ended an established connection (its claimed sender went on sending, or no idle gap explains
    it); or a RST in the server's name refused a SYN the server accepted (a race) or that went on past its maker."""
    aborted = s.aborted() & s.forged & ((s.kept_sending > 0) | ~s.idle)
    refused = s.refusing() & ((s.answer >= 0) | s.syn_went_past)
    rule: np.ndarray = aborted | refused
    return rule


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """A RST its claimed sender's own capture shows leaving it was not injected in that sender's name; one that
    answers a challenge ACK is the client's stack; one the client answered by retrying its SYN, or that came after
    an idle gap, raced no genuine traffic."""
    seen = firsts(facts)
    if "challenge-ack" in seen:
        return "the RST's sender is the client and it follows the challenge ACK in sequence"
    if (retried := seen.get("syn-retried")) is not None:
        return (
            f"the client sent the same SYN (ISN {retried['isn']}) again after the RST: it never got the server's "
            "answer, so no genuine traffic went on for an injected RST to race"
        )
    if (idle := seen.get("idle-gap")) is not None:
        return (
            f"the RST answers the first segment after {idle.number('gap_ns') / 1e9:.1f} s of silence, as a middlebox "
            "that dropped the idle flow does"
        )
    return left_its_sender(seen)


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """The forged RST on an established connection (its sender kept sending, or not), the RST racing the
    server's SYN-ACK, or the one answering a SYN it let through: the columns say which."""
    p = s.packets
    forged = bool(s.forged[k])
    if s.aborted()[k]:
        writer = tcp.kept_sending if s.kept_sending[k] else tcp.forged_abort
        return rst_outcome(s, k, ctx, writer, every_packet=True)
    if s.answer[k] >= 0:
        answer = p.seen(int(s.answer[k]))
        return rst_outcome(
            s,
            k,
            ctx,
            lambda sides, rst, trigger, claim, base: tcp.raced_handshake(sides, rst, answer, forged, claim, base),
            every_packet=True,
        )

    def let_through(sides: Sides, rst: Seen, trigger: Seen | None, claim: list[Line], base: list[Line]) -> Verdict:
        assert trigger is not None
        beyond = tcp.syn_went_past(rst, trigger)
        assert beyond is not None, "the columns saw the SYN go on"
        return tcp.let_through(sides, rst, trigger, beyond, claim, base)

    return rst_outcome(s, k, ctx, let_through)


SPEC = CauseSpec(
    cause=Cause.INJECTED_RESET,
    forged=True,
    severity=Severity.INCIDENT,
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    tcp_finding_reads_every_packet=True,
    excluded_by=excluded_by,
    excluded_kinds=frozenset({"left-own", "challenge-ack", "syn-retried", "idle-gap"}),
    fixes=(
        "Find the injecting device on the path (IPS/DPI, firewall with TCP reset on policy match) from the hop "
        "distance in the evidence, and change its policy; trade-off: depends on why it resets.",
        "Encrypt the transport (TLS does not stop RSTs, but a VPN/IPsec tunnel hides the flow from injectors); "
        "trade-off: tunnel overhead and operations.",
    ),
)
