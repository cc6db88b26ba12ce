"""``candidate_rows`` for captures larger than memory: the same choice from key tables seen one chunk at a time.

``diag.flows.candidates.candidate_rows`` needs the key table of every packet
at once, about 60 bytes a packet: a capture of a hundred million packets
would not fit. ``CandidateSurvey`` takes the key tables chunk by chunk and
keeps in memory neither what grows with the packets nor what grows with the
flows: everything per row or per flow goes to *bucket* files on disk, each
kind by the hash of what it is grouped by, so a group of buckets holds whole
groups:

- the rows that have a packet key, by key hash: the nodes each key joins and
  the keys that decide clock offsets are found a few buckets at a time (the
  tightest delay bound of each pair of points and direction is a maximum, or
  minimum, and merges across buckets);
- per chunk, per *node* (one flow at one point) its point, protocol and a few
  counts (rows, RSTs, SYNs, SYN-ACKs, the smallest and largest sender), by
  node hash: summed a few buckets at a time, they give the seeds, and each
  node's rows and protocol are written back sorted for the last step;
- the SYNs, by sequence number (the retried-SYN rule groups by it);
- the client endpoints of SYNs and SYN-ACKs with their nodes, by endpoint: an
  endpoint of one node joins nothing, so only those of two nodes or more are
  kept.

In memory stay per file its first row and where its earliest and latest
times are, and what the joining needs: the node pairs that share a key, the
shared client endpoints and the vertices chosen so far. The union-find runs
over those only: a node that shares nothing is a component of its own, kept
if and only if it is chosen, so a capture of a million healthy flows that
share no key joins only its chosen ones. The choice is kept as sets of nodes
and keys (``Choice``), so a later pass decides each row of a chunk from that
row alone.

The rows chosen are ``candidate_rows``'s. Of the packet keys at the
tightest delay bound of a pair of points both keep the smallest; the bounds
are compared here as exact integers (there as floats, which can round two
bounds a few hundred nanoseconds apart to one): any key at the bound gives
the same offset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.proto import ACK, ICMP, ICMPV6, RST, SYN, TCP, UDP
from diag.flows.candidates import joined_components
from diag.flows.copies import mix_hash, packet_keys

# One spilled row: what grouping by packet key needs (the vertex is the row's node, or its key's own vertex).
SPILL: Final = np.dtype([("key", "<u8"), ("vertex", "<u8"), ("ts", "<i8"), ("point", "<i2"), ("ttl", "<i2")])
# Memory per spilled row while its bucket is worked on: the rows, the de-duplication and grouping temporaries.
BUCKET_BYTES_PER_ROW: Final = 160
# One chunk's counts of one node (summed over the chunks by ``_sum_nodes``).
NODE_COUNTS: Final = np.dtype(
    [("node", "<u8"), ("sender_min", "<u8"), ("sender_max", "<u8"), ("rows", "<i8"), ("rst", "<i8"),
     ("syn", "<i8"), ("synack", "<i8"), ("point", "<i2"), ("proto", "<i2")]
)  # fmt: skip
# One node after the sums, sorted by node, for the last step of ``choose``: what is kept and how many rows.
NODE_SUMMARY: Final = np.dtype([("node", "<u8"), ("rows", "<i8"), ("point", "<i2"), ("proto", "<i2")])
# One SYN (the retried-SYN rule), and one client endpoint of a SYN or SYN-ACK with its node.
SYN_ROW: Final = np.dtype([("seq", "<i8"), ("content", "<u8"), ("node", "<u8"), ("point", "<i2")])
CLIENT_ROW: Final = np.dtype([("client", "<u8"), ("node", "<u8")])

_ORPHAN_SEED: Final = np.uint64(0x9E3779B97F4A7C15)
_CLIENT_SEED: Final = np.uint64(0xC2B2AE3D27D4EB4F)


def _tagged(values: np.ndarray, seed: np.uint64) -> npt.NDArray[np.uint64]:
    """``values`` hashed into a vertex space of their own (never 0), so keys and endpoints never meet nodes."""
    hashed: npt.NDArray[np.uint64] = mix_hash(np.full(len(values), seed, dtype=np.uint64), values)
    hashed[hashed == 0] = 1
    return hashed


def orphan_vertices(keys: np.ndarray) -> npt.NDArray[np.uint64]:
    """The vertex of a packet key held by rows without a node (not TCP or UDP)."""
    return _tagged(keys, _ORPHAN_SEED)


@dataclass
class _Mark:
    """One row of a file that may be a boundary row: its time, position and vertex (0: none)."""

    ts: int
    row: int
    vertex: int


@dataclass
class _FileMarks:
    first: _Mark | None = None
    earliest: _Mark | None = None
    latest: _Mark | None = None


@dataclass(frozen=True)
class FileOrder:
    """Where a file's rows go in the whole table (``diag.capture.points.merge_point``'s order)."""

    file: int
    point: int
    rank: int  # the file's place among its point's files
    by_time: bool  # the point's files overlap: its rows are merged by time


@dataclass
class Choice:
    """The candidate rows as sets a later pass tests each row against."""

    nodes: npt.NDArray[np.uint64]
    orphans: npt.NDArray[np.uint64]
    clock_keys: npt.NDArray[np.uint64]
    boundary: dict[int, set[int]] = field(default_factory=dict)  # file -> rows (positions in the file's rows)
    kept_estimate: int = 0  # rows of the kept nodes, plus the rows kept alone

    def keep(self, packets: pd.DataFrame, node: np.ndarray, file: int, first_row: int) -> npt.NDArray[np.bool_]:
        """Per row of ``packets`` (rows ``first_row``.. of ``file``, ``node`` their node hashes): kept or not."""
        rows = np.arange(first_row, first_row + len(packets), dtype=np.int64)
        return self.keep_rows(packets, node, np.full(len(packets), file, dtype=np.int64), rows)

    def keep_rows(
        self, packets: pd.DataFrame, node: np.ndarray, files: np.ndarray, rows: np.ndarray
    ) -> npt.NDArray[np.bool_]:
        """Per row of ``packets`` (of any files: ``files`` and ``rows`` say where each is from): kept or not."""
        kept: npt.NDArray[np.bool_] = np.isin(node, self.nodes)
        proto = packets["proto"].to_numpy()
        kept |= (proto == ICMP) | (proto == ICMPV6)
        alone = np.flatnonzero((node == 0) & ~kept)
        if len(alone):
            key = packet_keys(packets.iloc[alone])
            matched = (key != 0) & (np.isin(orphan_vertices(key), self.orphans) | np.isin(key, self.clock_keys))
            kept[alone[matched]] = True
        for file, marked in self.boundary.items():
            in_file = files == file
            if in_file.any():
                kept |= in_file & np.isin(rows, np.fromiter(marked, dtype=np.int64, count=len(marked)))
        return kept


class CandidateSurvey:
    """Collects a capture's key tables chunk by chunk (``add``), then chooses the candidate rows (``choose``).

    ``directory`` receives the bucket files (the caller removes it);
    ``buffer_rows`` spilled rows are held before they are written out.
    """

    def __init__(self, directory: Path, buckets: int, buffer_rows: int) -> None:
        self.directory = directory
        self.buckets = buckets
        self.buffer_rows = buffer_rows
        self.points: set[int] = set()
        self.spilled_rows = 0
        self.nodes_seen = 0  # set by ``choose``: how many nodes (flows at a point) there were
        self.vertices_joined = 0  # set by ``choose``: the vertices of the union-find (not every node)
        # Rows waiting to be written to the bucket files, per kind (keys, node counts, SYNs, client endpoints).
        self._buffers: dict[str, list[np.ndarray]] = {kind: [] for kind in _KINDS}
        self._buffered = 0
        self._icmp: list[np.ndarray] = []
        self._marks: dict[int, _FileMarks] = {}

    def _bucket_path(self, bucket: int, kind: str = "keys") -> Path:
        return self.directory / f"{kind}-{bucket:05d}.bin"

    def held_rows(self) -> int:
        """Rows of any kind held in memory, waiting to be written to the bucket files."""
        return sum(len(part) for parts in self._buffers.values() for part in parts)

    def add(self, keys: pd.DataFrame, file: int, first_row: int) -> None:
        """The key table (``key_table``) of rows ``first_row``.. of ``file``."""
        marks = self._marks.setdefault(file, _FileMarks())
        if len(keys) == 0:
            return
        node = keys["node"].to_numpy()
        key = keys["key"].to_numpy()
        point = keys["point"].to_numpy()
        ts = keys["ts_ns"].to_numpy()
        proto = keys["proto"].to_numpy()
        flags = keys["tcp_flags"].to_numpy().astype(np.int64)
        self.points.update(np.unique(point).tolist())
        vertex = np.where(node != 0, node, np.where(key != 0, orphan_vertices(key), np.uint64(0)))
        self._mark(marks, ts, vertex, first_row)
        self._spill(keys, key, vertex)
        transport = node != 0
        tcp = transport & (proto == TCP) & (flags >= 0)
        handshake = flags & (SYN | ACK | RST)
        syn = tcp & (handshake == SYN)
        sender = keys["sender"].to_numpy()
        counts = np.empty(int(transport.sum()), dtype=NODE_COUNTS)
        counts["node"], counts["point"], counts["proto"] = node[transport], point[transport], proto[transport]
        counts["rows"] = 1
        counts["rst"] = (tcp & ((flags & RST) != 0))[transport]
        counts["syn"] = syn[transport]
        counts["synack"] = (tcp & (handshake == (SYN | ACK)))[transport]
        counts["sender_min"] = counts["sender_max"] = sender[transport]
        self._hold("nodes", _sum_nodes(counts))
        if syn.any():
            syns = np.empty(int(syn.sum()), dtype=SYN_ROW)
            syns["seq"], syns["point"], syns["node"] = keys["seq"].to_numpy()[syn], point[syn], node[syn]
            syns["content"] = mix_hash(key[syn].copy(), keys["ip_id"].to_numpy()[syn])
            self._hold("syns", syns)
        client = keys["client_endpoint"].to_numpy()
        has = client != 0
        if has.any():
            clients = np.empty(int(has.sum()), dtype=CLIENT_ROW)
            clients["client"], clients["node"] = client[has], node[has]
            self._hold("clients", np.unique(clients))
        icmp = ((proto == ICMP) | (proto == ICMPV6)) & (key != 0)
        if icmp.any():
            self._icmp.append(np.unique(orphan_vertices(key[icmp])))
        if self._buffered >= self.buffer_rows:
            self._flush()

    def _hold(self, kind: str, rows: np.ndarray) -> None:
        """Rows of ``kind`` to be written out with the next flush (every kind counts towards it)."""
        self._buffers[kind].append(rows)
        self._buffered += len(rows)

    @staticmethod
    def _mark(marks: _FileMarks, ts: np.ndarray, vertex: np.ndarray, first_row: int) -> None:
        if marks.first is None:
            marks.first = _Mark(int(ts[0]), first_row, int(vertex[0]))
        low, high = int(np.argmin(ts)), int(np.argmax(ts))
        if marks.earliest is None or ts[low] < marks.earliest.ts:
            marks.earliest = _Mark(int(ts[low]), first_row + low, int(vertex[low]))
        if marks.latest is None or ts[high] > marks.latest.ts:
            marks.latest = _Mark(int(ts[high]), first_row + high, int(vertex[high]))

    def _spill(self, keys: pd.DataFrame, key: np.ndarray, vertex: np.ndarray) -> None:
        has = key != 0
        records = np.empty(int(has.sum()), dtype=SPILL)
        records["key"] = key[has]
        records["vertex"] = vertex[has]
        records["ts"] = keys["ts_ns"].to_numpy()[has]
        records["point"] = keys["point"].to_numpy()[has]
        records["ttl"] = keys["ttl"].to_numpy()[has]
        self._hold("keys", records)
        self.spilled_rows += len(records)

    def _flush(self) -> None:
        """Write the rows waiting, each kind to its buckets by the hash of the field it is grouped by."""
        for kind, field_name in _KINDS.items():
            if not self._buffers[kind]:
                continue
            records = np.concatenate(self._buffers[kind])
            self._buffers[kind] = []
            bucket = (records[field_name].astype(np.uint64) % np.uint64(self.buckets)).astype(np.int64)
            order = np.argsort(bucket, kind="stable")
            records, bucket = records[order], bucket[order]
            bounds = np.searchsorted(bucket, np.arange(self.buckets + 1))
            for number in range(self.buckets):
                start, stop = int(bounds[number]), int(bounds[number + 1])
                if stop > start:
                    with open(self._bucket_path(number, kind), "ab") as out:
                        records[start:stop].tofile(out)
        self._buffered = 0

    def _bucket_groups(self, kind: str, dtype: np.dtype[np.void], rows: int) -> Iterator[np.ndarray]:
        """The rows of one kind's buckets, a group of buckets of about ``rows`` rows at a time (files removed)."""
        group: list[Path] = []
        held = 0
        for number in range(self.buckets):
            path = self._bucket_path(number, kind)
            if not path.exists():
                continue
            group.append(path)
            held += path.stat().st_size // dtype.itemsize
            if held >= rows:
                yield _read_removing(group, dtype)
                group, held = [], 0
        if group:
            yield _read_removing(group, dtype)

    def choose(self, files: Sequence[FileOrder], bucket_rows: int) -> Choice:
        """The candidate rows, reading the buckets back about ``bucket_rows`` rows at a time.

        ``files`` says where each file's rows go in the whole table (its point,
        rank and whether the point is merged by time), which decides each
        point's first row. The bucket files are removed as they are read.
        """
        self._flush()
        clock = _Clock(several_points=len(self.points) > 1)
        edges = [_bucket_work(group, clock) for group in self._bucket_groups("keys", SPILL, bucket_rows)]
        joined = pd.concat(edges, ignore_index=True).drop_duplicates() if edges else _no_edges()
        del edges
        shared = [_shared_clients(group) for group in self._bucket_groups("clients", CLIENT_ROW, bucket_rows)]
        clients = np.concatenate(shared) if shared else np.zeros(0, dtype=CLIENT_ROW)
        del shared
        retried = [_retried_syns(group) for group in self._bucket_groups("syns", SYN_ROW, bucket_rows)]
        seeds, summaries = self._summarise_nodes(bucket_rows)
        chosen = [*seeds, *retried, clock.vertices(), *self._icmp]
        boundary, lone = self._boundary(files)
        chosen.append(np.array([vertex for vertex in lone if vertex], dtype=np.uint64))
        client_vertex = _tagged(clients["client"], _CLIENT_SEED)
        chosen_values = np.concatenate(chosen).astype(np.uint64)
        del chosen, seeds, retried
        # Only what shares a key or a client endpoint, and what is chosen, is joined: any other node is a
        # component of its own, kept if and only if it is chosen.
        values = np.concatenate(
            [joined["a"].to_numpy(), joined["b"].to_numpy(), clients["node"], client_vertex, chosen_values]
        ).astype(np.uint64)
        codes, uniques = pd.factorize(values, sort=False)
        codes = codes.astype(np.int64)
        n_vertices = len(uniques)
        self.vertices_joined = n_vertices
        at = np.cumsum([0, len(joined), len(joined), len(clients), len(clients), len(chosen_values)])
        first = np.concatenate([codes[at[0] : at[1]], codes[at[2] : at[3]], np.arange(n_vertices, dtype=np.int64)])
        second = np.concatenate([codes[at[1] : at[2]], codes[at[3] : at[4]], np.full(n_vertices, -1, dtype=np.int64)])
        del joined, clients, client_vertex, values
        roots = joined_components(first, second, np.full(len(first), -1, dtype=np.int64), n_vertices)[-n_vertices:]
        del first, second
        kept = np.zeros(n_vertices, dtype=bool)
        kept[roots[codes[at[4] : at[5]]]] = True
        del codes
        vertex_of = pd.Index(uniques)
        # A UDP connection with two flows at one point is a suspect: only joined nodes can be two in a component.
        udp_parts = [self._joined_udp(summary, vertex_of, roots) for summary in _read_each(summaries, NODE_SUMMARY)]
        udp = pd.concat(udp_parts, ignore_index=True) if udp_parts else pd.DataFrame()
        if len(udp):
            per_point = udp.groupby(["component", "point"])["node"].nunique()
            kept[per_point[per_point > 1].index.get_level_values("component").to_numpy()] = True
        kept_vertex = kept[roots]
        kept_values = np.sort(uniques[kept_vertex].astype(np.uint64))
        node_parts, estimate = [], 0
        for summary in _read_each(summaries, NODE_SUMMARY, remove=True):
            mine = np.isin(summary["node"], kept_values, assume_unique=True)
            node_parts.append(summary["node"][mine])
            estimate += int(summary["rows"][mine].sum())
        nodes = np.sort(np.concatenate([np.zeros(0, dtype=np.uint64), *node_parts]))
        return Choice(
            nodes=nodes,
            orphans=np.setdiff1d(kept_values, nodes),
            clock_keys=clock.keys(),
            boundary=boundary,
            kept_estimate=estimate + len(lone),
        )

    def _summarise_nodes(self, bucket_rows: int) -> tuple[list[np.ndarray], list[Path]]:
        """Each node's counts summed over the chunks, a group of buckets at a time: the seeds, and files of each
        node's ``NODE_SUMMARY`` (sorted by node) for the end of ``choose``."""
        seeds, summaries = [], []
        self.nodes_seen = 0
        for number, group in enumerate(self._bucket_groups("nodes", NODE_COUNTS, bucket_rows)):
            nodes = _sum_nodes(group)
            del group
            self.nodes_seen += len(nodes)
            seeds.append(_seeds(nodes))
            summary = np.empty(len(nodes), dtype=NODE_SUMMARY)
            for name in NODE_SUMMARY.names or ():
                summary[name] = nodes[name]
            path = self.directory / f"summary-{number:05d}.bin"
            summary.tofile(path)
            summaries.append(path)
        return seeds, summaries

    @staticmethod
    def _joined_udp(summary: np.ndarray, vertex_of: pd.Index, roots: np.ndarray) -> pd.DataFrame:
        """The UDP nodes of ``summary`` that the union-find holds, with their component and point."""
        udp = summary[summary["proto"] == UDP]
        at = vertex_of.get_indexer(udp["node"])
        joined = at >= 0
        return pd.DataFrame(
            {"component": roots[at[joined]], "point": udp["point"][joined], "node": udp["node"][joined]}
        )

    def _boundary(self, files: Sequence[FileOrder]) -> tuple[dict[int, set[int]], list[int]]:
        """Each point's first row and the first rows (in the whole table's order) of its earliest and latest time.

        Returns file -> rows, and the vertices of those rows (0: a row without one).
        """
        chosen: list[tuple[int, _Mark]] = []
        for point in sorted({order.point for order in files}):
            members: list[tuple[FileOrder, _Mark, _Mark, _Mark]] = []
            for order in sorted((o for o in files if o.point == point), key=lambda o: o.rank):
                marks = self._marks.get(order.file)
                if marks and marks.first and marks.earliest and marks.latest:
                    members.append((order, marks.first, marks.earliest, marks.latest))
            if not members:
                continue
            by_time = members[0][0].by_time
            # The whole table's order: (time, rank, row) when merged by time, else (rank, row).
            heads = [(order, earliest if by_time else first) for order, first, earliest, _latest in members]
            head = min(heads, key=lambda pair: (pair[1].ts if by_time else 0, pair[0].rank, pair[1].row))
            low = min(earliest.ts for _order, _first, earliest, _latest in members)
            high = max(latest.ts for _order, _first, _earliest, latest in members)
            # Files in rank order: the first to reach the time holds its first row in the whole table's order.
            earliest = next((order, mark) for order, _first, mark, _latest in members if mark.ts == low)
            latest = next((order, mark) for order, _first, _earliest, mark in members if mark.ts == high)
            chosen += [(pair[0].file, pair[1]) for pair in (head, earliest, latest)]
        rows: dict[int, set[int]] = {}
        for file, mark in chosen:
            rows.setdefault(file, set()).add(mark.row)
        return rows, [mark.vertex for _file, mark in chosen]


