"""A flow table larger than memory, kept on disk in partitions (``diag.passes``).

A busy capture has a flow row per dozen packets, about 500 bytes each in
memory: a capture of tens of gigabytes has millions of them, more than the
budget of ``--max-memory``. The analysis in passes builds the table a
partition of flows at a time; ``SpilledFlows`` takes each partition's rows
(``add``) and writes them to a temporary directory, sorted by the place of
each flow's first packet in the whole packet table, and keeps in memory only
what the report shows of them without ``--flows all``:

- the first ``FLOW_LIMIT`` problem rows in table order
  (``diag.report.flowkinds.problem_kinds``: resets, unanswered SYNs, one-sided
  flows, SYN retransmissions), which the JSON document puts first, and the
  first ``DEFAULT_PROBLEM_LINES`` of each problem kind at each point, which
  the text report lists;
- the first ``FLOW_LIMIT`` healthy rows in table order, which fill the JSON
  document's capped table;
- per capture point the number of flows, of each problem kind, and of the
  healthy ones by protocol and state: the ``FlowDigest``
  (``diag.report.flowdigest``) with which a report holding only those rows
  renders as the report holding every flow.

``finish`` numbers the flows as the whole table would (by their first
packet: a merge of the partitions' sorted runs, a block of each at a time)
and writes each partition's new numbers next to its rows; ``chunks`` then
reads the whole table back in its order, a block at a time, for ``--flows
all`` and the exports. The directory is removed by ``close``, when the object
is collected, or when the interpreter exits (an error or Ctrl-C included).
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from diag.flows.table import empty_flows
from diag.report.flowcap import FLOW_LIMIT
from diag.report.flowdigest import CaptureFlows, FlowDigest
from diag.report.flowkinds import problem_kinds, summary_line
from diag.scratch import spill_dir

# A row's place in the whole packet table: (point, time or 0, rank of its file, row), as diag.passes orders them.
ORDER: Final = np.dtype([("point", "<i8"), ("time", "<i8"), ("rank", "<i8"), ("row", "<i8")])
# Rows of each partition's run merged at a time when numbering, and rows of the whole table read back at a time.
MERGE_BLOCK_ROWS = 1 << 16
READ_ROWS = 1 << 15
# Helper columns of the rows held in memory: their partition and place in it.
_PART, _LOCAL = "_spill_part", "_spill_local"


def sorted_order(order: np.ndarray) -> np.ndarray:
    """The permutation that puts rows in the whole table's order."""
    return np.lexsort((order["row"], order["rank"], order["time"], order["point"]))


@dataclass
class FlowCounts:
    """What the text report counts of one capture point's flows."""

    flows: int = 0
    healthy: int = 0
    tunnels: int = 0  # healthy carrier flows (VXLAN, Geneve)
    states: Counter[tuple[str, str]] = field(default_factory=Counter)  # other healthy flows by (proto, conn_state)
    problems: Counter[str] = field(default_factory=Counter)  # problem kind -> flows

    def healthy_line(self) -> str:
        """``diag.report.flowkinds.healthy_summary`` of the point's healthy flows, from their counts."""
        return summary_line(self.healthy, self.states, self.tunnels)


@dataclass
class _Part:
    rows: int
    pieces: list[tuple[int, int]]  # (offset, length) of each pickled block of rows in the part's file


