"""Which 5-tuple each packet belongs to: the key that flows are cut from.

A tuple key is the capture, the VLAN, the transport (TCP or UDP) and the two
endpoints (address and port) in an order that does not depend on the
direction, so both directions of a connection share it. ICMP, when asked for,
is keyed as Zeek keys it (``icmp_ports``): the type in place of the source
port, the type of the answer (or, for a message that has none, its code) in
place of the destination port; only messages with an answer share a key with
the opposite direction. One 5-tuple can hold
several flows: ``diag.flows.walk`` starts a new one where Zeek would (a SYN
after the connection closed, or with a new initial sequence number).

One compiled pass over the packets in file order keeps a hash table of the
5-tuples seen so far, so ids are numbered by first appearance and no sort or
factorisation of the whole table is needed.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from diag.capture.proto import ICMP, ICMPV6, TCP, UDP
from diag.compiled import compiled

IntArray = npt.NDArray[np.int64]

# An endpoint is its address code and port in one integer: (address << 16) | port.
PORT_BITS: Final = 16
PORT_MASK: Final = (1 << PORT_BITS) - 1

# Hash table slots to start with: room for a 5-tuple every 8 packets before
# the table, kept at most half full, has to double (rehashing costs more
# than the memory saved).
_MIN_TABLE_SIZE: Final = 1 << 12
_PACKETS_PER_SLOT: Final = 4
_HASH_MULTIPLIER: Final = 0x5851F42D4C957F2D  # odd and below 2**63, so the hash stays int64 in compiled code


def categorical(column: pd.Series) -> pd.Categorical[Any]:
    """The column as a Categorical (free for the reader's categorical columns)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return cast("pd.Categorical[Any]", column.array)
    return pd.Categorical(column.astype(str))


def _shared_address_codes(src: pd.Series, dst: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source and destination addresses as int32 codes into one shared list of addresses (-1: none).

    The list is the source column's categories, then the destination's that
    are not among them, so source codes stay as they are. Only equality of
    codes matters downstream, not their order.
    """
    src_cat, dst_cat = categorical(src), categorical(dst)
    src_names = pd.Index(src_cat.categories.astype(str))
    dst_names = pd.Index(dst_cat.categories.astype(str))
    dst_in_src = src_names.get_indexer(dst_names)
    missing = dst_in_src < 0
    dst_in_src[missing] = len(src_names) + np.arange(int(missing.sum()))
    addresses = np.concatenate([np.asarray(src_names, dtype=object), np.asarray(dst_names[missing], dtype=object)])
    # One trailing -1 so that a missing value's code (-1) maps to -1 in the same gather.
    to_shared = np.append(dst_in_src, -1).astype(np.int32)
    return np.asarray(src_cat.codes).astype(np.int32), to_shared[np.asarray(dst_cat.codes)], addresses


def read_only(values: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """``values`` as a contiguous, read-only array of ``dtype`` (a view when it already is one).

    Compiled functions are specialised on the exact array type, read-only
    flag included; handing them one type per column keeps that to one
    compilation whatever table they get.
    """
    array = np.ascontiguousarray(values, dtype=dtype)
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def column(packets: pd.DataFrame, name: str, dtype: type[np.generic]) -> np.ndarray:
    """One packet-table column for compiled code (see ``read_only``)."""
    return read_only(packets[name].to_numpy(), dtype)


class KeyColumns(NamedTuple):
    """The packet-table columns a flow is keyed on, as compiled code reads them (see ``read_only``)."""

    src_address: npt.NDArray[np.int32]  # codes into ``FlowKeys.addresses``, -1 for none
    dst_address: npt.NDArray[np.int32]
    sport: npt.NDArray[np.int32]
    dport: npt.NDArray[np.int32]
    proto: npt.NDArray[np.int16]
    tcp_flags: npt.NDArray[np.int16]
    seq: IntArray
    frag_offset: npt.NDArray[np.int32]
    capture: npt.NDArray[np.int32]  # category codes
    vlan: npt.NDArray[np.int32]


# Zeek's ICMP4_counterpart / ICMP6_counterpart: the type answering each type that has an answer
# (echo, timestamp, information, router, address mask; ICMPv6 echo, router, neighbour, MLD, node
# information, home agent discovery). Every other type is one-way.
_ICMP_ANSWERS: Final = ((8, 0), (13, 14), (15, 16), (10, 9), (17, 18))
_ICMPV6_ANSWERS: Final = ((128, 129), (133, 134), (135, 136), (130, 131), (139, 140), (144, 145))
_NOT_KEYED: Final = -1  # ``one_way`` of a row that is no ICMP flow's


def _answer_table(pairs: tuple[tuple[int, int], ...]) -> npt.NDArray[np.int32]:
    table = np.full(256, -1, dtype=np.int32)
    for a, b in pairs:
        table[a], table[b] = b, a
    return table


def icmp_ports(packets: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, npt.NDArray[np.int8]]:
    """(source port, destination port, one-way) per row with ICMP rows keyed as Zeek keys them.

    Zeek's ICMP connection has the message type as ``orig_p`` and the type
    that answers it as ``resp_p`` (an echo request 8 -> 0), or the code when
    nothing answers it (a port unreachable 3 -> 3); such a one-way message is
    keyed by its direction too. ``one_way`` is 0 for an ICMP row with an
    answer type, 1 for a one-way one, -1 for every other row (and for ICMP
    too short to hold the 8-byte header, which Zeek leaves out too). Without
    ICMP rows the port columns are returned as they are, ``one_way`` empty.
    """
    proto = packets["proto"].to_numpy()
    sport, dport = packets["sport"].to_numpy(), packets["dport"].to_numpy()
    kind = packets["icmp_type"].to_numpy()
    rows = np.flatnonzero((kind >= 0) & ((proto == ICMP) | (proto == ICMPV6)))
    rows = rows[packets["payload_len"].to_numpy()[rows] >= 0]
    if len(rows) == 0:
        return sport, dport, np.zeros(0, dtype=np.int8)
    sport, dport = sport.astype(np.int32), dport.astype(np.int32)
    one_way = np.full(len(proto), _NOT_KEYED, dtype=np.int8)
    kind = kind[rows].astype(np.int32) & 0xFF
    answer = np.where(
        proto[rows] == ICMP, _answer_table(_ICMP_ANSWERS)[kind], _answer_table(_ICMPV6_ANSWERS)[kind]
    )
    sport[rows] = kind
    dport[rows] = np.where(answer >= 0, answer, packets["icmp_code"].to_numpy()[rows])
    one_way[rows] = answer < 0
    return sport, dport, one_way


class FlowKeys:
    """Per packet: the 5-tuple id (-1 when not TCP/UDP, or ICMP when asked for) and its endpoints' address codes.

    With ``icmp``, ICMP and ICMPv6 messages get flows too, keyed as Zeek keys
    them (``icmp_ports``): their type and answer type (or code) stand in the
    port columns the walk reads.
    """

    def __init__(self, packets: pd.DataFrame, icmp: bool = False) -> None:
        src, dst, self.addresses = _shared_address_codes(packets["src"], packets["dst"])
        if icmp:
            sport, dport, one_way = icmp_ports(packets)
        else:
            sport, dport, one_way = packets["sport"].to_numpy(), packets["dport"].to_numpy(), np.zeros(0, np.int8)
        self.columns = KeyColumns(
            src_address=read_only(src, np.int32),
            dst_address=read_only(dst, np.int32),
            sport=read_only(sport, np.int32),
            dport=read_only(dport, np.int32),
            proto=column(packets, "proto", np.int16),
            tcp_flags=column(packets, "tcp_flags", np.int16),
            seq=column(packets, "seq", np.int64),
            frag_offset=column(packets, "frag_offset", np.int32),
            capture=read_only(np.asarray(categorical(packets["capture"]).codes), np.int32),
            vlan=column(packets, "vlan", np.int32),
        )
        self.tuple_id, self.n_tuples = _assign_tuple_ids(self.columns, read_only(one_way, np.int8))


@compiled
def endpoint(address: int, port: int) -> int:
    """Address code and port as one integer (a negative port counts as 0)."""
    return (int(address) << PORT_BITS) | max(int(port), 0)


@compiled
def _mix(h: int, part: int) -> int:
    """Fold one more integer into a running hash (wraps around, as a hash should)."""
    h = (h ^ part) * _HASH_MULTIPLIER
    return h ^ (h >> 29)


@compiled
def _tuple_hash(capture: int, vlan: int, kind: int, low: int, high: int) -> int:
    return _mix(_mix(_mix(_mix(capture, vlan), kind), low), high)


@compiled
def _slot_of(slots: IntArray, h: int) -> int:
    """The first free slot for hash ``h`` (linear probing)."""
    mask = len(slots) - 1
    at = h & mask
    while slots[at] >= 0:
        at = (at + 1) & mask
    return at


# One row per distinct 5-tuple: its hash and key. One row keeps a lookup to one cache line.
_HASH, _CAPTURE, _VLAN, _KIND, _LOW, _HIGH = range(6)
_TUPLE_FIELDS: Final = 6


@compiled
def _find_tuple(
    slots: IntArray, tuples: IntArray, h: int, c: int, v: int, u: int, low: int, high: int
) -> tuple[int, int]:
    """(row in ``tuples`` of this 5-tuple or -1, its slot or the free slot where it belongs)."""
    mask = len(slots) - 1
    at = h & mask
    while slots[at] >= 0:
        t = slots[at]
        if (
            tuples[t, _HASH] == h
            and tuples[t, _LOW] == low
            and tuples[t, _HIGH] == high
            and tuples[t, _CAPTURE] == c
            and tuples[t, _VLAN] == v
            and tuples[t, _KIND] == u
        ):
            return t, at
        at = (at + 1) & mask
    return -1, at


@compiled
def _assign_tuple_ids(keys: KeyColumns, one_way: npt.NDArray[np.int8]) -> tuple[IntArray, int]:
    """(5-tuple id per packet, number of 5-tuples); ids numbered from 0 by first appearance.

    ``one_way`` is ``icmp_ports``'s, or empty when ICMP gets no flows.
    """
    n = len(keys.proto)
    tuple_id = np.empty(n, dtype=np.int64)
    tuples = np.empty((n, _TUPLE_FIELDS), dtype=np.int64)  # at most one 5-tuple per packet; rows filled in turn
    size = _MIN_TABLE_SIZE
    while size < n // _PACKETS_PER_SLOT:
        size *= 2
    slots = np.full(size, -1, dtype=np.int64)  # hash table: row in ``tuples``, -1 free
    row = n_tuples = 0
    while True:
        row, n_tuples = _assign_rows(row, n_tuples, slots, tuples, tuple_id, keys, one_way)
        if row == n:
            return tuple_id, n_tuples
        # Half full: a table twice the size. (Growing here, outside the row loop, keeps
        # that loop's table a fixed array the compiler can keep in registers.)
        slots = np.full(2 * len(slots), -1, dtype=np.int64)
        for t in range(n_tuples):
            slots[_slot_of(slots, tuples[t, _HASH])] = t


@compiled
def _assign_rows(
    begin: int,
    n_tuples: int,
    slots: IntArray,
    tuples: IntArray,
    tuple_id: IntArray,
    keys: KeyColumns,
    one_way: npt.NDArray[np.int8],
) -> tuple[int, int]:
    """Tuple ids from ``begin`` on, until the end or until the table is half full: (next row, tuples)."""
    n = len(keys.proto)
    icmp = len(one_way) > 0
    for row in range(begin, n):
        p = keys.proto[row]
        kind = 1 if p == UDP else 0  # the key's transport: 0 TCP, 1 UDP, 2-5 ICMP (below)
        if p in (TCP, UDP):
            eligible = keys.sport[row] >= 0 and keys.dport[row] >= 0
        elif icmp and one_way[row] >= 0:
            eligible = True
            # ICMP or ICMPv6, with or without an answer type: four kinds that never share a key.
            kind = 2 + one_way[row] + (2 if p == ICMPV6 else 0)
        else:
            eligible = False
        eligible = (
            eligible
            and keys.src_address[row] >= 0
            and keys.dst_address[row] >= 0
            and keys.frag_offset[row] == 0
        )
        if not eligible:
            tuple_id[row] = -1
            continue
        source = endpoint(keys.src_address[row], keys.sport[row])
        destination = endpoint(keys.dst_address[row], keys.dport[row])
        low, high = min(source, destination), max(source, destination)
        if kind == 3 or kind == 5:  # a one-way ICMP message: its direction is part of the key, as in Zeek
            low, high = source, destination
        c, v, u = int(keys.capture[row]), int(keys.vlan[row]), kind
        h = _tuple_hash(c, v, u, low, high)
        t, at = _find_tuple(slots, tuples, h, c, v, u, low, high)
        if t < 0:
            t = n_tuples
            n_tuples += 1
            tuples[t, _HASH], tuples[t, _CAPTURE], tuples[t, _VLAN], tuples[t, _KIND] = h, c, v, u
            tuples[t, _LOW], tuples[t, _HIGH] = low, high
            slots[at] = t
        tuple_id[row] = t
        if 2 * n_tuples > len(slots):
            return row + 1, n_tuples
    return n, n_tuples
