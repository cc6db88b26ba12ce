"""Verdicts on UDP conversations: requests without a reply, replies from the wrong source.

UDP has no handshake, so the client is whoever spoke first. A request is
answered when a datagram comes back to the client's port *from the address
and port the client wrote to*; a reply from any other source was re-sourced
on a path the request did not take (a NAT gateway translating the server's
direct reply), which a connected UDP socket drops.

This module only observes: what the conversation shows becomes facts
(``diag.report.facts``: requests, replies from the wrong source, re-sourced
or lost replies, what a forwarding box did with unanswered requests). Which
cause those facts are is decided by the causes' own ``udp`` rules in
``diag.diagnose.causes``, and the ruled-out lines follow from the same facts.
"""

from __future__ import annotations

import ipaddress
import weakref
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from diag.capture.proto import ICMP, ICMP_DEST_UNREACHABLE, ICMPV6, UDP
from diag.diagnose.causes import decide
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Verdict
from diag.diagnose.forwarding import handoff, path_points
from diag.diagnose.signals import Seen, covers, distinct_packets, where
from diag.report import Cause
from diag.report.facts import Fact

# A lone unanswered datagram is common (fire-and-forget protocols); only
# repeated requests, or a reply seen somewhere, make it a symptom. A one-way
# stream (syslog, RTP, tunnels) is many datagrams close together: not retries.
MIN_UNANSWERED_REQUESTS = 2
MAX_RETRIES = 10
MIN_RETRY_GAP_NS = 200_000_000


def _looks_like_retries(requests: list[Seen]) -> bool:
    """A few datagrams spaced like a client's retries, rather than one datagram or a stream."""
    if not MIN_UNANSWERED_REQUESTS <= len(requests) <= MAX_RETRIES:
        return False
    times = sorted(p.first.ts_ns for p in requests)
    return min(b - a for a, b in pairwise(times)) >= MIN_RETRY_GAP_NS


def is_group_or_broadcast(address: str) -> bool:
    """Multicast, broadcast or unspecified: no single server is expected to answer."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_multicast or ip.is_unspecified or (ip.version == 4 and address.endswith(".255"))


def analyze_udp(conn: Connection, ctx: Context) -> tuple[Verdict, Seen, int] | None:
    """The finding on one UDP conversation: its facts observed here, the cause decided by the registry's rules."""
    observed = observe_udp(conn, ctx)
    if observed is None:
        return None
    facts, symptom, occurrences = observed
    decided = decide(facts, lambda spec: spec.udp)
    if decided is None or decided[0] is Cause.HEALTHY:
        return None
    cause, decision = decided
    verdict = Verdict(cause, decision.confidence, summary=decision.summary, origin=decision.origin)
    verdict.evidence = list(decision.facts)
    return verdict, symptom, occurrences


def observe_udp(conn: Connection, ctx: Context) -> tuple[list[Fact], Seen, int] | None:
    """What one UDP conversation shows, as facts; the symptom packet; how many packets show it.

    No cause is decided here: the facts say where the requests went, whether
    and from where replies reached the client, where they were re-sourced,
    and what a forwarding box did with unanswered requests. None when there
    is nothing to judge (no request; multicast and broadcast announcements).
    """
    packets = distinct_packets(conn)
    requests = [p for p in packets if p.from_orig]
    replies = [p for p in packets if not p.from_orig]
    if not requests:
        return None
    first = requests[0]
    head = conn.rows.iloc[0]
    if is_group_or_broadcast(str(head["dst"])) or is_group_or_broadcast(str(head["src"])):
        return None  # announcements and discovery (RIP, HSRP, DHCP, SSDP): not request and reply
    point = first.first.capture
    expected_from = first.first.dst
    at_client = [(p, s) for p in replies if (s := p.at(point)) is not None]
    # A NAT box on the way shows the reply arriving from the translated server and leaving un-NATed: any
    # copy there from the address the client wrote to is the proper answer.
    proper = [(p, s) for p, s in at_client if expected_from in s.sources]
    foreign = [(p, s) for p, s in at_client if expected_from not in s.sources]
    request_points = {c for p in requests for c in p.points}
    # A reply re-sourced at a point the request never passed: the client will not recognise it.
    resourced = [(p, s) for p in replies for s in p.sights if s.capture not in request_points and len(s.sources) > 1]
    unanswered = [p for p in requests if p.at(point) is not None]
    facts = [Fact.of("requests", count=len(requests), to=expected_from, packet=where(first.first))]

    if proper:
        sight = proper[0][1]
        facts.append(Fact.of("answered", count=len(proper), src=expected_from, packet=where(sight)))
    if foreign:
        sight = foreign[0][1]
        facts.append(Fact.of("reply-foreign", count=len(foreign), src=sight.src, packet=where(sight),
                             expected=expected_from))  # fmt: skip
    if resourced:
        sight = resourced[0][1]
        facts.append(Fact.of("reply-resourced", point=sight.capture, packet=where(sight), sources=sight.sources))
    # The reply the evidence follows: the one the client got from the wrong source, else the re-sourced one.
    followed = foreign[0][0] if foreign else resourced[0][0] if resourced else replies[0] if replies else None
    if followed is not None and not at_client and not resourced and all(c in request_points for c in replies[0].points):
        lost = replies[0]
        facts.append(Fact.of("reply-lost", count=len(replies), packet=where(lost.first),
                             last=lost.sights[-1].capture, client_point=point))  # fmt: skip
    if followed is not None:
        facts += _reply_path(conn, followed, requests, request_points)
    if foreign:
        facts += _port_unreachable(ctx.packets, point, foreign[0][1].src_addr)
    if not replies:
        facts += _refused(ctx.packets, requests)
    if not replies and unanswered:
        facts += _unanswered(conn, ctx, requests, unanswered, request_points)
    symptom, occurrences = (
        (foreign[0][0], len(foreign)) if foreign
        else (resourced[0][0], len(resourced)) if resourced
        else (first, len(unanswered))
    )  # fmt: skip
    return facts, symptom, occurrences


