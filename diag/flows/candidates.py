"""Which packets the diagnosis can need: a small key table per packet, and the rows to keep from it.

The diagnosis (``diag.diagnose``) looks only at connections that may hold a
symptom (a RST, a SYN retried or never answered, a one-way or re-sourced UDP
conversation), but it reads *every* row of those connections, at every
capture point, and the correlation behind it reads whatever shares a packet
key with them and whatever sets the clock offsets between points. An analysis
that cannot hold every packet in memory keeps first, for each packet, a few
integers (``key_table``: about 60 bytes instead of the packet table's 200 and
the analysis's 380), chooses from them the rows to read again in full
(``candidate_rows``), and runs the usual correlation and diagnosis on those.

The choice is a superset, built so the findings come out the same as from the
whole capture:

- a *node* is one flow at one point as the diagnosis's connections know it
  (capture, transport, the two endpoints in either order);
- *seeds* are the nodes that can make their connection a suspect: a RST, a
  SYN without a SYN-ACK in the same node, two SYNs in one node, a SYN whose
  sequence number comes with two different packets anywhere, a UDP node with
  a single sender address;
- nodes are joined into *components* by what can join them into one
  connection: a shared packet key (a match across points, or copies at one
  point), a shared client endpoint of a SYN or SYN-ACK at port 1024 or above
  (the join through a NAT that keeps the client's address). A component is
  never smaller than a connection, so keeping whole components keeps whole
  connections; a UDP component with two nodes at one point is a seed too;
- with several points, the packets that decide the clock offsets are kept:
  every packet key seen twice at one point or with the same TTL at two
  points, and, per pair of points and direction, the packet with the
  tightest delay bound (the offset is the middle of the tightest interval,
  ``diag.correlate.clock``). Keeping more matched packets than these cannot
  change an offset;
- each point's first packet and its earliest and latest (the order of the
  points and the time each covered), and every ICMP packet (the diagnosis
  quotes port-unreachable answers).

Every kept row takes its whole component with it. Pure functions of numpy
arrays and DataFrames: readers call ``key_table`` on each chunk of a capture
(or on a worker's part of it) and ``candidate_rows`` once on the key tables of
all points stacked. A cluster, where no one place holds every point's key
table, calls ``candidate_rows`` on each point's alone with the ``SharedLinks``
its shuffle found (``diag.reduction``): the keys that decide clock offsets
are then replaced by every packet key seen at another point, a superset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.proto import ACK, ICMP, ICMPV6, RST, SYN, TCP, UDP
from diag.compiled import compiled
from diag.flows.copies import mix_hash, packet_keys
from diag.unionfind import find

# The key table's columns: name -> (dtype, meaning).
KEY_COLUMNS: Final[dict[str, tuple[str, str]]] = {
    "point": ("int16", "the capture point's number (as the caller numbers them)"),
    "node": ("uint64", "hash of (point, transport, the two endpoints unordered); 0 when not TCP or UDP over IP"),
    "key": ("uint64", "``packet_keys``: the fields NAT leaves alone; 0 when not matchable"),
    "ip_id": ("int32", "IPv4 identification (-1 when none)"),
    "ts_ns": ("int64", "timestamp, ns"),
    "ttl": ("int16", "TTL or hop limit"),
    "proto": ("int16", "IP protocol"),
    "tcp_flags": ("int16", "TCP flags, -1 when not TCP"),
    "seq": ("int64", "TCP sequence number, -1 when not TCP"),
    "sender": ("uint64", "hash of the source address"),
    "client_endpoint": (
        "uint64",
        "hash of the client endpoint of a SYN (its source) or SYN-ACK (its destination) at port 1024 or above; "
        "0 otherwise",
    ),
}

_SEED: Final = np.uint64(0x243F6A8885A308D3)


def _text_hashes(column: pd.Series) -> npt.NDArray[np.uint64]:
    """A stable 64-bit hash of each row's text (the same in every process; 0 for a missing value)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        texts = [str(value) for value in column.cat.categories]
    else:
        factor, uniques = pd.factorize(column.astype(str), sort=False)
        codes, texts = factor, [str(value) for value in uniques]
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") | 1 for text in texts] + [0],
        dtype=np.uint64,
    )
    return hashes[codes]  # code -1 (missing) takes the trailing 0


def _endpoint(address: np.ndarray, port: np.ndarray) -> npt.NDArray[np.uint64]:
    return mix_hash(address.copy(), port.astype(np.int64) + 1)


