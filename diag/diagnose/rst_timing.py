"""Whether a RST came back sooner than its claimed sender could have answered, for every connection at once.

A RST answers a packet; its claimed sender can answer no sooner than a round
trip from the point that saw both. Where the handshake timed that round trip
at the same point (the client's SYN to the server's SYN-ACK, or the server's
SYN-ACK to the client's ACK of it), a RST back in a fraction of it was made
closer than that sender: by a box on the way. ``TcpSignals.timing`` holds the
result, the forged-RST rules read ``too_soon``, and a finding states it as the
``rst-too-soon`` fact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from diag.capture.proto import ACK
from diag.diagnose.tcp_packets import NONE, SEQ_SPACE, Packets, expand_ranges, lookup, sight_at

# A RST is too soon when it comes back in under half the round trip to its claimed sender (the handshake's,
# measured at the same point) and that round trip is long enough for a capture's timestamps to tell.
TOO_SOON_SHARE = 0.5
TOO_SOON_MIN_RTT_NS = 200_000


@dataclass(frozen=True)
class TimingSignal:
    """Per connection: the RST came back sooner than its claimed sender could have answered, at some point that
    saw both it and the packet it answers: in under ``TOO_SOON_SHARE`` of the round trip from that point to the
    sender (its handshake answer, timed there). The point, the delay and the round trip (or NONE)."""

    too_soon: np.ndarray
    point: np.ndarray
    delay_ns: np.ndarray
    rtt_ns: np.ndarray


def timing_signal(
    p: Packets,
    rst: np.ndarray,
    rst_side: np.ndarray,
    trigger: np.ndarray,
    side: np.ndarray,
    pure_syn: np.ndarray,
    synack: np.ndarray,
) -> TimingSignal:
    """At each point that saw the RST and the packet it answers, the delay between them against the round trip
    to the RST's claimed sender there: the client's SYN to the server's SYN-ACK, or the server's SYN-ACK to the
    client's ACK of it."""
    s = p.sights
    n = len(rst)
    too_soon = np.zeros(n, dtype=bool)
    point, delay_out, rtt_out = (np.full(n, NONE, dtype=np.int64) for _ in range(3))
    ks = np.flatnonzero((rst >= 0) & (trigger >= 0))
    empty = TimingSignal(too_soon, point, delay_out, rtt_out)
    if len(ks) == 0:
        return empty
    wanted = np.zeros(n, dtype=bool)
    wanted[ks] = True
    k = p.conn
    # Round trips to the server (SYN -> SYN-ACK) and to the client (SYN-ACK -> its ACK), per connection.
    syns, answers = np.flatnonzero(wanted[k] & pure_syn & (side == 1)), np.flatnonzero(wanted[k] & synack & (side == 0))
    acks = np.flatnonzero(wanted[k] & (side == 1) & (p.flags == ACK))
    to_server = pd.merge(
        pd.DataFrame({"conn": k[syns], "value": (p.seq[syns] + 1) % SEQ_SPACE, "ask": syns}),
        pd.DataFrame({"conn": k[answers], "value": p.ack[answers], "reply": answers}),
        on=["conn", "value"],
    )
    to_client = pd.merge(
        pd.DataFrame({"conn": k[answers], "value": (p.seq[answers] + 1) % SEQ_SPACE, "ask": answers}),
        pd.DataFrame({"conn": k[acks], "value": p.ack[acks], "reply": acks}),
        on=["conn", "value"],
    )
    to_server["toward"], to_client["toward"] = 0, 1
    pairs = pd.concat([to_server, to_client], ignore_index=True)
    pairs = pairs[pairs["toward"].to_numpy() == rst_side[pairs["conn"].to_numpy()]]
    if pairs.empty:
        return empty
    ask, reply = pairs["ask"].to_numpy(), pairs["reply"].to_numpy()
    owner, sights = expand_ranges(p.sight_start[ask], p.sight_stop[ask])
    at = sight_at(p, reply[owner], s.capture[sights])
    rtt = s.ts_ns[np.maximum(at, 0)] - s.ts_ns[sights]
    timed = (at >= 0) & (rtt > 0)
    n_names = len(p.table.names) + 1
    round_trip = (
        pd.DataFrame(
            {"key": pairs["conn"].to_numpy()[owner[timed]] * n_names + s.capture[sights[timed]], "rtt": rtt[timed]}
        )
        .groupby("key")["rtt"]
        .min()
    )
    # The RST's sightings, in path order, with the packet it answers seen at the same point.
    owner, rst_sights = expand_ranges(p.sight_start[rst[ks]], p.sight_stop[rst[ks]])
    conn = ks[owner]
    capture = s.capture[rst_sights]
    answered = sight_at(p, trigger[conn], capture)
    delay = s.ts_ns[rst_sights] - s.ts_ns[np.maximum(answered, 0)]
    trip = lookup(round_trip, conn * n_names + capture)
    soon = (answered >= 0) & (delay >= 0) & (trip >= TOO_SOON_MIN_RTT_NS) & (delay < TOO_SOON_SHARE * trip)
    hits = np.flatnonzero(soon)
    first_hit = hits[np.r_[True, conn[hits][1:] != conn[hits][:-1]]] if len(hits) else hits
    chosen = conn[first_hit]
    too_soon[chosen] = True
    point[chosen], delay_out[chosen], rtt_out[chosen] = capture[first_hit], delay[first_hit], trip[first_hit]
    return TimingSignal(too_soon, point, delay_out, rtt_out)
