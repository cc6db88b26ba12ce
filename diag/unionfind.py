"""Union-find over vertex numbers, compiled: joining flows, keys and endpoints into connected groups.

Several stages group rows that share any of a few keys (a packet key, a client
endpoint): the candidate choice under a memory budget, the cluster's
connection partitions and the live watch's groups. Each keeps a ``parent``
array with ``parent[v] == v`` for a root and calls these from its own
compiled loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from diag.compiled import compiled


@compiled
def find(parent: npt.NDArray[np.int64], x: int) -> int:
    """The root of ``x``'s group, halving the paths walked so later finds are short."""
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


@compiled
def union(parent: npt.NDArray[np.int64], a: int, b: int) -> None:
    """Join the groups of ``a`` and ``b``; the smaller root stays the root, so roots do not depend on call order."""
    ra, rb = find(parent, a), find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@compiled
def union_pairs(parent: npt.NDArray[np.int64], a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> None:
    """Join ``a[i]`` with ``b[i]`` for every i in one compiled loop (pairs can number hundreds of thousands)."""
    for i in range(len(a)):
        union(parent, a[i], b[i])
