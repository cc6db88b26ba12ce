"""Recognising the same packet twice: keys from the fields NAT leaves alone, and forwarded copies.

A capture point that captures on two interfaces of a forwarding box (the
scenario runner merges a router's interfaces into one pcapng), or ``tcpdump
-i any`` on a node, sees every forwarded packet twice: in on one interface,
out on the other, microseconds apart, with the TTL one lower and everything
else the same. Counting both copies doubles packets, retransmissions and
RSTs in the flow table. ``forwarded_copies`` marks the later copies so the
flow table can count each packet once.

``packet_keys`` is the content part of a packet's identity (shared with the
correlation across capture points, which follows packets through NAT).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from diag.capture.proto import ICMP, ICMP_ERROR_TYPES, ICMPV6, ICMPV6_ERROR_TYPES, TCP, UDP
from diag.compiled import compiled
from diag.flows.keys import read_only

# Copies of one packet inside one capture (ingress and egress of a forwarding
# box) are microseconds apart; retransmissions are at least 200 ms apart.
DUPLICATE_WINDOW_NS: Final = 20_000_000

# ICMP and ICMPv6 error types: their payload quotes a header NAT rewrites, so
# the payload digest is not part of their key.

_MULT = np.uint64(0x9E3779B97F4A7C15)


def _as_u64(values: np.ndarray) -> np.ndarray:
    """Any integer column as uint64 bits (negative numbers wrap, which is fine for hashing)."""
    if values.dtype == np.uint64:
        return values
    return values.astype(np.int64, copy=False).view(np.uint64)


def mix_hash(state: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fold one integer column into a running 64-bit hash (multiply-xorshift, wraps by design).

    Works in place on a fresh ``state`` copy to spare large temporaries.
    """
    state = state ^ _as_u64(values)
    state *= _MULT
    state ^= state >> np.uint64(29)
    return state


_SEED: Final = 0x243F6A8885A308D3
# The packet table's dtypes, so that the compiled loop is compiled once whatever table it is given.
_KEY_COLUMNS: Final = {
    "proto": np.int16, "ip_version": np.int8, "more_fragments": np.bool_, "frag_offset": np.int32,
    "payload_len": np.int32, "ip_len": np.int32, "tcp_flags": np.int16, "wscale": np.int16, "sack_perm": np.bool_,
    "mss": np.int32, "icmp_type": np.int16, "icmp_code": np.int16, "inner_proto": np.int16, "seq": np.int64,
    "ack": np.int64, "tsval": np.int64, "tsecr": np.int64, "payload_digest": np.uint64,
}  # fmt: skip


@compiled
def _put(word: np.uint64, value: int, bits: int) -> np.uint64:
    """``word`` shifted left by ``bits`` with ``value``'s low ``bits`` bits put in (negative values wrap)."""
    return (word << np.uint64(bits)) | (np.uint64(np.int64(value)) & np.uint64((1 << bits) - 1))


@compiled
def _fold(state: np.uint64, value: np.uint64) -> np.uint64:
    """``mix_hash`` for one value."""
    state = (state ^ value) * _MULT
    return state ^ (state >> np.uint64(29))


@compiled
def _keys(columns: tuple[np.ndarray, ...], error_types: np.ndarray, error_types_v6: np.ndarray) -> np.ndarray:
    """``packet_keys`` over ``columns``, the arrays of ``_KEY_COLUMNS`` in that order."""
    (
        proto, ip_version, more_fragments, frag_offset, payload_len, ip_len, tcp_flags, wscale, sack_perm, mss,
        icmp_type, icmp_code, inner_proto, seq, ack, tsval, tsecr, payload_digest,
    ) = columns  # fmt: skip
    n = len(proto)
    keys = np.empty(n, dtype=np.uint64)
    zero = np.uint64(0)
    for i in range(n):
        p = proto[i]
        if ip_version[i] == 0:
            keys[i] = zero
            continue
        tcp = p == TCP
        icmp = p in (ICMP, ICMPV6)
        other = not (tcp or p == UDP or icmp)
        error = False
        if icmp:
            for t in error_types if p == ICMP else error_types_v6:
                error = error or icmp_type[i] == t
        header = _put(
            _put(
                _put(_put(_put(_put(zero, p, 8), ip_version[i], 4), more_fragments[i], 1), frag_offset[i], 16),
                payload_len[i],
                17,
            ),
            ip_len[i] if other else 0,
            17,
        )
        options = _put(
            _put(
                _put(
                    _put(_put(_put(_put(zero, tcp_flags[i], 9), wscale[i], 5), sack_perm[i], 1), mss[i], 17),
                    icmp_type[i],
                    9,
                ),
                icmp_code[i],
                9,
            ),
            inner_proto[i],
            9,
        )
        state = _fold(_fold(np.uint64(_SEED), header), options)
        state = _fold(state, _put(_put(zero, seq[i], 32), ack[i], 32) if tcp else zero)
        state = _fold(state, _put(_put(zero, tsval[i], 32), tsecr[i], 32) if tcp else zero)
        # The quoted header inside an ICMP error is rewritten by NAT: not in the key.
        state = _fold(state, zero if error else payload_digest[i])
        keys[i] = state if state != zero else np.uint64(1)  # keep 0 free as "not matchable"
    return keys


