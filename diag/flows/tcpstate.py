"""Zeek's TCP endpoint state machine and the conn_state it yields.

Each end of a connection has a state (``TCP_ENDPOINT_*`` in Zeek's
TCPSessionAdapter) that its own packets move: a SYN-ACK puts both ends in
ESTABLISHED, a FIN moves its sender to CLOSED, a RST to RESET. ``conn_state``
(base/protocols/conn/main.zeek) is read off the two final states and whether
any bytes flowed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import numpy as np

from diag.compiled import compiled

if TYPE_CHECKING:
    from pandas.api.extensions import ExtensionArray

# Zeek's TCP endpoint states (TCP_ENDPOINT_*).
INACTIVE: Final = 0
SYN_SENT: Final = 1
SYN_ACK_SENT: Final = 2
PARTIAL: Final = 3
ESTABLISHED: Final = 4
CLOSED: Final = 5
RESET: Final = 6


@compiled
def _moved(state: int, before: int, new: int) -> tuple[int, int]:
    """(state, state before its last change) after moving to ``new``; staying put is no change."""
    return (new, state) if state != new else (state, before)


@compiled
def update_endpoints(
    me: int,
    me_before: int,
    peer: int,
    peer_before: int,
    from_originator: bool,
    syn: bool,
    fin: bool,
    rst: bool,
    ack: bool,
    data: bool,
) -> tuple[int, int, int, int]:
    """One packet through Zeek's UpdateStateMachine: the new (me, me_before, peer, peer_before).

    ``me`` is the sender's state and ``peer`` the other end's; ``*_before`` is
    the state each was in before its last change (Zeek's ``prev_state``).
    The cases follow the sender's state when the packet arrived.
    """
    was = me
    if was == INACTIVE:  # the first packet of this endpoint
        if syn:
            if from_originator:
                me, me_before = _moved(me, me_before, SYN_ACK_SENT if ack else SYN_SENT)
            else:  # SYN or SYN-ACK from the responder
                if peer == SYN_SENT:
                    peer, peer_before = _moved(peer, peer_before, ESTABLISHED)
                me, me_before = _moved(me, me_before, ESTABLISHED)
        if fin:
            me, me_before = _moved(me, me_before, CLOSED)
        if rst:
            me, me_before = _moved(me, me_before, RESET)
        # A bare ACK from the responder before its SYN-ACK does not count as activity.
        early_ack = not from_originator and not data and peer == SYN_SENT
        if me == INACTIVE and not early_ack:
            joins = ack and peer == ESTABLISHED
            me, me_before = _moved(me, me_before, ESTABLISHED if joins else PARTIAL)
    elif was in (SYN_SENT, SYN_ACK_SENT):
        if fin:
            me, me_before = _moved(me, me_before, CLOSED)
        if rst:
            me, me_before = _moved(me, me_before, RESET)
    elif was in (ESTABLISHED, PARTIAL):
        if syn and was == PARTIAL and peer == INACTIVE and not ack:
            me, me_before = _moved(me, me_before, SYN_SENT)
        if fin and not rst:
            me, me_before = _moved(me, me_before, CLOSED)
            # The peer's FIN then RST was a normal close after all.
            if peer == RESET and peer_before == CLOSED:
                peer, peer_before = _moved(peer, peer_before, CLOSED)
        if rst:
            me, me_before = _moved(me, me_before, RESET)
    elif was == CLOSED and rst and peer != CLOSED:  # a RST counts unless both sides already closed
        me, me_before = _moved(me, me_before, RESET)
    return me, me_before, peer, peer_before


# conn.zeek gives RSTOS0 (an attempt the originator reset, no answer) only to a history that is a
# SYN followed by a RST before any SYN-ACK, ACK, data, FIN, gap or odd flags of the originator;
# Zeek's ``==`` on a pattern matches the whole string.
_RSTOS0_HISTORY: Final = re.compile(r"\^?S[^HAFGIQ]*R.*")


def tcp_conn_state(
    orig: np.ndarray,
    resp: np.ndarray,
    orig_bytes: np.ndarray,
    resp_bytes: np.ndarray,
    history: np.ndarray | ExtensionArray,
) -> np.ndarray:
    """Zeek's conn_state() per flow from the final endpoint states, payload sizes and history (texts)."""
    o, r = orig, resp
    o_inactive = (o == INACTIVE) | (o == PARTIAL)
    r_inactive = (r == INACTIVE) | (r == PARTIAL)
    no_bytes = (orig_bytes == 0) & (resp_bytes == 0)
    conditions = [
        (r == RESET) & ((o == SYN_SENT) | (o == SYN_ACK_SENT) | ((o == RESET) & no_bytes)),
        (r == RESET) & o_inactive,
        r == RESET,
        (o == RESET) & r_inactive,
        o == RESET,
        (r == CLOSED) & (o == CLOSED),
        (o == CLOSED) & r_inactive,
        o == CLOSED,
        (r == CLOSED) & o_inactive,
        r == CLOSED,
        (o == SYN_SENT) & (r == INACTIVE),
        (o == ESTABLISHED) & (r == ESTABLISHED),
    ]
    names = np.array(
        ["REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0", "S1", "OTH"], dtype=object
    )
    states: np.ndarray = names[np.select(conditions, np.arange(len(conditions)), default=len(conditions))]
    # The originator reset and the responder never got going: RSTOS0 only for a reset attempt's history.
    for flow in np.flatnonzero(states == "RSTOS0").tolist():
        if not _RSTOS0_HISTORY.fullmatch(str(history[flow])):
            states[flow] = "OTH"
    return states


def udp_conn_state(orig_pkts: np.ndarray, resp_pkts: np.ndarray) -> np.ndarray:
    """Zeek's conn_state for a connectionless flow: who sent anything."""
    names = np.array(["SF", "S0", "SHR", "OTH"], dtype=object)
    states: np.ndarray = names[
        np.select([(orig_pkts > 0) & (resp_pkts > 0), orig_pkts > 0, resp_pkts > 0], [0, 1, 2], default=3)
    ]
    return states