def _nodes(
    packets: pd.DataFrame, point: int, src_ep: npt.NDArray[np.uint64], dst_ep: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    proto = packets["proto"].to_numpy()
    transport = np.isin(proto, (TCP, UDP)) & (packets["ip_version"].to_numpy() > 0)
    state = np.full(len(packets), _SEED, dtype=np.uint64)
    state = mix_hash(state, np.full(len(packets), point, dtype=np.int64))
    state = mix_hash(state, proto)
    state = mix_hash(state, np.minimum(src_ep, dst_ep))
    node = mix_hash(state, np.maximum(src_ep, dst_ep))
    node[node == 0] = 1
    node[~transport] = 0
    return node


def node_hashes(packets: pd.DataFrame, point: int) -> npt.NDArray[np.uint64]:
    """The key table's ``node`` column alone (cheaper: no packet keys), for the passes that only partition rows."""
    src_ep = _endpoint(_text_hashes(packets["src"]), packets["sport"].to_numpy())
    dst_ep = _endpoint(_text_hashes(packets["dst"]), packets["dport"].to_numpy())
    return _nodes(packets, point, src_ep, dst_ep)


def key_table(packets: pd.DataFrame, point: int) -> pd.DataFrame:
    """The ``KEY_COLUMNS`` of every row of ``packets`` (one point's packet table, or a chunk of it)."""
    proto = packets["proto"].to_numpy()
    flags = packets["tcp_flags"].to_numpy()
    sport = packets["sport"].to_numpy()
    dport = packets["dport"].to_numpy()
    src, dst = _text_hashes(packets["src"]), _text_hashes(packets["dst"])
    src_ep, dst_ep = _endpoint(src, sport), _endpoint(dst, dport)
    node = _nodes(packets, point, src_ep, dst_ep)
    handshake = np.where(flags >= 0, flags & (SYN | ACK | RST), -1)
    syn = (proto == TCP) & (handshake == SYN) & (sport >= 1024)
    synack = (proto == TCP) & (handshake == (SYN | ACK)) & (dport >= 1024)
    client = np.where(syn, src_ep, np.where(synack, dst_ep, np.uint64(0)))
    return pd.DataFrame(
        {
            "point": np.full(len(packets), point, dtype=np.int16),
            "node": node,
            "key": packet_keys(packets) if len(packets) else np.zeros(0, dtype=np.uint64),
            "ip_id": packets["ip_id"].to_numpy().astype(np.int32),
            "ts_ns": packets["ts_ns"].to_numpy().astype(np.int64),
            "ttl": packets["ttl"].to_numpy().astype(np.int16),
            "proto": proto.astype(np.int16),
            "tcp_flags": flags.astype(np.int16),
            "seq": packets["seq"].to_numpy().astype(np.int64),
            "sender": src,
            "client_endpoint": client.astype(np.uint64),
        },
        copy=False,
    )


@compiled
def _components(
    first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], third: npt.NDArray[np.int64], n_vertices: int
) -> npt.NDArray[np.int64]:
    """Per row, the component (smallest vertex) of the vertices it joins (-1 where a row has none)."""
    parent = np.arange(n_vertices, dtype=np.int64)
    n = len(first)
    for row in range(n):
        anchor = -1
        for vertex in (first[row], second[row], third[row]):
            if vertex < 0:
                continue
            if anchor < 0:
                anchor = find(parent, vertex)
            else:
                other = find(parent, vertex)
                if other != anchor:
                    low, high = min(anchor, other), max(anchor, other)
                    parent[high] = low
                    anchor = low
    result = np.full(n, -1, dtype=np.int64)
    for row in range(n):
        for vertex in (first[row], second[row], third[row]):
            if vertex >= 0:
                result[row] = find(parent, vertex)
                break
    return result


def joined_components(
    first: npt.NDArray[np.int64], second: npt.NDArray[np.int64], third: npt.NDArray[np.int64], n_vertices: int
) -> npt.NDArray[np.int64]:
    """Per row, the smallest vertex of the component its vertices (0 .. n_vertices-1, -1: none) end up in."""
    result: npt.NDArray[np.int64] = _components(first, second, third, n_vertices)
    return result


def _vertices(values: np.ndarray, offset: int) -> tuple[npt.NDArray[np.int64], int]:
    """Dense vertex numbers (from ``offset``) for the non-zero values; -1 for zeros."""
    codes, uniques = pd.factorize(values, sort=False)
    codes = codes.astype(np.int64)
    zero = values == 0
    codes[zero] = -1
    count = len(uniques)
    return np.where(codes >= 0, codes + offset, -1), count


