"""Connections across capture points, labelled on the cluster without gathering the candidates anywhere.

Correlation and diagnosis can run on parts of the candidate packets apart if
each part holds whole *components*: rows that a shared flow at one point, a
shared packet key anywhere (every sighting and match of a packet), a client
endpoint of a SYN or SYN-ACK (port 1024 and up) anywhere, or, for UDP, an
endpoint at one point (a reply re-sourced by NAT) join. A component is never
smaller than a connection, and it holds every row that shares a packet key
with its rows, so a part's correlation matches its packets as the whole
one does.

Within a point the components are found on its worker (``local_links``, one
union-find over the point's candidates). Across points they join only
through link keys seen at two points or more, which the candidate reduction
has already found (``diag.reduction``). The global labelling is *hash-min*
label propagation: every local component starts with its own label (the
point's number and the component's), each round every point sends, per
shared link key it holds, the label of the component holding it to that
key's hash partition (``emit_labels``); a partition takes the smallest label
per key (``smallest_labels``); each point then lowers each component's label
to the smallest one among its keys (``lower_labels``). When no label changes,
every component carries the smallest label of its connected whole, whatever
the number of partitions. The rounds needed are the longest chain of points
a connection's keys pass through (two or three for a path through NAT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diag.capture.proto import TCP, UDP
from diag.flows.copies import mix_hash
from diag.partitions import POINT_SHIFT, dense_vertices, row_components
from diag.reduction import CLIENT_PORTS, LinkKeys, text_hashes

# Client endpoints are hashed apart from packet keys (both are 64-bit hashes; a collision would only join two
# components that need not be, which costs balance, never a result).
_ENDPOINT_TAG = np.uint64(0x5BD1E9955BD1E995)


@dataclass(frozen=True)
class PointLinks:
    """One point's candidates as local components, and the shared link keys each component holds."""

    component: np.ndarray  # per candidate row: its local component, -1 for a row no component holds
    n_components: int
    values: np.ndarray  # uint64 shared link keys held (one entry per distinct key and component)
    holders: np.ndarray  # int64 the local component holding each of ``values``


@dataclass(frozen=True)
class Labels:
    """Each local component's current label, and whether the last round lowered any."""

    labels: np.ndarray
    changed: bool


def local_components(packets: pd.DataFrame, keys: np.ndarray, endpoints: np.ndarray) -> tuple[np.ndarray, int]:
    """Per row of one point's candidates, its component (see the module's text), numbered by first row; -1 for
    rows that are neither TCP or UDP over IP nor matchable. ``keys`` and ``endpoints`` are the rows' packet keys
    and client endpoints (the ``key`` and ``client_endpoint`` of ``diag.flows.candidates.key_table``)."""
    n = len(packets)
    proto = packets["proto"].to_numpy()
    transport = np.isin(proto, (TCP, UDP)) & (packets["ip_version"].to_numpy() > 0)
    src, dst = text_hashes(packets["src"]), text_hashes(packets["dst"])
    sport = packets["sport"].to_numpy().astype(np.int64)
    dport = packets["dport"].to_numpy().astype(np.int64)
    src_ep = mix_hash(src.copy(), sport.astype(np.uint64))
    dst_ep = mix_hash(dst.copy(), dport.astype(np.uint64))
    node = mix_hash(mix_hash(proto.astype(np.uint64), np.minimum(src_ep, dst_ep)), np.maximum(src_ep, dst_ep))
    udp = transport & (proto == UDP)
    columns = [
        (node, transport),
        (keys, keys != 0),
        (endpoints, transport & (endpoints != 0)),
        (src_ep, udp & (sport >= CLIENT_PORTS)),
        (dst_ep, udp & (dport >= CLIENT_PORTS)),
    ]
    vertices = np.full((n, len(columns)), -1, dtype=np.int64)
    offset = 0
    for position, (values, present) in enumerate(columns):
        vertices[:, position], count = dense_vertices(values, present, offset)
        offset += count
    # A row's first vertex may be absent (a matchable row that is not transport): put a present one first.
    first_present = np.argmax(vertices >= 0, axis=1)
    rows = np.arange(n)
    head, chosen = vertices[:, 0].copy(), vertices[rows, first_present].copy()
    vertices[rows, first_present] = head
    vertices[:, 0] = chosen
    roots = row_components(vertices, max(offset, 1))
    component = np.full(n, -1, dtype=np.int64)
    held = roots >= 0
    codes, uniques = pd.factorize(roots[held])
    component[held] = codes
    return component, len(uniques)


def local_links(packets: pd.DataFrame, keys: np.ndarray, endpoints: np.ndarray, shared: LinkKeys) -> PointLinks:
    """The point's components and the link keys they hold that other points hold too."""
    component, n_components = local_components(packets, keys, endpoints)
    found = [
        (keys, np.isin(keys, shared.packets) & (keys != 0)),
        (endpoints ^ _ENDPOINT_TAG, np.isin(endpoints, shared.endpoints) & (endpoints != 0)),
    ]
    values = np.concatenate([column[mask & (component >= 0)] for column, mask in found]).astype(np.uint64)
    holders = np.concatenate([component[mask & (component >= 0)] for _column, mask in found]).astype(np.int64)
    if len(values):
        pairs = np.unique(np.stack([values, holders.astype(np.uint64)], axis=1), axis=0)
        values, holders = pairs[:, 0].copy(), pairs[:, 1].astype(np.int64)
    return PointLinks(component, n_components, values, holders)


def first_labels(links: PointLinks, point: int) -> Labels:
    """Every local component labelled by itself."""
    labels = (np.int64(point) << np.int64(POINT_SHIFT)) + np.arange(links.n_components, dtype=np.int64)
    return Labels(labels, changed=True)


def key_partition(values: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each link key (the same for every point)."""
    part: np.ndarray = (values % np.uint64(partitions)).astype(np.int64)
    return part


def emit_labels(links: PointLinks, labels: Labels, partitions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per partition, the (shared link key, label of the component holding it) pairs of this point."""
    part = key_partition(links.values, partitions)
    carried = labels.labels[links.holders]
    return [(links.values[part == number], carried[part == number]) for number in range(partitions)]


def smallest_labels(pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One partition: every link key it received, sorted, with the smallest label any point gave it."""
    values = np.concatenate([values for values, _labels in pieces]) if pieces else np.zeros(0, dtype=np.uint64)
    labels = np.concatenate([labels for _values, labels in pieces]) if pieces else np.zeros(0, dtype=np.int64)
    if len(values) == 0:
        return values.astype(np.uint64), labels.astype(np.int64)
    order = np.lexsort((labels, values))
    values, labels = values[order], labels[order]
    first = np.r_[True, values[1:] != values[:-1]]
    return values[first], labels[first]


def lower_labels(links: PointLinks, labels: Labels, *minima: tuple[np.ndarray, np.ndarray]) -> Labels:
    """Each component's label lowered to the smallest its shared keys got from any point."""
    lowered = labels.labels.copy()
    part = key_partition(links.values, len(minima))
    for number, (values, smallest) in enumerate(minima):
        mine = part == number
        if not mine.any() or len(values) == 0:
            continue
        found = smallest[np.searchsorted(values, links.values[mine])]
        np.minimum.at(lowered, links.holders[mine], found)
    return Labels(lowered, changed=bool((lowered < labels.labels).any()))
