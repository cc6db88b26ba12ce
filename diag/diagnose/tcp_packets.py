"""The distinct packets of the suspect TCP connections and their sightings, as columns.

The connection table (``diag.diagnose.connections``) holds every copy of a
packet at every capture point. The TCP signals (``diag.diagnose.tcp_signals``
and the signals it gathers from ``rst_timing`` and ``rst_ip_id``) ask their
questions of distinct packets instead, each with its sightings in path order:
``Packets`` is that table, one row per distinct packet, grouped by connection
and in the order ``signals.distinct_packets`` gives; ``Sights`` holds one row
per capture point's copy. ``Packets.seen`` turns a row back into the
``signals.Seen`` a finding's sentences are written from. The small column
helpers the signals share (ranges of rows, a lookup by key, the sighting at a
point) live here with the table they read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pandas as pd

from diag.capture.addresses import endpoint_text
from diag.capture.proto import ACK, RST, SYN, TCP
from diag.diagnose.connections import Connection, ConnectionTable
from diag.diagnose.signals import Seen, Sight

NONE = -1  # "no such packet / capture" in the integer columns
SEQ_SPACE = 2**32  # TCP sequence and acknowledgement numbers wrap around here


def expand_ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, index) of every index in the half-open ranges ``[starts[i], stops[i])``."""
    lengths = stops - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, starts[owner] + offsets


def lookup(table: pd.Series, keys: np.ndarray, missing: int = -1) -> np.ndarray:
    """``table[key]`` for every key, ``missing`` where it has none."""
    if len(table) == 0:
        return np.full(len(keys), missing, dtype=np.int64)
    at = pd.Index(table.index).get_indexer(keys)
    values = table.to_numpy().astype(np.int64)
    found: np.ndarray = np.where(at >= 0, values[np.maximum(at, 0)], missing)
    return found


@dataclass(frozen=True)
class Sights:
    """One row per capture point's copy of a distinct packet (``signals.Sight`` as columns)."""

    seen: np.ndarray  # the distinct packet (row of ``Packets``)
    capture: np.ndarray  # code into the table's names
    ttl: np.ndarray  # the highest TTL of the copies there
    forwarded: np.ndarray  # copies there with a lower TTL too
    incoming: np.ndarray
    head: np.ndarray  # the first copy's row in the connection table
    ts_ns: np.ndarray
    copies: np.ndarray  # rows of every copy, grouped by sighting: ``copies[bounds[i]:bounds[i+1]]``
    bounds: np.ndarray


@dataclass(frozen=True)
class Packets:
    """The distinct packets of the TCP connections (``signals.Seen`` as columns), per connection in time order.

    Row ``i`` belongs to connection ``conn[i]`` (its position in the
    connection list); a connection's packets are the slice
    ``first[k]:first[k + 1]``, ordered as ``distinct_packets`` orders them.
    """

    table: ConnectionTable
    conn: np.ndarray
    first: np.ndarray  # per connection (and one past the end), where its packets start
    head: np.ndarray  # row of the first copy at the first point
    from_orig: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    payload_len: np.ndarray
    ts_ref: np.ndarray
    sight_start: np.ndarray  # the packet's sightings: ``sights`` rows [sight_start, sight_stop), in path order
    sight_stop: np.ndarray
    sights: Sights
    _made: dict[int, Seen] = field(default_factory=dict, compare=False, repr=False)  # ``seen``'s results

    def has(self, flag: int) -> np.ndarray:
        result: np.ndarray = (self.flags >= 0) & ((self.flags & flag) != 0)
        return result

    def handshake(self, wanted: int) -> np.ndarray:
        result: np.ndarray = (self.flags >= 0) & ((self.flags & (SYN | ACK | RST)) == wanted)
        return result

    def seen(self, i: int) -> Seen:
        """Packet ``i`` as the ``Seen`` that ``distinct_packets`` makes of it (for rendering a finding)."""
        made = self._made.get(i)
        if made is None:
            self.prefetch(np.array([i], dtype=np.int64))
            made = self._made[i]
        return made

    def prefetch(self, chosen: np.ndarray) -> None:
        """Make the ``Seen`` of every packet in ``chosen`` at once: one gather per column for all of them.

        Thousands of packets with a sighting per point each are made for a busy capture's findings: every value
        is gathered and turned into text by the column (each distinct endpoint written once), so the Python
        left per sighting is the object itself.
        """
        chosen = np.unique(chosen[chosen >= 0])
        chosen = chosen[[i not in self._made for i in chosen.tolist()]]
        if len(chosen) == 0:
            return
        columns, sights = self.table.columns, self.sights
        names = np.array(self.table.names, dtype=object)
        _, sight_rows = expand_ranges(self.sight_start[chosen], self.sight_stop[chosen])
        starts, stops = sights.bounds[sight_rows], sights.bounds[sight_rows + 1]
        at = sights.copies[starts]  # the sighting's first copy
        src = _endpoints(names, columns["src"][at], columns["sport"][at])
        sources: list[tuple[str, ...]] = [(source,) for source in src]
        # Most sightings are one copy; the sources of several are listed once each, in order.
        for s in np.flatnonzero(stops - starts > 1).tolist():
            rows = sights.copies[starts[s] : stops[s]]
            sources[s] = tuple(dict.fromkeys(_endpoints(names, columns["src"][rows], columns["sport"][rows])))
        made = list(
            map(
                Sight,
                names[columns["capture"][at]].tolist(),
                columns["index"][at].tolist(),
                columns["ts_ns"][at].tolist(),
                columns["ts_ref"][at].tolist(),
                sights.ttl[sight_rows].tolist(),
                columns["ip_id"][at].tolist(),
                sights.forwarded[sight_rows].tolist(),
                sights.incoming[sight_rows].tolist(),
                src,
                _endpoints(names, columns["dst"][at], columns["dport"][at]),
                sources,
                columns["file"][at].astype(np.int64).tolist(),
            )
        )
        sight_bounds = np.r_[0, np.cumsum(self.sight_stop[chosen] - self.sight_start[chosen])].tolist()
        head = at[sight_bounds[:-1]]  # the packet's first sighting's first copy
        packets = map(
            Seen,
            columns["pkt"][head].tolist(),
            columns["from_orig"][head].astype(bool).tolist(),
            columns["tcp_flags"][head].tolist(),
            columns["seq"][head].tolist(),
            columns["ack"][head].tolist(),
            columns["payload_len"][head].tolist(),
            columns["payload_digest"][head].tolist(),
            [tuple(made[a:b]) for a, b in pairwise(sight_bounds)],
        )
        self._made.update(zip(chosen.tolist(), packets, strict=True))