def _unanswered(
    conn: Connection, ctx: Context, requests: list[Seen], unanswered: list[Seen], request_points: set[str]
) -> list[Fact]:
    """Requests that drew no reply anywhere: how far they went, and what a forwarding box did with them."""
    first = requests[0]
    retried = _looks_like_retries(unanswered) and len({p.digest for p in unanswered}) < len(unanswered)
    farthest = max(requests, key=lambda p: len(p.points))
    last = farthest.sights[-1].capture
    passed = handoff(conn, farthest, last)
    facts = [Fact.of("no-reply", last=last, left_for=None if passed is None else passed.left_dst, retried=retried)]
    downstream = [c for c in ctx.captures if c not in request_points and covers(ctx.spans, c, first.ts_ref)]
    if (
        passed is not None
        and passed.dnat
        and passed.source_kept
        and not downstream
        and MIN_UNANSWERED_REQUESTS <= len(unanswered) <= MAX_RETRIES
    ):
        # A box that translated a few requests to a service and got nothing back. The server replies to the
        # client's own address, by its own side's route, not through the box that translated the request:
        # from that box alone the asymmetric return's signature. The requests need not be retries of one
        # datagram (a client asking twice differently is as telling), but then a short one-way exchange
        # looks the same, which the facts say.
        box = passed.capture
        facts += [
            Fact.of("forwarded", box=box, arrived=passed.arrived_dst, target=passed.left_dst,
                    ttl_in=passed.ttl_in, ttl_out=passed.ttl_out, client=passed.arrived_src_addr),
            Fact.of("none-back", count=len(unanswered), box=box),
            Fact.of("confirm-at", box=box, target=passed.left_dst_addr),
        ]  # fmt: skip
        if not retried:
            facts.append(Fact.of("not-retried"))
    if len(ctx.captures) == 1:
        facts.append(Fact.of("single-point"))
    return facts


def _reply_path(conn: Connection, reply: Seen, requests: list[Seen], request_points: set[str]) -> list[Fact]:
    """The request's and the reply's paths, and every point that rewrote the reply's source."""
    facts = []
    extra = [c for c in reply.points if c not in request_points]
    if len(reply.points) > 1 or extra:
        facts.append(
            Fact.of(
                "paths",
                request="request",
                reply="reply",
                request_path=tuple(path_points(conn, requests[0])),
                reply_path=tuple(path_points(conn, reply)),
                reply_only=tuple(extra),
            )
        )
    facts += [
        Fact.of("reply-rewritten", point=sight.capture, sources=sight.sources)
        for sight in reply.sights
        if len(sight.sources) > 1
    ]
    return facts


# ICMPv6 destination unreachable (RFC 4443) and the codes that mean a port or a policy refused it.
ICMPV6_DEST_UNREACHABLE = 1
PORT_UNREACHABLE = {ICMP: 3, ICMPV6: 4}
PROHIBITED = {ICMP: (9, 10, 13), ICMPV6: (1, 5, 6)}

# A UDP datagram as one point saw it: (point, source address, port, destination address, port).
Quote = tuple[str, str, int, str, int]


@dataclass(frozen=True)
class _Unreachables:
    """The analysis's ICMP destination unreachables, and those quoting UDP by the datagram they quote."""

    errors: pd.DataFrame
    by_quote: dict[Quote, list[int]]  # row positions in ``errors``


