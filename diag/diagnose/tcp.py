"""The findings of TCP connections as sentences and facts, written from the few packets each one names.

Which cause explains a connection is decided for every connection at once
over signal columns (``diag.diagnose.tcp_signals``, each cause's
``tcp_rule``); ``diag.diagnose.tcp_columns`` then calls the function here
that writes that cause's finding: its summary, its evidence (facts, and
sentences not yet facts), its origin and its confidence. The decisive
symptom is the first RST that is not part of a normal close; without one,
SYNs the client never saw answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from diag.capture.proto import ACK
from diag.diagnose.connections import Connection
from diag.diagnose.context import Context, Line, Verdict
from diag.diagnose.forwarding import Handoff, handoff, path_points
from diag.diagnose.signals import (
    Seen,
    Sight,
    after_at,
    arrived_from_neighbour,
    covers,
    generated_at,
    hops,
    ms,
    shared_subnet,
    ttl_consistent,
    ttl_mismatch,
    usual_hops,
    where,
)
from diag.report import Cause
from diag.report.facts import Fact

# An idle gap counts when it is this long and much longer than a round trip.
IDLE_GAP_MIN_NS = 1_000_000_000
IDLE_GAP_RTTS = 10
# An unanswered SYN counts once retransmitted, or when the capture ran this long after it.
UNANSWERED_WAIT_NS = 1_000_000_000


@dataclass(frozen=True)
class Sides:
    """The connection's packets and which captures were taken on its two hosts."""

    packets: list[Seen]
    client_capture: str | None
    server_capture: str | None

    def own_capture(self, from_orig: bool) -> str | None:
        return self.client_capture if from_orig else self.server_capture


def side_name(from_orig: bool) -> str:
    return "client" if from_orig else "server"


def _before(packets: list[Seen], packet: Seen) -> list[Seen]:
    return [p for p in packets if p.ts_ref < packet.ts_ref or (p.ts_ref == packet.ts_ref and p.pkt < packet.pkt)]


def _origin_fact(text: str, point: str | None = None) -> Fact:
    """Where the RST was made: ``point`` when that is a captured point, ``text`` as the evidence says it."""
    return Fact.of("origin", point=point, text=text)


def _paths_fact(conn: Connection, syn: Seen, synack: Seen, reply_only: list[str]) -> Fact:
    """The request's and the reply's paths, and the points only the reply passed."""
    return Fact.of(
        "paths",
        request="SYN",
        reply="SYN-ACK",
        request_path=tuple(path_points(conn, syn)),
        reply_path=tuple(path_points(conn, synack)),
        reply_only=tuple(reply_only),
    )


def _claimed(rst: Seen) -> str:
    return rst.first.src_addr


def _rst_maker(rst: Seen, sides: Sides) -> str | None:
    """The capture point that made the RST, or the addressed host's point when a neighbour of it did.

    Without a link-layer direction (Ethernet pcap) a RST reaching the host it
    is addressed to with an initial TTL looks made there, and the callers
    read that as "a device next to" the host; with one (Linux cooked, pcapng
    flags) it shows as received, and must mean the same.
    """
    maker = generated_at(rst)
    if maker is None and (arrival := arrived_from_neighbour(rst)) == sides.own_capture(not rst.from_orig):
        return arrival
    return maker


def _origin(rst: Seen, sides: Sides, trigger: Seen | None) -> tuple[str | None, str]:
    """The captured point that made the RST, else a description of where it came from."""
    maker = _rst_maker(rst, sides)
    if maker is not None and maker == sides.own_capture(not rst.from_orig):
        return None, f"a device next to {maker} (the RST reaches it with TTL {rst.first.ttl}, an initial TTL)"
    if maker is not None:
        return maker, f"made at {maker} (first seen there with TTL {rst.first.ttl}, an initial TTL)"
    first = rst.first
    distance = hops(first.ttl) + 1
    away = f"{distance} hop{'s' if distance > 1 else ''}"
    sent = trigger.at(first.capture) if trigger is not None else None
    if sent is not None and sent.forwarded and trigger is not None and trigger.sights[-1].capture == first.capture:
        kind = "SYN-ACK" if trigger.is_synack else "packet it answers"
        return None, f"{away} beyond {first.capture}, on the route {first.capture} forwarded the {kind} by"
    return None, f"a device {away} from {first.capture}, not captured"