def components(keys: pd.DataFrame) -> npt.NDArray[np.int64]:
    """Per row: its component (nodes joined by shared packet keys and client endpoints); -1 for a lone row."""
    node, n_nodes = _vertices(keys["node"].to_numpy(), 0)
    key, n_keys = _vertices(keys["key"].to_numpy(), n_nodes)
    client, n_clients = _vertices(keys["client_endpoint"].to_numpy(), n_nodes + n_keys)
    return _components(node, key, client, n_nodes + n_keys + n_clients)


def seed_nodes(keys: pd.DataFrame) -> npt.NDArray[np.uint64]:
    """The nodes that can make their connection a suspect, from their own rows (see the module's list).

    Usable on one point's key table alone (a worker's local reduction); the
    SYN rule across points and the UDP rule across nodes need all points
    (``candidate_rows`` applies them).
    """
    node = keys["node"].to_numpy()
    proto = keys["proto"].to_numpy()
    flags = keys["tcp_flags"].to_numpy()
    tcp = (proto == TCP) & (node != 0)
    handshake = np.where(flags >= 0, flags & (SYN | ACK | RST), -1)
    rst = tcp & (flags >= 0) & ((flags & RST) != 0)
    syn = tcp & (handshake == SYN)
    synack = tcp & (handshake == (SYN | ACK))
    seeds = [np.unique(node[rst])]
    syn_count = pd.Series(node[syn]).value_counts()
    answered = np.unique(node[synack])
    seeds.append(syn_count.index.to_numpy()[(syn_count.to_numpy() >= 2)])
    seeds.append(np.setdiff1d(syn_count.index.to_numpy(), answered))
    udp = (proto == UDP) & (node != 0)
    if udp.any():
        senders = pd.Series(keys["sender"].to_numpy()[udp]).groupby(node[udp]).nunique()
        seeds.append(senders.index.to_numpy()[senders.to_numpy() < 2])
    return np.unique(np.concatenate(seeds).astype(np.uint64))


def _retried_syn_nodes(keys: pd.DataFrame) -> npt.NDArray[np.uint64]:
    """Nodes of SYNs whose sequence number comes with two different packets (content or count) anywhere."""
    proto, flags = keys["proto"].to_numpy(), keys["tcp_flags"].to_numpy()
    syn = (proto == TCP) & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN) & (keys["node"].to_numpy() != 0)
    if not syn.any():
        return np.zeros(0, dtype=np.uint64)
    rows = keys[syn]
    content = mix_hash(rows["key"].to_numpy().copy(), rows["ip_id"].to_numpy())
    frame = pd.DataFrame({"seq": rows["seq"].to_numpy(), "point": rows["point"].to_numpy(), "content": content})
    by_seq = frame.groupby("seq")
    several = (by_seq["content"].transform("nunique") > 1).to_numpy() | (
        frame.groupby(["seq", "point"])["content"].transform("size") > 1
    ).to_numpy()
    return np.unique(rows["node"].to_numpy()[several])


def _clock_keys(keys: pd.DataFrame) -> npt.NDArray[np.uint64]:
    """The packet keys that can decide a clock offset between two points (see the module docstring)."""
    matchable = keys["key"].to_numpy() != 0
    frame = pd.DataFrame(
        {
            "key": keys["key"].to_numpy()[matchable],
            "point": keys["point"].to_numpy()[matchable],
            "ts": keys["ts_ns"].to_numpy()[matchable],
            "ttl": keys["ttl"].to_numpy()[matchable],
        }
    )
    by_key = frame.groupby("key", sort=False)["point"]
    n_points = by_key.transform("nunique").to_numpy()
    size = by_key.transform("size").to_numpy()
    shared = n_points >= 2
    # Seen more than once at one point: copies and retransmissions pair up in ways only the correlation knows.
    kept = [np.unique(frame["key"].to_numpy()[shared & (size > n_points)])]
    single = frame[shared & (size == n_points)]
    if len(single):
        points = sorted(np.unique(single["point"].to_numpy()).tolist())
        wide_ts = single.pivot(index="key", columns="point", values="ts")
        wide_ttl = single.pivot(index="key", columns="point", values="ttl")
        key_values = wide_ts.index.to_numpy()
        for position, a in enumerate(points):
            for b in points[position + 1 :]:
                both = wide_ts[a].notna().to_numpy() & wide_ts[b].notna().to_numpy()
                if not both.any():
                    continue
                ttl_a = wide_ttl[a].to_numpy()[both]
                ttl_b = wide_ttl[b].to_numpy()[both]
                bound = -(wide_ts[b].to_numpy()[both] - wide_ts[a].to_numpy()[both])
                candidates = key_values[both]
                kept.append(candidates[ttl_a == ttl_b])
                a_first, b_first = ttl_a > ttl_b, ttl_a < ttl_b
                if a_first.any():
                    kept.append(candidates[a_first][[int(np.argmax(bound[a_first]))]])
                if b_first.any():
                    kept.append(candidates[b_first][[int(np.argmin(bound[b_first]))]])
    return np.unique(np.concatenate(kept).astype(np.uint64))


