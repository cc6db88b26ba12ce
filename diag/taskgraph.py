"""The analysis of many capture points as a graph of tasks, run on a Dask cluster or in this process.

Every task works on one point or one partition; what the client receives is
small whatever the number of packets: counts, the clock bounds per pair of
points, the findings and the flow rows the report shows. In order:

1. *read*: one task per file reads it; one task per point merges its files
   in time order, applies ``--filter``, builds its flow table and the per-row
   link keys (``diag.reduction``). The point's tables stay on its worker.
2. *candidates*: each point's distinct link keys are cut into hash
   partitions and each partition reduced to the keys seen at two points or
   more; given those, each point chooses its candidate packets and finds
   their components (``diag.linking.local_links``).
3. *correlate*: the components are labelled across points by hash-min
   rounds over the shared link keys (``diag.linking``); each point cuts its
   candidates into one piece per partition by label (``diag.partitions``,
   whole connections, every sighting of a packet together); each partition
   stacks its pieces in point order and reduces its own matched packets to
   delay bounds per pair of points (``diag.clocks``). The client combines the
   bounds into the clock offsets, the same as one process estimates.
4. *diagnose*: each partition is correlated with those offsets and
   diagnosed; the client merges the findings in the single-process order.
   Each point sends its flow table's counts, and then the rows the report
   shows (``diag.report.flowdigest``).

The report is the single process's, byte for byte in JSON and text: nothing
depends on the number of partitions, and results are taken in point order.
``Runner`` is what the graph needs of an executor: ``diag.cluster`` runs it
on Dask workers, ``InProcess`` runs each task as it is submitted (tests check
the graph for any number of partitions that way, without a cluster).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd

from diag.analysis import group_points, read_file
from diag.capture.filter import Node as FilterNode
from diag.capture.filter import filter_packets, parse_filter
from diag.capture.info import CaptureInfo
from diag.capture.location import Location, S3Object
from diag.capture.points import concat_packets, merge_point
from diag.clocks import combine_bounds, offsets_from_bounds
from diag.flows import build_flows
from diag.flows.table import empty_flows
from diag.linking import Labels, PointLinks, emit_labels, first_labels, local_links, lower_labels, smallest_labels
from diag.partitions import (
    Piece,
    assemble_part,
    boundary_rows,
    cut_point,
    diagnose_partition,
    merge_findings,
    part_clock_bounds,
)
from diag.reduction import (
    LinkKeys,
    link_keys,
    merge_link_keys,
    partition_link_keys,
    point_keys,
    select_candidates,
    shared_link_keys,
)
from diag.report import Report
from diag.report.flowcap import FLOW_LIMIT
from diag.report.flowdigest import CaptureFlows, FlowDigest, capture_flows, json_quota, shown_rows
from diag.report.text import DEFAULT_PROBLEM_LINES
from diag.stages import Diagnoser, ProgressHook, in_stage, report_of


class Runner(Protocol):
    """An executor of the graph: tasks submitted with their inputs (results of earlier tasks, or lists of them)."""

    def partitions(self) -> int:
        """How many partitions to cut the shuffles into (one per worker)."""

    def submit(self, function: Callable[..., Any], *args: Any, name: str, blame: str) -> Any:
        """A handle of ``function(*args)``'s result; ``name`` is the kind of task, ``blame`` what a failure names."""

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        """The results, in order (fetched to the client)."""

    def settle(self, handles: Sequence[Any]) -> None:
        """Wait for the results without fetching them (a failed task raises here)."""


@dataclass(frozen=True)
class _Done:
    value: Any


class InProcess:
    """A ``Runner`` that runs every task in this process when it is submitted."""

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions

    def partitions(self) -> int:
        return self._partitions

    def submit(self, function: Callable[..., Any], *args: Any, name: str, blame: str) -> Any:
        return _Done(function(*[_resolved(arg) for arg in args]))

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return [handle.value for handle in handles]

    def settle(self, handles: Sequence[Any]) -> None:
        return None


def _resolved(arg: Any) -> Any:
    if isinstance(arg, _Done):
        return arg.value
    if isinstance(arg, list | tuple):
        return type(arg)(_resolved(item) for item in arg)
    return arg


# ---- on the workers: one point ----


@dataclass(frozen=True)
class PointPart:
    """A capture point as its worker holds it: the whole packet table, its flows, its key table and link keys."""

    table: pd.DataFrame
    info: CaptureInfo
    flows: pd.DataFrame
    keys: pd.DataFrame  # ``diag.flows.candidates.key_table``
    links: LinkKeys


@dataclass(frozen=True)
class PointCandidates:
    """A point's candidate packets, its whole flow table and its ``CaptureInfo``."""

    packets: pd.DataFrame
    info: CaptureInfo
    flows: pd.DataFrame
    read: int  # packets the point had (after --filter); ``len(packets)`` of them are candidates
    link_bytes: int  # what the point's link keys weighed in the shuffle