def genuineness(sides: Sides, rst: Seen, trigger: Seen | None, ctx: Context) -> tuple[bool, bool, list[Line]]:
    """(genuine, forged, evidence lines) for the RST's claim about its sender; ``trigger`` is the packet it answers."""
    lines: list[Line] = []
    own = sides.own_capture(rst.from_orig)
    who = side_name(rst.from_orig)
    maker = _rst_maker(rst, sides)
    seen_leaving_own = own is not None and maker == own
    absent_at_own = own is not None and rst.at(own) is None and covers(ctx.spans, own, rst.ts_ref)
    if seen_leaving_own:
        assert own is not None
        sight = rst.at(own)
        assert sight is not None
        lines.append(Fact.of("left-own", side=who, packet=where(sight), ttl=sight.ttl))
    if absent_at_own:
        lines.append(Fact.of("absent-at-own", side=who, point=own))
    mismatches = ttl_mismatch(sides.packets, rst)
    if mismatches:
        # The point nearest the RST's destination tells it best; the others only agree.
        others = len(mismatches) - 1
        nearest = mismatches[-1]
        lines.append(Fact(nearest.kind, (*nearest.items, ("other_points", others))) if others else nearest)
    other_host = sides.own_capture(not rst.from_orig)
    claimed_hops_at_maker = usual_hops(sides.packets, rst.from_orig, maker) if maker else None
    # The RST arrives with an initial TTL where the other side's packets start, nothing else of its claimed
    # sender reached that point, and the two share a subnet: the claimed sender is a neighbour on that link,
    # and an initial TTL is what its own RST shows there (a point on the link cannot tell which host it is on).
    subnet = neighbours_subnet(rst, maker, own, other_host, claimed_hops_at_maker)
    made_elsewhere = (
        maker is not None
        and maker != own
        and subnet is None
        and (own is not None or maker == other_host or claimed_hops_at_maker not in (None, 0))
    )
    # A point that made a RST in the client's name for a connection whose client
    # packets it never saw (it only got the server's answer) is not the client.
    never_saw_client = (
        maker is not None
        and maker != own
        and rst.from_orig
        and trigger is not None
        and trigger.at(maker) is not None
        and not any(p.from_orig and not p.is_rst and p.at(maker) is not None for p in sides.packets)
    )
    if never_saw_client and not made_elsewhere:
        made_elsewhere = True
        lines.append(
            f"{maker} made the RST in the client's name (TTL {rst.first.ttl}, a single copy) yet never saw a packet "
            f"from the client, only the server's answer arriving: it is a box on the reply's way, not the client"
        )
    elif made_elsewhere and maker == other_host and claimed_hops_at_maker is None:
        # Nothing else from the claimed sender reached this point: only the TTL itself speaks.
        lines.append(
            f"the RST reaches {maker} with an initial TTL ({rst.first.ttl}): a device next to {maker} made it "
            f"(no other packet of the {who} reached {maker} to compare hop counts with)"
        )
    elif made_elsewhere and maker == other_host:
        lines.append(
            f"the RST reaches {maker} with an initial TTL ({rst.first.ttl}) although the {who}'s own packets arrive "
            f"there from {claimed_hops_at_maker} router(s) away: a device next to {maker} made it"
        )
    elif made_elsewhere:
        lines.append(Fact.of("rst-made-at", point=maker, ttl=rst.first.ttl))
    forged = absent_at_own or bool(mismatches) or made_elsewhere
    genuine = not forged and (seen_leaving_own or subnet is not None or ttl_consistent(sides.packets, rst))
    if genuine and not seen_leaving_own:
        lines.append(genuine_line(rst, maker, subnet))
    return genuine, forged, lines


def neighbours_subnet(
    rst: Seen, maker: str | None, own: str | None, other_host: str | None, claimed_hops_at_maker: int | None
) -> str | None:
    """The subnet the RST's two ends share when only that, not the TTL, can tell who made it; else None.

    The RST reaches the point where the other side's packets start (``maker``
    is that side's capture) with an initial TTL, no capture is known for its
    claimed sender and none of that sender's other packets reached the point.
    If the two ends share a subnet, the claimed sender is a neighbour on the
    point's link and its own RST looks exactly like this.
    """
    if maker is None or maker != other_host or own is not None or claimed_hops_at_maker is not None:
        return None
    return shared_subnet(rst.first.src_addr, rst.first.dst_addr)


