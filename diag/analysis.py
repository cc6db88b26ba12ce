"""``analyze``: captures of the same traffic in, a ``Report`` out.

The pipeline after reading is pure: concatenate the packet tables (the
``capture`` column keeps them apart), build the flow table, correlate the
same packets across capture points, and diagnose every reset and lost reply.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pandas as pd

from diag.capture import read_capture
from diag.capture.digest import digest_alone, usable_cpus
from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets, parse_filter
from diag.capture.info import CaptureInfo
from diag.capture.points import check_points, expand_spec, merge_point, point_stem, stack_tables
from diag.capture.reader import ReadStopped
from diag.capture.source import STDIN_NAME, capture_size, exists_quietly
from diag.correlate import Correlation, correlate
from diag.diagnose import diagnose
from diag.errors import DiagError
from diag.flows import build_flows
from diag.gcpause import collector_paused
from diag.memory import MemoryBudgetError, current_budget
from diag.report import Finding, Report

CaptureSpec = str | os.PathLike[str]
# One capture point: a file, a directory or glob of files, or a list of them (a ring buffer, rotated files).
PointSpec = CaptureSpec | Sequence[CaptureSpec]

# Called as hook(stage, detail) when a stage of the analysis starts: "read"
# once per capture (detail: its name, path and size), then "flows",
# "correlate" and "diagnose" (detail: how much there is to do). The context it
# returns is held while the stage runs, so a command line can show a spinner
# or a progress line; the analysis itself never writes to a terminal.
ProgressHook = Callable[[str, str], AbstractContextManager[object]]
STAGES = ("read", "flows", "correlate", "diagnose")
# Findings from the stacked packet table and its correlation (``diagnose``'s, or one that spreads the work).
Diagnoser = Callable[[pd.DataFrame, Correlation], list[Finding]]
# Reads (name, path) pairs into one packet table and CaptureInfo per point, as ``read_captures`` does.
CaptureReader = Callable[
    [Sequence[tuple[str, Path]], ProgressHook | None], tuple[list[pd.DataFrame], list[CaptureInfo]]
]


def _stage(progress: ProgressHook | None, stage: str, detail: str) -> AbstractContextManager[object]:
    return progress(stage, detail) if progress else nullcontext()


def parse_capture_args(captures: Mapping[str, PointSpec] | Sequence[CaptureSpec]) -> list[tuple[str, Path]]:
    """(name, path) pairs from a mapping, or from ``NAME=PATH`` / ``PATH`` items; a name may come back
    several times, once for each file of that capture point.

    Without ``NAME=`` the name is the file's stem (``pod.pcap.gz`` -> ``pod``),
    and rotated files (``pod.pcap0 pod.pcap1``, ``pod_00001_<time>.pcapng``)
    of one directory are one point named ``pod``. The same NAME given again,
    ``NAME=DIR`` and ``NAME=GLOB`` (quoted, so the shell leaves it) add files
    to one point; so does a list in the mapping (``{"pod": [a, b]}``). An
    item whose text before the first '=' names an existing file is taken as
    a path, so odd file names still work. Two unrelated files that would get
    the same name are an error.
    """
    entries: list[tuple[str, Path, bool]] = []  # (name, file, named explicitly)
    if isinstance(captures, Mapping):
        for name, spec in captures.items():
            specs = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
            for one in specs:
                entries += [(str(name), path, True) for path in expand_spec(Path(one)) or [Path(one)]]
    else:
        for item in captures:
            text = os.fspath(item)
            name, sep, rest = text.partition("=")
            if isinstance(item, str) and sep and name and rest and not exists_quietly(Path(text)):
                entries += [(name, path, True) for path in expand_spec(Path(rest)) or [Path(rest)]]
            else:
                files = expand_spec(Path(text), directories=False) or [Path(text)]
                entries += [(point_stem(path), path, False) for path in files]
    if not entries:
        raise DiagError("no capture given")
    check_points(entries)
    return [(name, path) for name, path, _named in entries]


def group_points(pairs: Sequence[tuple[str, Path]]) -> dict[str, list[Path]]:
    """``parse_capture_args``'s pairs as point name -> its files, in the order given (``analyze`` takes it)."""
    points: dict[str, list[Path]] = {}
    for name, path in pairs:
        points.setdefault(name, []).append(path)
    return points