# Each kind of bucket file and the field its rows are bucketed (and grouped) by.
_KINDS: Final = {"keys": "key", "nodes": "node", "syns": "seq", "clients": "client"}


def _read_removing(paths: list[Path], dtype: np.dtype[np.void]) -> np.ndarray:
    rows = np.concatenate([np.fromfile(path, dtype=dtype) for path in paths])
    for path in paths:
        path.unlink()
    return rows


def _read_each(paths: list[Path], dtype: np.dtype[np.void], remove: bool = False) -> Iterator[np.ndarray]:
    for path in paths:
        rows = np.fromfile(path, dtype=dtype)
        if remove:
            path.unlink()
        yield rows


def _sum_nodes(counts: np.ndarray) -> np.ndarray:
    """``NODE_COUNTS`` rows summed per node (sorted by node): counts added, senders' extremes, point and proto."""
    if len(counts) == 0:
        return counts
    counts = counts[np.argsort(counts["node"], kind="stable")]
    node = counts["node"]
    starts = np.flatnonzero(np.concatenate([[True], node[1:] != node[:-1]]))
    summed = counts[starts]  # node, point and proto: the same for every row of a node
    for name in ("rows", "rst", "syn", "synack"):
        summed[name] = np.add.reduceat(counts[name], starts)
    summed["sender_min"] = np.minimum.reduceat(counts["sender_min"], starts)
    summed["sender_max"] = np.maximum.reduceat(counts["sender_max"], starts)
    return summed


