"""Which flows of a live window may be one connection: kept up to date packet by packet, never recomputed.

The diagnosis makes a connection of the per-point flows (capture, transport,
the two endpoints in either order) that share a packet (the same packet seen
at two points, or twice at one, whatever NAT rewrote), that share the
client's endpoint (the SYN's source at one point, the SYN-ACK's destination
at another: the client's address kept through NAT), or, for UDP, a reply
re-sourced on its way back to the client's port. A watch that re-diagnoses
only the connections that changed must hand the diagnosis each of them
whole, so it needs that grouping without running the diagnosis.

``FlowLinks`` numbers the flows and joins them in a union-find as rows
arrive: three hash tables (flow key, packet key, client endpoint) remember
the first flow each key was seen in, and a key seen again in another flow
joins the two. The grouping is coarser than the diagnosis' own (it joins on
any shared UDP endpoint above 1023, and keeps joins made by packets that
have since left the window), never finer, so a group always holds every
flow of each connection in it. Its tables grow with what was ever seen;
the window rebuilds them from the rows it still holds once they have taken
in twice as many (see ``Window``).

Per flow it also keeps what may make a connection a suspect (a RST, a SYN
more than once or never answered at that point, any UDP), the same things
the diagnosis chooses its suspects by, so a group with none of them cannot
hold a finding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.proto import ACK, RST, SYN, TCP, UDP
from diag.compiled import compiled
from diag.diagnose.suspects import suspect
from diag.flows.copies import mix_hash, packet_keys
from diag.unionfind import find, union

U64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]
FlagArray = npt.NDArray[np.uint8]

# Per row: what it says about its flow (bits of ``FlowLinks.flags``).
HAS_RST: Final = 1
HAS_SYN: Final = 2  # a pure SYN (no ACK)
HAS_SYNACK: Final = 4
IS_UDP: Final = 8
UDP_FORWARD: Final = 16  # a UDP datagram from the lower endpoint (address and port) to the higher
UDP_BACKWARD: Final = 32  # and the other way
_MIN_SLOTS: Final = 1 << 12
# Seeds keeping the three kinds of key apart in their tables (any distinct odd constants).
_FLOW_SEED: Final = np.uint64(0x243F6A8885A308D3)
_TCP_CLIENT_SEED: Final = np.uint64(0x13198A2E03707345)
_UDP_ENDPOINT_SEED: Final = np.uint64(0xA4093822299F31D1)
# Ports below this are servers': the diagnosis joins flows only on client endpoints above it.
CLIENT_PORT_MIN: Final = 1024


class RowKeys(NamedTuple):
    """What each row is linked by (0: nothing of that kind)."""

    flow: U64Array  # its flow: point, transport and the two endpoints in either order
    packet: U64Array  # the packet whatever NAT did to it (``diag.flows.copies.packet_keys``)
    endpoint_a: U64Array  # TCP: the client's endpoint (a SYN's source, a SYN-ACK's destination); UDP: the source
    endpoint_b: U64Array  # UDP: the destination
    flags: FlagArray  # HAS_RST, HAS_SYN, HAS_SYNACK, IS_UDP with UDP_FORWARD or UDP_BACKWARD
    point: int  # the capture point's number


def row_keys(columns: Mapping[str, np.ndarray], point: int) -> RowKeys:
    """Each row's keys (see ``RowKeys``); ``point`` numbers the capture point.

    ``columns`` are the packet table's columns, the addresses as numbers that
    stay the same from one table to the next (``diag.watch.window.Texts``).
    """
    proto = columns["proto"].astype(np.int64)
    n = len(proto)
    flags = columns["tcp_flags"].astype(np.int64)
    sport = np.maximum(columns["sport"].astype(np.int64), 0)
    dport = np.maximum(columns["dport"].astype(np.int64), 0)
    source = ((columns["src"].astype(np.int64) + 1) << 16) | sport
    destination = ((columns["dst"].astype(np.int64) + 1) << 16) | dport
    tcp, udp = proto == TCP, proto == UDP
    in_flow = (tcp | udp) & (columns["ip_version"] > 0)
    seed = np.full(n, _FLOW_SEED, dtype=np.uint64)
    flow = mix_hash(mix_hash(mix_hash(mix_hash(seed, np.full(n, point)), proto),
                             np.minimum(source, destination)), np.maximum(source, destination))
    flow[flow == 0] = 1
    flow[~in_flow] = 0
    handshake = np.where(tcp & (flags >= 0), flags & (SYN | ACK | RST), -1)
    syn, synack = handshake == SYN, handshake == SYN | ACK
    rst = tcp & (flags >= 0) & ((flags & RST) != 0)
    client = np.where(syn, source, destination)
    tcp_client = mix_hash(mix_hash(np.full(n, _TCP_CLIENT_SEED, dtype=np.uint64), proto), client)
    client_port = np.where(syn, sport, dport)
    udp_src = mix_hash(mix_hash(np.full(n, _UDP_ENDPOINT_SEED, dtype=np.uint64),
                                np.full(n, point)), source)
    udp_dst = mix_hash(mix_hash(np.full(n, _UDP_ENDPOINT_SEED, dtype=np.uint64),
                                np.full(n, point)), destination)
    zero = np.uint64(0)
    endpoint_a = np.where(in_flow & (syn | synack) & (client_port >= CLIENT_PORT_MIN), tcp_client,
                          np.where(in_flow & udp & (sport >= CLIENT_PORT_MIN), udp_src, zero))
    endpoint_b = np.where(in_flow & udp & (dport >= CLIENT_PORT_MIN), udp_dst, zero)
    row_flags = (np.where(rst, HAS_RST, 0) | np.where(syn, HAS_SYN, 0) | np.where(synack, HAS_SYNACK, 0)
                 | np.where(udp, np.where(source < destination, IS_UDP | UDP_FORWARD, IS_UDP | UDP_BACKWARD), 0)
                 ).astype(np.uint8)
    # packet_keys reads a table's columns by name; these are arrays already.
    packet = packet_keys(_NumericColumns(columns)) if n else np.zeros(0, dtype=np.uint64)  # type: ignore[arg-type]
    packet = np.where(in_flow, packet, zero)
    return RowKeys(flow, packet, endpoint_a.astype(np.uint64), endpoint_b.astype(np.uint64), row_flags, point)


@compiled
def _get_or_put(keys: IntArray, values: IntArray, key: int, value: int) -> int:
    """The value stored for ``key`` (linear probing; 0 is the empty key), storing ``value`` if there is none.

    Keys are 64-bit hashes seen as signed integers (compiled code mixes signed and unsigned into floats).
    """
    mask = len(keys) - 1
    at = key & mask
    while keys[at] != 0:
        if keys[at] == key:
            return int(values[at])
        at = (at + 1) & mask
    keys[at] = key
    values[at] = value
    return value


@compiled
def _link_rows(
    flow_key: IntArray, packet_key: IntArray, endpoint_a: IntArray, endpoint_b: IntArray, row_flags: FlagArray,
    flow_keys: IntArray, flow_values: IntArray, packet_keys: IntArray, packet_values: IntArray,
    endpoint_keys: IntArray, endpoint_values: IntArray, parent: IntArray, flags: FlagArray,
    syn_count: IntArray, flow_hash: IntArray, flow_point: IntArray, point: int, n_flows: int,
) -> tuple[IntArray, int]:
    """(flow number per row, -1 for rows of no flow; the new number of flows), joining flows on shared keys."""
    out = np.full(len(flow_key), -1, dtype=np.int64)
    for i in range(len(flow_key)):
        if flow_key[i] == 0:
            continue
        flow = _get_or_put(flow_keys, flow_values, flow_key[i], n_flows)
        if flow == n_flows:
            parent[flow] = flow
            flags[flow] = 0
            syn_count[flow] = 0
            flow_hash[flow] = flow_key[i]
            flow_point[flow] = point
            n_flows += 1
        out[i] = flow
        flags[flow] |= row_flags[i]
        if row_flags[i] & HAS_SYN:
            syn_count[flow] += 1
        if packet_key[i] != 0:
            union(parent, flow, _get_or_put(packet_keys, packet_values, packet_key[i], flow))
        if endpoint_a[i] != 0:
            union(parent, flow, _get_or_put(endpoint_keys, endpoint_values, endpoint_a[i], flow))
        if endpoint_b[i] != 0:
            union(parent, flow, _get_or_put(endpoint_keys, endpoint_values, endpoint_b[i], flow))
    return out, n_flows


@compiled
def _roots(parent: IntArray, n: int) -> IntArray:
    out = np.empty(n, dtype=np.int64)
    for x in range(n):
        out[x] = find(parent, x)
    return out


@compiled
def _rehash(keys: IntArray, values: IntArray, new_keys: IntArray, new_values: IntArray) -> None:
    for at in range(len(keys)):
        if keys[at] != 0:
            _get_or_put(new_keys, new_values, keys[at], int(values[at]))


class _NumericColumns:
    """Columns by name, as ``packet_keys`` reads a packet table's (``table[name].to_numpy()``)."""

    def __init__(self, columns: Mapping[str, np.ndarray]) -> None:
        self.columns = columns

    def __getitem__(self, name: str) -> pd.Series:
        return pd.Series(self.columns[name], copy=False)

    def __len__(self) -> int:
        return len(self.columns["proto"])


