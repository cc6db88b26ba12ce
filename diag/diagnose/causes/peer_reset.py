"""peer-reset: An endpoint really aborted an established connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diag.diagnose import tcp
from diag.diagnose.causes.spec import CauseSpec, firsts, rst_phase
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context
from diag.diagnose.tcp_findings import Outcome, rst_outcome
from diag.report import Cause, Severity
from diag.report.facts import Fact

if TYPE_CHECKING:
    from diag.diagnose.tcp_signals import TcpSignals


def excluded_by(facts: Sequence[Fact]) -> str | None:
    """Why the facts say the RST's claimed sender did not reset the connection itself, or None.

    Its own capture not showing the RST, a TTL that puts the maker closer than
    the claimed sender, a captured point that made it, or the client
    retransmitting its SYN afterwards (which a client that had reset would not do), still sending after it, or
    a RST back sooner than it could have answered;
    else a RST that answers a challenge ACK, refuses a SYN the server accepted, or came before any connection
    was established.
    """
    reasons = []
    sides = [str(f["side"]) for f in facts if f.kind in ("absent-at-own", "ttl-hops")]
    side = sides[0] if sides else "client"
    if any(f.kind == "absent-at-own" for f in facts):
        reasons.append(f"the {side}'s capture never shows it leaving")
    closer = [f for f in facts if f.kind == "ttl-hops" and f.number("rst_hops") < f.number("claimed_hops")]
    if closer:
        hops = closer[0].number("claimed_hops") - closer[0].number("rst_hops")
        reasons.append(f"its TTL puts its sender {hops} hop(s) closer than the {closer[0]['side']}")
    reasons += [f"{f['point']} made it" for f in facts if f.kind == "origin" and f["point"] is not None]
    if any(f.kind == "syn-retried" for f in facts):
        reasons.append("the client retransmitted the same SYN afterwards, which it would not do after resetting")
    reasons += [f"the {f['side']} kept sending after it" for f in facts if f.kind == "kept-sending"]
    reasons += [
        f"it came back at {f['point']} faster than the {f['side']} could have answered"
        for f in facts
        if f.kind == "rst-too-soon"
    ]
    if reasons:
        return f"a genuine {side} reset is ruled out: " + "; ".join(reasons)
    seen = firsts(facts)
    if "challenge-ack" in seen:
        return "the RST is the client's answer to a challenge ACK, not an abort of a working connection"
    if "syn-accepted" in seen:
        return "the server was accepting the connection, not aborting it"
    if rst_phase(seen) == "handshake":
        return "the RST came during the handshake: there was no established connection to abort"
    return None


def tcp_rule(s: TcpSignals) -> np.ndarray:
    """An established connection ended by a RST its claimed sender really sent (nothing says otherwise)."""
    rule: np.ndarray = s.aborted() & ~s.forged
    return rule


def tcp_finding(conn: Connection, s: TcpSignals, k: int, ctx: Context) -> Outcome:
    """The RST, the packet it answers and what says it is its sender's own."""
    genuine = bool(s.genuine[k])
    return rst_outcome(
        s, k, ctx, lambda sides, rst, trigger, claim, base: tcp.peer_reset(sides, rst, trigger, genuine, claim, base)
    )


SPEC = CauseSpec(
    cause=Cause.PEER_RESET,
    forged=False,
    severity=Severity.ORDINARY,
    excluded_by=excluded_by,
    excluded_kinds=frozenset(
        {"absent-at-own", "ttl-hops", "origin", "syn-retried", "kept-sending", "challenge-ack", "syn-accepted", "rst"}
        | {"rst-too-soon"}
    ),
    tcp_rule=tcp_rule,
    tcp_finding=tcp_finding,
    fixes=(
        "Look at the application that sent the RST: an abortive close (SO_LINGER 0), a crash, or closing the "
        "socket with unread data; trade-off: none at the network level, this is the endpoint's decision.",
    ),
)