def packet_keys(packets: pd.DataFrame) -> np.ndarray:
    """One uint64 per packet from the fields NAT leaves alone; 0 = not matchable.

    The IP ID is deliberately left out (it is a separate matching column) so
    a box that rewrites it can still be followed. Small fields are packed into
    two words (``_HEADER_FIELDS``, ``_OPTION_FIELDS``), which are hashed with
    the sequence and acknowledgement numbers, the TCP timestamps and the
    payload digest; the IP length counts only for protocols whose payload is
    not otherwise known, and TCP fields only for TCP.
    """
    columns = tuple(read_only(packets[name].to_numpy(), dtype) for name, dtype in _KEY_COLUMNS.items())
    errors, errors_v6 = np.array(ICMP_ERROR_TYPES, dtype=np.int64), np.array(ICMPV6_ERROR_TYPES, dtype=np.int64)
    keys: np.ndarray = _keys(columns, errors, errors_v6)
    return keys


def _codes(column: pd.Series) -> np.ndarray:
    """Integer codes of a categorical or plain column (equal values, equal codes)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return np.asarray(column.cat.codes, dtype=np.int64)
    return pd.factorize(column, sort=False)[0].astype(np.int64)


def _single_value(column: pd.Series) -> bool:
    """Whether every row holds the same value (a categorical's codes compared as they are, without a copy)."""
    codes = column.cat.codes.to_numpy() if isinstance(column.dtype, pd.CategoricalDtype) else _codes(column)
    return bool(codes.min() == codes.max())


def _rank_within(group: np.ndarray) -> np.ndarray:
    """0-based rank of each element among the equal values before it (``group`` sorted)."""
    position = np.arange(len(group))
    first = np.ones(len(group), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    return position - np.maximum.accumulate(np.where(first, position, 0))


def copy_origins(packets: pd.DataFrame, window_ns: int = DUPLICATE_WINDOW_NS) -> np.ndarray:
    """Per row (position), the position of the earlier copy it repeats, or -1 when it is no forwarded copy.

    A row is a forwarded copy when an earlier row of the same capture, seen
    on another interface (or in the other direction, which is all a Linux
    cooked v1 ``-i any`` capture tells), carries the same packet: same
    addresses, ports, protocol and VLAN (so the copy belongs to the same
    flow; a copy NAT rewrote on its way through is another flow's packet),
    the same ``packet_keys`` content and IP ID, at most ``window_ns`` later.
    The origin is the earliest copy.

    A genuine retransmission is never a copy: on the same interface it is a
    new packet by definition, and on another interface it comes a
    retransmission timeout later (and, on Linux, with a new IP ID). Inside
    one burst of identical packets the k-th seen on each interface are taken
    as copies of each other.
    """
    n = len(packets)
    origins = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return origins
    if _single_value(packets["iface"]) and _single_value(packets["direction"]):
        return origins  # the usual case: one interface, one direction (or none known)
    capture = _codes(packets["capture"])
    direction = _codes(packets["direction"])
    # A "port" is the interface and the direction together.
    port = _codes(packets["iface"]) * (int(direction.max()) + 2) + direction + 1
    by_capture = pd.Series(port).groupby(capture)
    several_ports = (by_capture.transform("max") != by_capture.transform("min")).to_numpy()
    rows = np.flatnonzero(several_ports & (packets["ip_version"].to_numpy() > 0))
    if len(rows) < 2:
        return origins  # every capture on one interface
    identity = _identity(packets, rows, capture)
    # Only a packet seen more than once can have a copy: a hash lookup spares sorting the rest.
    repeated = pd.Series(identity).duplicated(keep=False).to_numpy()
    rows, identity = rows[repeated], identity[repeated]
    ts = packets["ts_ns"].to_numpy().astype(np.int64)[rows]
    order = _by_identity_then_time(identity, ts)
    rows, identity, ts = rows[order], identity[order], ts[order]
    # A run: rows of one identity, each within the window of the one before.
    new_run = np.ones(len(rows), dtype=bool)
    new_run[1:] = (identity[1:] != identity[:-1]) | (ts[1:] - ts[:-1] > window_ns)
    run_start = np.flatnonzero(new_run)
    run_size = np.diff(np.append(run_start, len(rows)))

    # Most runs are one packet seen in and out: the second is a copy when its port differs.
    pair = run_start[run_size == 2]
    crossed = port[rows[pair]] != port[rows[pair + 1]]
    origins[rows[pair[crossed] + 1]] = rows[pair[crossed]]
    busy = np.repeat(run_size > 2, run_size)
    if busy.any():
        rows_busy, ts_busy = rows[busy], ts[busy]
        origin_at = _origins_in_runs(port[rows_busy], ts_busy, np.cumsum(new_run[busy]) - 1, window_ns)
        copy_at = np.flatnonzero(origin_at >= 0)
        origins[rows_busy[copy_at]] = rows_busy[origin_at[copy_at]]
    return origins


def _identity(packets: pd.DataFrame, rows: np.ndarray, capture: np.ndarray) -> np.ndarray:
    """Per row in ``rows``: a hash of the packet as one capture point sees it, where it stays the same."""
    subset = packets if len(rows) == len(packets) else packets.iloc[rows]
    identity = packet_keys(subset)
    for column in ("ip_id", "proto", "sport", "dport", "vlan"):
        identity = mix_hash(identity, subset[column].to_numpy())
    for codes in (capture, _codes(packets["src"]), _codes(packets["dst"])):
        identity = mix_hash(identity, codes[rows])
    return identity


def _origins_in_runs(port: np.ndarray, ts: np.ndarray, run: np.ndarray, window_ns: int) -> np.ndarray:
    """For rows grouped in runs (time order inside each): the position of the row each copies, or -1.

    Inside a run the k-th row of every port is one sighting of the packet
    (a burst of identical packets, each forwarded); the sighting's first row
    is the origin of the others within the window.
    """
    width = int(port.max()) + 1
    run_port = run * width + port
    by_port = np.argsort(run_port, kind="stable")  # keeps time order inside a (run, port)
    occurrence = np.empty(len(port), dtype=np.int64)
    occurrence[by_port] = _rank_within(run_port[by_port])
    sighting = run * (int(occurrence.max()) + 1) + occurrence
    by_sighting = np.argsort(sighting, kind="stable")
    s = sighting[by_sighting]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    origin_sorted = by_sighting[np.flatnonzero(first)[np.cumsum(first) - 1]]  # each one's sighting's first
    is_copy = ~first & (ts[by_sighting] - ts[origin_sorted] <= window_ns)
    origins = np.full(len(port), -1, dtype=np.int64)
    origins[by_sighting[is_copy]] = origin_sorted[is_copy]
    return origins


def _by_identity_then_time(identity: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by identity, then time; one stable sort when rows are already in time order (the usual case)."""
    order = np.argsort(identity, kind="stable")
    i, t = identity[order], ts[order]
    if np.any((i[1:] == i[:-1]) & (t[1:] < t[:-1])):
        order = np.lexsort((ts, identity))
    return order


def forwarded_copies(packets: pd.DataFrame, window_ns: int = DUPLICATE_WINDOW_NS) -> np.ndarray:
    """Per row, True when it is a later copy of a packet the same capture saw on another interface.

    See ``copy_origins`` for what counts as a copy.
    """
    return copy_origins(packets, window_ns) >= 0