def genuine_line(rst: Seen, maker: str | None, subnet: str | None) -> Fact:
    """Why a RST not seen leaving its sender's capture is taken for its own."""
    who = side_name(rst.from_orig)
    if subnet is None:
        return Fact.of("ttl-consistent", side=who)
    other = side_name(not rst.from_orig)
    return Fact.of("on-link", side=who, other=other, subnet=subnet, point=maker, ttl=rst.first.ttl)


def rst_lines(rst: Seen, trigger: Seen | None, handshake_seen: bool, established: bool) -> list[Line]:
    """The lines every RST verdict starts with: the RST itself (and whether it ended an established connection
    or came during the handshake), the packet it answers, a missing handshake."""
    first = rst.first
    base: list[Line] = [
        Fact.of(
            "rst",
            side=side_name(rst.from_orig),
            claimed=_claimed(rst),
            packet=where(first),
            ttl=first.ttl,
            ip_id=first.ip_id,
            phase="established" if established else "handshake",
        )
    ]
    if trigger is not None:
        kind = "SYN-ACK" if trigger.is_synack else "SYN" if trigger.is_pure_syn else "segment"
        base.append(
            Fact.of(
                "answers",
                side=side_name(trigger.from_orig),
                segment=kind,
                seq=trigger.seq,
                ack=trigger.ack,
                packet=where(trigger.first),
            )
        )
    if not handshake_seen:
        base.append("no handshake in the captures: which side is the client is a guess (the first to send)")
    return base


def challenge_ack(packets: list[Seen], rst: Seen) -> Seen | None:
    """A server pure ACK that answers a SYN without acknowledging it (RFC 5961 challenge ACK) and the RST answers."""
    earlier = _before(packets, rst)
    for position, packet in reversed(list(enumerate(earlier))):
        if packet.from_orig or not packet.is_pure_ack or rst.seq != packet.ack:
            continue
        # It must answer a SYN: the client's last packet before it is a SYN it does not acknowledge.
        client_before = [p for p in earlier[:position] if p.from_orig and not p.is_rst]
        if client_before and client_before[-1].is_pure_syn and packet.ack != (client_before[-1].seq + 1) % 2**32:
            return packet
    return None


def tuple_reuse(
    sides: Sides, rst: Seen, challenge: Seen, genuine: bool, claim_lines: list[Line], base: list[Line]
) -> Verdict:
    syn = next(p for p in reversed(_before(sides.packets, challenge)) if p.is_pure_syn and p.from_orig)
    verdict = Verdict(
        Cause.TUPLE_REUSE,
        0.7,
        summary="a new SYN reused a 4-tuple the server still held: challenge ACK, then the client's RST",
    )
    verdict.evidence = [
        *base,
        Fact.of(
            "challenge-ack",
            isn=syn.seq,
            syn_packet=where(syn.first),
            ack=challenge.ack,
            expected=(syn.seq + 1) % 2**32,
            packet=where(challenge.first),
        ),
        f"the client's RST carries seq {rst.seq} = that ACK's ack number: the client's stack rejecting it",
        *claim_lines,
    ]
    if genuine:
        verdict.confidence += 0.15
    # The client's own stack made the RST: name its capture when it shows the RST leaving.
    if sides.client_capture is not None and _rst_maker(rst, sides) == sides.client_capture:
        verdict.origin = sides.client_capture
    else:
        where_made = _origin(rst, sides, challenge)[1]
        # A RST in line with the client's other packets is its own stack's, wherever it was seen.
        verdict.origin_description = f"the client's stack ({where_made})" if genuine else where_made
        verdict.evidence.append(_origin_fact(verdict.origin_description))
    later = [p for p in sides.packets if p.is_synack and not p.from_orig and p.ts_ref > rst.ts_ref]
    if later:
        verdict.support(f"a new handshake then succeeded ({where(later[0].first)})", 0.1)
    return verdict


