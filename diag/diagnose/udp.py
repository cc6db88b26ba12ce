"""Verdicts on UDP conversations: requests without a reply, replies from the wrong source.

UDP has no handshake, so the client is whoever spoke first. A request is
answered when a datagram comes back to the client's port *from the address
and port the client wrote to*; a reply from any other source was re-sourced
on a path the request did not take (a NAT gateway translating the server's
direct reply), which a connected UDP socket drops.
"""

from __future__ import annotations

import ipaddress
from itertools import pairwise

import pandas as pd

from diag.capture.proto import ICMP, ICMP_DEST_UNREACHABLE
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Verdict
from diag.diagnose.forwarding import Handoff, handoff, path_points
from diag.diagnose.signals import Seen, covers, distinct_packets, where
from diag.report import Cause

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
    proper = [p for p, s in at_client if expected_from in s.sources]
    foreign = [(p, s) for p, s in at_client if expected_from not in s.sources]
    request_points = {c for p in requests for c in p.points}
    base = [f"{len(requests)} request(s) from the client to {expected_from}, first at {where(first.first)}"]

    if foreign:
        reply, sight = foreign[0]
        verdict = Verdict(
            Cause.ASYMMETRIC_RETURN,
            0.7,
            summary=f"the reply reached the client from {sight.src}, not from {expected_from} it wrote to: "
            "it left by another path and was re-sourced on the way",
        )
        verdict.evidence = [
            *base,
            f"{len(foreign)} reply datagram(s) reached the client from {sight.src} ({where(sight)}); "
            f"none came from {expected_from}",
        ]
        _add_reply_path(conn, verdict, reply, requests, request_points)
        _add_port_unreachable(verdict, ctx.packets, point, sight.src_addr)
        verdict.rule_out(Cause.SILENT_DROP, "the reply was not lost: it arrived from the wrong source")
        return verdict, reply, len(foreign)

    if proper:
        # The client got its answers; but a reply that was re-sourced on a path the request never took
        # (seen when the client's side was not captured) is still the asymmetric return.
        for reply in replies:
            rewritten = [s for s in reply.sights if s.capture not in request_points and len(s.sources) > 1]
            if rewritten:
                break
        else:
            return None
    resourced = [(p, s) for p in replies for s in p.sights if s.capture not in request_points and len(s.sources) > 1]
    if resourced:
        reply, sight = resourced[0]
        verdict = Verdict(
            Cause.ASYMMETRIC_RETURN,
            0.75,
            summary=(
                f"the server's reply left by {sight.capture}, which the request never passed, and was re-sourced there"
            ),
        )
        verdict.evidence = [
            *base,
            f"at {where(sight)} the reply's source was rewritten {' → '.join(sight.sources)}: "
            "the client will see a reply from an address it never wrote to",
        ]
        _add_reply_path(conn, verdict, reply, requests, request_points)
        verdict.rule_out(Cause.SILENT_DROP, "the reply left the server and was translated, not dropped")
        return verdict, reply, len(resourced)
    if proper:
        return None

    unanswered = [p for p in requests if p.at(point) is not None]
    if replies:
        reply = replies[0]
        extra = [c for c in reply.points if c not in request_points]
        if extra:
            verdict = Verdict(
                Cause.ASYMMETRIC_RETURN,
                0.7,
                summary="the server's reply left by a path the request did not take and never reached the client",
            )
            verdict.evidence = list(base)
            _add_reply_path(conn, verdict, reply, requests, request_points)
            return verdict, first, len(unanswered)
        verdict = Verdict(
            Cause.SILENT_DROP, 0.7, summary=f"the server's replies vanished after {reply.sights[-1].capture}"
        )
        verdict.evidence = [
            *base,
            f"the server answered ({len(replies)} reply datagram(s), first at {where(reply.first)}); "
            f"last seen at {reply.sights[-1].capture}, never at {point}",
        ]
        verdict.rule_out(Cause.ASYMMETRIC_RETURN, "the replies were seen only on the request's own path")
        return verdict, first, len(unanswered)
    retried = _looks_like_retries(unanswered) and len({p.digest for p in unanswered}) < len(unanswered)
    farthest = max(requests, key=lambda p: len(p.points))
    last = farthest.sights[-1].capture
    passed = handoff(conn, farthest, last)
    downstream = [c for c in ctx.captures if c not in request_points and covers(ctx.spans, c, first.ts_ref)]
    if (
        passed is not None
        and passed.dnat
        and passed.source_kept
        and not downstream
        and MIN_UNANSWERED_REQUESTS <= len(unanswered) <= MAX_RETRIES
    ):
        # A box that translated a few requests to a service and got nothing back: the requests need not be
        # retries of one datagram (a client asking twice differently is as telling), but then a short
        # one-way exchange looks the same, which the finding says.
        return _forwarded_unanswered(passed, base, unanswered, retried), first, len(unanswered)
    if not retried:
        # A lone datagram, a stream, or every datagram different: a one-way protocol (syslog, sFlow,
        # tunnels), not retried requests.
        return None
    verdict = Verdict(Cause.SILENT_DROP, 0.6, summary=f"UDP requests vanished after {last} with no reply")
    last_seen = (
        f"the requests were last seen leaving {last} for {passed.left_dst}"
        if passed is not None
        else f"the requests were last seen at {last}"
    )
    verdict.evidence = [*base, f"no reply at all; {last_seen}"]
    if len(ctx.captures) == 1:
        verdict.confidence = 0.4
        verdict.evidence.append(
            "not established: whether the server answered by another path (re-sourced or dropped on the way back); "
            "a capture on the server (pod) would show it"
        )
    return verdict, first, len(unanswered)


