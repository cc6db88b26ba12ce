"""The left-to-right order of capture points in a ladder diagram.

Lanes follow the path the connection's first request took (client on the left,
the server's side on the right), because that is how people draw networks.
Points the request never crossed (the NAT gateway that only saw the reply, a
point that saw nothing) slot in where a conventional picture of the incident
puts them; unfamiliar names go next to a point they exchanged packets with.

The NAT gateway sits at the VPC's edge, next to the internet, rather than at
the far right: a reply that goes astray is heading back towards the client, so
its arrow runs leftwards from the pod's side and visibly stops short of the
client, at the box that then resets the connection.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

# Where each familiar vantage point is drawn, left to right, in the incident's picture.
DRAWING_ORDER: tuple[str, ...] = (
    "client",
    "internet",
    "natgw",
    "nlb",
    "vpc-router",
    "node-a",
    "node-b",
    "pod",
)


def drawing_rank(name: str) -> int | None:
    """Position of a capture name in the conventional order (prefix match: ``node-a-eth0``), or None."""
    lowered = name.lower()
    if lowered in DRAWING_ORDER:
        return DRAWING_ORDER.index(lowered)
    for rank, known in sorted(enumerate(DRAWING_ORDER), key=lambda item: -len(item[1])):
        if lowered.startswith(known):
            return rank
    return None


def order_lanes(names: Iterable[str], main_path: Sequence[str], paths: Iterable[Sequence[str]]) -> list[str]:
    """All capture ``names`` in drawing order.

    ``main_path`` (the points the first request crossed, in order) fixes the
    order of the points on it; every other point is placed after the last
    main-path point that conventionally comes before it, or, for an unfamiliar
    name, right after a point it exchanged packets with (``paths``).
    """
    names = list(dict.fromkeys(names))
    main = [name for name in dict.fromkeys(main_path) if name in names]
    position: dict[str, float] = {name: float(index) for index, name in enumerate(main)}

    # Conventional rank of each main-path point; unfamiliar ones inherit their left neighbour's.
    main_ranks: list[float] = []
    previous = -1.0
    for name in main:
        rank = drawing_rank(name)
        previous = float(rank) if rank is not None else previous
        main_ranks.append(previous)

    neighbours: dict[str, list[str]] = {}
    for path in paths:
        for left, right in itertools.pairwise(path):
            neighbours.setdefault(left, []).append(right)
            neighbours.setdefault(right, []).append(left)

    last = float(len(main))
    for order, name in enumerate(names):
        if name in position:
            continue
        rank = drawing_rank(name)
        tiebreak = order / (100.0 * (len(names) + 1))
        if rank is not None:
            before = [index for index, main_rank in enumerate(main_ranks) if main_rank <= rank]
            anchor = before[-1] if before else -1
            position[name] = anchor + 0.5 + rank / 100.0 + tiebreak
            continue
        placed = next((position[other] for other in neighbours.get(name, []) if other in position), None)
        position[name] = (placed + 0.25 + tiebreak) if placed is not None else last + 1 + tiebreak
    return sorted(names, key=lambda name: position[name])
