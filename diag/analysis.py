"""``analyze``: captures of the same traffic in, a ``Report`` out.

The pipeline after reading is pure: concatenate the packet tables (the
``capture`` column keeps them apart), build the flow table, correlate the
same packets across capture points, and diagnose every reset and lost reply
(``diag.stages.report_of``). Captures whose packets would not all fit in the
memory budget are analysed in passes instead (``diag.passes``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future

import pandas as pd

from diag.capture import read_capture
from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets, parse_filter
from diag.capture.info import CaptureInfo
from diag.capture.location import Location
from diag.capture.points import CaptureSpec, PointSpec, concat_packets, merge_point

# Callers long imported these from here; they live with the rest of what makes capture points.
from diag.capture.points import group_points as group_points
from diag.capture.points import parse_capture_args as parse_capture_args
from diag.capture.sidebyside import BackgroundRead, info_of, read_files
from diag.correlate import Correlation
from diag.correlate.match import correlate_in_steps
from diag.diagnose.connections import PacketLinks, packet_links
from diag.flows import build_flows
from diag.memory import MemoryBudgetError, current_budget
from diag.report import Report
from diag.stages import ProgressHook, in_stage, report_of

# Reads (name, path) pairs into one packet table and CaptureInfo per point, as ``read_captures`` does.
CaptureReader = Callable[
    [Sequence[tuple[str, Location]], ProgressHook | None], tuple[list[pd.DataFrame], list[CaptureInfo]]
]


def read_captures(
    pairs: Sequence[tuple[str, Location]], progress: ProgressHook | None = None
) -> tuple[list[pd.DataFrame], list[CaptureInfo]]:
    """Read every capture, one table per point; the reader's warnings are collected in each ``CaptureInfo``.

    Several files are read side by side, one per CPU (``diag.capture.sidebyside``); the files of one
    point (pairs with the same name) are then put together in time order (``diag.capture.points.merge_point``).
    """
    return assemble_points([name for name, _ in pairs], read_files(pairs, progress))


def read_file(name: str, path: Location) -> tuple[pd.DataFrame, CaptureInfo]:
    """One file of one point: its packet table and ``CaptureInfo`` (``diag.cluster`` runs this on workers)."""
    # The reader both records and warns; the report carries the records.
    table = read_capture(path, name=name, warn=False)
    return table, info_of(table, name, path)


def assemble_points(
    names: Sequence[str], files: Sequence[tuple[pd.DataFrame, CaptureInfo]]
) -> tuple[list[pd.DataFrame], list[CaptureInfo]]:
    """``read_file``'s results (``names[i]`` is the point of ``files[i]``) as one table per point, in time order."""
    points: dict[str, list[tuple[pd.DataFrame, CaptureInfo]]] = {}
    for name, one in zip(names, files, strict=True):
        points.setdefault(name, []).append(one)
    merged = [merge_point([table for table, _ in group], [info for _, info in group]) for group in points.values()]
    return [table for table, _ in merged], [info for _, info in merged]


