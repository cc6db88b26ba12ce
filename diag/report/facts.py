"""Evidence as structured facts, and the one place they become sentences.

A finding's evidence is a list of ``Fact`` values: a kind and its values
(``{"kind": "ttl-hops", "point": "pod-b", "rst_hops": 2, "claimed_hops": 6, ...}``),
which the JSON carries as they are. The sentences the text report shows are
rendered from them here, last, one renderer a kind, so a script reading the
facts and a person reading the text see the same evidence. A sentence the
diagnosis has not yet turned into a fact travels as ``note`` (its text).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

JsonValue = str | int | float | bool | None | tuple[str, ...]
_new = object.__new__


@dataclass(frozen=True)
class Fact:
    """One piece of evidence: what kind of observation, and its values (JSON-ready scalars or string tuples)."""

    kind: str
    items: tuple[tuple[str, JsonValue], ...] = ()

    @classmethod
    def of(cls, kind: str, **values: JsonValue) -> Fact:
        # Filled in place: a frozen dataclass's __init__ sets each field through object.__setattr__, twice the
        # cost of the whole fact for the tens of thousands a busy capture's findings make.
        fact = _new(cls)
        fact.__dict__.update(kind=kind, items=tuple(values.items()))
        return fact

    @property
    def values(self) -> dict[str, JsonValue]:
        return dict(self.items)

    def __getitem__(self, key: str) -> JsonValue:
        # A fact holds a handful of values: a scan is cheaper than building the dict (rules read facts by the thousand).
        for name, value in self.items:
            if name == key:
                return value
        raise KeyError(key)

    def number(self, key: str) -> int:
        value = self[key]
        if not isinstance(value, int):
            raise TypeError(f"{self.kind}.{key} is not a number: {value!r}")
        return value

    def to_json(self) -> dict[str, Any]:
        # Filled in a loop: half the time of a dict unpacked into another, for the tens of thousands of facts of a
        # busy capture's report.
        out: dict[str, Any] = {"kind": self.kind}
        for name, value in self.items:
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


def note(text: str) -> Fact:
    """A sentence kept as it is (evidence not yet broken into values)."""
    return Fact.of("note", text=text)


def _note(v: Mapping[str, Any]) -> str:
    return str(v["text"])


def _ttl_hops(v: Mapping[str, Any]) -> str:
    nearer = "closer" if v["rst_hops"] < v["claimed_hops"] else "further"
    line = (
        f"at {v['point']}: the RST arrived with TTL {v['rst_ttl']} ({v['rst_hops']} hop(s) from its sender) "
        f"while the {v['side']}'s own packets arrive with TTL {v['claimed_ttl']} ({v['claimed_hops']} hops): "
        f"it was made {abs(v['claimed_hops'] - v['rst_hops'])} hop(s) {nearer} than the {v['side']}"
    )
    others = int(v.get("other_points") or 0)
    return line + (f" (the same at {others} other point(s))" if others else "")


def _absent_at_own(v: Mapping[str, Any]) -> str:
    return (
        f"the {v['side']}'s own capture ({v['point']}) was running and never shows this RST: "
        f"the {v['side']} did not send it"
    )


def _left_own(v: Mapping[str, Any]) -> str:
    return f"the {v['side']}'s own capture shows the RST leaving it ({v['packet']}, TTL {v['ttl']})"


def _origin(v: Mapping[str, Any]) -> str:
    return f"origin: {v['text']}"


def _captures(v: Mapping[str, Any]) -> str:
    return f"captures analysed: {', '.join(v['points'])}"


def _syn_retried(v: Mapping[str, Any]) -> str:
    return (
        f"the client sent the same SYN (ISN {v['isn']}) again after the RST ({v['times']} time(s)): "
        "a client that had reset would not retransmit its SYN"
    )


def _repeated(v: Mapping[str, Any]) -> str:
    return f"{v['count']} RSTs like it in this connection (counted once)"


def _rst_made_at(v: Mapping[str, Any]) -> str:
    return f"the RST first appears at {v['point']} with an initial TTL ({v['ttl']}): {v['point']} made it"


def _rst(v: Mapping[str, Any]) -> str:
    return (
        f"RST claiming to come from the {v['side']} ({v['claimed']}) first seen at {v['packet']}, "
        f"TTL {v['ttl']}, IP ID {v['ip_id']}"
    )


def _answers(v: Mapping[str, Any]) -> str:
    return f"it answers the {v['side']}'s {v['segment']} (seq {v['seq']}, ack {v['ack']}) seen at {v['packet']}"


def _paths(v: Mapping[str, Any]) -> str:
    request, reply = " → ".join(v["request_path"]), " → ".join(v["reply_path"])
    line = f"the {v['request']} came {request}; the {v['reply']} went {reply}"
    return line + (f": {', '.join(v['reply_only'])} saw the reply but never the request" if v["reply_only"] else "")


def _duration(ns: int | float) -> str:
    """A duration for people: microseconds below a millisecond."""
    return f"{ns / 1e3:.0f} µs" if abs(ns) < 1_000_000 else f"{ns / 1e6:.1f} ms"


def _ttl_consistent(v: Mapping[str, Any]) -> str:
    return f"the RST's TTL matches the {v['side']}'s other packets wherever both were seen"


def _on_link(v: Mapping[str, Any]) -> str:
    return (
        f"the {v['side']} and the {v['other']} share a subnet ({v['subnet']}): neighbours on one link, so the RST "
        f"reaching {v['point']} with an initial TTL ({v['ttl']}) is what the {v['side']}'s own RST looks like there"
    )


def _challenge_ack(v: Mapping[str, Any]) -> str:
    return (
        f"the client's SYN (ISN {v['isn']}, {v['syn_packet']}) was answered by a bare ACK (ack {v['ack']}, not "
        f"{v['expected']}) at {v['packet']}: an RFC 5961 challenge ACK from a connection still open on the server"
    )


def _syn_accepted(v: Mapping[str, Any]) -> str:
    return (
        f"the server accepted that same SYN: its SYN-ACK (seq {v['seq']}, ack {v['ack']} = the SYN's ISN + 1) "
        f"first seen at {v['packet']}; a server refuses a SYN or accepts it, never both"
    )


def _syn_went_past(v: Mapping[str, Any]) -> str:
    if v["made_there"]:
        return f"{v['point']} made the RST and also sent the SYN on ({v['packet']}, leaving with a lower TTL)"
    return (
        f"the SYN went on past the RST's maker: {v['point']} saw it {v['hops']} hop(s) from the client "
        f"({v['packet']}), further than the RST's TTL puts its maker, and never saw the RST"
    )


def _syn_missing_at_server(v: Mapping[str, Any]) -> str:
    return f"the server's capture ({v['point']}) never saw the SYN: it did not answer it"


def _syn_missing_further(v: Mapping[str, Any]) -> str:
    return f"captures further along the path ({', '.join(v['points'])}) were running and never saw the SYN"


def _syn_at_server(v: Mapping[str, Any]) -> str:
    return f"the SYN reached the server's capture ({v['point']})"


def _syns_unanswered(v: Mapping[str, Any]) -> str:
    return (
        f"{v['count']} SYN(s) with ISN {v['isn']} from the client, first at {v['packet']}, "
        f"never answered at {v['point']}"
    )


def _syn_unseen_elsewhere(v: Mapping[str, Any]) -> str:
    return f"captures running further on ({', '.join(v['points'])}) never saw it"


def _kept_sending(v: Mapping[str, Any]) -> str:
    return (
        f"the {v['side']}'s genuine packets keep arriving after the RST ({v['count']} of them, first at "
        f"{v['packet']}): the {v['side']} never reset"
    )


def _idle_gap(v: Mapping[str, Any]) -> str:
    rtt = _duration(v["rtt_ns"]) if v["rtt_ns"] else "unknown"
    gap = v["gap_ns"] / 1e9
    return f"the connection was idle for {gap:.1f} s (round trip {rtt}) before the segment the RST answers"


def _rst_too_soon(v: Mapping[str, Any]) -> str:
    return (
        f"at {v['point']} the RST came back {_duration(v['delay_ns'])} after the packet it answers, in under half "
        f"the {_duration(v['rtt_ns'])} round trip to the {v['side']} there: something closer than the "
        f"{v['side']} made it"
    )


def _ip_id_out_of_line(v: Mapping[str, Any]) -> str:
    return (
        f"at {v['point']} the RST's IP ID ({v['rst_ip_id']}) is out of line with the {v['side']}'s own packets, "
        f"which count up (the last before it: {v['last_ip_id']}, {v['packet']}): not the next packet of the "
        f"stack that sent them"
    )


# UDP: requests, where their replies went, and what a forwarding box shows of them.


def _requests(v: Mapping[str, Any]) -> str:
    return f"{v['count']} request(s) from the client to {v['to']}, first at {v['packet']}"


def _answered(v: Mapping[str, Any]) -> str:
    return (
        f"{v['count']} reply datagram(s) reached the client from {v['src']}, the address it wrote to "
        f"(first at {v['packet']})"
    )


def _reply_foreign(v: Mapping[str, Any]) -> str:
    return (
        f"{v['count']} reply datagram(s) reached the client from {v['src']} ({v['packet']}); "
        f"none came from {v['expected']}"
    )


def _reply_resourced(v: Mapping[str, Any]) -> str:
    return (
        f"at {v['packet']} the reply's source was rewritten {' → '.join(v['sources'])}: "
        "the client will see a reply from an address it never wrote to"
    )


def _reply_rewritten(v: Mapping[str, Any]) -> str:
    return f"{v['point']} rewrote the reply's source {' → '.join(v['sources'])}"


def _reply_lost(v: Mapping[str, Any]) -> str:
    return (
        f"the server answered ({v['count']} reply datagram(s), first at {v['packet']}); "
        f"last seen at {v['last']}, never at {v['client_point']}"
    )


def _port_unreachable(v: Mapping[str, Any]) -> str:
    return (
        f"the client answered {v['count']} of them with ICMP port unreachable ({v['point']} frame {v['frame']}): "
        "its socket expected the reply from the address it wrote to"
    )


def _unreachable(v: Mapping[str, Any]) -> str:
    meaning = {"port": "port unreachable", "prohibited": "administratively prohibited"}
    what = meaning.get(v["reason"], f"code {v['code']}")
    return (
        f"{v['count']} ICMP destination unreachable ({what}) came back for the requests to {v['quoted']}, "
        f"sent by {v['sender']}, first at {v['packet']}"
    )


def _no_reply(v: Mapping[str, Any]) -> str:
    if v["left_for"] is None:
        return f"no reply at all; the requests were last seen at {v['last']}"
    return f"no reply at all; the requests were last seen leaving {v['last']} for {v['left_for']}"


def _single_point(v: Mapping[str, Any]) -> str:
    return (
        "not established: whether the server answered by another path (re-sourced or dropped on the way back); "
        "a capture on the server (pod) would show it"
    )


def _forwarded(v: Mapping[str, Any]) -> str:
    box = v["box"]
    return (
        f"{box} received the requests for {v['arrived']} and sent them on to {v['target']} (TTL {v['ttl_in']} → "
        f"{v['ttl_out']}), still from the client's address {v['client']}: the server will reply to the "
        f"client directly, and only a route back through {box} would let {box} undo its DNAT"
    )


def _none_back(v: Mapping[str, Any]) -> str:
    return f"{v['count']} request(s) and not one reply came back through {v['box']}"


def _confirm_at(v: Mapping[str, Any]) -> str:
    box, target = v["box"], v["target"]
    return (
        f"not established: whether the requests reached {target} and where its replies went. A capture "
        f"on {target} (or on the node in front of it) would confirm it: replies leaving there that "
        f"never reach {box}; a drop after {box} (silent-drop) looks the same from here"
    )


def _not_retried(v: Mapping[str, Any]) -> str:
    return (
        "not established: that replies were expected. The requests are not one datagram retried at a "
        "client's pace, so a short one-way exchange (no reply by design) would look the same"
    )


RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "note": _note,
    "rst": _rst,
    "answers": _answers,
    "paths": _paths,
    "ttl-hops": _ttl_hops,
    "absent-at-own": _absent_at_own,
    "left-own": _left_own,
    "rst-made-at": _rst_made_at,
    "origin": _origin,
    "captures": _captures,
    "syn-retried": _syn_retried,
    "repeated-rst": _repeated,
    "ttl-consistent": _ttl_consistent,
    "on-link": _on_link,
    "challenge-ack": _challenge_ack,
    "syn-accepted": _syn_accepted,
    "syn-went-past": _syn_went_past,
    "syn-missing-at-server": _syn_missing_at_server,
    "syn-missing-further": _syn_missing_further,
    "syn-at-server": _syn_at_server,
    "syns-unanswered": _syns_unanswered,
    "syn-unseen-elsewhere": _syn_unseen_elsewhere,
    "kept-sending": _kept_sending,
    "idle-gap": _idle_gap,
    "rst-too-soon": _rst_too_soon,
    "ip-id-out-of-line": _ip_id_out_of_line,
    "requests": _requests,
    "answered": _answered,
    "reply-foreign": _reply_foreign,
    "reply-resourced": _reply_resourced,
    "reply-rewritten": _reply_rewritten,
    "reply-lost": _reply_lost,
    "port-unreachable": _port_unreachable,
    "unreachable": _unreachable,
    "no-reply": _no_reply,
    "single-point": _single_point,
    "forwarded": _forwarded,
    "none-back": _none_back,
    "confirm-at": _confirm_at,
    "not-retried": _not_retried,
}


def render(fact: Fact) -> str:
    """The sentence a fact reads as; an unknown kind is a programming error, not something to guess."""
    return RENDERERS[fact.kind](fact.values)


def render_all(facts: Iterable[Fact]) -> tuple[str, ...]:
    return tuple(render(fact) for fact in facts)
