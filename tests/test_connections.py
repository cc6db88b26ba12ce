"""Flows joined into connections: the compiled pass over shared groups against a plain union-find."""

from __future__ import annotations

import numpy as np

from diag.diagnose.connections import _union_groups, _UnionFind


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