@dataclass(frozen=True)
class PointShare:
    """What a point's worker keeps once the candidates are chosen: them, their components and the flow table."""

    number: int
    candidates: PointCandidates
    links: PointLinks


@dataclass(frozen=True)
class PointFacts:
    """What the client learns of a point before correlation: small, whatever the point's size."""

    info: CaptureInfo
    read: int
    candidates: int
    link_bytes: int
    flows: CaptureFlows


def prepare_point(
    given: Sequence[str], packet_filter: FilterNode | None, *files: tuple[pd.DataFrame, CaptureInfo]
) -> PointPart:
    """One point's files (read by other tasks) in time order, filtered, with flows and link keys."""
    tables = [table for table, _ in files]
    infos = [replace(info, path=path, files=(path,)) for (_, info), path in zip(files, given, strict=True)]
    table, info = merge_point(tables, infos)
    if packet_filter is not None:
        table = filter_packets(table, packet_filter).reset_index(drop=True)
    keys = point_keys(table)
    return PointPart(table, info, build_flows(table), keys, link_keys(keys))


def point_link_parts(part: PointPart, partitions: int) -> list[LinkKeys]:
    """The point's distinct link keys, cut into ``partitions`` by hash (the shuffle's map side)."""
    return partition_link_keys(part.links, partitions)


def shared_in_partition(parts: Sequence[LinkKeys]) -> LinkKeys:
    """One hash partition of every point's link keys, reduced to those of two points or more."""
    return shared_link_keys(parts)


def point_candidates(part: PointPart, *shared: LinkKeys) -> PointCandidates:
    """The point's candidate rows, given every partition's shared link keys."""
    keep = select_candidates(part.keys, merge_link_keys(shared))
    return PointCandidates(part.table[keep], part.info, part.flows, len(part.table), part.links.nbytes)


def point_share(part: PointPart, number: int, *shared: LinkKeys) -> PointShare:
    """The point's candidates and their components (``diag.linking``); the whole packet table is let go."""
    merged = merge_link_keys(shared)
    keep = select_candidates(part.keys, merged)
    packets = part.table[keep].reset_index(drop=True)
    candidates = PointCandidates(packets, part.info, part.flows, len(part.table), part.links.nbytes)
    keys = part.keys[keep]
    links = local_links(packets, keys["key"].to_numpy(), keys["client_endpoint"].to_numpy(), merged)
    return PointShare(number, candidates, links)


def point_facts(share: PointShare) -> PointFacts:
    candidates = share.candidates
    return PointFacts(
        candidates.info,
        candidates.read,
        len(candidates.packets),
        candidates.link_bytes,
        capture_flows(candidates.flows),
    )


def point_first_labels(share: PointShare) -> Labels:
    return first_labels(share.links, share.number)


