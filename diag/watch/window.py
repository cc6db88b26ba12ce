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
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.diagnose.causes import spec_of
from diag.report import Finding
from diag.watch.links import FlowLinks, IntArray, RowKeys, row_keys

DEFAULT_WINDOW_S = 30.0
# After its symptom, how much of every point's traffic a finding waits for (stream time).
SETTLE_S = 0.2
# For a symptom that is something missing (no reply: its cause's ``absence``), the wait is a SYN retransmission or
# more.
ABSENCE_SETTLE_S = 3.0
# A point whose reader has waited on an empty stream this long (wall clock) has caught up:
# what the capture on the other end still holds in flight is gone by then.
QUIET_S = 0.1
# A point's newest pieces are merged up to this many rows: big enough that a point has a handful
# of pieces, small enough that a piece leaves the window soon after its last packet does.
MAX_PIECE_ROWS = 1 << 16
# Categorical columns with at most this many texts keep them all when a table is made back.
SHORT_VOCABULARY = 64
# The window's links are rebuilt no more often than every this many rows taken in.
RELINK_MIN_ROWS = 1 << 16

ConnectionKey = tuple[str, str, str, str]


def connection_key(finding: Finding) -> ConnectionKey:
    """The cause and the connection of a finding: with the symptom's time, what makes it the same one."""
    return (finding.cause, finding.proto, finding.client, finding.server)


def settle_for(finding: Finding) -> float:
    if spec_of(finding.cause).absence or finding.packet is None:
        return ABSENCE_SETTLE_S
    return SETTLE_S


@dataclass
class Piece:
    """Consecutive packets of one point and, per row, what the incremental analysis looks them up by.

    ``columns`` are the packet table's columns as arrays, the categorical ones
    (capture, addresses, ...) as codes into the window's ``Texts`` (-1: none),
    so pieces are joined and rows taken with plain numpy. ``flow`` is the
    row's flow number in the window's ``FlowLinks`` (-1: not TCP or UDP);
    ``keys`` are what it was linked by, kept to link it again when the window
    rebuilds its links.
    """

    columns: dict[str, np.ndarray]
    ts: IntArray
    flow: IntArray
    keys: RowKeys

    @property
    def newest(self) -> int:
        return int(self.ts.max()) if len(self.ts) else -1

    def __len__(self) -> int:
        return len(self.ts)


class Texts:
    """The texts of the packet table's categorical columns, one code each for the whole watch.

    A packet table's categories are its own; stacking tables means joining
    them (``union_categoricals``), which cost more than anything else a live
    window did with its tables. Here every text gets a code once, and a table
    is built back with only the texts its rows use.
    """

    # Columns that share one set of codes: an address has the same code as source and as destination
    # (the flow keys are made of them).
    SHARED: ClassVar[dict[str, str]] = {
        name: "address" for name in ("src", "dst", "inner_src", "inner_dst", "outer_src", "outer_dst")
    }

    def __init__(self) -> None:
        self.known: dict[str, pd.Index] = {}  # per vocabulary, its texts in code order
        self.texts: dict[str, list[str]] = {}
        self.dtypes: dict[str, Any] = {}

    def encode(self, column: str, values: pd.Series) -> IntArray:
        vocabulary = self.SHARED.get(column, column)
        categories = values.cat.categories
        self.dtypes.setdefault(column, categories.dtype)
        known = self.known.get(vocabulary)
        if known is None:
            known = self.known[vocabulary] = categories[:0]
            self.texts[vocabulary] = []
        lookup = np.append(known.get_indexer(categories), -1)  # the last entry serves pandas' missing value
        new = np.flatnonzero(lookup[:-1] < 0)
        if len(new):
            lookup[new] = np.arange(len(known), len(known) + len(new))
            self.known[vocabulary] = known.append(categories[new])
            self.texts[vocabulary] += categories[new].tolist()
        found: IntArray = lookup[values.cat.codes.to_numpy()]
        return found

    def decode(self, column: str, codes: IntArray, order: Sequence[str] = ()) -> pd.Categorical:
        """The codes as a Categorical: the texts in ``order`` first (the diagnosis reads some categories
        in order), then in the order first seen; only the texts used, but a short vocabulary whole."""
        vocabulary = self.SHARED.get(column, column)
        texts = self.texts.get(vocabulary, [])
        used = np.arange(len(texts)) if len(texts) <= SHORT_VOCABULARY else np.unique(codes[codes >= 0])
        if order:
            found = self.known[vocabulary].get_indexer(pd.Index(list(order)))
            first = [code for code in found.tolist() if code >= 0]
            rank = np.full(len(texts), len(first), dtype=np.int64)
            rank[first] = np.arange(len(first))
            used = used[np.argsort(rank[used], kind="stable")]
        position = np.zeros(len(texts), dtype=np.int64)
        position[used] = np.arange(len(used))
        categories = pd.Index([texts[code] for code in used.tolist()], dtype=self.dtypes.get(column))
        return pd.Categorical.from_codes(np.where(codes >= 0, position[np.maximum(codes, 0)], -1),
                                         categories=categories)


