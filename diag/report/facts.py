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


@dataclass(frozen=True)
class Fact:
    """One piece of evidence: what kind of observation, and its values (JSON-ready scalars or string tuples)."""

    kind: str
    items: tuple[tuple[str, JsonValue], ...] = ()

    @classmethod
    def of(cls, kind: str, **values: JsonValue) -> Fact:
        return cls(kind, tuple(values.items()))

    @property
    def values(self) -> dict[str, JsonValue]:
        return dict(self.items)

    def __getitem__(self, key: str) -> JsonValue:
        return self.values[key]

    def number(self, key: str) -> int:
        value = self.values[key]
        if not isinstance(value, int):
            raise TypeError(f"{self.kind}.{key} is not a number: {value!r}")
        return value

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.items}}


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
    return (
        f"the {v['request']} came {' → '.join(v['request_path'])}; "
        f"the {v['reply']} went {' → '.join(v['reply_path'])}: "
        f"{', '.join(v['reply_only'])} saw the reply but never the request"
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
}


def render(fact: Fact) -> str:
    """The sentence a fact reads as; an unknown kind is a programming error, not something to guess."""
    return RENDERERS[fact.kind](fact.values)


def render_all(facts: Iterable[Fact]) -> tuple[str, ...]:
    return tuple(render(fact) for fact in facts)