def point_emit(share: PointShare, labels: Labels, partitions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return emit_labels(share.links, labels, partitions)


def point_lower(share: PointShare, labels: Labels, *minima: tuple[np.ndarray, np.ndarray]) -> Labels:
    return lower_labels(share.links, labels, *minima)


def labels_changed(labels: Labels) -> bool:
    return labels.changed


def point_boundary_labels(share: PointShare, labels: Labels) -> np.ndarray:
    """The labels of the components holding the point's earliest and latest rows."""
    component = share.links.component[boundary_rows(share.candidates.packets)]
    result: np.ndarray = labels.labels[component[component >= 0]]
    return result


def point_pieces(share: PointShare, labels: Labels, boundary: np.ndarray, partitions: int) -> list[Piece]:
    return cut_point(share.candidates.packets, share.links.component, labels.labels, boundary, partitions)


def point_flow_rows(share: PointShare, problems: int, healthy: int, per_kind: int, first_id: int) -> pd.DataFrame:
    """The rows of the point's flow table the report shows, numbered as in the table of every point."""
    flows = share.candidates.flows
    rows = flows.iloc[shown_rows(flows, problems, healthy, per_kind)]
    if rows.empty:
        return rows
    previous = rows["prev_flow"].to_numpy()
    return rows.assign(
        flow_id=rows["flow_id"].to_numpy() + first_id, prev_flow=np.where(previous >= 0, previous + first_id, previous)
    )


def empty_packets(share: PointShare) -> pd.DataFrame:
    return share.candidates.packets.iloc[:0]


# ---- the graph ----


@dataclass(frozen=True)
class _Points:
    names: list[str]
    parts: list[Any]  # handles of PointPart
    blames: list[str]


def _read_points(
    runner: Runner, pairs: Sequence[tuple[str, Location]], tree: FilterNode | None, progress: ProgressHook | None
) -> _Points:
    points = group_points(pairs)
    detail = f"{len(pairs)} files of {len(points)} point(s) in {runner.partitions()} partition(s)"
    with in_stage(progress, "read", detail):
        parts, blames = [], []
        for name, files in points.items():
            reads = [
                # The report keeps the path as given.
                runner.submit(read_file, name, _anywhere(path), name="read", blame=str(path))
                for path in files
            ]
            blame = f"{name} ({', '.join(str(path) for path in files)})"
            blames.append(blame)
            parts.append(
                runner.submit(prepare_point, [str(path) for path in files], tree, *reads, name="point", blame=blame)
            )
        runner.settle(parts)  # the tables stay where they were made
    return _Points(list(points), parts, blames)


def _anywhere(path: Location) -> Location:
    """``path`` as a worker opens it: absolute (its working directory is not ours); an object in S3 as it is."""
    return path if isinstance(path, S3Object) else path.absolute()


def _shared_keys(runner: Runner, points: _Points) -> list[Any]:
    """Handles of every hash partition's shared link keys (the shuffle of link keys)."""
    partitions = runner.partitions()
    pieces = []
    for part, blame in zip(points.parts, points.blames, strict=True):
        whole = runner.submit(point_link_parts, part, partitions, name="keys", blame=blame)
        pieces.append([runner.submit(operator.getitem, whole, share, name="keys", blame=blame)
                       for share in range(partitions)])  # fmt: skip
    return [
        runner.submit(shared_in_partition, [piece[share] for piece in pieces], name="shared",
                      blame="the join of every point's link keys")
        for share in range(partitions)
    ]  # fmt: skip


def gather_candidates(
    runner: Runner,
    pairs: Sequence[tuple[str, Location]],
    progress: ProgressHook | None = None,
    packet_filter: str | FilterNode | None = None,
) -> list[PointCandidates]:
    """Every point's candidates and whole flow table, fetched to the client (for the outputs that need the
    tables themselves: ``--export``, ``--plot``, ``--flow``, ``--flows all``)."""
    tree = parse_filter(packet_filter) if isinstance(packet_filter, str) else packet_filter
    points = _read_points(runner, pairs, tree, progress)
    with in_stage(progress, "candidates", "link keys shuffled across points, candidate packets gathered"):
        shared = _shared_keys(runner, points)
        candidates = [
            runner.submit(point_candidates, part, *shared, name="candidates", blame=blame)
            for part, blame in zip(points.parts, points.blames, strict=True)
        ]
        return runner.gather(candidates)


def run_analysis(
    runner: Runner,
    pairs: Sequence[tuple[str, Location]],
    progress: ProgressHook | None = None,
    packet_filter: str | FilterNode | None = None,
    flow_limit: int = FLOW_LIMIT,
) -> Report:
    """The report of ``diag.analysis.analyze`` on ``pairs``, from the graph of the module's text run by ``runner``.

    The report holds no packets and only the flow rows the text and the JSON (capped at ``flow_limit`` rows)
    show; ``Report.flow_digest`` counts the rest.
    """
    tree = parse_filter(packet_filter) if isinstance(packet_filter, str) else packet_filter
    points = _read_points(runner, pairs, tree, progress)
    partitions = runner.partitions()
    everything = "the correlation of every point's candidates"
    with in_stage(progress, "candidates", "link keys shuffled across points, candidate packets chosen"):
        shared = _shared_keys(runner, points)
        shares = [
            runner.submit(point_share, part, number, *shared, name="candidates", blame=blame)
            for number, (part, blame) in enumerate(zip(points.parts, points.blames, strict=True))
        ]
        facts: list[PointFacts] = runner.gather(
            [
                runner.submit(point_facts, share, name="facts", blame=blame)
                for share, blame in zip(shares, points.blames, strict=True)
            ]
        )
    kept = sum(fact.candidates for fact in facts)
    read = sum(fact.read for fact in facts)
    with in_stage(
        progress, "correlate", f"{kept:,} of {read:,} packets at {len(facts)} point(s), {partitions} partition(s)"
    ):
        labels = _link(runner, shares, points.blames, partitions)
        boundary = np.unique(np.concatenate([
            np.zeros(0, dtype=np.int64),
            *runner.gather([runner.submit(point_boundary_labels, share, label, name="boundary", blame=blame)
                            for share, label, blame in zip(shares, labels, points.blames, strict=True)]),
        ]))  # fmt: skip
        pieces = [
            runner.submit(point_pieces, share, label, boundary, partitions, name="pieces", blame=blame)
            for share, label, blame in zip(shares, labels, points.blames, strict=True)
        ]
        parts = [
            runner.submit(
                assemble_part,
                [runner.submit(operator.getitem, piece, number, name="pieces", blame=everything) for piece in pieces],
                points.names, name="part", blame=everything,
            )
            for number in range(partitions)
        ]  # fmt: skip
        bounds = runner.gather(
            [runner.submit(part_clock_bounds, part, name="clock", blame=everything) for part in parts]
        )
        present = [fact.info.name for fact in facts if fact.candidates]
        reference, offsets = offsets_from_bounds(combine_bounds(bounds), points.names, present)
    flows = sum(fact.flows.flows for fact in facts)
    with in_stage(progress, "diagnose", f"{flows:,} flows in {partitions} partition(s)"):
        findings = merge_findings(
            runner.gather([runner.submit(diagnose_partition, part, offsets, name="diagnose", blame=everything)
                           for part in parts])
        )  # fmt: skip
        rows = _shown_flows(runner, shares, facts, points.blames, flow_limit)
        packets = runner.gather([runner.submit(empty_packets, shares[0], name="facts", blame=points.blames[0])])[0]
    infos = [fact.info for fact in facts]
    return Report(
        captures=infos,
        packets=packets,
        flows=rows,
        findings=findings,
        matches=None,
        clock_reference=reference,
        clock_offsets=offsets,
        warnings=[f"{info.path}: {message}" for info in infos for message in info.warnings],
        flow_digest=FlowDigest({fact.info.name: fact.flows for fact in facts}, flow_limit),
    )


def _link(runner: Runner, shares: Sequence[Any], blames: Sequence[str], partitions: int) -> list[Any]:
    """Handles of every point's final component labels (``diag.linking``: hash-min rounds until none changes)."""
    labels = [runner.submit(point_first_labels, share, name="link", blame=blame)
              for share, blame in zip(shares, blames, strict=True)]  # fmt: skip
    # Every round but the last lowers a label, and labels only go down: the rounds end. How many there are is the
    # longest chain of points a connection's keys cross (two or three for a path through NAT).
    while True:
        emitted = [runner.submit(point_emit, share, label, partitions, name="link", blame=blame)
                   for share, label, blame in zip(shares, labels, blames, strict=True)]  # fmt: skip
        minima = [
            runner.submit(smallest_labels,
                          [runner.submit(operator.getitem, one, number, name="link", blame=blame)
                           for one, blame in zip(emitted, blames, strict=True)],
                          name="link", blame="the join of every point's components")
            for number in range(partitions)
        ]  # fmt: skip
        labels = [runner.submit(point_lower, share, label, *minima, name="link", blame=blame)
                  for share, label, blame in zip(shares, labels, blames, strict=True)]  # fmt: skip
        changed = runner.gather([runner.submit(labels_changed, label, name="link", blame=blame)
                                 for label, blame in zip(labels, blames, strict=True)])  # fmt: skip
        if not any(changed):
            return labels


def _shown_flows(
    runner: Runner, shares: Sequence[Any], facts: Sequence[PointFacts], blames: Sequence[str], limit: int
) -> pd.DataFrame:
    """The flow rows the report shows, of every point in order, numbered as in the one table of every point."""
    quota = json_quota([fact.flows for fact in facts], limit)
    first_ids = np.concatenate([[0], np.cumsum([fact.flows.flows for fact in facts])[:-1]]).astype(int).tolist()
    lines = DEFAULT_PROBLEM_LINES
    tables = runner.gather([
        runner.submit(point_flow_rows, share, problems, healthy, lines, first, name="flows", blame=blame)
        for share, (problems, healthy), first, blame in zip(shares, quota, first_ids, blames, strict=True)
    ])  # fmt: skip
    kept = [table for table in tables if len(table)]
    return pd.concat(kept, ignore_index=True) if kept else empty_flows()


def report_of_candidates(
    results: Sequence[PointCandidates], progress: ProgressHook | None = None, diagnoser: Diagnoser | None = None
) -> Report:
    """The report from every point's candidates (in point order): stacked, flows renumbered, correlated, diagnosed
    (in this process, or by ``diagnoser``)."""
    packets = concat_packets([result.packets for result in results])
    flows = _renumbered([result.flows for result in results])
    return report_of(packets, flows, [result.info for result in results], progress, diagnoser)


def _renumbered(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Each point's flow table (ids from 0) as the one table of all points: ids continue from point to point."""
    kept, offset = [], 0
    for flows in tables:
        if len(flows):
            previous = flows["prev_flow"].to_numpy()
            kept.append(
                flows.assign(
                    flow_id=flows["flow_id"].to_numpy() + offset,
                    prev_flow=np.where(previous >= 0, previous + offset, previous),
                )
            )
            offset += len(flows)
    return pd.concat(kept, ignore_index=True) if kept else empty_flows()
