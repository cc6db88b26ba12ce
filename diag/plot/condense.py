"""Condensed ladders: a long flow that repeats the same exchange is shown once, with "×N".

A failing connection is mostly repetition (SYN, SYN-ACK, RST, then the same a
second later, and again). The first cycle shows how it goes wrong and the last
how it ended; the cycles in between only add height, so they become one line.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median

from diag.plot.flowview import PacketTrip

# A cycle must repeat at least this often before collapsing it saves anything:
# the first and last copies stay, the ones between become a single line.
MIN_REPEATS = 3
MAX_CYCLE = 8


@dataclass(frozen=True)
class CollapsedCycles:
    """Copies of a cycle left out of the picture."""

    trips: tuple[PacketTrip, ...]  # every packet left out, in order
    copies: int  # how many copies of the cycle they make up
    cycle: tuple[str, ...]  # the cycle's steps, e.g. ("SYN", "SYN-ACK", "RST")
    period_s: float  # median time from one copy's start to the next's

    @property
    def description(self) -> str:
        steps = " → ".join(self.cycle)
        return f"×{self.copies} more of the same cycle ({steps}), one every ≈{self.period_s:.2g} s"


LadderItem = PacketTrip | CollapsedCycles


def condense(trips: Sequence[PacketTrip]) -> list[LadderItem]:
    """The trips with long runs of an identical cycle reduced to first copy, "×N", last copy."""
    items: list[LadderItem] = []
    signatures = [trip.signature for trip in trips]
    start = 0
    while start < len(trips):
        length, repeats = _longest_repetition(signatures, start)
        if repeats < MIN_REPEATS:
            items.append(trips[start])
            start += 1
            continue
        end = start + length * repeats
        hidden = tuple(trips[start + length : end - length])
        starts = [trips[start + k * length].start for k in range(repeats)]
        period = median(b - a for a, b in itertools.pairwise(starts))
        items.extend(trips[start : start + length])
        steps = tuple(trip.flag_name for trip in trips[start : start + length])
        items.append(CollapsedCycles(hidden, repeats - 2, steps, period))
        items.extend(trips[end - length : end])
        start = end
    return items


def _longest_repetition(signatures: Sequence[object], start: int) -> tuple[int, int]:
    """(cycle length, repeats) of the repetition starting at ``start`` that covers the most packets."""
    best = (1, 1)
    for length in range(1, MAX_CYCLE + 1):
        cycle = signatures[start : start + length]
        if len(cycle) < length:
            break
        repeats = 1
        while signatures[start + repeats * length : start + (repeats + 1) * length] == cycle:
            repeats += 1
        if repeats >= MIN_REPEATS and length * repeats > best[0] * best[1]:
            best = (length, repeats)
    return best
