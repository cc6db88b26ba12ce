"""Re-diagnosing only what changed: each analysis of a live window takes the connections that may have a new finding.

Analyzing the whole window at every step costs in proportion to the window
(about a second for 300k packets), which at 50k packets a second puts the
decision seconds behind the capture. A finding is a function of its
connection's packets at every point, of when each point's capture ran (its
first and last packet) and of the ICMP errors a point saw. So a step hands
the usual pipeline (``correlate``, ``diagnose``) a small table: the packets
of the groups of flows (``diag.watch.links``) that may hold a finding whose
evidence could have changed, with every ICMP packet and each point's first
and last packet, in the window's order. Each connection in it is whole, so
its finding is the one the whole window gives.

A group is looked at again when:

- it got packets since the last step;
- it may hold a finding not yet settled: it has a packet later than what
  every point had delivered at the last step, less ``SETTLE_S`` (a slower
  point's packets or its quiet can change the evidence);
- a point's clock passed one of its SYNs or datagrams by the wait after
  which an unanswered one is a finding (``UNANSWERED_WAIT_S``), or by the
  wait before such a finding is decided (``ABSENCE_SETTLE_S``): nothing new
  arrived, but the absence now counts.

and only if it may be a suspect of the diagnosis at all (a RST, a SYN
retried or unanswered, UDP). The findings found are kept as *pending*, each
with the flow of its symptom, until a later step looks at that flow's group
again (and replaces them), they are given, or their symptom leaves the
window.

What this does not see: a finding that changes only because the clocks of
several points are estimated from fewer packets (the small table's matches
instead of the window's), or because a capture's first packet left the
window. Both move evidence by microseconds or at a window's edge; the last
analysis, when the streams end, runs on the whole window and gives what
those would have changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.proto import ICMP, ICMPV6
from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.diagnose.tcp import UNANSWERED_WAIT_NS
from diag.report import Finding
from diag.watch.links import HAS_SYN, IS_UDP, IntArray
from diag.watch.window import ABSENCE_SETTLE_S, SETTLE_S, Piece, Window

# After this much of its point's stream time, an unanswered SYN is a finding (the diagnosis' own wait).
UNANSWERED_WAIT_S = UNANSWERED_WAIT_NS / 1e9
# Clocks of several points are aligned to within this much: a margin on every time compared across points.
CLOCK_MARGIN_S = 0.05

BoolArray = npt.NDArray[np.bool_]


@dataclass
class Pending:
    """A finding found but not yet given, the flow of its symptom, and the RST rows its analysis saw."""

    finding: Finding
    flow_key: int  # the symptom's flow key (stable when the window renumbers its flows)
    flow: int  # its number in the window's links at the time
    rsts: pd.DataFrame


@dataclass
class Step:
    """What one step looked at (for the benchmark and the tests)."""

    groups: int = 0
    packets: int = 0


@dataclass
class IncrementalAnalysis:
    """The findings of a live window, revisiting at each step only the groups of flows that may have changed."""

    window: Window
    pending: dict[tuple[str, int, str], Pending] = field(default_factory=dict)
    # Per point, its newest time at the last step; and the time every point had caught up to then.
    _newest_before: dict[str, float] = field(default_factory=dict)
    _caught_up_before: dict[str, float] = field(default_factory=dict)
    last: Step = field(default_factory=Step)
    _numbered_by: object = None  # the links the pending findings' flow numbers are from

    def step(self, now: float, idle_since: Mapping[str, float | None]) -> list[Finding]:
        """Analyze what may have changed since the last step; returns every pending finding, oldest first."""
        window = self.window
        fresh = window.take_fresh()
        links = window.links
        groups = links.groups()
        # A flow that only waits (a SYN or datagram not yet answered) has no finding before its wait
        # runs out: it is looked at then (or earlier, if it becomes a suspect otherwise).
        waiting = links.waiting()
        active_flows = links.suspects(groups)
        caught_up = window.caught_up_by_point(now, idle_since)
        revisit, ran_out = self._revisit(fresh, active_flows, waiting, caught_up)
        self._caught_up_before = caught_up
        self._newest_before = {name: state.newest_ts for name, state in window.points.items()
                               if state.newest_ts is not None}
        touched = np.zeros(links.n_flows, dtype=bool)
        touched[groups[revisit]] = True
        chosen_group = np.zeros(links.n_flows, dtype=bool)
        chosen_group[groups[active_flows]] = True
        chosen_group &= touched
        chosen_group[groups[ran_out]] = True
        # A group with a pending finding is looked at again whatever the reason it was touched.
        pending_flows = self._pending_flows()
        chosen_group[groups[pending_flows[touched[groups[pending_flows]]]]] = True
        touched[groups[ran_out]] = True
        self._forget_pending(links.flow_hash[: links.n_flows][touched[groups]])
        self.last = Step()
        if chosen_group.any():
            self._analyze(chosen_group[groups])
        self._forget_left_window()
        window.trim()
        return sorted((p.finding for p in self.pending.values()),
                      key=lambda f: f.packet.ts if f.packet else float("inf"))

    def given(self, finding: Finding) -> None:
        """The finding was given: no need to keep it pending."""
        self.pending.pop(_pending_key(finding), None)

    def rsts_of(self, finding: Finding) -> pd.DataFrame | None:
        """The RST rows of the analysis that found ``finding`` (for the kernel's account)."""
        pending = self.pending.get(_pending_key(finding))
        return pending.rsts if pending else None

    def _revisit(self, fresh: IntArray, active_flows: BoolArray, waiting_flows: BoolArray,
                 caught_up: dict[str, float]) -> tuple[IntArray, IntArray]:
        """(flows touched: with new or unsettled packets; flows whose wait for an answer ran out)."""
        touched, ran_out = [fresh], [np.zeros(0, dtype=np.int64)]
        if len(active_flows) == 0:
            return fresh, ran_out[0]  # no flow in the window yet
        everyone_before = min(self._caught_up_before.values(), default=float("inf"))
        everyone_now = min(caught_up.values(), default=float("inf"))
        for name, state in self.window.points.items():
            if state.newest_ts is None:
                continue
            # A packet here is settled once every other point had caught up past it at the last step.
            others = min((when for other, when in self._caught_up_before.items() if other != name),
                         default=float("inf"))
            settled_until = _ns(others - SETTLE_S - CLOCK_MARGIN_S)
            before = self._newest_before.get(name, float("-inf"))
            # (low, high] ranges of packet times whose waits ran out during this step.
            ranges = [(_ns(before - UNANSWERED_WAIT_S - CLOCK_MARGIN_S),
                       _ns(state.newest_ts - UNANSWERED_WAIT_S - CLOCK_MARGIN_S)),
                      (_ns(everyone_before - ABSENCE_SETTLE_S - CLOCK_MARGIN_S),
                       _ns(everyone_now - ABSENCE_SETTLE_S - CLOCK_MARGIN_S))]
            ranges = [(low, high) for low, high in ranges if high > low]
            lowest = min([settled_until, *(low for low, _ in ranges)])
            for piece in state.pieces:
                if piece.newest <= lowest:
                    continue
                valid = piece.flow >= 0
                flow = np.where(valid, piece.flow, 0)
                unsettled = valid & active_flows[flow] & (piece.ts > settled_until)
                touched.append(piece.flow[unsettled])
                if ranges:
                    waiting = valid & waiting_flows[flow] & ((piece.keys.flags & (HAS_SYN | IS_UDP)) != 0)
                    due = np.zeros(len(piece), dtype=bool)
                    for low, high in ranges:
                        due |= (piece.ts > low) & (piece.ts <= high)
                    ran_out.append(piece.flow[waiting & due])
        return np.unique(np.concatenate(touched)), np.unique(np.concatenate(ran_out))

    def _pending_flows(self) -> IntArray:
        """The flow numbers of the pending findings' symptoms (looked up again after the window relinked)."""
        links = self.window.links
        if not self.pending:
            return np.zeros(0, dtype=np.int64)
        if self._numbered_by is not links:
            keys = links.flow_hash[: links.n_flows]
            order = np.argsort(keys)
            for pending in self.pending.values():
                at = int(np.searchsorted(keys, np.uint64(pending.flow_key), sorter=order))
                found = at < len(order) and int(keys[order[at]]) == pending.flow_key
                pending.flow = int(order[at]) if found else -1
            self._numbered_by = links
        flows = np.array([p.flow for p in self.pending.values()], dtype=np.int64)
        return flows[(flows >= 0) & (flows < links.n_flows)]

    def _analyze(self, chosen_flow: BoolArray) -> None:
        """Diagnose the chosen flows' packets (with every ICMP packet and each point's first and last)."""
        window = self.window
        taken: list[tuple[Piece, IntArray]] = []
        flow_keys: list[npt.NDArray[np.uint64]] = []
        flow_numbers: list[IntArray] = []
        for state in window.points.values():
            cutoff = window.cutoff_ns(state)
            kept = [piece for piece in state.pieces if piece.newest >= cutoff]
            if not kept:
                continue
            # The point's first and last packet in the window: when its capture ran is evidence.
            first = min(range(len(kept)), key=lambda k: int(kept[k].ts[kept[k].ts >= cutoff].min()))
            last = max(range(len(kept)), key=lambda k: kept[k].newest)
            for k, piece in enumerate(kept):
                valid = piece.flow >= 0
                rows = np.zeros(len(piece), dtype=bool)
                rows[valid] = chosen_flow[piece.flow[valid]]
                proto = piece.columns["proto"]
                rows |= (proto == ICMP) | (proto == ICMPV6)
                in_window = piece.ts >= cutoff
                if k == first:
                    rows[int(np.argmin(np.where(in_window, piece.ts, 2**62)))] = True
                if k == last:
                    rows[int(np.argmax(piece.ts))] = True
                rows &= in_window
                positions = np.flatnonzero(rows)
                if len(positions):
                    taken.append((piece, positions))
                    keys = np.where(valid[positions] & chosen_flow[np.maximum(piece.flow[positions], 0)],
                                    window.links.flow_hash[np.maximum(piece.flow[positions], 0)], np.uint64(0))
                    flow_keys.append(keys)
                    flow_numbers.append(piece.flow[positions])
        if not taken:
            return
        packets = window.rows(taken)
        row_flow_key = np.concatenate(flow_keys)
        row_flow = np.concatenate(flow_numbers)
        self._numbered_by = window.links
        findings = diagnose(packets, None, correlate(packets))
        self.last = Step(groups=int(np.count_nonzero(chosen_flow)), packets=len(packets))
        if not findings:
            return
        captures = packets["capture"].astype(str).to_numpy()
        indexes = packets["index"].to_numpy()
        rsts = packets[(packets["tcp_flags"].to_numpy() >= 0) & ((packets["tcp_flags"].to_numpy() & 0x04) != 0)]
        for finding in findings:
            key = 0
            if finding.packet is not None:
                at = np.flatnonzero((captures == finding.packet.capture) & (indexes == finding.packet.index))
                key = int(row_flow_key[at[0]]) if len(at) else 0
            if key == 0:
                continue  # a connection of a point's first or last packet only, not of a chosen group
            self.pending[_pending_key(finding)] = Pending(finding, key, int(row_flow[at[0]]), rsts)

    def _forget_pending(self, revisited_keys: npt.NDArray[np.uint64]) -> None:
        """Drop the pending findings of the groups about to be looked at again (the new look replaces them)."""
        if not self.pending:
            return
        keys = np.array([p.flow_key for p in self.pending.values()], dtype=np.uint64)
        stale = np.isin(keys, revisited_keys)
        for name, gone in zip(list(self.pending), stale.tolist(), strict=True):
            if gone:
                del self.pending[name]

    def _forget_left_window(self) -> None:
        oldest = self.window.oldest_kept()
        if oldest is None:
            return
        for name, pending in list(self.pending.items()):
            if pending.finding.packet is not None and pending.finding.packet.ts < oldest:
                del self.pending[name]


def _ns(seconds: float) -> int:
    """Seconds as nanoseconds, the infinities as far beyond any packet time."""
    if seconds == float("inf"):
        return 2**62
    if seconds == float("-inf"):
        return -(2**62)
    return int(seconds * 1e9)


def _pending_key(finding: Finding) -> tuple[str, int, str]:
    packet = finding.packet
    return (packet.capture if packet else "", packet.index if packet else -1, finding.cause)