def _no_edges() -> pd.DataFrame:
    return pd.DataFrame({"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64)})


def _seeds(nodes: np.ndarray) -> npt.NDArray[np.uint64]:
    """``seed_nodes`` from the nodes' counts: a RST, two SYNs, a SYN unanswered, a UDP flow of one sender."""
    tcp = nodes["proto"] == TCP
    syn, synack = nodes["syn"], nodes["synack"]
    seed = tcp & ((nodes["rst"] > 0) | (syn >= 2) | ((syn > 0) & (synack == 0)))
    seed |= (nodes["proto"] == UDP) & (nodes["sender_min"] == nodes["sender_max"])
    seeds: npt.NDArray[np.uint64] = nodes["node"][seed].astype(np.uint64)
    return seeds


def _shared_clients(rows: np.ndarray) -> np.ndarray:
    """Of client endpoint rows (whole endpoints: a group of buckets), the distinct ones of endpoints two nodes
    or more share: an endpoint of one node joins nothing."""
    rows = np.unique(rows)  # sorted by endpoint, then node
    client = rows["client"]
    nodes = np.bincount(np.cumsum(np.concatenate([[True], client[1:] != client[:-1]])) - 1)
    shared: np.ndarray = rows[np.repeat(nodes, nodes) > 1]
    return shared


def _retried_syns(syns: np.ndarray) -> npt.NDArray[np.uint64]:
    """Nodes of SYNs whose sequence number comes with two different packets (content or count) anywhere."""
    if len(syns) == 0:
        return np.zeros(0, dtype=np.uint64)
    frame = pd.DataFrame({name: syns[name] for name in SYN_ROW.names or ()})
    several: np.ndarray = (frame.groupby("seq")["content"].transform("nunique") > 1).to_numpy() | (
        frame.groupby(["seq", "point"])["content"].transform("size") > 1
    ).to_numpy()
    nodes: npt.NDArray[np.uint64] = np.unique(frame["node"].to_numpy()[several]).astype(np.uint64)
    return nodes


def _bucket_work(rows: np.ndarray, clock: _Clock) -> pd.DataFrame:
    """The node pairs the keys of a group of buckets join; the clock rule sees the rows."""
    clock.add(rows)
    order = np.lexsort((rows["vertex"], rows["key"]))
    key, vertex = rows["key"][order], rows["vertex"][order]
    del rows, order
    distinct = np.ones(len(key), dtype=bool)
    distinct[1:] = (key[1:] != key[:-1]) | (vertex[1:] != vertex[:-1])
    key, vertex = key[distinct], vertex[distinct]
    starts = np.ones(len(key), dtype=bool)
    starts[1:] = key[1:] != key[:-1]
    # Each key's vertices (sorted, distinct) joined to its first: a star per key shared by two vertices or more.
    anchor = vertex[np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))]
    joined = ~starts
    return pd.DataFrame({"a": anchor[joined], "b": vertex[joined]}).drop_duplicates()


