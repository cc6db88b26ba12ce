"""What one capture point keeps for the cross-point join: its candidate packets.

A fleet's analysis (``diag.cluster``) reads and summarises each point where
its files are, and sends on only the packets that correlation and diagnosis
can use: every flow that may hold a symptom and everything that links such a
flow to its copies at other points. The flow table itself is built in full
where the point was read; only the packet rows are reduced.

Correlation and diagnosis then give on the stacked candidates of all points
exactly what they give on all packets, because the candidates are closed
under everything those stages group by:

- a *link key* is either a packet's NAT-invariant key
  (``diag.flows.copies.packet_keys``) or a client endpoint (the address and
  port of a SYN's source or a SYN-ACK's destination, port 1024 and up), the
  two things connections are joined on across points. A link key seen at two
  points or more is *shared*; which ones are is found by partitioning every
  point's link keys by hash (``partition_link_keys``) and intersecting each
  partition apart (``shared_link_keys``), so no one place holds every key.
  The same partitions carry each SYN's sequence number with its packet key:
  a sequence number that comes with two different SYNs anywhere may be a
  retried SYN whose copies no single point saw both of;
- every packet with a shared packet key is kept at every point, so each match
  (the k-th sighting of a key at one point is the k-th at the others) and the
  clock offsets estimated from the matches come out the same; every flow
  holding a shared client endpoint is kept, so the endpoint join counts the
  same connections;
- locally, the flows that can hold a symptom (a RST, a SYN sent twice, a SYN
  with no SYN-ACK, a one-way UDP flow), keys held by two flows of the point
  (a box's way in and way out), ICMP (port unreachable answers) and the
  point's first and last packet (its time span) start the selection;
- then, until nothing changes, the whole flow of every kept packet and every
  packet with the key of a kept packet are kept: a kept connection is kept
  complete at every point, with each of its sightings.

Keeping more than that never changes a result (a complete healthy connection
is skipped by the diagnosis), so the selection may be generous; keeping less
would. Rows keep their order and their table keeps its categories, so the
stacked candidates number points, addresses and flows as the whole table does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diag.capture.proto import ACK, ICMP, ICMPV6, RST, SYN, TCP, UDP
from diag.flows.copies import mix_hash, packet_keys
from diag.flows.table import flow_ids

# Client endpoints below this port are servers' (the diagnosis joins only from 1024 up).
CLIENT_PORTS = 1024
_ENDPOINT_SEED = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class LinkKeys:
    """The distinct link keys of a point (or of one hash partition of them), sorted."""

    packets: np.ndarray  # uint64 NAT-invariant packet keys
    endpoints: np.ndarray  # uint64 hashes of client endpoints
    syn_seqs: np.ndarray  # uint64 sequence numbers of SYNs (shared: those that came with two different SYNs)
    syn_packets: np.ndarray  # uint64, beside ``syn_seqs``: that SYN's packet key (empty once shared)

    @property
    def nbytes(self) -> int:
        return sum(int(values.nbytes) for values in (self.packets, self.endpoints, self.syn_seqs, self.syn_packets))


@dataclass(frozen=True)
class PointRows:
    """Per row of a point's packet table: its flow, its packet key and its client endpoint's hash (0: none)."""

    flow: np.ndarray
    key: np.ndarray
    endpoint: np.ndarray

    @classmethod
    def of(cls, table: pd.DataFrame) -> PointRows:
        return cls(flow_ids(table), packet_keys(table), client_endpoints(table))

    def link_keys(self, table: pd.DataFrame) -> LinkKeys:
        syn = _syns(table)
        pairs = np.unique(np.stack([table["seq"].to_numpy()[syn].astype(np.uint64), self.key[syn]], axis=1), axis=0)
        return LinkKeys(_distinct(self.key), _distinct(self.endpoint), pairs[:, 0].copy(), pairs[:, 1].copy())


def _syns(table: pd.DataFrame) -> np.ndarray:
    """The mask of TCP SYNs without ACK (and without RST)."""
    flags = table["tcp_flags"].to_numpy().astype(np.int64)
    syns: np.ndarray = (table["proto"].to_numpy() == TCP) & (flags >= 0) & ((flags & (SYN | ACK | RST)) == SYN)
    return syns


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct non-zero values, sorted."""
    return np.unique(values[values != 0])