def _endpoints(names: np.ndarray, addrs: np.ndarray, ports: np.ndarray) -> list[str]:
    """``endpoint_text`` of every (address code, port) pair, each distinct pair written once."""
    key = addrs.astype(np.int64) * 65537 + (ports.astype(np.int64) + 1)  # ports run from -1 (none) to 65535
    distinct, inverse = np.unique(key, return_inverse=True)
    texts = np.array([endpoint_text(names[k // 65537], k % 65537 - 1) for k in distinct.tolist()], dtype=object)
    endpoints: list[str] = texts[inverse.ravel()].tolist()
    return endpoints


def build_packets(table: ConnectionTable, connections: list[Connection]) -> Packets:
    """The distinct packets of the TCP ``connections``, grouped and ordered as ``distinct_packets`` does."""
    columns = table.columns
    n_rows = len(columns["pkt"])
    # Which connection (position in the list) each row belongs to; -1 for UDP.
    owner = np.full(n_rows, -1, dtype=np.int64)
    tcp = np.array([c.proto == TCP for c in connections], dtype=bool)
    starts = np.array([c.start for c in connections], dtype=np.int64)
    stops = np.array([c.stop for c in connections], dtype=np.int64)
    k_of_row, rows = expand_ranges(starts[tcp], stops[tcp])
    owner[rows] = np.flatnonzero(tcp)[k_of_row]
    order = table.by_packet[owner[table.by_packet] >= 0]  # TCP rows by connection, packet, hop, time
    pkt, capture = columns["pkt"][order], columns["capture"][order]
    n_names = max(len(table.names), 1)
    sight_id, _ = pd.factorize(pkt.astype(np.int64) * n_names + capture)
    by_sight = np.argsort(sight_id, kind="stable")
    copies = order[by_sight]
    n_sights = int(sight_id.max()) + 1 if len(sight_id) else 0
    bounds = np.searchsorted(sight_id[by_sight], np.arange(n_sights + 1))
    heads = copies[bounds[:-1]]
    ttl = columns["ttl"][copies].astype(np.int64)
    top = np.maximum.reduceat(ttl, bounds[:-1]) if n_sights else ttl[:0]
    low = np.minimum.reduceat(ttl, bounds[:-1]) if n_sights else ttl[:0]
    names = table.names
    in_code = names.index("in") if "in" in names else -1
    # Sightings of one packet are consecutive ids (the packets' rows are consecutive in ``order``).
    head_pkt = columns["pkt"][heads]
    new_packet = np.r_[True, head_pkt[1:] != head_pkt[:-1]] if n_sights else np.zeros(0, dtype=bool)
    packet_of_sight = np.cumsum(new_packet) - 1
    first_sight = np.flatnonzero(new_packet)
    last_sight = np.r_[first_sight[1:], n_sights]
    packet_head = heads[first_sight]
    conn = owner[packet_head]
    ts_ref = columns["ts_ref"][packet_head]
    # ``distinct_packets`` orders by (reference time, packet id) within the connection.
    ordered = np.lexsort((columns["pkt"][packet_head], ts_ref, conn))
    rank = np.empty(len(ordered), dtype=np.int64)
    rank[ordered] = np.arange(len(ordered))
    sights = Sights(
        seen=rank[packet_of_sight],
        capture=columns["capture"][heads],
        ttl=top,
        forwarded=low < top,
        incoming=columns["direction"][heads] == in_code,
        head=heads,
        ts_ns=columns["ts_ns"][heads],
        copies=copies,
        bounds=bounds,
    )
    conn = conn[ordered]
    packet_head = packet_head[ordered]
    return Packets(
        table=table,
        conn=conn,
        first=np.searchsorted(conn, np.arange(len(connections) + 1)),
        head=packet_head,
        from_orig=columns["from_orig"][packet_head].astype(bool),
        flags=columns["tcp_flags"][packet_head].astype(np.int64),
        seq=columns["seq"][packet_head].astype(np.int64),
        ack=columns["ack"][packet_head].astype(np.int64),
        payload_len=columns["payload_len"][packet_head].astype(np.int64),
        ts_ref=ts_ref[ordered],
        sight_start=first_sight[ordered],
        sight_stop=last_sight[ordered],
        sights=sights,
    )


def sight_at(p: Packets, rows: np.ndarray, captures: np.ndarray) -> np.ndarray:
    """Per entry, the sighting of packet ``rows[i]`` at capture ``captures[i]``; NONE where there is none."""
    result = np.full(len(rows), NONE, dtype=np.int64)
    chosen = np.flatnonzero((rows >= 0) & (captures >= 0))
    if len(chosen) == 0:
        return result
    owner, sights = expand_ranges(p.sight_start[rows[chosen]], p.sight_stop[rows[chosen]])
    hit = p.sights.capture[sights] == captures[chosen][owner]
    result[chosen[owner[hit]]] = sights[hit]
    return result