@dataclass
class _Best:
    bound: int
    key: int
    vertices: np.ndarray


class _Clock:
    """The packet keys that can decide a clock offset (``candidates._clock_keys``), bucket by bucket."""

    def __init__(self, several_points: bool) -> None:
        self.several_points = several_points
        self._kept: list[np.ndarray] = []
        self._kept_vertices: list[np.ndarray] = []
        # (point a, point b, a's side first) -> the keys at the tightest bound and their rows' vertices
        self._best: dict[tuple[int, int, bool], _Best] = {}

    def add(self, rows: np.ndarray) -> None:
        if not self.several_points or len(rows) == 0:
            return
        order = np.lexsort((rows["point"], rows["key"]))
        key, point = rows["key"][order], rows["point"][order]
        new_key = np.ones(len(key), dtype=bool)
        new_key[1:] = key[1:] != key[:-1]
        new_point = new_key.copy()
        new_point[1:] |= point[1:] != point[:-1]
        key_number = np.cumsum(new_key) - 1
        size = np.bincount(key_number)[key_number]
        n_points = np.bincount(key_number, weights=new_point).astype(np.int64)[key_number]
        shared = n_points >= 2
        # Seen more than once at one point: copies and retransmissions pair up in ways only the correlation knows.
        kept = [np.unique(key[shared & (size > n_points)])]
        single = order[shared & (size == n_points)]  # rows of keys seen once at each of their points, by key
        single_point = rows["point"][single]
        by_point = {int(p): single[single_point == p] for p in np.unique(single_point).tolist()}
        points = sorted(by_point)
        for position, a in enumerate(points):
            for b in points[position + 1 :]:
                at_a, at_b = rows[by_point[a]], rows[by_point[b]]
                common, in_a, in_b = np.intersect1d(at_a["key"], at_b["key"], assume_unique=True, return_indices=True)
                if not len(common):
                    continue
                ttl_a, ttl_b = at_a["ttl"][in_a], at_b["ttl"][in_b]
                bound = at_a["ts"][in_a] - at_b["ts"][in_b]
                kept.append(common[ttl_a == ttl_b])
                for a_first, side in ((True, ttl_a > ttl_b), (False, ttl_a < ttl_b)):
                    if side.any():
                        best = int(bound[side].max() if a_first else bound[side].min())
                        # Of keys at the same bound any one gives the offset: the smallest, as candidate_rows keeps.
                        smallest = int(common[side][bound[side] == best].min())
                        self._offer((a, b, a_first), best, smallest, rows)
        keys = np.concatenate(kept)
        self._kept.append(keys)
        self._kept_vertices.append(np.unique(rows["vertex"][np.isin(rows["key"], keys)]))

    def _offer(self, pair: tuple[int, int, bool], bound: int, key: int, rows: np.ndarray) -> None:
        current = self._best.get(pair)
        if current is not None:
            tighter = bound > current.bound if pair[2] else bound < current.bound
            if not tighter and (bound != current.bound or key >= current.key):
                return
        self._best[pair] = _Best(bound, key, np.unique(rows["vertex"][rows["key"] == np.uint64(key)]))

    def keys(self) -> npt.NDArray[np.uint64]:
        best = np.array([entry.key for entry in self._best.values()], dtype=np.uint64)
        return np.unique(np.concatenate([best, *self._kept]).astype(np.uint64))

    def vertices(self) -> npt.NDArray[np.uint64]:
        best = [entry.vertices for entry in self._best.values()]
        return np.unique(np.concatenate([np.zeros(0, np.uint64), *self._kept_vertices, *best]).astype(np.uint64))
