"""Tunnels in the flow table: which tunnel carried a flow, and which flows are tunnels themselves.

The reader opens VXLAN, Geneve, GRE, GRE in UDP and IP in IP: a tunnelled
row holds the carried packet, with the outermost addresses and the tunnel
type beside it (docs/columns.md). A flow any of whose packets came through a
tunnel names that tunnel in ``tunnel_parents``, as Zeek's conn.log names the
outer connection's uid. A tunnel is identified by the capture, the VLAN, its
type and the outer address pair (the reader keeps no outer ports), and named
by a uid derived from those, so the same tunnel gets the same uid in every
run and in every flow it carried.

A flow that *is* a tunnel (a carrier) is not traffic of its own: packets the
reader recognised as tunnel packets but could not open (``tunnel_broken``),
or UDP on a tunnel's port that the reader does not open (VXLAN-GPE 4790) or
left closed. Such a flow is marked ``carrier`` so reports never list it as a
problem (a one-way tunnel is normal: each side encapsulates its own packets).
"""

from __future__ import annotations

import hashlib
from typing import Final

import numpy as np
import pandas as pd

# UDP ports of tunnels: VXLAN (IANA and Linux's default), Geneve, GRE in UDP, VXLAN-GPE.
TUNNEL_UDP_PORTS: Final = frozenset({4789, 8472, 6081, 4754, 4790})

_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def base62(number: int) -> str:
    """``number`` in base 62 (digits, upper case, lower case), as Zeek writes its uids."""
    digits = ""
    while True:
        number, digit = divmod(number, 62)
        digits = _BASE62[digit] + digits
        if number == 0:
            return digits


def tunnel_uid(capture: str, vlan: int, kind: str, outer_a: str, outer_b: str) -> str:
    """A Zeek-looking uid (``C`` and base-62 digits) for one tunnel: the same whichever way its packets go."""
    low, high = sorted((outer_a, outer_b))
    key = f"tunnel\x00{capture}\x00{vlan}\x00{kind}\x00{low}\x00{high}"
    digest = hashlib.blake2b(key.encode(), digest_size=12).digest()
    return "C" + base62(int.from_bytes(digest, "big"))


def tunnel_rows(packets: pd.DataFrame) -> np.ndarray:
    """Rows the reader found in a tunnel, opened or not (bool array)."""
    tunnel = packets["tunnel"]
    codes = np.asarray(tunnel.cat.codes) if isinstance(tunnel.dtype, pd.CategoricalDtype) else None
    if codes is not None:
        names = np.asarray(tunnel.cat.categories.astype(str))
        tunnelled_codes = np.flatnonzero(names != "")
        if len(tunnelled_codes) == 0:
            return np.zeros(len(packets), dtype=bool)  # the usual capture: nothing to look at
        tunnelled = np.isin(codes, tunnelled_codes)
    else:
        tunnelled = tunnel.astype(str).to_numpy() != ""
    return np.asarray(tunnelled, dtype=bool)


def _tunnel_rows(packets: pd.DataFrame, broken: bool) -> np.ndarray:
    """Rows that came in a tunnel the reader opened (``broken`` False), or could not open (True)."""
    rows: np.ndarray = tunnel_rows(packets) & (packets["tunnel_broken"].to_numpy(dtype=bool) == broken)
    return rows


def tunnel_parents(packets: pd.DataFrame, row_flow: np.ndarray, n_flows: int) -> np.ndarray:
    """Per flow, the uids of the tunnels its packets came through, in order of first use, joined by ``,``.

    An object array of str, ``''`` for a flow that came through no tunnel (one shared string: the usual
    capture has no tunnel, and a list per flow would cost a Python object each).
    """
    parents = np.full(n_flows, "", dtype=object)
    rows = np.flatnonzero(_tunnel_rows(packets, broken=False) & (row_flow >= 0))
    if len(rows) == 0:
        return parents
    carried = pd.DataFrame(
        {
            "flow": row_flow[rows],
            "capture": packets["capture"].to_numpy()[rows].astype(str),
            "vlan": packets["vlan"].to_numpy()[rows],
            "tunnel": packets["tunnel"].to_numpy()[rows].astype(str),
            "outer_src": packets["outer_src"].to_numpy()[rows].astype(str),
            "outer_dst": packets["outer_dst"].to_numpy()[rows].astype(str),
        }
    ).drop_duplicates()
    uids: dict[tuple[str, int, str, str, str], str] = {}
    per_flow: dict[int, list[str]] = {}
    for flow, capture, vlan, kind, src, dst in carried.itertuples(index=False, name=None):
        key = (capture, int(vlan), kind, *sorted((src, dst)))
        uid = uids.get(key)
        if uid is None:
            uid = uids[key] = tunnel_uid(capture, int(vlan), kind, src, dst)
        named = per_flow.setdefault(int(flow), [])
        if uid not in named:
            named.append(uid)
    for flow, named in per_flow.items():
        parents[flow] = ",".join(named)
    return parents


def carrier_flows(
    packets: pd.DataFrame,
    row_flow: np.ndarray | None,
    n_flows: int,
    proto: np.ndarray,
    orig_p: np.ndarray,
    resp_p: np.ndarray,
) -> np.ndarray:
    """Per flow: is it a tunnel (unopened tunnel packets, or UDP on a tunnel port)? (bool array)

    ``row_flow`` (each row's flow) is needed only when the capture has tunnel rows; None when it has none.
    """
    ports = np.array(sorted(TUNNEL_UDP_PORTS))
    carrier = (proto == "udp") & (np.isin(orig_p, ports) | np.isin(resp_p, ports))
    if row_flow is not None:
        unopened = np.flatnonzero(_tunnel_rows(packets, broken=True) & (row_flow >= 0))
        carrier[row_flow[unopened]] = True
    flags: np.ndarray = carrier.astype(bool)
    return flags
