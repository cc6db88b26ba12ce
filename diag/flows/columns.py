"""The flow table's columns, declared once: name -> (dtype, meaning).

``build_flows`` produces exactly these columns in this order, and
docs/analyze.md lists them as ``describe_flow_columns`` writes them (a test
keeps the two equal). Zeek's conn.log is the model: ``history`` and
``conn_state`` are its letters and states.
"""

from __future__ import annotations

from typing import Final

FLOW_COLUMNS: Final[dict[str, tuple[str, str]]] = {
    "flow_id": ("int64", "one id per flow, counted from 0 in order of first appearance (as `flow_ids`)"),
    "capture": ("str", "the capture point's name"),
    "proto": ("str", "`tcp` or `udp`; `icmp` (ICMP and ICMPv6) in the tables `diag flows` writes"),
    "orig": ("str", "`addr:port` of the originator, IPv6 as `[addr]:port`"),
    "resp": ("str", "`addr:port` of the responder"),
    "orig_h": ("str", "originator address"),
    "orig_p": ("int64", "originator port; for ICMP the message type, as Zeek writes it"),
    "resp_h": ("str", "responder address"),
    "resp_p": ("int64", "responder port; for ICMP the type that answers the message, else its code (Zeek's)"),
    "vlan": ("int64", "outermost VLAN id; -1 untagged (null in JSON)"),
    "history": ("str", "Zeek's history letters (below)"),
    "conn_state": ("str", "Zeek's connection state (below)"),
    "orig_pkts": ("int64", "packets from the originator"),
    "resp_pkts": ("int64", "packets from the responder"),
    "orig_bytes": (
        "int64",
        "payload bytes from the originator as Zeek counts them: for TCP the extent of sequence space sent (or "
        "acknowledged by the peer), SYN and FIN excluded, so a retransmission is counted once; for UDP the sum "
        "of payloads, for ICMP of what follows the 8-byte ICMP header",
    ),
    "resp_bytes": ("int64", "the same from the responder"),
    "orig_ip_bytes": (
        "int64",
        "IP-level bytes from the originator as Zeek counts them: the IP total length of each packet, added up",
    ),
    "resp_ip_bytes": ("int64", "the same from the responder"),
    "first_ts": ("float64", "first packet time, seconds since the epoch"),
    "last_ts": ("float64", "last packet time, seconds since the epoch"),
    "syn_retransmits": (
        "int64",
        "SYNs from the originator repeating the sequence number of the 5-tuple's previous SYN, also when that "
        "SYN is in the previous flow (a SYN retried after a RST opens a new flow, as in Zeek, and counts here)",
    ),
    "retransmits": (
        "int64",
        "segments with payload that did not advance their sender's sequence space (Zeek's rule), both directions",
    ),
    "missed_bytes": (
        "int64",
        "bytes of content gaps as Zeek's conn.log counts them, both directions: sequence space the peer "
        "acknowledged, while both ends were established or closing from established, that no captured segment "
        "carried",
    ),
    "rsts": ("object", 'every RST of the flow: `{"index": <0-based in its capture file>, "from": "orig"|"resp"}`'),
    "first_index": ("int64", "index in its capture file of the flow's first packet"),
    "prev_flow": (
        "int64",
        "`flow_id` of the flow before this one on the same 5-tuple, VLAN and capture; -1 for the first",
    ),
    "tunnel_parents": (
        "str",
        "uids of the tunnels the flow's packets came through (VXLAN, Geneve, GRE, IP in IP), joined by `,` as "
        "Zeek writes its `tunnel_parents` set; '' when none",
    ),
    "carrier": (
        "bool",
        "the flow is a tunnel itself (packets the reader could not open, or UDP on a tunnel port): never "
        "listed or diagnosed as a problem",
    ),
}


def describe_flow_columns() -> str:
    """The flow table's column reference as a Markdown table (docs/analyze.md holds it verbatim)."""
    lines = ["| column | dtype | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in FLOW_COLUMNS.items()]
    return "\n".join(lines)