def _forwarded_unanswered(passed: Handoff, base: list[str], requests: list[Seen], retried: bool) -> Verdict:
    """A forwarding box sent the requests on, DNATed with the client's address kept, and no reply came back through it.

    The server replies to the client's own address, by its own side's route,
    not through the box that translated the request: from that box alone the
    asymmetric return's signature. A drop after the box looks the same.
    """
    box, target = passed.capture, passed.left_dst
    verdict = Verdict(
        Cause.ASYMMETRIC_RETURN,
        0.5 if retried else 0.45,
        summary=f"{box} forwarded the requests to {target} (DNAT, the client's address kept) and no reply ever came "
        "back through it: the reply most likely left by another path",
    )
    verdict.evidence = [
        *base,
        f"{box} received the requests for {passed.arrived_dst} and sent them on to {target} (TTL {passed.ttl_in} → "
        f"{passed.ttl_out}), still from the client's address {passed.arrived_src_addr}: the server will reply to the "
        f"client directly, and only a route back through {box} would let {box} undo its DNAT",
        f"{len(requests)} request(s) and not one reply came back through {box}",
        f"not established: whether the requests reached {passed.left_dst_addr} and where its replies went. A capture "
        f"on {passed.left_dst_addr} (or on the node in front of it) would confirm it: replies leaving there that "
        f"never reach {box}; a drop after {box} (silent-drop) looks the same from here",
    ]
    if not retried:
        verdict.evidence.append(
            "not established: that replies were expected. The requests are not one datagram retried at a "
            "client's pace, so a short one-way exchange (no reply by design) would look the same"
        )
    return verdict


def _add_reply_path(
    conn: Connection, verdict: Verdict, reply: Seen, requests: list[Seen], request_points: set[str]
) -> None:
    extra = [c for c in reply.points if c not in request_points]
    if len(reply.points) > 1 or extra:
        verdict.support(
            f"the request came {' → '.join(path_points(conn, requests[0]))}; "
            f"the reply went {' → '.join(path_points(conn, reply))}"
            + (f": {', '.join(extra)} saw the reply but never the request" if extra else ""),
            0.1 if extra else 0.0,
        )
    for sight in reply.sights:
        if len(sight.sources) > 1:
            verdict.support(f"{sight.capture} rewrote the reply's source {' → '.join(sight.sources)}", 0.1)
            verdict.origin = sight.capture


def _add_port_unreachable(verdict: Verdict, packets: pd.DataFrame, point: str, foreign_addr: str) -> None:
    at_point = packets[(packets["capture"].astype(str) == point) & (packets["proto"] == ICMP)]
    unreachable = at_point[at_point["icmp_type"] == ICMP_DEST_UNREACHABLE]
    hits = pd.concat(
        [
            unreachable[unreachable["inner_dst"].astype(str) == foreign_addr],
            unreachable[unreachable["inner_src"].astype(str) == foreign_addr],
        ]
    )
    if len(hits):
        verdict.support(
            f"the client answered {len(hits)} of them with ICMP port unreachable "
            f"({point} frame {int(hits['index'].iloc[0]) + 1}): "
            "its socket expected the reply from the address it wrote to",
            0.1,
        )