def text_hashes(column: pd.Series) -> np.ndarray:
    """Per row, a 64-bit hash of the column's text that every process computes alike (0 where missing)."""
    categorical = column.astype("category") if not isinstance(column.dtype, pd.CategoricalDtype) else column
    categories = [str(value) for value in categorical.cat.categories]
    lookup = np.array(
        [int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") for text in categories]
        + [0],
        dtype=np.uint64,
    )
    codes = categorical.cat.codes.to_numpy().astype(np.int64)
    hashes: np.ndarray = lookup[np.where(codes < 0, len(categories), codes)]
    return hashes


def client_endpoints(table: pd.DataFrame) -> np.ndarray:
    """Per row, the hash of the client endpoint a SYN comes from or a SYN-ACK goes to; 0 for every other row."""
    flags = table["tcp_flags"].to_numpy().astype(np.int64)
    tcp = (table["proto"].to_numpy() == TCP) & (flags >= 0)
    handshake = flags & (SYN | ACK | RST)
    syn = tcp & (handshake == SYN)
    synack = tcp & (handshake == SYN | ACK)
    address = np.where(syn, text_hashes(table["src"]), text_hashes(table["dst"]))
    port = np.where(syn, table["sport"].to_numpy(), table["dport"].to_numpy()).astype(np.int64)
    state = mix_hash(np.full(len(table), _ENDPOINT_SEED, dtype=np.uint64), address)
    state = mix_hash(state, port.astype(np.uint64))
    state[state == 0] = 1
    wanted = (syn | synack) & (port >= CLIENT_PORTS) & (address != 0)
    hashes: np.ndarray = np.where(wanted, state, np.uint64(0))
    return hashes


def partition_link_keys(keys: LinkKeys, partitions: int) -> list[LinkKeys]:
    """``keys`` cut into ``partitions`` parts by hash; a key lands in the same part whichever point sent it."""

    def cut(values: np.ndarray) -> list[np.ndarray]:
        # The low bits of a multiply-xorshift hash are well mixed; keys stay sorted inside each part.
        part = (values % np.uint64(partitions)).astype(np.int64)
        return [values[part == number] for number in range(partitions)]

    packets, endpoints = cut(keys.packets), cut(keys.endpoints)
    part = (keys.syn_seqs % np.uint64(partitions)).astype(np.int64)
    return [
        LinkKeys(packets[number], endpoints[number], keys.syn_seqs[part == number], keys.syn_packets[part == number])
        for number in range(partitions)
    ]


def shared_link_keys(parts: Sequence[LinkKeys]) -> LinkKeys:
    """The link keys present in two or more of ``parts`` (one part per point, each of distinct keys)."""

    def shared(arrays: list[np.ndarray]) -> np.ndarray:
        if len(arrays) < 2:
            return np.zeros(0, dtype=np.uint64)
        values, counts = np.unique(np.concatenate(arrays), return_counts=True)
        result: np.ndarray = values[counts > 1]
        return result

    pairs = np.unique(
        np.stack(
            [np.concatenate([part.syn_seqs for part in parts]), np.concatenate([part.syn_packets for part in parts])],
            axis=1,
        ),
        axis=0,
    )
    seqs, counts = np.unique(pairs[:, 0], return_counts=True)
    return LinkKeys(
        shared([part.packets for part in parts]),
        shared([part.endpoints for part in parts]),
        seqs[counts > 1],
        np.zeros(0, dtype=np.uint64),
    )


def merge_link_keys(parts: Sequence[LinkKeys]) -> LinkKeys:
    """The partitions' shared keys back in one sorted set."""

    def merged(arrays: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(arrays)).astype(np.uint64) if arrays else np.zeros(0, dtype=np.uint64)

    return LinkKeys(
        merged([part.packets for part in parts]),
        merged([part.endpoints for part in parts]),
        merged([part.syn_seqs for part in parts]),
        np.zeros(0, dtype=np.uint64),
    )


def _per_flow(flow: np.ndarray, mask: np.ndarray, n_flows: int) -> np.ndarray:
    """How many rows of each flow ``mask`` selects."""
    counts: np.ndarray = np.bincount(flow[mask & (flow >= 0)], minlength=n_flows)
    return counts


def suspect_rows(table: pd.DataFrame, rows: PointRows) -> np.ndarray:
    """The rows that start the selection (see the module's text), as a mask."""
    n = len(table)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    flow = rows.flow
    n_flows = int(flow.max()) + 1 if len(flow) else 0
    proto = table["proto"].to_numpy()
    flags = table["tcp_flags"].to_numpy().astype(np.int64)
    tcp = (proto == TCP) & (flags >= 0)
    handshake = flags & (SYN | ACK | RST)
    rsts = _per_flow(flow, tcp & ((flags & RST) != 0), n_flows)
    syns = _per_flow(flow, tcp & (handshake == SYN), n_flows)
    synacks = _per_flow(flow, tcp & (handshake == SYN | ACK), n_flows)
    suspect = (rsts > 0) | (syns > 1) | ((syns > 0) & (synacks == 0))
    udp = (proto == UDP) & (flow >= 0)
    if udp.any():
        sender = text_hashes(table["src"]) ^ table["sport"].to_numpy().astype(np.uint64)
        senders = pd.Series(sender[udp]).groupby(flow[udp]).nunique()
        one_way = np.zeros(n_flows, dtype=bool)
        one_way[senders.index.to_numpy()[senders.to_numpy() < 2]] = True
        suspect |= one_way
    if n_flows:
        keep |= (flow >= 0) & suspect[np.maximum(flow, 0)]
    keep |= np.isin(proto, (ICMP, ICMPV6))
    keep |= _keys_of_several_flows(rows)
    ts = table["ts_ns"].to_numpy()
    keep[int(np.argmin(ts))] = keep[int(np.argmax(ts))] = True
    return keep


def _keys_of_several_flows(rows: PointRows) -> np.ndarray:
    """Rows whose packet key is held by two flows of the point or more (copies of one packet on both sides of a box)."""
    linked = (rows.key != 0) & (rows.flow >= 0)
    positions = np.flatnonzero(linked)
    if len(positions) == 0:
        return np.zeros(len(rows.key), dtype=bool)
    pairs = pd.DataFrame({"key": rows.key[positions], "flow": rows.flow[positions]})
    flows_per_key = pairs.groupby("key", sort=False)["flow"].nunique()
    several = flows_per_key.index.to_numpy()[flows_per_key.to_numpy() > 1].astype(np.uint64)
    return np.isin(rows.key, several) if len(several) else np.zeros(len(rows.key), dtype=bool)


def select_candidates(table: pd.DataFrame, rows: PointRows, shared: LinkKeys) -> np.ndarray:
    """The mask of the point's candidate rows, given the link keys shared across points (the module's text)."""
    keep = suspect_rows(table, rows)
    if len(shared.packets):
        keep |= np.isin(rows.key, shared.packets)
    if len(shared.endpoints):
        keep |= np.isin(rows.endpoint, shared.endpoints)
    if len(shared.syn_seqs):
        keep |= _syns(table) & np.isin(table["seq"].to_numpy().astype(np.uint64), shared.syn_seqs)
    flow, key = rows.flow, rows.key
    while True:
        flows = np.unique(flow[keep & (flow >= 0)])
        keys = np.unique(key[keep & (key != 0)])
        grown = keep | np.isin(flow, flows) & (flow >= 0) | np.isin(key, keys) & (key != 0)
        if int(grown.sum()) == int(keep.sum()):
            return keep
        keep = grown
