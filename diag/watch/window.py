"""The sliding window of a live watch and the rules for deciding a finding: pure, no I/O.

Packets arrive per capture point in small tables. The window keeps, per
point, the packets of the last ``seconds`` of that point's own clock (points
on different machines need not agree on the time; the correlation aligns
them), so memory stays bounded however long the watch runs. Each analysis
runs the same pipeline as ``diag analyze`` over what the window holds.

A finding is *decided* once every point has caught up past its symptom: a
point has caught up to time T when it delivered a packet at or after T, has
nothing pending (its reader waits on an empty stream, every packet it read
handed over) for a moment, or ended. Deciding earlier could name the wrong
first sighting or miss the one capture (the client's) that proves a RST
forged. A symptom that is an absence (a SYN or datagram never answered) needs
longer: its reply may still be on the way.

A finding is given once. The diagnosis counts the resets of one connection
once and names the first as the symptom; as the window slides past that one,
or as a slower point shows an earlier sighting, the same finding comes back
with another symptom packet. So a finding of the same cause on the same
connection, with its symptom within one window of one already given, is the
same finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from diag.analysis import concat_packets
from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.flows import build_flows
from diag.report import Finding

DEFAULT_WINDOW_S = 30.0
# After its symptom, how much of every point's traffic a finding waits for (stream time).
SETTLE_S = 0.2
# For a symptom that is something missing (no reply), the wait is a SYN retransmission or more.
ABSENCE_SETTLE_S = 3.0
# A point whose reader has waited on an empty stream this long (wall clock) has caught up:
# what the capture on the other end still holds in flight is gone by then.
QUIET_S = 0.1
ABSENCE_CAUSES = frozenset({"silent-drop"})

ConnectionKey = tuple[str, str, str, str]


def connection_key(finding: Finding) -> ConnectionKey:
    """The cause and the connection of a finding: with the symptom's time, what makes it the same one."""
    return (finding.cause, finding.proto, finding.client, finding.server)


def settle_for(finding: Finding) -> float:
    if finding.cause in ABSENCE_CAUSES or finding.packet is None:
        return ABSENCE_SETTLE_S
    return SETTLE_S


@dataclass
class PointState:
    """One capture point's part of the window and how far its stream has come."""

    parts: list[pd.DataFrame] = field(default_factory=list)
    newest_ts: float | None = None  # the newest packet's timestamp, seconds
    ended: bool = False
    packets: int = 0  # seen over the whole watch


class Window:
    """Per point, the packets of the last ``seconds`` of its own clock, in arrival order."""

    def __init__(self, points: Sequence[str], seconds: float = DEFAULT_WINDOW_S) -> None:
        self.seconds = seconds
        self.points: dict[str, PointState] = {name: PointState() for name in points}
        self.changed = False

    def add(self, point: str, table: pd.DataFrame) -> None:
        state = self.points[point]
        state.parts.append(table)
        state.packets += len(table)
        newest = _newest_ts(table)
        if newest is not None and (state.newest_ts is None or newest > state.newest_ts):
            state.newest_ts = newest
        self.changed = True

    def end(self, point: str) -> None:
        self.points[point].ended = True
        self.changed = True

    @property
    def all_ended(self) -> bool:
        return all(state.ended for state in self.points.values())

    def packets(self) -> pd.DataFrame | None:
        """The window's packets, all points stacked in the order given; None before any packet arrived.

        Each point's parts are merged into one table and its packets older
        than the window dropped, so what is kept stays bounded.
        """
        tables = []
        for state in self.points.values():
            if not state.parts:
                continue
            table = concat_packets(state.parts) if len(state.parts) > 1 else state.parts[0]
            if state.newest_ts is not None:
                cutoff = int((state.newest_ts - self.seconds) * 1e9)
                stamps = table["ts_ns"].to_numpy()
                if (stamps < cutoff).any():
                    table = table[stamps >= cutoff].reset_index(drop=True)
            state.parts = [table] if len(table) else []
            if len(table):
                tables.append(table)
        self.changed = False
        return concat_packets(tables) if tables else None

    def caught_up(self, ts: float, now: float, idle_since: Mapping[str, float | None]) -> bool:
        """Whether every point has delivered what it will about the time ``ts`` (see the module's notes).

        ``idle_since`` is, per point, the wall-clock time since which its
        reader has been waiting on an empty stream (None while it is busy).
        """
        for name, state in self.points.items():
            if state.ended or (state.newest_ts is not None and state.newest_ts >= ts):
                continue
            idle = idle_since.get(name)
            if idle is None or now - idle < QUIET_S:
                return False
        return True

    def newest(self) -> float | None:
        """The newest packet's time over all points."""
        stamps = [s.newest_ts for s in self.points.values() if s.newest_ts is not None]
        return max(stamps) if stamps else None

    def oldest_kept(self) -> float | None:
        """The start of the window on the earliest point's clock, for forgetting old findings."""
        starts = [s.newest_ts - self.seconds for s in self.points.values() if s.newest_ts is not None]
        return min(starts) if starts else None


def analyze_window(packets: pd.DataFrame) -> list[Finding]:
    """The findings of ``diag analyze`` on the window's packets (flows, correlation, diagnosis)."""
    flows = build_flows(packets)
    correlation = correlate(packets)
    return diagnose(packets, flows, correlation)


@dataclass
class Decider:
    """Which findings are new and decided; remembers those already given, for as long as they can recur."""

    # cause and connection -> symptom times of the findings given (inf: a finding without a packet)
    given: dict[ConnectionKey, list[float]] = field(default_factory=dict)

    def is_given(self, finding: Finding, window_s: float) -> bool:
        times = self.given.get(connection_key(finding), [])
        if finding.packet is None:
            return bool(times)
        return any(abs(finding.packet.ts - when) <= window_s or when == float("inf") for when in times)

    def decide(self, findings: Iterable[Finding], window: Window, now: float,
               idle_since: Mapping[str, float | None], final: bool = False) -> list[Finding]:
        """The findings to report now: not given before, and settled (all of them when ``final``)."""
        new = []
        for finding in findings:
            if self.is_given(finding, window.seconds):
                continue
            ts = finding.packet.ts if finding.packet else None
            if not final:
                horizon = ts if ts is not None else (window.newest() or 0.0)
                if not window.caught_up(horizon + settle_for(finding), now, idle_since):
                    continue
            self.given.setdefault(connection_key(finding), []).append(ts if ts is not None else float("inf"))
            new.append(finding)
        return new

    def forget_before(self, ts: float) -> None:
        """Drop what was given before ``ts``: those packets have left the window and cannot come back."""
        for key, times in list(self.given.items()):
            kept = [when for when in times if when >= ts]
            if kept:
                self.given[key] = kept
            else:
                del self.given[key]

    @property
    def count(self) -> int:
        return sum(len(times) for times in self.given.values())


def _newest_ts(table: pd.DataFrame) -> float | None:
    stamps = table["ts_ns"].to_numpy()
    stamps = stamps[stamps >= 0]
    return float(stamps.max()) / 1e9 if len(stamps) else None