@dataclass
class PointState:
    """One capture point's part of the window and how far its stream has come."""

    pieces: list[Piece] = field(default_factory=list)
    arrived: list[pd.DataFrame] = field(default_factory=list)  # tables not yet made a piece
    newest_ts: float | None = None  # the newest packet's timestamp, seconds
    ended: bool = False
    packets: int = 0  # seen over the whole watch


class Window:
    """Per point, the packets of the last ``seconds`` of its own clock, in arrival order.

    A point's packets are kept as a few pieces: each table that arrives is
    appended as a piece (the tables that arrived between two analyses make
    one piece: ``add`` only queues them), and the newest pieces are merged while the one
    before is not four times bigger (up to ``MAX_PIECE_ROWS``), so a point
    has a handful of pieces, a row is copied a few times over its life, and
    nothing is rebuilt at each analysis. Pieces wholly older than the window
    are dropped. Every row is linked into ``links`` when its piece is made
    (see ``diag.watch.links``); ``take_fresh`` gives the flow numbers of the
    rows that came since it was last called.
    """

    def __init__(self, points: Sequence[str], seconds: float = DEFAULT_WINDOW_S) -> None:
        self.seconds = seconds
        self.points: dict[str, PointState] = {name: PointState() for name in points}
        self.changed = False
        self.links = FlowLinks()
        self._point_codes = {name: code for code, name in enumerate(points)}
        self.texts = Texts()
        self._fresh: list[IntArray] = []
        self._analyzed_until: dict[str, float] = {}  # per point, its newest time at the last take_fresh

    def add(self, point: str, table: pd.DataFrame) -> None:
        """Take in a point's table; it becomes part of a piece at the next ``seal`` (keeping up comes first)."""
        state = self.points[point]
        state.arrived.append(table)
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

    def seal(self) -> None:
        """Make the tables that arrived since the last call one piece per point, linked (see the class notes)."""
        for point, state in self.points.items():
            if not state.arrived:
                continue
            columns = self._encode(state.arrived)
            state.arrived = []
            keys = row_keys(columns, self._point_codes[point])
            flows = self.links.link(keys)
            state.pieces.append(Piece(columns, columns["ts_ns"].astype(np.int64), flows, keys))
            _merge_newest(state.pieces)
            self._fresh.append(flows[flows >= 0])

    def _encode(self, tables: list[pd.DataFrame]) -> dict[str, np.ndarray]:
        """Tables of one point as one set of column arrays (categorical columns as ``texts`` codes)."""
        columns: dict[str, np.ndarray] = {}
        for name in tables[0].columns:
            parts = []
            for table in tables:
                values = table[name]
                if isinstance(values.dtype, pd.CategoricalDtype):
                    parts.append(self.texts.encode(name, values))
                else:
                    parts.append(values.to_numpy())
            columns[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return columns

    def rows(self, taken: Sequence[tuple[Piece, IntArray]]) -> pd.DataFrame:
        """A packet table of the given rows of the given pieces, in that order (as the reader makes one)."""
        names = list(taken[0][0].columns)
        data: dict[str, object] = {}
        for name in names:
            values = np.concatenate([piece.columns[name][positions] for piece, positions in taken])
            if name in self.texts.dtypes:  # capture points in the order given, as 'analyze' stacks them
                data[name] = self.texts.decode(name, values, list(self.points) if name == "capture" else ())
            else:
                data[name] = values
        return pd.DataFrame(data)

    def unanalyzed_s(self) -> float:
        """How much of a point's stream (its own clock) came since the last ``take_fresh``, at most."""
        behind = 0.0
        for name, state in self.points.items():
            if state.newest_ts is not None:
                behind = max(behind, state.newest_ts - self._analyzed_until.get(name, state.newest_ts))
                self._analyzed_until.setdefault(name, state.newest_ts)
        return behind

    def take_fresh(self) -> IntArray:
        """The flow numbers of the rows sealed since the last call (each once)."""
        self._analyzed_until = {name: state.newest_ts for name, state in self.points.items()
                                if state.newest_ts is not None}
        self.seal()
        fresh = np.unique(np.concatenate(self._fresh)) if self._fresh else np.zeros(0, dtype=np.int64)
        self._fresh = []
        self.changed = False
        return fresh

    def trim(self) -> None:
        """Drop the pieces wholly older than the window; relink what is kept once the links have grown stale."""
        self.seal()
        for state in self.points.values():
            cutoff = self.cutoff_ns(state)
            state.pieces = [piece for piece in state.pieces if piece.newest >= cutoff]
        held = sum(len(piece) for state in self.points.values() for piece in state.pieces)
        # Links remember every key ever seen: rebuilt from the rows still held once they took in
        # twice as many, so memory follows the window. Flow numbers change: only between analyses.
        if self.links.rows_linked > 2 * held + RELINK_MIN_ROWS and not self._fresh:
            self.links = FlowLinks()
            for state in self.points.values():
                for piece in state.pieces:
                    piece.flow = self.links.link(piece.keys)

    def packets(self) -> pd.DataFrame | None:
        """The window's packets, all points stacked in the order given; None before any packet arrived."""
        self.trim()
        taken = []
        for state in self.points.values():
            cutoff = self.cutoff_ns(state)
            taken += [(piece, np.flatnonzero(piece.ts >= cutoff)) for piece in state.pieces]
        taken = [(piece, positions) for piece, positions in taken if len(positions)]
        self.changed = False
        return self.rows(taken) if taken else None

    def cutoff_ns(self, state: PointState) -> int:
        """Packets of that point older than this (ns, the point's own clock) have left the window."""
        return -(2**62) if state.newest_ts is None else int((state.newest_ts - self.seconds) * 1e9)

    def caught_up(self, ts: float, now: float, idle_since: Mapping[str, float | None]) -> bool:
        """Whether every point has delivered what it will about the time ``ts`` (see the module's notes).

        ``idle_since`` is, per point, the wall-clock time since which its
        reader has been waiting on an empty stream (None while it is busy).
        """
        return ts <= self.caught_up_to(now, idle_since)

    def caught_up_to(self, now: float, idle_since: Mapping[str, float | None]) -> float:
        """The time every point has caught up to (inf when all have ended or gone quiet)."""
        return min(self.caught_up_by_point(now, idle_since).values(), default=float("inf"))

    def caught_up_by_point(self, now: float, idle_since: Mapping[str, float | None]) -> dict[str, float]:
        """Per point, the time it has caught up to: its newest packet's, or inf once it ended or went quiet."""
        until = {}
        for name, state in self.points.items():
            idle = idle_since.get(name)
            if state.ended or (idle is not None and now - idle >= QUIET_S):
                until[name] = float("inf")
            else:
                until[name] = state.newest_ts if state.newest_ts is not None else float("-inf")
        return until

    def newest(self) -> float | None:
        """The newest packet's time over all points."""
        stamps = [s.newest_ts for s in self.points.values() if s.newest_ts is not None]
        return max(stamps) if stamps else None

    def oldest_kept(self) -> float | None:
        """The start of the window on the earliest point's clock, for forgetting old findings."""
        starts = [s.newest_ts - self.seconds for s in self.points.values() if s.newest_ts is not None]
        return min(starts) if starts else None


def _merge_newest(pieces: list[Piece]) -> None:
    """Merge the newest pieces while the one before is not four times bigger, up to ``MAX_PIECE_ROWS``."""
    while len(pieces) >= 2 and len(pieces[-2]) < 4 * len(pieces[-1]) \
            and len(pieces[-2]) + len(pieces[-1]) <= MAX_PIECE_ROWS:
        last = pieces.pop()
        before = pieces[-1]
        pieces[-1] = Piece(
            {name: np.concatenate([values, last.columns[name]]) for name, values in before.columns.items()},
            np.concatenate([before.ts, last.ts]),
            np.concatenate([before.flow, last.flow]),
            RowKeys(
                flow=np.concatenate([before.keys.flow, last.keys.flow]),
                packet=np.concatenate([before.keys.packet, last.keys.packet]),
                endpoint_a=np.concatenate([before.keys.endpoint_a, last.keys.endpoint_a]),
                endpoint_b=np.concatenate([before.keys.endpoint_b, last.keys.endpoint_b]),
                flags=np.concatenate([before.keys.flags, last.keys.flags]),
                point=before.keys.point,
            ),
        )


def analyze_window(packets: pd.DataFrame) -> list[Finding]:
    """The findings of ``diag analyze`` on the window's packets (correlation, diagnosis; the diagnosis
    makes its connections from the correlation, not from the flow table)."""
    return diagnose(packets, None, correlate(packets))


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