def _boundary_rows(keys: pd.DataFrame) -> npt.NDArray[np.int64]:
    """Each point's first row and the rows with its earliest and latest time."""
    point = keys["point"].to_numpy()
    ts = keys["ts_ns"].to_numpy()
    rows = []
    for value in np.unique(point).tolist():
        at = np.flatnonzero(point == value)
        rows += [int(at[0]), int(at[np.argmin(ts[at])]), int(at[np.argmax(ts[at])])]
    return np.array(rows, dtype=np.int64)


@dataclass(frozen=True)
class SharedLinks:
    """What other points hold of one point's links (a cluster's shuffle finds it, ``diag.reduction``).

    Each array is sorted and distinct: the packet keys and client endpoints (``KEY_COLUMNS``' ``key`` and
    ``client_endpoint``) seen at two points or more, and the sequence numbers that came with two different
    SYNs anywhere.
    """

    packets: npt.NDArray[np.uint64]
    endpoints: npt.NDArray[np.uint64]
    syn_seqs: npt.NDArray[np.uint64]


def syn_rows(keys: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """The rows of TCP SYNs without ACK (and without RST)."""
    flags = keys["tcp_flags"].to_numpy()
    syn: npt.NDArray[np.bool_] = (keys["proto"].to_numpy() == TCP) & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN)
    return syn


def candidate_rows(keys: pd.DataFrame, shared: SharedLinks | None = None) -> npt.NDArray[np.bool_]:
    """Per row of ``keys``: True for the rows the analysis must keep.

    ``keys`` are the key tables of every point stacked, or, with ``shared``, of one point only: what links
    its rows to other points is then ``shared`` instead of found in ``keys`` (every packet with a shared key
    is kept, a superset of the keys that decide the clock offsets; so is every flow with a shared client
    endpoint or a SYN whose sequence number came with another SYN elsewhere). Analysing only these rows
    (of every point) gives the same correlation offsets, connections and findings as analysing them all
    (see the module docstring for why).
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=bool)
    component = components(keys)
    node = keys["node"].to_numpy()
    chosen_nodes = np.union1d(seed_nodes(keys), _retried_syn_nodes(keys))
    chosen = np.zeros(n, dtype=bool)
    chosen |= np.isin(node, chosen_nodes) & (node != 0)
    proto = keys["proto"].to_numpy()
    chosen |= (proto == ICMP) | (proto == ICMPV6)
    key = keys["key"].to_numpy()
    if shared is not None:
        endpoint = keys["client_endpoint"].to_numpy()
        chosen |= np.isin(key, shared.packets) & (key != 0)
        chosen |= np.isin(endpoint, shared.endpoints) & (endpoint != 0)
        chosen |= syn_rows(keys) & np.isin(keys["seq"].to_numpy().astype(np.uint64), shared.syn_seqs)
    elif len(np.unique(keys["point"].to_numpy())) > 1:
        chosen |= np.isin(key, _clock_keys(keys))
    udp = (proto == UDP) & (node != 0) & (component >= 0)
    if udp.any():  # a UDP connection with two flows at one point is a suspect
        nodes_per_point = (
            pd.DataFrame({"component": component[udp], "point": keys["point"].to_numpy()[udp], "node": node[udp]})
            .groupby(["component", "point"])["node"]
            .nunique()
        )
        several = nodes_per_point[nodes_per_point > 1].index.get_level_values("component").to_numpy()
        chosen |= np.isin(component, several)
    chosen[_boundary_rows(keys)] = True
    kept_components = np.unique(component[chosen & (component >= 0)])
    result: npt.NDArray[np.bool_] = chosen | (np.isin(component, kept_components) & (component >= 0))
    return result