class _Table:
    """A uint64 -> int hash table kept at most half full."""

    def __init__(self) -> None:
        self.keys: IntArray = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self.values: IntArray = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self.bound = 0  # at most this many keys are stored

    def make_room(self, more: int) -> None:
        self.bound += more
        if self.bound * 2 <= len(self.keys):
            return
        self.bound = int(np.count_nonzero(self.keys)) + more
        size = len(self.keys)
        while self.bound * 2 > size:
            size *= 2
        if size != len(self.keys):
            keys, values = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
            _rehash(self.keys, self.values, keys, values)
            self.keys, self.values = keys, values


class FlowLinks:
    """Flow numbers, per flow what makes it a suspect, and the groups of flows that may be one connection."""

    def __init__(self) -> None:
        self.n_flows = 0
        self.rows_linked = 0  # rows taken in since these tables were made
        self._flows, self._packets, self._endpoints = _Table(), _Table(), _Table()
        self.parent: IntArray = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self.flags: FlagArray = np.zeros(_MIN_SLOTS, dtype=np.uint8)
        self.syn_count: IntArray = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self._flow_hash: IntArray = np.zeros(_MIN_SLOTS, dtype=np.int64)
        self.flow_point: IntArray = np.zeros(_MIN_SLOTS, dtype=np.int64)  # the point each flow was seen at

    def link(self, keys: RowKeys) -> IntArray:
        """Take in rows (their keys, 0 for none); returns each row's flow number (-1: no TCP/UDP flow)."""
        flow_key, packet_key, endpoint_a, endpoint_b, row_flags, point = keys
        n = len(flow_key)
        self._flows.make_room(n)
        self._packets.make_room(n)
        self._endpoints.make_room(2 * n)
        if self.n_flows + n > len(self.parent):
            size = max(2 * len(self.parent), self.n_flows + n)
            self.parent = _grown(self.parent, size)
            self.flags = _grown(self.flags, size)
            self.syn_count = _grown(self.syn_count, size)
            self._flow_hash = _grown(self._flow_hash, size)
            self.flow_point = _grown(self.flow_point, size)
        flows, self.n_flows = _link_rows(
            flow_key.view(np.int64), packet_key.view(np.int64), endpoint_a.view(np.int64),
            endpoint_b.view(np.int64), row_flags,
            self._flows.keys, self._flows.values, self._packets.keys, self._packets.values,
            self._endpoints.keys, self._endpoints.values, self.parent, self.flags, self.syn_count,
            self._flow_hash, self.flow_point, point, self.n_flows,
        )  # fmt: skip
        self.rows_linked += n
        return flows

    @property
    def flow_hash(self) -> U64Array:
        """Per flow number, its flow key (which stays when the numbers are made again)."""
        return self._flow_hash.view(np.uint64)

    def groups(self) -> IntArray:
        """Per flow number, its group (the smallest flow number in it)."""
        return _roots(self.parent, self.n_flows)

    def suspects(self, groups: IntArray) -> npt.NDArray[np.bool_]:
        """Per flow number, whether it makes its connection a suspect of the diagnosis now.

        The diagnosis' own predicate (``diag.diagnose.suspects.suspect``) over
        each flow's signs (which asks more than it needs: a SYN seen more than
        once may be two copies of one): a RST, a SYN seen again, one of two UDP
        flows of a group at one point (NAT on the way). A flow that only waits
        for an answer (``waiting``) is a suspect once its wait has run out,
        which the caller times. ``groups`` is what ``groups()`` gave.
        """
        flags = self.flags[: self.n_flows]
        syn_unanswered, udp_one_way = self._unanswered(flags)
        return suspect(
            rst=(flags & HAS_RST) != 0,
            syn_retried=self.syn_count[: self.n_flows] > 1,
            udp_split=self._udp_beside_another(groups),
            syn_unanswered=syn_unanswered,
            udp_one_way=udp_one_way,
            answer_due=False,
        )

    def waiting(self) -> npt.NDArray[np.bool_]:
        """Per flow number, whether it waits for an answer: a SYN with no SYN-ACK, UDP one way only."""
        syn_unanswered, udp_one_way = self._unanswered(self.flags[: self.n_flows])
        result: npt.NDArray[np.bool_] = syn_unanswered | udp_one_way
        return result

    @staticmethod
    def _unanswered(flags: FlagArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Per flow: a SYN with no SYN-ACK; UDP one way only (the signs that an answer has not come yet)."""
        both_ways = UDP_FORWARD | UDP_BACKWARD
        one_way = ((flags & IS_UDP) != 0) & ((flags & both_ways) != both_ways)
        return ((flags & HAS_SYN) != 0) & ((flags & HAS_SYNACK) == 0), one_way

    def _udp_beside_another(self, groups: IntArray) -> npt.NDArray[np.bool_]:
        udp = np.flatnonzero((self.flags[: self.n_flows] & IS_UDP) != 0)
        result = np.zeros(self.n_flows, dtype=bool)
        if len(udp):
            place = groups[udp] * (int(self.flow_point[: self.n_flows].max()) + 1) + self.flow_point[udp]
            _, inverse, counts = np.unique(place, return_inverse=True, return_counts=True)
            result[udp[counts[inverse] > 1]] = True
        return result


def _grown(values: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros(size, dtype=values.dtype)
    grown[: len(values)] = values
    return grown
