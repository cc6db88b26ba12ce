"""What one capture point keeps for the cross-point join: its links to other points, and its candidates.

A fleet's analysis (``diag.taskgraph``) reads and summarises each point where
its files are, and goes on only with the packets that correlation and
diagnosis can use. Which those are is decided by the one candidate choice
of ``diag.flows.candidates``, on the point's key table: the flows that may
hold a symptom, ICMP, the point's time span, whole components (flows joined
by packet keys and client endpoints). What it cannot see from one point is
what links it to the others; this module finds that without gathering the
points anywhere:

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
- given the shared keys, each point keeps every packet with a shared packet
  key (so each match, and the clock offsets estimated from the matches, come
  out the same), every flow holding a shared client endpoint (so the
  endpoint join counts the same connections) and every SYN with a shared
  sequence number, each with its whole component
  (``diag.flows.candidates.candidate_rows`` with ``SharedLinks``).

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

from diag.capture.proto import ACK, RST, SYN, TCP
from diag.flows.candidates import SharedLinks, candidate_rows, key_table, syn_rows
from diag.flows.copies import mix_hash

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


def point_keys(table: pd.DataFrame) -> pd.DataFrame:
    """The key table (``diag.flows.candidates.key_table``) of one point's packet table."""
    return key_table(table, 0)


def link_keys(keys: pd.DataFrame) -> LinkKeys:
    """A point's distinct link keys, from its key table."""
    syn = syn_rows(keys)
    seqs, packets = keys["seq"].to_numpy()[syn].astype(np.uint64), keys["key"].to_numpy()[syn]
    pairs = np.unique(np.stack([seqs, packets], axis=1), axis=0)
    return LinkKeys(
        _distinct(keys["key"].to_numpy()),
        _distinct(keys["client_endpoint"].to_numpy()),
        pairs[:, 0].copy(),
        pairs[:, 1].copy(),
    )


def select_candidates(keys: pd.DataFrame, shared: LinkKeys) -> np.ndarray:
    """The mask of a point's candidate rows (its key table ``keys``), given the link keys shared across points."""
    return candidate_rows(keys, SharedLinks(shared.packets, shared.endpoints, shared.syn_seqs))


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct non-zero values, sorted."""
    return np.unique(values[values != 0])


def text_hashes(column: pd.Series) -> np.ndarray:
    """Per row, a 64-bit hash of the column's text that every process computes alike (0 where missing)."""
    categorical = column.astype("category") if not isinstance(column.dtype, pd.CategoricalDtype) else column
    categories = [str(value) for value in categorical.cat.categories]
    lookup = np.array(
        [int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") for text in categories] + [0],
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