def concat_packets(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack packet tables, keeping categorical columns categorical (a plain concat would not)."""
    return tables[0] if len(tables) == 1 else stack_tables(tables)


def read_captures(
    pairs: Sequence[tuple[str, Path]], progress: ProgressHook | None = None
) -> tuple[list[pd.DataFrame], list[CaptureInfo]]:
    """Read every capture, one table per point; the reader's warnings are collected in each ``CaptureInfo``.

    Several files are read side by side, one per CPU (see ``read_side_by_side``); the files of one
    point (pairs with the same name) are then put together in time order (``diag.capture.points.merge_point``).
    """
    with warnings.catch_warnings():
        # The reader both records and warns; the report carries the records.
        warnings.simplefilter("ignore")
        files = read_side_by_side(pairs, progress)
    return assemble_points([name for name, _ in pairs], files)


def read_side_by_side(
    pairs: Sequence[tuple[str, Path]], progress: ProgressHook | None = None
) -> list[tuple[pd.DataFrame, CaptureInfo]]:
    """``read_file`` of every pair, in order, on as many threads as there are CPUs (and files).

    The compiled parts of a read (the record walk, the decoding, the payload digest) let go of the
    interpreter lock, so two files read at once take little more than the time of one on two CPUs.
    The memory budget counts the packets every read going on projects to hold (``diag.memory``), so
    reading side by side stays within ``--max-memory`` as reading one by one does. When one read fails
    the others stop at their next batch, and the error raised is the one of the first file (in the
    order given) that failed for a reason of its own.
    """
    workers = min(len(pairs), usable_cpus())
    if workers < 2 or any(str(path) == STDIN_NAME for _, path in pairs):
        return [_read_one(name, path, progress) for name, path in pairs]
    stop = threading.Event()

    def read(name: str, path: Path) -> tuple[pd.DataFrame, CaptureInfo]:
        try:
            with digest_alone():
                return _read_one(name, path, progress, stop)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="diag-read") as pool:
        futures = [pool.submit(read, name, path) for name, path in pairs]
        try:
            wait(futures)
        finally:
            stop.set()  # an interrupt here: the reads give up rather than run to their end first
    failures = [future.exception() for future in futures]
    first = next((error for error in failures if error is not None and not isinstance(error, ReadStopped)), None)
    if first is not None:
        raise first
    return [future.result() for future in futures]


def _read_one(
    name: str, path: Path, progress: ProgressHook | None, stop: threading.Event | None = None
) -> tuple[pd.DataFrame, CaptureInfo]:
    size = capture_size(path)
    detail = f"{name} ({path}, {size / 1e6:.{1 if size < 10e6 else 0}f} MB)" if size else f"{name} ({path})"
    with _stage(progress, "read", detail):
        table = read_capture(path, name=name, stop=stop)
    return table, _info_of(table, name, path)


def read_file(name: str, path: Path) -> tuple[pd.DataFrame, CaptureInfo]:
    """One file of one point: its packet table and ``CaptureInfo`` (``diag.cluster`` runs this on workers)."""
    with warnings.catch_warnings():
        # The reader both records and warns; the report carries the records.
        warnings.simplefilter("ignore")
        table = read_capture(path, name=name)
    return table, _info_of(table, name, path)


def _info_of(table: pd.DataFrame, name: str, path: Path) -> CaptureInfo:
    info = table.attrs.get("capture_info")
    if not isinstance(info, CaptureInfo):
        info = CaptureInfo(name=name, path=str(path), packets=len(table), link_type="")
    return info


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
    cluster does more than read, see ``diag.cluster.analyze_on``).
    """
    tree = parse_filter(packet_filter) if isinstance(packet_filter, str) else packet_filter
    pairs = parse_capture_args(captures)
    try:
        tables, infos = (reader or read_captures)(pairs, progress)
    except MemoryBudgetError as error:
        limit = current_budget().limit
        if reader is not None or limit is None:
            raise
        # Every packet at once would not fit: read the files in passes instead (diag.passes).
        from diag.passes import analyze_in_passes

        return analyze_in_passes(pairs, limit, progress, tree, refusal=error)
    packets = concat_packets(tables)
    if tree is not None:
        # Renumbered rows: the correlation and the plots name packets by row label, within this table only.
        packets = filter_packets(packets, tree).reset_index(drop=True)
    with _stage(progress, "flows", f"{len(packets):,} packets"):
        flows = build_flows(packets)
    return report_of(packets, flows, infos, progress)


def report_of(
    packets: pd.DataFrame,
    flows: pd.DataFrame,
    infos: Sequence[CaptureInfo],
    progress: ProgressHook | None = None,
    diagnoser: Diagnoser | None = None,
    packets_read: int | None = None,
) -> Report:
    """Correlate and diagnose the stacked packet table of every point, with its flow table, into the ``Report``.

    ``diag.cluster`` calls it with the candidate packets of each point only (``diag.reduction``), the flow
    tables built where the points were read, and a ``diagnoser`` that diagnoses connection partitions on
    the workers (``diag.partitions``); the result is the same as on every packet in one process.
    ``diag.passes`` calls it with the candidates it kept of ``packets_read`` packets.
    """
    kept = f"{len(packets):,}" if packets_read is None else f"{len(packets):,} of {packets_read:,}"
    with _stage(progress, "correlate", f"{kept} packets at {len(infos)} point(s)"):
        correlation = correlate(packets)
    with _stage(progress, "diagnose", f"{len(flows):,} flows"), collector_paused():
        findings = diagnose(packets, flows, correlation) if diagnoser is None else diagnoser(packets, correlation)
    return Report(
        captures=list(infos),
        packets=packets,
        flows=flows,
        findings=findings,
        matches=correlation.matches,
        clock_reference=correlation.reference,
        clock_offsets=dict(correlation.offsets),
        warnings=[f"{info.path}: {message}" for info in infos for message in info.warnings],
    )
