"""Flows joined into connections: the compiled pass over shared groups against a plain union-find, and the
sorts and joins on whole columns against the formulations they replaced."""

from __future__ import annotations

import itertools

import numpy as np

from diag.capture.proto import ACK, RST, SYN, TCP, UDP
from diag.diagnose.connections import (
    _groups,
    _join_by_client_endpoint,
    _lex_order,
    _number_flows,
    _suspect_connections,
    _union_groups,
    _UnionFind,
    _varies,
)
from diag.diagnose.suspects import suspect
from diag.flows.keys import read_only


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
    for _ in range(100):
        n_nodes, n_packets = int(rng.integers(1, 60)), int(rng.integers(0, 200))
        # -1: a packet of no group; few groups (shared by several rows) or many (nearly all of one row).
        group = rng.integers(-1, max(1, n_packets // int(rng.choice([3, 100]))), n_packets)
        positions = np.flatnonzero(rng.random(n_packets) < 0.8)  # the rows read: some of the packets
        node = rng.integers(0, n_nodes, len(positions))
        expected = _reference_roots(n_nodes, group[positions], node)
        for order in (np.arange(n_packets), rng.permutation(n_packets)):
            # The same packets at other positions: the rows in another order.
            moved = np.empty(n_packets, dtype=np.int64)
            moved[order] = group
            at = order[positions]
            for rarely_shared in (False, True):
                uf = _UnionFind(n_nodes)
                _union_groups(uf, moved, at, node, rarely_shared=rarely_shared)
                assert uf.roots().tolist() == expected


def test_union_by_group_with_no_group_joins_nothing() -> None:
    uf = _UnionFind(4)
    _union_groups(uf, np.full(5, -1, dtype=np.int64), np.arange(5), np.array([0, 1, 2, 3, 0]))
    _union_groups(uf, np.array([0, 1, 2, 3, 0]), np.arange(4), np.array([0, 1, 2, 3]), rarely_shared=True)
    _union_groups(uf, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
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


def test_groups_gather_equal_keys_and_varies_tells_groups_of_several_values() -> None:
    rng = np.random.default_rng(9)
    for _ in range(200):
        n = int(rng.integers(0, 80))
        a, b, value = rng.integers(0, 4, n), rng.integers(-2, 2, n).astype(np.int16), rng.integers(0, 3, n)
        order, starts = _groups(a, b)
        groups: dict[tuple[int, int], set[int]] = {}
        for key_a, key_b, v in zip(a.tolist(), b.tolist(), value.tolist(), strict=True):
            groups.setdefault((key_a, key_b), set()).add(v)
        assert sorted(order.tolist()) == list(range(n))
        bounds = [*starts.tolist(), n]
        seen = []
        for start, stop in itertools.pairwise(bounds):
            keys = {(int(a[i]), int(b[i])) for i in order[start:stop]}
            assert len(keys) == 1  # one key per group...
            seen.append(keys.pop())
        assert seen == sorted(groups)  # ... each key in one group, in key order
        assert _varies(value, order, starts).tolist() == [len(groups[key]) > 1 for key in seen]


def _distinct_counts_reference(keys: tuple[np.ndarray, ...], value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each group of equal ``keys``, how many distinct ``value``s it holds): the former lexsort way."""
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


def _suspect_connections_reference(table: dict[str, np.ndarray]) -> np.ndarray:
    """The choice of suspects as first written: distinct counts by lexsort, unanswered SYNs by setdiff1d."""
    conn, flags = table["conn"], table["tcp_flags"]
    tcp = table["proto"] == TCP
    handshake = np.where(flags >= 0, flags & (SYN | ACK | RST), 0)
    rst = tcp & (flags >= 0) & ((flags & RST) != 0)
    syn = np.flatnonzero(tcp & (handshake == SYN))
    synack = tcp & (handshake == SYN | ACK)
    n = int(conn.max()) + 1 if len(conn) else 0

    def having(units: np.ndarray) -> np.ndarray:
        marked = np.zeros(n, dtype=bool)
        marked[units] = True
        return marked

    heads, packets = _distinct_counts_reference((conn[syn], table["seq"][syn]), table["pkt"][syn])
    retried = having(conn[syn][heads[packets > 1]])
    one_way, split = having(conn[:0]), having(conn[:0])
    udp = np.flatnonzero(~tcp)
    if len(udp):
        group = (conn[udp], table["capture"][udp])
        heads, senders = _distinct_counts_reference(group, table["src"][udp])
        _, flows = _distinct_counts_reference(group, table["node"][udp])
        one_way, split = having(conn[udp][heads[senders < 2]]), having(conn[udp][heads[flows > 1]])
    unanswered = having(np.setdiff1d(conn[syn], conn[synack]))
    chosen = suspect(having(conn[rst]), retried, split, unanswered, one_way)
    return np.flatnonzero(chosen).astype(np.int64)


_FLAG_CHOICES = np.array([SYN, SYN | ACK, ACK, RST, RST | ACK, SYN | RST, -1], dtype=np.int16)


def _random_telling_table(rng: np.random.Generator, n: int, n_nodes: int) -> dict[str, np.ndarray]:
    """Handshakes, resets and datagrams from a few endpoints at a few points: every key with many ties."""
    return {
        "capture": rng.integers(0, int(rng.integers(1, 4)), n),
        "src": rng.integers(0, 3, n),
        "dst": rng.integers(0, 3, n),
        "sport": rng.choice(np.array([80, 1023, 1024, 40000], dtype=np.int32), n),
        "dport": rng.choice(np.array([80, 1024, 40000], dtype=np.int32), n),
        "proto": rng.choice(np.array([TCP, TCP, TCP, UDP], dtype=np.int16), n),
        "tcp_flags": rng.choice(_FLAG_CHOICES, n),
        "seq": rng.choice(np.array([0, 7, 2**32 - 1]), n),
        "pkt": rng.integers(0, 5, n),
        "node": rng.integers(0, n_nodes, n),
        "conn": rng.integers(0, max(1, n_nodes // 2), n),
    }


def test_suspect_connections_chooses_the_same_connections_as_the_reference() -> None:
    rng = np.random.default_rng(33)
    chosen_some = 0
    for _ in range(400):
        table = _random_telling_table(rng, int(rng.integers(0, 60)), int(rng.integers(1, 30)))
        expected = _suspect_connections_reference(table)
        assert _suspect_connections(table).tolist() == expected.tolist()
        chosen_some += 0 < len(expected) < len(np.unique(table["conn"]))
    assert chosen_some > 100  # the tables leave some connections out and keep others


def _join_by_client_endpoint_reference(table: dict[str, np.ndarray], uf: _UnionFind) -> None:
    """The join as first written: distinct counts by lexsort and membership tests by ``np.isin``."""
    distinct_counts = _distinct_counts_reference
    capture = table["capture"]
    if len(capture) == 0 or (capture == capture[0]).all():
        return
    flags = table["tcp_flags"]
    tcp = table["proto"] == TCP
    syn = np.flatnonzero(tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN))
    synack = np.flatnonzero(tcp & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN | ACK))
    addr = np.r_[table["src"][syn], table["dst"][synack]].astype(np.int64)
    port = np.r_[table["sport"][syn], table["dport"][synack]].astype(np.int64)
    node = np.r_[table["node"][syn], table["node"][synack]]
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
    linked = 0
    for _ in range(400):
        n, n_nodes = int(rng.integers(0, 60)), int(rng.integers(1, 40))
        table = _random_telling_table(rng, n, n_nodes)
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


def test_number_flows_numbers_each_point_and_unordered_pair_by_first_appearance() -> None:
    """Against a dict: enough pairs that the hash table grows several times, both directions of each."""
    rng = np.random.default_rng(3)
    for n, n_endpoints in ((0, 1), (50, 4), (20_000, 3_000), (20_000, 40)):
        point = rng.integers(0, 3, n) * 65536 + rng.choice(np.array([TCP, UDP]), n)
        src_ep, dst_ep = rng.integers(1, n_endpoints + 1, n), rng.integers(1, n_endpoints + 1, n)
        numbers: dict[tuple[int, int, int], int] = {}
        expected = [
            numbers.setdefault((p, min(a, b), max(a, b)), len(numbers))
            for p, a, b in zip(point.tolist(), src_ep.tolist(), dst_ep.tolist(), strict=True)
        ]
        arrays = (np.ascontiguousarray(x, dtype=np.int64) for x in (point, src_ep, dst_ep))
        assert _number_flows(*(read_only(x, np.int64) for x in arrays)).tolist() == expected
