"""The RST's IP ID against the count its claimed sender's own packets keep, for every connection at once.

A finding states it as the ``ip-id-out-of-line`` fact (where the RST is not
taken for its sender's own); ``TcpSignals.ip_id`` holds the columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diag.diagnose.tcp_packets import NONE, Packets

# A sender's IP IDs count up by one a packet; a capture may miss some, so a step up to this (or to a few times
# the step its own packets took) stays in line.
IP_ID_STEP = 16
IP_ID_STEPS = 4


@dataclass(frozen=True)
class IpIdSignal:
    """Per connection: the RST's IP ID out of line with the IP IDs its claimed sender's own packets count up by
    (seen at one point before it), and the point, the RST's IP ID and the sender's last packet there (or NONE).

    A stack numbers the packets of a connection in sequence (Linux counts per
    socket); a RST made by another device carries its own IP ID, out of that
    sequence (Weaver, Sommer and Paxson, NDSS 2009). Senders whose IDs do not
    count up (all zero, random) say nothing.
    """

    out_of_line: np.ndarray
    point: np.ndarray  # capture code
    rst_id: np.ndarray
    last: np.ndarray  # the sender's last packet before the RST at that point


def ip_id_signal(p: Packets, rst: np.ndarray, rst_side: np.ndarray, side: np.ndarray, is_rst: np.ndarray) -> IpIdSignal:
    """The RST's IP ID against the last two of its claimed sender's packets seen where the RST was first seen."""
    s, columns = p.sights, p.table.columns
    n = len(rst)
    point, rst_id, last = (np.full(n, NONE, dtype=np.int64) for _ in range(3))
    out_of_line = np.zeros(n, dtype=bool)
    ks = np.flatnonzero(rst >= 0)
    if len(ks) == 0:
        return IpIdSignal(out_of_line, point, rst_id, last)
    first = p.sight_start[rst[ks]]
    point[ks] = s.capture[first]
    rst_id[ks] = columns["ip_id"][s.head[first]]
    rst_ts = np.full(n, NONE, dtype=np.int64)
    rst_ts[ks] = s.ts_ns[first]
    k = p.conn[s.seen]
    mine = (rst_ts[k] >= 0) & (side[s.seen] == rst_side[k]) & ~is_rst[s.seen] & (s.capture == point[k])
    mine &= s.ts_ns < rst_ts[k]
    rows = np.flatnonzero(mine)
    if len(rows) == 0:
        return IpIdSignal(out_of_line, point, rst_id, last)
    rows = rows[np.lexsort((s.ts_ns[rows], k[rows]))]
    owner = k[rows]
    is_last = np.r_[owner[1:] != owner[:-1], True]
    has_before = np.r_[False, owner[1:] == owner[:-1]]
    latest = np.flatnonzero(is_last & has_before)  # positions in ``rows`` with a packet before them
    conn = owner[latest]
    ids = columns["ip_id"][s.head[rows]].astype(np.int64)
    prev, before = ids[latest], ids[latest - 1]
    step = (prev - before) % 65536
    counting = (step >= 1) & (step <= IP_ID_STEP)
    allowed = np.maximum(IP_ID_STEP, IP_ID_STEPS * step)
    ahead = (rst_id[conn] - prev) % 65536
    out_of_line[conn] = counting & ((ahead < 1) | (ahead > allowed)) & (rst_id[conn] >= 0) & (prev >= 0)
    last[conn] = s.seen[rows[latest]]
    return IpIdSignal(out_of_line, point, rst_id, last)
