"""Connection partitions: candidate packets cut into groups of whole connections, correlated and diagnosed apart.

The diagnosis judges one connection at a time, from that connection's rows
at every point and from a few facts about the whole analysis: the clock
offsets and each row's match, sighting and hop (``Correlation``), the points
in order of first appearance and the time each covered (``Context``), and
the ICMP answers a point saw. A part that holds whole connections, every
point's earliest and latest row with their whole components, and every ICMP
row therefore gives, diagnosed alone, that part's share of the findings;
findings of the components every part holds come out of several parts, the
same each time, and ``merge_findings`` keeps one, in the whole run's order
(the symptom's time on the reference clock, then the connection's first row
in the table of every point).

Two cuts share that design:

- before correlation, on a cluster (``cut_point``, ``assemble_part``): rows
  are grouped by the component labels of ``diag.linking``, which also keep
  every row of a packet key together, so each part is correlated on its own
  (``diagnose_partition``) with the clock offsets estimated from every part's
  delay bounds (``part_clock_bounds``, ``diag.clocks``). Each row knows its
  place in the whole table (``positions``: the point's number, then the row);
- after correlation of all candidates in one process (``partition_rows``,
  for the outputs that gather the tables): rows are grouped into components
  by flow at one point, shared match or sighting, client endpoint of a SYN
  or SYN-ACK (port 1024 and up) anywhere and, for UDP, an endpoint at one
  point, and each part's ``Correlation`` is the whole one's, cut to its rows
  (``slice_correlation``).

Components are dealt to parts by a function of their label or first row
only, so which part a connection lands in depends only on the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.points import concat_packets
from diag.capture.proto import ICMP, ICMPV6, TCP, UDP
from diag.clocks import ClockBounds, clock_bounds
from diag.compiled import compiled
from diag.correlate import ClockOffset, Correlation, correlate
from diag.diagnose.connections import build_connections
from diag.flows.copies import mix_hash
from diag.reduction import CLIENT_PORTS, client_endpoints, text_hashes
from diag.report import Finding
from diag.spilledfindings import merge_order
from diag.unionfind import find


@compiled
def row_components(vertices: npt.NDArray[np.int64], n_vertices: int) -> npt.NDArray[np.int64]:
    """Per row (one row of ``vertices`` lists the vertices it joins, -1 for none): its component's root, or -1."""
    parent = np.arange(n_vertices, dtype=np.int64)
    n_rows, n_columns = vertices.shape
    for row in range(n_rows):
        anchor = -1
        for column in range(n_columns):
            vertex = vertices[row, column]
            if vertex < 0:
                continue
            root = find(parent, vertex)
            if anchor < 0:
                anchor = root
            elif root != anchor:
                low, high = min(anchor, root), max(anchor, root)
                parent[high] = low
                anchor = low
    result = np.full(n_rows, -1, dtype=np.int64)
    for row in range(n_rows):
        if vertices[row, 0] >= 0:
            result[row] = find(parent, vertices[row, 0])
    return result


