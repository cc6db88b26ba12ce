"""Flows joined into connections: the compiled pass over shared groups against a plain union-find, and the
sorts and joins on whole columns against the formulations they replaced."""

from __future__ import annotations

import numpy as np
import pandas as pd

from diag.capture.proto import ACK, RST, SYN, TCP, UDP
from diag.diagnose.connections import (
    _distinct_counts,
    _join_by_client_endpoint,
    _lex_order,
    _union_groups,
    _UnionFind,
)


def _reference_roots(n_nodes: int, group: np.ndarray, node: np.ndarray) -> list[int]:
    """Every node's connection, named by its smallest node: Python sets merged group by group."""
    root = list(range(n_nodes))

    def find(x: int) -> int:
        while root[x] != x:
            x = root[x]
        return x

    members: dict[int, list[int]] = {}
    for g, v in zip(group.tolist(), node.tolist(), strict=True):
        if g >= 0:
            members.setdefault(g, []).append(v)
    for nodes in members.values():
        for v in nodes[1:]:
            a, b = find(nodes[0]), find(v)
            root[max(a, b)] = min(a, b)
    return [find(v) for v in range(n_nodes)]


def test_union_by_group_joins_the_same_flows_with_the_smallest_root_whatever_the_row_order() -> None:
    rng = np.random.default_rng(12)
    for _ in range(50):
        n_nodes, n_rows = int(rng.integers(1, 60)), int(rng.integers(0, 200))
        group = rng.integers(-1, max(1, n_rows // 3), n_rows)  # -1: a row of no group
        node = rng.integers(0, n_nodes, n_rows)
        expected = _reference_roots(n_nodes, group, node)
        for order in (np.arange(n_rows), rng.permutation(n_rows)):
            uf = _UnionFind(n_nodes)
            _union_groups(uf, group[order], node[order])
            assert uf.roots().tolist() == expected


def test_union_by_group_with_no_group_joins_nothing() -> None:
    uf = _UnionFind(4)
    _union_groups(uf, np.full(5, -1, dtype=np.int64), np.array([0, 1, 2, 3, 0]))
    _union_groups(uf, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert uf.roots().tolist() == [0, 1, 2, 3]


def test_lex_order_is_the_permutation_of_lexsort_on_columns_with_ties() -> None:
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(0, 120))
        columns = []
        for _ in range(int(rng.integers(1, 5))):
            kind = int(rng.integers(0, 4))
            if kind == 0:  # few values: many ties
                column = rng.integers(-3, 3, n)
            elif kind == 1:  # a narrow type
                column = rng.integers(-(2**15), 2**15, n).astype(np.int16)
            elif kind == 2:  # spans that overflow a packed int64 unless ranked first
                column = rng.choice(np.array([-(2**62), -1, 0, 7, 2**62], dtype=np.int64), n)
            else:
                column = rng.integers(0, 2**40, n)
            columns.append(column)
        expected = np.lexsort(tuple(reversed(columns))) if n else np.zeros(0, dtype=np.intp)
        assert _lex_order(*columns).tolist() == expected.tolist(), trial


def test_distinct_counts_counts_the_distinct_values_of_each_key_group() -> None:
    rng = np.random.default_rng(9)
    for _ in range(100):
        n = int(rng.integers(0, 80))
        a, b, value = rng.integers(0, 4, n), rng.integers(-2, 2, n), rng.integers(0, 3, n)
        heads, counts = _distinct_counts((a, b), value)
        groups: dict[tuple[int, int], set[int]] = {}
        for key_a, key_b, v in zip(a.tolist(), b.tolist(), value.tolist(), strict=True):
            groups.setdefault((key_a, key_b), set()).add(v)
        assert [(int(a[h]), int(b[h])) for h in heads] == sorted(groups)  # groups in key order
        assert counts.tolist() == [len(groups[key]) for key in sorted(groups)]


def _join_by_client_endpoint_reference(table: pd.DataFrame, uf: _UnionFind) -> None:
    """The join as first written: distinct counts by lexsort and membership tests by ``np.isin``."""

    def distinct_counts(keys: tuple[np.ndarray, ...], value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((value, *reversed(keys)))
        new_group = np.zeros(len(order), dtype=bool)
        new_group[:1] = True
        for key in keys:
            new_group[1:] |= key[order][1:] != key[order][:-1]
        new_value = new_group.copy()
        new_value[1:] |= value[order][1:] != value[order][:-1]
        at = np.flatnonzero(new_group)
        counts = np.add.reduceat(new_value.astype(np.int64), at) if len(at) else np.zeros(0, dtype=np.int64)
        return order[at], counts

    capture = table["capture"].to_numpy()
    if len(capture) == 0 or (capture == capture[0]).all():
        return
    flags = table["tcp_flags"].to_numpy()
    tcp = table["proto"].to_numpy() == TCP
    syn = np.flatnonzero(tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN))
    synack = np.flatnonzero(tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN | ACK))
    addr = np.r_[table["src"].to_numpy()[syn], table["dst"].to_numpy()[synack]].astype(np.int64)
    port = np.r_[table["sport"].to_numpy()[syn], table["dport"].to_numpy()[synack]].astype(np.int64)
    node = np.r_[table["node"].to_numpy()[syn], table["node"].to_numpy()[synack]]
    point = np.r_[capture[syn], capture[synack]].astype(np.int64)
    client = port >= 1024
    endpoint = (addr * 65536 + port)[client]
    node, point = node[client], point[client]
    heads, points = distinct_counts((endpoint,), point)
    spread = np.isin(endpoint, endpoint[heads[points > 1]])
    if not spread.any():
        return
    endpoint, point = endpoint[spread], point[spread]
    root = uf.roots()[node[spread]]
    pair = point * (int(root.max()) + 1) + root
    heads, pairs = distinct_counts((endpoint,), pair)
    _, points = distinct_counts((endpoint,), point)
    single = np.isin(endpoint, endpoint[heads[pairs == points]])
    endpoint, root = endpoint[single], root[single]
    if len(endpoint) == 0:
        return
    order = np.lexsort((root, endpoint))
    endpoint, root = endpoint[order], root[order]
    first = np.r_[True, endpoint[1:] != endpoint[:-1]]
    smallest = root[np.flatnonzero(first)[np.cumsum(first) - 1]]
    joined = root != smallest
    uf.union_all(root[joined], smallest[joined])


def test_join_by_client_endpoint_links_the_same_flows_as_the_reference() -> None:
    """Random handshakes from a few endpoints at a few points: shared endpoints, reused ports, one-point endpoints."""
    rng = np.random.default_rng(21)
    flag_choices = np.array([SYN, SYN | ACK, ACK, RST, RST | ACK, SYN | RST, -1], dtype=np.int16)
    linked = 0
    for _ in range(400):
        n, n_nodes = int(rng.integers(0, 60)), int(rng.integers(1, 40))
        table = pd.DataFrame(
            {
                "capture": rng.integers(0, int(rng.integers(1, 4)), n),
                "src": rng.integers(0, 3, n),
                "dst": rng.integers(0, 3, n),
                "sport": rng.choice(np.array([80, 1023, 1024, 40000], dtype=np.int32), n),
                "dport": rng.choice(np.array([80, 1024, 40000], dtype=np.int32), n),
                "proto": rng.choice(np.array([TCP, TCP, TCP, UDP], dtype=np.int16), n),
                "tcp_flags": rng.choice(flag_choices, n),
                "node": rng.integers(0, n_nodes, n),
            }
        )
        joins = rng.integers(0, n_nodes, (int(rng.integers(0, n_nodes)), 2))  # flows already linked by packets
        expected, actual = _UnionFind(n_nodes), _UnionFind(n_nodes)
        for uf in (expected, actual):
            uf.union_all(joins[:, 0], joins[:, 1])
        before = expected.roots().tolist()
        _join_by_client_endpoint_reference(table, expected)
        _join_by_client_endpoint(table, actual)
        assert actual.roots().tolist() == expected.roots().tolist()
        linked += expected.roots().tolist() != before
    assert linked > 50  # the random tables do link flows, not only leave them apart