_unreachable_cache: tuple[weakref.ref[pd.DataFrame], _Unreachables] | None = None


def _unreachables(packets: pd.DataFrame) -> _Unreachables:
    """Every ICMP and ICMPv6 destination unreachable of the analysis, found once for all its conversations.

    A busy capture has thousands of unanswered conversations: the errors are
    picked out of the packet table and indexed by what they quote once
    (remembered for that table only), not searched for each conversation.
    """
    global _unreachable_cache
    if _unreachable_cache is not None and _unreachable_cache[0]() is packets:
        return _unreachable_cache[1]
    proto = packets["proto"].to_numpy()
    kind = packets["icmp_type"].to_numpy()
    v4 = (proto == ICMP) & (kind == ICMP_DEST_UNREACHABLE)
    chosen = v4 | ((proto == ICMPV6) & (kind == ICMPV6_DEST_UNREACHABLE))
    errors: pd.DataFrame = packets[chosen].copy()
    for column in ("capture", "src", "inner_src", "inner_dst"):
        errors[column] = errors[column].astype(str)
    by_quote: dict[Quote, list[int]] = {}
    quotes = zip(
        errors["capture"].tolist(),
        errors["inner_src"].tolist(),
        errors["inner_sport"].tolist(),
        errors["inner_dst"].tolist(),
        errors["inner_dport"].tolist(),
        errors["inner_proto"].tolist(),
        strict=True,
    )
    for position, (*quote, inner_proto) in enumerate(quotes):
        if inner_proto == UDP:
            by_quote.setdefault((quote[0], quote[1], quote[2], quote[3], quote[4]), []).append(position)
    found = _Unreachables(errors, by_quote)
    _unreachable_cache = (weakref.ref(packets), found)
    return found


def _endpoint(text: str) -> tuple[str, int]:
    """(address, port) from ``endpoint_text``'s form; port -1 where it wrote none (a later fragment, a cut header)."""
    if text.startswith("["):
        address, _, port = text[1:].partition("]:")
        return address, int(port)
    if text.count(":") != 1:  # an IPv4 address alone, or an IPv6 one (which is bracketed when it has a port)
        return text, -1
    address, port = text.split(":")
    return address, int(port)


def _refused(packets: pd.DataFrame, requests: list[Seen]) -> list[Fact]:
    """ICMP destination unreachable quoting one of the requests, at a point that saw that request.

    The quoted datagram is the request as that point saw it (a NAT on the way
    back translates the quote too), so it is matched point by point. Who sent
    the error says who refused: the host the request was addressed to, or a
    box on the way in its stead.
    """
    found = _unreachables(packets)
    if not found.by_quote:
        return []
    sent = {(s.capture, *_endpoint(s.src), *_endpoint(s.dst)) for p in requests for s in p.sights}
    positions = sorted({position for quote in sent for position in found.by_quote.get(quote, ())})
    if not positions:
        return []
    hits = found.errors.iloc[positions]
    # Quoted as the point nearest the client saw it (the address the client wrote to), its first there.
    order = {point: rank for rank, point in enumerate(requests[0].points)}
    rank = hits["capture"].map(lambda point: order.get(point, len(order))).to_numpy()
    first = hits.iloc[int(np.lexsort((hits["ts_ns"].to_numpy(), rank))[0])]
    family, code = int(first["proto"]), int(first["icmp_code"])
    reason = "port" if code == PORT_UNREACHABLE[family] else "prohibited" if code in PROHIBITED[family] else "other"
    return [
        Fact.of(
            "unreachable",
            # A forwarding point holds each error twice (arriving, leaving): counted once by its IP ID.
            count=int(hits.loc[hits["capture"] == first["capture"], "ip_id"].nunique()),
            reason=reason,
            code=code,
            sender=str(first["src"]),
            quoted=f"{first['inner_dst']}:{int(first['inner_dport'])}",
            packet=f"{first['capture']} frame {int(first['index']) + 1}",
        )
    ]


def _port_unreachable(packets: pd.DataFrame, point: str, foreign_addr: str) -> list[Fact]:
    """The client's ICMP port unreachable for replies from an address it never wrote to."""
    errors = _unreachables(packets).errors
    unreachable = errors[(errors["capture"] == point) & (errors["proto"].to_numpy() == ICMP)]
    hits = pd.concat(
        [
            unreachable[unreachable["inner_dst"].astype(str) == foreign_addr],
            unreachable[unreachable["inner_src"].astype(str) == foreign_addr],
        ]
    )
    if not len(hits):
        return []
    return [Fact.of("port-unreachable", count=len(hits), point=point, frame=int(hits["index"].iloc[0]) + 1)]
