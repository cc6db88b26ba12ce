"""Findings kept on disk while a report is made of them (``diag.passes``).

A finding is about 4 KB of Python objects (its facts, evidence, ruled-out
causes). A busy capture of tens of gigabytes has hundreds of thousands of
them, which the analysis in passes held in a list until the report was
written: the one part of its memory that still followed the traffic.
``FindingsWriter`` takes each connection partition's findings as the
diagnosis makes them (``add``), each pickled to one anonymous temporary file,
and keeps only a small record per finding (its place in the file and what
orders it among every part's findings). ``finish`` puts them in the whole
run's order, each once (a connection every part holds is diagnosed in each of
them, the same each time: ``merge_order``, which ``diag.partitions.merge_findings``
uses for findings in memory too), and gives a ``SpilledFindings``: a read-only
sequence that reads a finding back when asked for it, so the ranking, the text and the JSON
document go through them one at a time. Memory is about 60 bytes a finding.

The file has no name (``tempfile.TemporaryFile``): it goes when it is closed,
when the sequence is collected, or when the process ends however it ends.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final, overload

import numpy as np

from diag.report.model import Finding
from diag.scratch import spill_file

# What places a finding among every part's: the symptom's time on the reference clock, its connection's first
# row in the whole table, then its packet (point's name, file, index), as merge_findings sorts them; then where
# it is in the file.
_KEY: Final = np.dtype(
    [("ts_ref", "<i8"), ("first_row", "<i8"), ("capture", "<i4"), ("file", "<i8"), ("index", "<i8"), ("record", "<i8")]
)
# Findings read back at a time when the sequence is gone through in order.
READ_AHEAD = 256


def merge_order(
    ts_ref: np.ndarray, first_row: np.ndarray, capture: np.ndarray, file: np.ndarray, index: np.ndarray
) -> np.ndarray:
    """The positions of the findings to keep, in the whole run's order: each finding once.

    The findings of every part come one after another, each with the symptom's time on the reference clock,
    its connection's first row in the whole table and its packet (point's name, file, index in the file).
    A connection every part holds is diagnosed in each of them, the same each time: of findings with the
    same key the first given is kept. They are ordered by that key, point names compared as text.
    """
    if not len(ts_ref):
        return np.zeros(0, dtype=np.int64)
    _, capture_rank = np.unique(capture, return_inverse=True)  # numbered as the names sort
    columns = (ts_ref, first_row, capture_rank.reshape(-1), file, index)
    # lexsort's last key sorts first; the position last of all keeps a repeat's first-given finding in front.
    order = np.lexsort([np.arange(len(ts_ref)), *reversed(columns)])
    first = np.ones(len(order), dtype=bool)
    same = np.ones(len(order) - 1, dtype=bool)
    for column in columns:
        ordered = np.asarray(column)[order]
        same &= ordered[1:] == ordered[:-1]
    first[1:] = ~same
    kept: np.ndarray = order[first]
    return kept


class SpilledFindings(Sequence[Finding]):
    """Findings in a file, read back one at a time (``diag.spilledfindings``); equal to a tuple (or a list) of the
    same."""

    def __init__(self, file: IO[bytes], offsets: np.ndarray, sizes: np.ndarray) -> None:
        self._file = file
        self._offsets = offsets
        self._sizes = sizes

    def __len__(self) -> int:
        return len(self._offsets)

    def _read(self, position: int) -> Finding:
        data = os.pread(self._file.fileno(), int(self._sizes[position]), int(self._offsets[position]))
        finding: Finding = pickle.loads(data)
        return finding

    @overload
    def __getitem__(self, index: int) -> Finding: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Finding, ...]: ...

    def __getitem__(self, index: int | slice) -> Finding | tuple[Finding, ...]:
        if isinstance(index, slice):  # as a report's findings in memory (a tuple) are sliced
            return tuple(self._read(position) for position in range(*index.indices(len(self))))
        if not -len(self) <= index < len(self):
            raise IndexError("finding index out of range")
        return self._read(index % len(self))

    def __iter__(self) -> Iterator[Finding]:
        for start in range(0, len(self), READ_AHEAD):
            yield from self[start : start + READ_AHEAD]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # equal to lists too, which are not hashable

    def __repr__(self) -> str:
        return f"SpilledFindings({len(self)} findings)"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (a report sent elsewhere) as the tuple of its findings, what a report holds in memory: the
        file stays with this process."""
        return (tuple, (tuple(self),))

    def close(self) -> None:
        self._file.close()


class FindingsWriter:
    """Each part's findings into one temporary file as they come; ``finish`` orders them and drops repeats."""

    def __init__(self) -> None:
        # Closed by the sequence made of it (or close), not here: the file outlives this call.
        self._file: IO[bytes] = spill_file("diag-findings-")
        self._written = 0
        self._offsets: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._captures: dict[str, int] = {}  # point names, numbered as first met

    def add(self, findings: Sequence[Finding], order: Sequence[tuple[int, int]]) -> None:
        """One part's findings, each with its (reference time, connection's first row): ``PartFindings``."""
        keys = np.empty(len(findings), dtype=_KEY)
        sizes = np.empty(len(findings), dtype=np.int64)
        records = []
        for number, (finding, (ts_ref, first_row)) in enumerate(zip(findings, order, strict=True)):
            assert finding.packet is not None  # a finding of the diagnosis has its symptom's packet
            packet = finding.packet
            capture = self._captures.setdefault(packet.capture, len(self._captures))
            keys[number] = (ts_ref, first_row, capture, packet.file, packet.index, 0)
            record = pickle.dumps(finding, protocol=pickle.HIGHEST_PROTOCOL)
            sizes[number] = len(record)
            records.append(record)
        keys["record"] = np.arange(self._records(), self._records() + len(findings))
        self._file.write(b"".join(records))
        self._offsets.append(self._written + np.cumsum(sizes) - sizes)
        self._sizes.append(sizes)
        self._keys.append(keys)
        self._written += int(sizes.sum())

    def _records(self) -> int:
        return sum(len(sizes) for sizes in self._sizes)

    def finish(self) -> SpilledFindings:
        """Every finding once, in the whole run's order (``merge_order``: the first part's of a repeat)."""
        self._file.flush()
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=_KEY)
        if not len(keys):
            return SpilledFindings(self._file, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        offsets, sizes = np.concatenate(self._offsets), np.concatenate(self._sizes)
        self._keys, self._offsets, self._sizes = [], [], []
        names = np.array(list(self._captures), dtype=object)[keys["capture"]]
        kept = keys["record"][merge_order(keys["ts_ref"], keys["first_row"], names, keys["file"], keys["index"])]
        return SpilledFindings(self._file, offsets[kept], sizes[kept])

    def close(self) -> None:
        self._file.close()