def raced_handshake(
    sides: Sides, rst: Seen, answer: Seen, forged: bool, claim_lines: list[Line], base: list[Line]
) -> Verdict:
    packets = sides.packets
    syn = next((p for p in packets if p.is_pure_syn and p.from_orig and (p.seq + 1) % 2**32 == answer.ack), None)
    origin, origin_text = _origin(rst, sides, syn)
    verdict = Verdict(
        Cause.INJECTED_RESET,
        0.7,
        summary="a device on the path refused the SYN with a RST in the server's name, racing the server, "
        "whose genuine SYN-ACK to the same SYN followed",
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = list(base)
    verdict.support(Fact.of("syn-accepted", seq=answer.seq, ack=answer.ack, packet=where(answer.first)))
    for sight in rst.sights:
        later = answer.at(sight.capture)
        if later is not None and later.ts_ns > sight.ts_ns:
            verdict.support(
                f"at {sight.capture} the genuine SYN-ACK arrived {ms(later.ts_ns - sight.ts_ns)} after the RST: "
                "something answered before the server could",
                0.1,
            )
            break
    for line in claim_lines:
        verdict.support(line, 0.05)
    if not forged:
        verdict.evidence.append(
            "not established by the RST's own marks: its TTL and presence do not set it apart from the server's "
            "packets at these points; the two answers to one SYN do"
        )
    verdict.support(_origin_fact(origin_text))
    return verdict


def syn_went_past(rst: Seen, syn: Seen) -> Sight | None:
    """A sighting of the SYN past the device that made a RST answering it, at a point that never saw that RST.

    The RST reaches its first point after h routers, so its maker is h hops
    beyond that point; the SYN, seen there after s hops, is past the maker
    once seen with s + h + 1 hops or more. A device that refuses a SYN stops
    it; one that lets it through and still answers in the server's name
    injected its answer.
    """
    first = rst.first
    at_rst = syn.at(first.capture)
    if at_rst is None:
        return None
    if generated_at(rst) == first.capture and at_rst.forwarded:
        return at_rst  # the point that made the RST also sent the SYN on
    past = hops(at_rst.ttl) + hops(first.ttl) + 1
    # A server that made the RST would show it leaving where the SYN arrived: a point that has the SYN
    # but not the RST was running when the RST would have passed it.
    for sight in syn.sights:
        if hops(sight.ttl) >= past and rst.at(sight.capture) is None:
            return sight
    return None


def let_through(
    sides: Sides, rst: Seen, syn: Seen, beyond: Sight, claim_lines: list[Line], base: list[Line]
) -> Verdict:
    origin, origin_text = _origin(rst, sides, syn)
    verdict = Verdict(
        Cause.INJECTED_RESET,
        0.65,
        summary="a device on the path answered the SYN with a RST in the server's name yet let the SYN go on",
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = list(base)
    went_on = Fact.of(
        "syn-went-past",
        point=beyond.capture,
        packet=where(beyond),
        hops=hops(beyond.ttl),
        made_there=beyond.capture == rst.first.capture,
    )
    verdict.support(went_on, 0.1)
    for claim in claim_lines:
        verdict.support(claim, 0.05)
    verdict.support(_origin_fact(origin_text))
    verdict.evidence.append(
        "not established: why no SYN-ACK came back (none in the captures): the same device may have dropped it, "
        "or the server ignored the SYN"
    )
    return verdict


def peer_reset(
    sides: Sides, rst: Seen, trigger: Seen | None, genuine: bool, claim_lines: list[Line], base: list[Line]
) -> Verdict:
    """An endpoint aborted an established connection: its own RST, or one nothing marks as another's."""
    who = side_name(rst.from_orig)
    confidence = 0.8 if genuine else 0.45
    verdict = Verdict(Cause.PEER_RESET, confidence, summary=f"the {who} aborted an established connection")
    made_at = generated_at(rst)
    verdict.origin = made_at if made_at == sides.own_capture(rst.from_orig) else None
    verdict.evidence = [*base, *claim_lines]
    if not genuine:
        missing = "client" if rst.from_orig else "server"
        verdict.evidence.append(
            f"could not confirm the {who} sent it: no capture on the {missing} and none of its other packets to "
            "compare TTLs with; a capture on that host would settle it"
        )
    if rst.from_orig and not rst.has(ACK) and trigger is not None and trigger.payload_len > 0:
        verdict.confidence = min(verdict.confidence, 0.55)
        verdict.evidence.append(
            "the client answered the server's data with a bare RST (no ACK), as a stack does for a connection "
            "it no longer has: it was torn down on the client's side without a FIN (a RST injected towards the "
            "client, or a client restart); a capture at the client would show which"
        )
    return verdict


def kept_sending(sides: Sides, rst: Seen, trigger: Seen | None, claim_lines: list[Line], base: list[Line]) -> Verdict:
    """A forged RST ended an established connection whose claimed sender went on sending: injected."""
    who = side_name(rst.from_orig)
    after: list[Seen] = []
    for sight in rst.sights:
        after += after_at(sides.packets, sight.capture, sight, lambda p: p.from_orig == rst.from_orig and not p.is_rst)
    origin, origin_text = _origin(rst, sides, trigger)
    verdict = Verdict(
        Cause.INJECTED_RESET,
        0.75,
        summary=f"a device on the path injected a RST as the {who} while the {who} kept sending",
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = [*base, *claim_lines]
    verdict.support(
        Fact.of("kept-sending", side=who, count=len({p.pkt for p in after}), packet=where(after[0].first)), 0.15
    )
    verdict.support(_origin_fact(origin_text))
    return verdict


def idle_timeout(sides: Sides, rst: Seen, trigger: Seen, claim_lines: list[Line], base: list[Line]) -> Verdict:
    """A forged RST answered the first segment after a long silence: a middlebox that dropped the idle flow."""
    who = side_name(rst.from_orig)
    gap = _idle_gap(sides.packets, trigger) or 0
    rtt = _handshake_rtt(sides.packets)
    origin, origin_text = _origin(rst, sides, trigger)
    verdict = Verdict(
        Cause.IDLE_TIMEOUT, 0.7, summary=f"a middlebox dropped the idle flow's state and reset it as the {who}"
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = [*base, *claim_lines]
    verdict.support(Fact.of("idle-gap", gap_ns=gap, rtt_ns=rtt), 0.15)
    other = sides.own_capture(rst.from_orig)
    if other is not None and trigger.at(other) is None:
        verdict.support(f"that segment never reached the {who}'s capture ({other}): a box on the way answered it", 0.05)
    verdict.support(_origin_fact(origin_text))
    return verdict


def forged_abort(sides: Sides, rst: Seen, trigger: Seen | None, claim_lines: list[Line], base: list[Line]) -> Verdict:
    """A forged RST ended an established connection, with neither genuine traffic after it nor an idle gap."""
    who = side_name(rst.from_orig)
    origin, origin_text = _origin(rst, sides, trigger)
    verdict = Verdict(
        Cause.INJECTED_RESET,
        0.5,
        summary=f"a RST made by another device than the {who} ended an established connection",
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = [*base, *claim_lines, _origin_fact(origin_text)]
    return verdict


def _idle_gap(packets: list[Seen], trigger: Seen | None) -> int | None:
    if trigger is None:
        return None
    earlier = _before(packets, trigger)
    if not earlier:
        return None
    return trigger.ts_ref - max(p.ts_ref for p in earlier)


def _handshake_rtt(packets: list[Seen]) -> int | None:
    """SYN to the client's ACK of the SYN-ACK, at any one capture (same clock)."""
    best: int | None = None
    for synack in (p for p in packets if p.is_synack and not p.from_orig):
        for syn in (p for p in packets if p.is_pure_syn and p.from_orig and (p.seq + 1) % 2**32 == synack.ack):
            for ack in (p for p in packets if p.from_orig and p.flags == ACK and p.ack == (synack.seq + 1) % 2**32):
                for sight in syn.sights:
                    end = ack.at(sight.capture)
                    if end is not None and end.ts_ns > sight.ts_ns:
                        rtt = end.ts_ns - sight.ts_ns
                        best = rtt if best is None else min(best, rtt)
    return best


@dataclass(frozen=True)
class Refusal:
    """Where the SYN a server-side handshake RST refuses went: what tells the server's refusal from a firewall's."""

    syn: Seen | None
    server: str | None  # the server's capture, or the point where the SYN ended when the RST was made there
    syn_at_server: bool
    syn_missing_at_server: bool  # the server's own capture was running and never saw the SYN
    downstream_missing: list[str]  # captures further along the SYN's path that were running and never saw it
    origin: str | None
    origin_text: str


def refusal(sides: Sides, rst: Seen, syn: Seen | None, ctx: Context) -> Refusal:
    maker = _rst_maker(rst, sides)
    server = sides.server_capture
    if (
        server is None
        and syn is not None
        and maker is not None
        and maker == syn.sights[-1].capture
        and maker != sides.client_capture
    ):
        server = maker  # the RST comes from where the SYN ended: that point is the server's host
    syn_missing_at_server = (
        syn is not None
        and sides.server_capture is not None
        and syn.at(sides.server_capture) is None
        and covers(ctx.spans, sides.server_capture, syn.ts_ref)
    )
    downstream_missing = []
    if syn is not None:
        last, points = syn.sights[-1].capture, syn.points
        for capture in ctx.captures:
            if capture not in points and covers(ctx.spans, capture, syn.ts_ref) and ctx.is_beyond(capture, last):
                downstream_missing.append(capture)
    origin, origin_text = _origin(rst, sides, syn)
    return Refusal(
        syn=syn,
        server=server,
        syn_at_server=syn is not None and server is not None and syn.at(server) is not None,
        syn_missing_at_server=syn_missing_at_server,
        downstream_missing=downstream_missing,
        origin=origin,
        origin_text=origin_text,
    )


def policy_reject(conn: Connection, refused: Refusal, claim_lines: list[Line], base: list[Line]) -> Verdict:
    """A firewall refused the SYN in the server's name: the SYN never got there, or the RST is not the server's."""
    syn, origin, origin_text = refused.syn, refused.origin, refused.origin_text
    verdict = Verdict(
        Cause.POLICY_REJECT, 0.75, summary="a firewall on the path rejected the SYN with a RST in the server's name"
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = [*base, *claim_lines]
    if syn is not None:
        verdict.support(_last_seen(conn, syn), 0.0)
    if refused.syn_missing_at_server:
        verdict.support(Fact.of("syn-missing-at-server", point=refused.server), 0.15)
    if refused.downstream_missing:
        verdict.support(Fact.of("syn-missing-further", points=tuple(refused.downstream_missing)), 0.1)
    verdict.support(_origin_fact(origin_text), 0.05 if origin else 0.0)
    if not (refused.syn_missing_at_server or refused.downstream_missing):
        # Only the RST's own marks say it was forged: where the SYN went is unknown.
        verdict.evidence.append(
            "not established: how far the SYN went (no capture further along the path); the verdict rests on "
            "the RST's own marks, and a capture on the server or its node would confirm it"
        )
    return verdict


def port_closed(rst: Seen, refused: Refusal, genuine: bool, claim_lines: list[Line], base: list[Line]) -> Verdict:
    """The server refused the SYN: nothing listens on the port."""
    syn, origin, origin_text, server = refused.syn, refused.origin, refused.origin_text, refused.server
    confidence = 0.85 if (genuine or refused.syn_at_server) else 0.5
    verdict = Verdict(
        Cause.PORT_CLOSED, confidence, summary="the server refused the connection: nothing listens on the port"
    )
    verdict.origin = origin if origin == server else None
    verdict.origin_description = origin_text
    verdict.evidence = [*base, *claim_lines]
    if verdict.origin is None:
        verdict.evidence.append(_origin_fact(origin_text))
    if rst.has(ACK) and syn is not None and rst.ack == (syn.seq + 1) % 2**32:
        verdict.support(
            f"RST+ACK with ack {rst.ack} = the SYN's ISN + 1 and seq {rst.seq}: a kernel refusing a SYN", 0.05
        )
    if refused.syn_at_server:
        verdict.support(Fact.of("syn-at-server", point=server), 0.05)
    else:
        verdict.evidence.append(
            "could not establish that the SYN reached the server: with no server-side capture, a firewall rejecting "
            "in the server's name (policy-reject) looks the same; a capture on the server or its node would "
            "separate them"
        )
    return verdict


def unknown_handshake_reset(claim_lines: list[Line], base: list[Line]) -> Verdict:
    """A RST from the client during the handshake that fits no known pattern."""
    verdict = Verdict(Cause.UNKNOWN, 0.3, summary="RST from the client during the handshake that fits no known pattern")
    verdict.evidence = base + claim_lines
    return verdict


def synack_reset(
    conn: Connection,
    sides: Sides,
    rst: Seen,
    synack: Seen,
    forged: bool,
    claim_lines: list[Line],
    base: list[Line],
    ctx: Context,
) -> Verdict:
    packets = sides.packets
    origin, origin_text = _origin(rst, sides, synack)
    verdict = Verdict(
        Cause.ASYMMETRIC_RETURN,
        0.55 if forged else 0.4,
        summary=(
            "the server's SYN-ACK left by a path the SYN did not take; a stateful box there (NAT gateway or "
            f"firewall) reset it in the client's name ({origin or origin_text})"
        ),
    )
    verdict.origin, verdict.origin_description = origin, origin_text
    verdict.evidence = list(base)
    for line in claim_lines:
        verdict.support(line, 0.1)
    # The origin as a fact either way: a captured maker is what rules out the client's own reset.
    verdict.support(_origin_fact(origin_text, origin))
    isn = (rst.seq - 1) % 2**32
    retried = [p for p in packets if p.is_pure_syn and p.from_orig and p.seq == isn and p.ts_ref > rst.ts_ref]
    same_point = [p for p in retried for s in rst.sights if (s2 := p.at(s.capture)) is not None and s2.ts_ns > s.ts_ns]
    if same_point or retried:
        verdict.support(Fact.of("syn-retried", isn=isn, times=len({p.pkt for p in retried})), 0.1)
    syns = [p for p in packets if p.is_pure_syn and p.from_orig]
    syn_points = {c for p in syns for c in p.points}
    extra = [c for c in synack.points if c not in syn_points]
    if extra and syns:
        verdict.support(_paths_fact(conn, syns[0], synack, extra), 0.1)
    elif extra:
        verdict.support(f"{', '.join(extra)} saw the server's SYN-ACK but never the client's SYN", 0.05)
    client = sides.client_capture
    if client is not None and synack.at(client) is None and covers(ctx.spans, client, synack.ts_ref):
        verdict.support(f"the client's capture ({client}) shows only its SYNs: no SYN-ACK, no RST ever reached it", 0.1)
    gap = None
    for sight in reversed(rst.sights):
        sent = synack.at(sight.capture)
        if sent is not None and sight.ts_ns > sent.ts_ns:
            gap = (sight.capture, sight.ts_ns - sent.ts_ns)
            break
    if gap is not None:
        line = f"at {gap[0]} the RST arrived {ms(gap[1])} after the SYN-ACK left"
        rtt_floor = _client_round_trip_floor(packets, gap[0], sides.client_capture, ctx)
        if rtt_floor is not None and gap[1] < rtt_floor:
            line += f", faster than a round trip to the client allows (≥ {ms(rtt_floor)})"
            verdict.support(line, 0.05)
        else:
            verdict.evidence.append(line)
    missing = []
    if client is None:
        missing.append(
            "no capture on the client, so its side (did it see a SYN-ACK? send a RST?) is inferred from TTLs"
        )
    if origin is None:
        missing.append("the box that made the RST was not captured; its position comes from the TTL")
    for line in missing:
        verdict.evidence.append("not established: " + line)
    return verdict


def _client_round_trip_floor(packets: list[Seen], at: str, client: str | None, ctx: Context) -> int | None:
    """Twice the smallest client → ``at`` delay, when the clocks are known well enough to say so."""
    if client is None or client == at:
        return None
    uncertainty = ctx.offset_uncertainty_ns(at) + ctx.offset_uncertainty_ns(client)
    delays = [
        b.ts_ref - a.ts_ref
        for p in packets
        if p.from_orig and not p.is_rst
        for a, b in [(p.at(client), p.at(at))]
        if a is not None and b is not None
    ]
    if not delays or min(delays) <= uncertainty:
        return None
    return 2 * (min(delays) - uncertainty)


def _unanswered_lines(syns: list[Seen]) -> list[Line]:
    first = syns[0]
    return [
        Fact.of("syns-unanswered", count=len(syns), isn=first.seq, packet=where(first.first), point=first.first.capture)
    ]


def synack_astray(conn: Connection, syns: list[Seen], synack: Seen) -> Verdict:
    """The server answered the unanswered SYNs, and its SYN-ACK went by points no SYN passed."""
    syn_points = {c for p in syns for c in p.points}
    extra = [c for c in synack.points if c not in syn_points]
    verdict = Verdict(
        Cause.ASYMMETRIC_RETURN,
        0.7,
        summary="the server's SYN-ACK left by a path the SYN did not take and never reached the client",
    )
    verdict.evidence = [
        *_unanswered_lines(syns),
        f"the server answered: SYN-ACK at {where(synack.first)}",
        _paths_fact(conn, syns[0], synack, extra),
    ]
    return verdict


def synack_lost(syns: list[Seen], synack: Seen) -> Verdict:
    """The server answered the unanswered SYNs, and its SYN-ACK vanished on the SYN's own path."""
    verdict = Verdict(
        Cause.SILENT_DROP, 0.65, summary=f"the server's SYN-ACK vanished after {synack.sights[-1].capture}"
    )
    verdict.evidence = [
        *_unanswered_lines(syns),
        f"the server answered (SYN-ACK at {where(synack.first)}); last seen at {synack.sights[-1].capture}",
        "no RST anywhere",
    ]
    return verdict


def _farthest(syns: list[Seen]) -> Seen:
    return max(syns, key=lambda p: len(p.points))


def syn_handed_on(conn: Connection, syns: list[Seen]) -> Verdict:
    """A forwarding box DNATed the unanswered SYNs on with the client's address kept (seen from that box alone)."""
    farthest = _farthest(syns)
    passed = handoff(conn, farthest, farthest.sights[-1].capture)
    assert passed is not None, "the columns saw this SYN handed on"
    return _forwarded_unanswered(passed, _unanswered_lines(syns), syns)


def syn_lost(conn: Connection, sides: Sides, syns: list[Seen], ctx: Context) -> Verdict:
    """The SYNs vanished: no SYN-ACK and no RST anywhere."""
    first = syns[0]
    syn_points = {c for p in syns for c in p.points}
    farthest = _farthest(syns)
    last_point = farthest.sights[-1].capture
    single = len(conn.captures) == 1 and len(ctx.captures) == 1
    server = sides.server_capture
    downstream = [c for c in ctx.captures if c not in syn_points and covers(ctx.spans, c, first.ts_ref)]
    verdict = Verdict(
        Cause.SILENT_DROP,
        0.4 if single else 0.75,
        summary=f"the SYN vanished after {last_point} with no answer and no RST",
    )
    verdict.evidence = [*_unanswered_lines(syns), _last_seen(conn, farthest), "no SYN-ACK and no RST anywhere"]
    if downstream:
        verdict.support(Fact.of("syn-unseen-elsewhere", points=tuple(downstream)), 0.1)
    if server is not None and first.at(server) is None:
        verdict.support(f"it never reached the server's capture ({server})", 0.05)
    if single or not downstream:
        verdict.evidence.append(
            "not established: whether the SYN reached the server. A silent drop on the way in and an "
            "asymmetric return (the SYN-ACK leaving by another path, e.g. a NAT gateway that resets it) look the "
            "same from here; a capture on the server (pod) or its node would separate them"
        )
        verdict.confidence = min(verdict.confidence, 0.45)
    return verdict


def _forwarded_unanswered(passed: Handoff, base: list[Line], syns: list[Seen]) -> Verdict:
    """A forwarding box sent the SYN on, DNATed with the client's address kept, and nothing came back through it.

    The server answers the client's own address, so its reply is routed by
    the server's side, not back to the box that translated the request: from
    that box alone this is the asymmetric return's signature. A drop after the
    box looks the same from there, hence the lower confidence and the capture
    that would separate them.
    """
    box, target = passed.capture, passed.left_dst
    verdict = Verdict(
        Cause.ASYMMETRIC_RETURN,
        0.5,
        summary=f"{box} forwarded the SYN to {target} (DNAT, the client's address kept) and no answer ever came "
        "back through it: the reply most likely left by another path",
    )
    verdict.evidence = [
        *base,
        f"{box} received the SYN for {passed.arrived_dst} and sent it on to {target} (TTL {passed.ttl_in} → "
        f"{passed.ttl_out}), still from the client's address {passed.arrived_src_addr}: the server will answer the "
        f"client directly, and only a route back through {box} would let {box} undo its DNAT",
        f"{len(syns)} SYN(s) and not one SYN-ACK or RST came back through {box}",
        f"not established: whether the SYN reached {passed.left_dst_addr} and where its answer went. A capture on "
        f"{passed.left_dst_addr} (or on the node in front of it) would confirm it: a SYN-ACK leaving there that never "
        f"reaches {box}; a drop after {box} (silent-drop) looks the same from here",
    ]
    return verdict


def _last_seen(conn: Connection, syn: Seen) -> str:
    """Where the SYN was last seen, saying so when that point visibly sent it on."""
    last = syn.sights[-1].capture
    passed = handoff(conn, syn, last)
    if passed is None:
        return f"the SYN was last seen at {last}"
    return f"the SYN was last seen leaving {last} for {passed.left_dst} (TTL {passed.ttl_in} → {passed.ttl_out})"