class SpilledFlows:
    """A flow table on disk in sorted partitions, with the rows and counts the capped report needs in memory.

    ``piece_rows`` rows are pickled together; reading the table back holds one
    piece of every partition at once.
    """

    def __init__(self, piece_rows: int = 1 << 13, keep_healthy: int = 0, per_kind: int = 0) -> None:
        self._directory = spill_dir("diag-flows-")
        self.path = Path(self._directory.name)
        self.piece_rows = max(64, piece_rows)
        self.keep_healthy = keep_healthy or FLOW_LIMIT
        self.per_kind = per_kind or _problem_lines()
        self.total = 0
        self.counts: dict[str, FlowCounts] = {}
        self._parts: list[_Part] = []
        self._problems = pd.DataFrame()
        self._problem_order = np.zeros(0, dtype=ORDER)
        self._healthy = pd.DataFrame()
        self._healthy_order = np.zeros(0, dtype=ORDER)
        self._columns: list[str] = list(empty_flows().columns)
        self.finished = False

    def close(self) -> None:
        """Remove the files (the object is no use afterwards)."""
        self._directory.cleanup()

    def _file(self, part: int, kind: str) -> Path:
        return self.path / f"part-{part:05d}.{kind}"

    def add(self, table: pd.DataFrame, firsts: np.ndarray) -> None:
        """One partition's flow rows (``flow_id`` and ``prev_flow`` its own) and where each one's first packet is."""
        if len(table) == 0:
            return
        self._columns = list(table.columns)
        part = len(self._parts)
        sort = sorted_order(firsts)
        table = table.iloc[sort].reset_index(drop=True)
        firsts = firsts[sort]
        position = np.empty(len(sort), dtype=np.int64)
        position[sort] = np.arange(len(sort), dtype=np.int64)
        previous = table["prev_flow"].to_numpy()
        # prev_flow names a flow of the same 5-tuple, so of this partition: its place in the sorted rows.
        table["prev_flow"] = np.where(previous >= 0, position[np.maximum(previous, 0)], -1)
        table["flow_id"] = np.arange(len(table), dtype=np.int64)
        kinds = np.asarray(problem_kinds(table), dtype=object)
        problems = kinds != None  # noqa: E711 (element-wise against None)
        self._count(table, problems, kinds)
        tagged = table.copy()
        tagged[_PART] = part
        tagged[_LOCAL] = np.arange(len(table), dtype=np.int64)
        self._keep_shown_problems(tagged[problems], firsts[problems], kinds[problems])
        healthy = np.flatnonzero(~problems)[: self.keep_healthy]  # the partition's first, as it is sorted
        self._keep_first_healthy(tagged.iloc[healthy], firsts[healthy])
        pieces = []
        with open(self._file(part, "rows"), "wb") as out:
            for start in range(0, len(table), self.piece_rows):
                data = pickle.dumps(table.iloc[start : start + self.piece_rows], protocol=pickle.HIGHEST_PROTOCOL)
                pieces.append((out.tell(), len(data)))
                out.write(data)
        firsts.tofile(self._file(part, "order"))
        self._parts.append(_Part(len(table), pieces))
        self.total += len(table)

    def _count(self, table: pd.DataFrame, problems: np.ndarray, kinds: np.ndarray) -> None:
        captures = table["capture"].astype(str).to_numpy()
        for capture, number in zip(*np.unique(captures, return_counts=True), strict=True):
            self.counts.setdefault(str(capture), FlowCounts()).flows += int(number)
        shown = pd.DataFrame({"capture": captures[problems], "kind": kinds[problems]})
        for capture, kind, number in shown.value_counts(sort=False).reset_index().itertuples(index=False):
            self.counts[str(capture)].problems[str(kind)] += int(number)
        healthy = table[~problems]
        carrier = np.zeros(len(healthy), bool)
        if "carrier" in healthy.columns:
            carrier = healthy["carrier"].to_numpy(dtype=bool)
        groups = pd.DataFrame(
            {
                "capture": captures[~problems],
                "carrier": carrier,
                "proto": healthy["proto"].to_numpy(),
                "state": healthy["conn_state"].to_numpy(),
            }
        )
        for capture, is_carrier, proto, state, number in (
            groups.value_counts(sort=False, dropna=False).reset_index().itertuples(index=False)
        ):
            counts = self.counts[str(capture)]
            counts.healthy += int(number)
            if is_carrier:
                counts.tunnels += int(number)
            else:
                counts.states[(proto, state)] += int(number)

    def _keep_shown_problems(self, rows: pd.DataFrame, order: np.ndarray, kinds: np.ndarray) -> None:
        """Of the problem rows kept so far and these, those the reports show: the first ``keep_healthy`` in the
        whole table's order (the JSON's) and the first ``per_kind`` of each kind at each point (the text's)."""
        if len(rows) == 0:
            return
        rows = rows.assign(_kind=kinds)
        joined = pd.concat([self._problems, rows], ignore_index=True) if len(self._problems) else rows
        order = np.concatenate([self._problem_order, order])
        sort = sorted_order(order)
        joined, order = joined.iloc[sort].reset_index(drop=True), order[sort]
        keep = np.arange(len(joined)) < self.keep_healthy
        keep |= (
            joined.groupby([joined["capture"].astype(str), "_kind"], sort=False).cumcount().to_numpy() < self.per_kind
        )
        self._problems = joined[keep].reset_index(drop=True)
        self._problem_order = order[keep]

    def _keep_first_healthy(self, rows: pd.DataFrame, order: np.ndarray) -> None:
        """Of the healthy rows kept so far and these, the first ``keep_healthy`` in the whole table's order."""
        if len(rows) == 0:
            return
        joined = pd.concat([self._healthy, rows], ignore_index=True) if len(self._healthy) else rows
        order = np.concatenate([self._healthy_order, order])
        first = sorted_order(order)[: self.keep_healthy]
        self._healthy = joined.iloc[first].reset_index(drop=True)
        self._healthy_order = order[first]

    def finish(self, block_rows: int = 0) -> pd.DataFrame:
        """Number the flows as the whole table would; the rows kept in memory (those the reports show), numbered."""
        self._number(block_rows or MERGE_BLOCK_ROWS)
        self.finished = True
        kept = [table for table in (self._problems.drop(columns="_kind", errors="ignore"), self._healthy) if len(table)]
        self._problems, self._healthy = pd.DataFrame(), pd.DataFrame()
        if not kept:
            return empty_flows()
        rows = pd.concat(kept, ignore_index=True)
        numbers = self._numbers_of(rows[_PART].to_numpy(), rows[_LOCAL].to_numpy())
        previous = rows["prev_flow"].to_numpy()
        rows["prev_flow"] = np.where(
            previous >= 0, self._numbers_of(rows[_PART].to_numpy(), np.maximum(previous, 0)), -1
        )
        rows["flow_id"] = numbers
        rows = rows.iloc[np.argsort(numbers, kind="stable")].drop(columns=[_PART, _LOCAL])
        return rows.reset_index(drop=True)

    def digest(self) -> FlowDigest:
        """The counts with which the rows ``finish`` returned render as the whole table (text, and JSON capped)."""
        return FlowDigest(
            {
                capture: CaptureFlows(counts.flows, dict(counts.problems), counts.healthy_line())
                for capture, counts in self.counts.items()
            },
            self.keep_healthy,
        )

    def _ids(self, part: int) -> np.ndarray:
        return np.memmap(self._file(part, "ids"), dtype=np.int64, mode="r") if self._parts[part].rows else np.zeros(0)

    def _numbers_of(self, parts: np.ndarray, local: np.ndarray) -> np.ndarray:
        numbers = np.empty(len(parts), dtype=np.int64)
        for part in np.unique(parts).tolist():
            mine = parts == part
            numbers[mine] = self._ids(int(part))[local[mine]]
        return numbers

    def _number(self, block_rows: int) -> None:
        """Merge the partitions' sorted runs of first-packet places, a block of each at a time: each row's number."""
        sizes = [part.rows for part in self._parts]
        loaded = [0] * len(sizes)  # rows of each run read from disk
        held: list[np.ndarray] = [np.zeros(0, dtype=ORDER) for _ in sizes]
        outputs = [open(self._file(part, "ids"), "wb") for part in range(len(sizes))]  # noqa: SIM115
        try:
            next_number = 0
            while True:
                for part, size in enumerate(sizes):
                    if not len(held[part]) and loaded[part] < size:
                        count = min(block_rows, size - loaded[part])
                        held[part] = np.fromfile(
                            self._file(part, "order"), dtype=ORDER, count=count, offset=loaded[part] * ORDER.itemsize
                        )
                        loaded[part] += count
                live = [part for part in range(len(sizes)) if len(held[part])]
                if not live:
                    break
                keys = np.concatenate([held[part] for part in live])
                owner = np.concatenate([np.full(len(held[part]), part) for part in live])
                sort = sorted_order(keys)
                stop = len(sort)
                waiting = [part for part in live if loaded[part] < sizes[part]]
                if waiting:  # rows up to the smallest last row of a run with more on disk are surely next
                    rank = np.empty(len(sort), dtype=np.int64)
                    rank[sort] = np.arange(len(sort))
                    ends = np.cumsum([len(held[part]) for part in live]) - 1
                    stop = int(min(rank[ends[live.index(part)]] for part in waiting)) + 1
                emitted = owner[sort[:stop]]
                for part in live:
                    mine = np.flatnonzero(emitted == part)
                    (mine + next_number).astype(np.int64).tofile(outputs[part])
                    held[part] = held[part][len(mine) :]
                next_number += stop
        finally:
            for output in outputs:
                output.close()

    def _piece(self, part: int, number: int) -> pd.DataFrame:
        offset, length = self._parts[part].pieces[number]
        with open(self._file(part, "rows"), "rb") as source:
            source.seek(offset)
            table: pd.DataFrame = pickle.loads(source.read(length))
        return table

    def chunks(self, rows: int = 0) -> Iterator[pd.DataFrame]:
        """The whole flow table in its order, ``rows`` rows at a time, numbered as ``finish`` numbered them."""
        if not self.finished:
            raise RuntimeError("SpilledFlows.chunks before finish")
        rows = rows or READ_ROWS
        ids = [self._ids(part) for part in range(len(self._parts))]
        current: dict[int, tuple[int, pd.DataFrame]] = {}  # part -> (piece number, its rows)
        for low in range(0, self.total, rows):
            high = min(self.total, low + rows)
            pieces = []
            numbers = []
            for part, part_ids in enumerate(ids):
                start, stop = np.searchsorted(part_ids, [low, high])
                while start < stop:
                    number = int(start) // self.piece_rows
                    if current.get(part, (-1, None))[0] != number:
                        current[part] = (number, self._piece(part, number))
                    table = current[part][1]
                    first = number * self.piece_rows
                    until = min(int(stop), first + len(table))
                    piece = table.iloc[int(start) - first : until - first]
                    previous = piece["prev_flow"].to_numpy()
                    piece = piece.assign(
                        flow_id=np.asarray(part_ids[int(start) : until]),
                        prev_flow=np.where(previous >= 0, part_ids[np.maximum(previous, 0)], -1),
                    )
                    pieces.append(piece)
                    numbers.append(piece["flow_id"].to_numpy())
                    start = until
            chunk = pd.concat(pieces, ignore_index=True)
            yield chunk.iloc[np.argsort(np.concatenate(numbers), kind="stable")].reset_index(drop=True)

    def load(self) -> pd.DataFrame:
        """The whole flow table in memory (what ``--flows all`` in text, the exports and the plots need)."""
        chunks = list(self.chunks())
        if not chunks:
            return empty_flows()
        return pd.concat(chunks, ignore_index=True)

    def load_where(self, keep: Callable[[pd.DataFrame], np.ndarray]) -> pd.DataFrame:
        """``load()[mask]`` with one block of rows in memory at a time: the rows ``keep`` picks of each block
        (a boolean mask of its rows), indexed by their place in the whole table (``--flow``)."""
        kept = []
        start = 0
        for chunk in self.chunks():
            picked = chunk[keep(chunk)]
            kept.append(picked.set_axis(picked.index + start))
            start += len(chunk)
        if not kept:
            return empty_flows()
        return pd.concat(kept)


def _problem_lines() -> int:
    from diag.report.text import DEFAULT_PROBLEM_LINES

    return DEFAULT_PROBLEM_LINES