def dense_vertices(values: np.ndarray, present: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
    """Vertex numbers from ``offset`` for the distinct ``values`` where ``present``; -1 elsewhere."""
    codes, uniques = pd.factorize(values[present])
    numbers = np.full(len(values), -1, dtype=np.int64)
    numbers[present] = codes.astype(np.int64) + offset
    return numbers, len(uniques)


def components(packets: pd.DataFrame, corr: Correlation) -> np.ndarray:
    """Per row: the number of its component (see the module's text), or -1 for rows outside any connection."""
    n = len(packets)
    proto = packets["proto"].to_numpy()
    transport = np.isin(proto, (TCP, UDP)) & (packets["ip_version"].to_numpy() > 0)
    capture = packets["capture"].cat.codes.to_numpy().astype(np.uint64)
    src, dst = text_hashes(packets["src"]), text_hashes(packets["dst"])
    sport = packets["sport"].to_numpy().astype(np.int64)
    dport = packets["dport"].to_numpy().astype(np.int64)
    src_ep = mix_hash(src.copy(), sport.astype(np.uint64))
    dst_ep = mix_hash(dst.copy(), dport.astype(np.uint64))
    node = mix_hash(mix_hash(mix_hash(capture.copy(), proto.astype(np.uint64)), np.minimum(src_ep, dst_ep)),
                    np.maximum(src_ep, dst_ep))  # fmt: skip
    udp = transport & (proto == UDP)
    at_point_src = mix_hash(capture.copy(), src_ep)
    at_point_dst = mix_hash(capture.copy(), dst_ep)
    columns = [
        (node, transport),
        (corr.row_match, transport & (corr.row_match >= 0)),
        (corr.row_sighting, transport),
        (client_endpoints(packets), transport),
        (at_point_src, udp & (sport >= CLIENT_PORTS)),
        (at_point_dst, udp & (dport >= CLIENT_PORTS)),
    ]
    vertices = np.full((n, len(columns)), -1, dtype=np.int64)
    offset = 0
    for position, (values, present) in enumerate(columns):
        present = present & (values != 0) if values.dtype == np.uint64 else present
        vertices[:, position], count = dense_vertices(values, present, offset)
        offset += count
    roots = row_components(vertices, max(offset, 1))
    # Numbered by first row, so a component's number is the same whoever computes it.
    result = np.full(n, -1, dtype=np.int64)
    result[roots >= 0] = pd.factorize(roots[roots >= 0])[0]
    return result


def partition_rows(packets: pd.DataFrame, corr: Correlation, parts: int) -> list[np.ndarray]:
    """The sorted row positions of each of ``parts`` parts (see the module's text); parts may be empty."""
    component = components(packets, corr)
    # Each point's earliest and latest row on the reference clock, with their components.
    codes = packets["capture"].cat.codes.to_numpy()
    ts_ref = corr.ts_ref_ns
    frame = pd.DataFrame({"code": codes, "ts": ts_ref, "row": np.arange(len(packets))})
    by_point = frame.groupby("code", sort=False)["ts"]
    boundary = np.unique(np.concatenate([by_point.idxmin().to_numpy(), by_point.idxmax().to_numpy()]))
    shared = np.isin(packets["proto"].to_numpy(), (ICMP, ICMPV6))
    shared[boundary] = True
    boundary_components = np.unique(component[boundary][component[boundary] >= 0])
    shared |= np.isin(component, boundary_components) & (component >= 0)
    owner = np.where(component >= 0, component % max(parts, 1), -1)
    return [np.flatnonzero((owner == part) | shared) for part in range(parts)]


def slice_correlation(corr: Correlation, rows: np.ndarray) -> Correlation:
    """The whole analysis's correlation for ``rows`` only: the per-row columns cut, offsets and ids kept.

    The match, path and NAT tables, which the diagnosis does not read, are left empty.
    """
    return replace(
        corr,
        row_match=corr.row_match[rows],
        row_sighting=corr.row_sighting[rows],
        ts_ref_ns=corr.ts_ref_ns[rows],
        row_hop=corr.row_hop[rows],
        matches=corr.matches.iloc[:0],
        paths=corr.paths.iloc[:0],
        nat_map=corr.nat_map.iloc[:0],
    )


def cut_part(packets: pd.DataFrame, corr: Correlation, rows: np.ndarray) -> tuple[pd.DataFrame, Correlation]:
    """One part's packet table (renumbered from 0) and correlation, what ``diagnose_part`` is given."""
    return packets.iloc[rows].reset_index(drop=True), slice_correlation(corr, rows)


@dataclass(frozen=True)
class PartFindings:
    """One part's findings, each with what orders it among all parts' (reference time, connection's first row)."""

    findings: list[Finding]
    order: list[tuple[int, int]]


def diagnose_part(part: pd.DataFrame, corr: Correlation, rows: np.ndarray) -> PartFindings:
    """``diagnose`` on one part (``cut_part``; ``rows`` its rows in the whole table), with each finding's place."""
    from diag.diagnose import diagnose

    findings = diagnose(part, None, corr)
    if not findings:
        return PartFindings([], [])
    # Each finding's connection: its first row (the whole table's position) orders connections as diagnose does.
    first_row: dict[tuple[str, int, int], int] = {}
    for conn in build_connections(part, corr, suspects_only=True):
        start = int(rows[int(conn.column("position").min())])
        capture, index, file = conn.column("capture"), conn.column("index"), conn.column("file")
        for code, one, number in zip(capture.tolist(), index.tolist(), file.tolist(), strict=True):
            first_row.setdefault((conn.table.names[code], int(one), int(number)), start)
    where = zip(part["capture"].astype(str).tolist(), part["index"].tolist(), part["file"].tolist(), strict=True)
    ts_ref = dict(zip(where, corr.ts_ref_ns.tolist(), strict=True))
    order = []
    for finding in findings:
        assert finding.packet is not None
        key = (finding.packet.capture, finding.packet.index, finding.packet.file)
        order.append((int(ts_ref[key]), first_row[key]))
    return PartFindings(findings, order)


def merge_findings(parts: Sequence[PartFindings]) -> list[Finding]:
    """Every part's findings in the whole run's order, each once (a boundary connection is in every part)."""
    findings = [finding for part in parts for finding in part.findings]
    order = np.array([place for part in parts for place in part.order], dtype=np.int64).reshape(-1, 2)
    packets = []
    for finding in findings:
        assert finding.packet is not None  # a finding of the diagnosis has its symptom's packet
        packets.append(finding.packet)
    kept = merge_order(
        order[:, 0],
        order[:, 1],
        np.array([packet.capture for packet in packets], dtype=object),
        np.array([packet.file for packet in packets], dtype=np.int64),
        np.array([packet.index for packet in packets], dtype=np.int64),
    )
    return [findings[position] for position in kept.tolist()]


# A row's place in the whole stacked table, and a component's label (``diag.linking``): the point's number in
# the high bits, the row's (or the component's) number at that point below.
POINT_SHIFT = 40


def owner_of(labels: np.ndarray, partitions: int) -> np.ndarray:
    """The partition owning each component label: its rows are correlated and diagnosed there."""
    mixed = mix_hash(np.full(len(labels), 0x243F6A8885A308D3, dtype=np.uint64), labels.astype(np.uint64))
    owner: np.ndarray = (mixed % np.uint64(partitions)).astype(np.int64)
    return owner


def boundary_rows(packets: pd.DataFrame) -> np.ndarray:
    """One point's rows with its earliest and its latest time (the first of each): its place and time span."""
    if len(packets) == 0:
        return np.zeros(0, dtype=np.int64)
    ts = packets["ts_ns"].to_numpy()
    return np.unique([int(np.argmin(ts)), int(np.argmax(ts))])


@dataclass(frozen=True)
class Piece:
    """The rows of one point's candidates that go to one partition."""

    table: pd.DataFrame
    rows: np.ndarray  # their positions among the point's candidates
    owned: np.ndarray  # per row: the partition owns it (else it is a copy that every partition holds)


def cut_point(
    packets: pd.DataFrame, component: np.ndarray, labels: np.ndarray, boundary: np.ndarray, parts: int
) -> list[Piece]:
    """One point's candidates cut into ``parts`` pieces by their component's label (``diag.linking``).

    Each piece holds the components its partition owns, and every piece the
    components with a label in ``boundary`` (those holding a point's earliest
    or latest row), each point's earliest and latest rows, and every ICMP row:
    what the diagnosis reads of the whole analysis besides one connection.
    """
    held = component >= 0
    row_label = np.full(len(packets), -1, dtype=np.int64)
    row_label[held] = labels[component[held]]
    owner = np.full(len(packets), -1, dtype=np.int64)
    owner[held] = owner_of(row_label[held], parts)
    shared = np.isin(packets["proto"].to_numpy(), (ICMP, ICMPV6)) | (held & np.isin(row_label, boundary))
    shared[boundary_rows(packets)] = True
    pieces = []
    for part in range(parts):
        rows = np.flatnonzero((owner == part) | shared)
        pieces.append(Piece(packets.iloc[rows], rows, owner[rows] == part))
    return pieces


@dataclass(frozen=True)
class Part:
    """One partition's rows of every point, stacked in point order."""

    table: pd.DataFrame  # the packet table; its ``capture`` categories are every point's name, in order
    positions: np.ndarray  # per row: (point << POINT_SHIFT) + its row among the point's candidates
    owned: np.ndarray


def assemble_part(pieces: Sequence[Piece], names: Sequence[str]) -> Part:
    """The pieces of every point (``pieces[i]`` of point ``i``) for one partition, as one table."""
    table = concat_packets([piece.table for piece in pieces]).reset_index(drop=True)
    table["capture"] = table["capture"].cat.set_categories(list(names))
    positions = np.concatenate(
        [(np.int64(point) << np.int64(POINT_SHIFT)) + piece.rows.astype(np.int64) for point, piece in enumerate(pieces)]
    )
    return Part(table, positions, np.concatenate([piece.owned for piece in pieces]).astype(bool))


def part_clock_bounds(part: Part) -> ClockBounds:
    """What the partition's own matched packets say about the clock offsets (``diag.clocks``)."""
    return clock_bounds(part.table[part.owned].reset_index(drop=True))


def diagnose_partition(part: Part, offsets: Mapping[str, ClockOffset]) -> PartFindings:
    """The partition correlated with the offsets estimated from every partition, then diagnosed."""
    return diagnose_part(part.table, correlate(part.table, offsets=offsets), part.positions)