def analyze(
    captures: Mapping[str, PointSpec] | Sequence[CaptureSpec],
    *,
    progress: ProgressHook | None = None,
    packet_filter: str | FilterNode | None = None,
    reader: CaptureReader | None = None,
    started: BackgroundRead | None = None,
) -> Report:
    """Read captures of the same traffic taken at different points and say what happened.

    ``captures`` is ``{"client": "c.pcap", "pod": "p.pcap"}`` or a list of
    paths and ``NAME=PATH`` strings; a point of several files (a ring buffer)
    is ``{"pod": ["pod.pcap0", "pod.pcap1"]}``, a directory or a glob. Raises ``DiagError`` (``CaptureError``)
    when a capture cannot be read at all; damaged parts are skipped and
    listed in ``report.warnings``. ``packet_filter`` (pcap-filter text such
    as ``"tcp and host 10.0.0.5"``, see ``diag.capture.filter``) keeps only the
    matching packets before flows, correlation and diagnosis see them; a bad
    expression raises ``FilterError`` before any capture is read. ``reader``
    replaces ``read_captures`` (the tables it gives are analyzed as read; a Dask
    cluster does more than read, see ``diag.cluster.analyze_on``). ``started``:
    the same files' read, begun earlier in the background (``diag analyze``
    starts it before importing this module); it is used when it reads exactly
    the pairs ``captures`` names, dropped otherwise.
    """
    tree = parse_filter(packet_filter) if isinstance(packet_filter, str) else packet_filter
    pairs = parse_capture_args(captures)
    if started is not None and (reader is not None or started.pairs != pairs):
        started.cancel()
        started = None
    try:
        if started is not None:
            tables, infos = assemble_points([name for name, _ in pairs], started.result())
            started.cancel()  # it is done: this drops its hold on the files' tables, stacked below
        else:
            tables, infos = (reader or read_captures)(pairs, progress)
    except MemoryBudgetError as error:
        limit = current_budget().limit
        if reader is not None or limit is None:
            raise
        # Every packet at once would not fit: read the files in passes instead (diag.passes, imported only then).
        from diag.passes import analyze_in_passes

        return analyze_in_passes(pairs, limit, progress, tree, refusal=error)
    packets = concat_packets(tables)
    # The points' own tables are copied into the stacked one: not kept for the stages after (peak memory).
    del tables
    if tree is not None:
        # Renumbered rows: the correlation and the plots name packets by row label, within this table only.
        packets = filter_packets(packets, tree).reset_index(drop=True)
    # The correlation needs only the packets: it runs on a thread of its own while the flow table is built. Both
    # spend much of their time in compiled loops that let go of the interpreter lock, so on two cores they overlap.
    # Whichever of the two is done first then reads what linking the diagnosis's connections needs of the
    # packets alone (their per-point flow keys), see _FirstFree.
    linking = _FirstFree(lambda: packet_links(packets))
    correlating = _Correlating(packets, linking)
    with in_stage(progress, "flows", f"{len(packets):,} packets"):
        flows = build_flows(packets)
        links = linking.result()  # made here, or waited for while the correlation's thread makes them
    return report_of(packets, flows, infos, progress, correlating=correlating, links=links)


class _FirstFree:
    """Work that either of two threads may do: the first to be free for it runs it, the other waits for it.

    What linking the diagnosis's connections needs of the packets alone (``packet_links``) comes after
    both the flow table and the correlation's per-row step: on a single capture the correlation is done
    first (its thread then links while this one still builds flows), on several the flow table is (this
    thread links).
    """

    def __init__(self, work: Callable[[], PacketLinks]) -> None:
        self._work: Callable[[], PacketLinks] | None = work
        self._claim = threading.Lock()
        self._done: Future[PacketLinks] = Future()

    def run_unless_taken(self) -> None:
        with self._claim:
            work, self._work = self._work, None
        if work is None:
            return
        try:
            self._done.set_result(work())
        except BaseException as error:  # raised again by result(), in the thread that waits
            self._done.set_exception(error)

    def result(self) -> PacketLinks:
        self.run_unless_taken()  # run here unless the other thread took it first (then waited for below)
        return self._done.result()


class _Correlating:
    """``correlate(packets)`` started now on a daemon thread (an interrupted analysis does not wait for it).

    It hands over in two steps (``diag.correlate.match.CorrelationSteps``): ``for_diagnosis`` as soon as
    the per-row results are known, then ``result``, the whole correlation, once the thread has built the
    match, path and NAT tables, which the diagnosis does not read: on two cores they are built beside it.
    Between the two, the thread links the packets (``linking``) unless the flow table was done first.
    """

    def __init__(self, packets: pd.DataFrame, linking: _FirstFree) -> None:
        self._rows: Future[Correlation] = Future()
        self._whole: Future[Correlation] = Future()
        threading.Thread(target=self._run, args=(packets, linking), name="diag-correlate", daemon=True).start()

    def _run(self, packets: pd.DataFrame, linking: _FirstFree) -> None:
        try:
            steps = correlate_in_steps(packets)
            self._rows.set_result(steps.for_diagnosis)
            linking.run_unless_taken()  # the tables below wait: the diagnosis needs the links first
            self._whole.set_result(steps.finish())
        except BaseException as error:  # raised again by the waits, in the thread that waits
            for future in (self._rows, self._whole):
                if not future.done():
                    future.set_exception(error)

    def for_diagnosis(self) -> Correlation:
        return self._rows.result()

    def result(self) -> Correlation:
        return self._whole.result()

