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
    "proto": ("str", "`tcp` or `udp`"),
    "orig": ("str", "`addr:port` of the originator, IPv6 as `[addr]:port`"),
    "resp": ("str", "`addr:port` of the responder"),
    "orig_h": ("str", "originator address"),
    "orig_p": ("int64", "originator port"),
    "resp_h": ("str", "responder address"),
    "resp_p": ("int64", "responder port"),
    "vlan": ("int64", "outermost VLAN id; -1 untagged (null in JSON)"),
    "history": ("str", "Zeek's history letters (below)"),
    "conn_state": ("str", "Zeek's connection state (below)"),
    "orig_pkts": ("int64", "packets from the originator"),
    "resp_pkts": ("int64", "packets from the responder"),
    "orig_bytes": (
        "int64",
        "payload bytes from the originator as Zeek counts them: for TCP the extent of sequence space sent (or "
        "acknowledged by the peer), SYN and FIN excluded, so a retransmission is counted once; for UDP the sum "
        "of payloads",
    ),
    "resp_bytes": ("int64", "the same from the responder"),
    "first_ts": ("float64", "first packet time, seconds since the epoch"),
    "last_ts": ("float64", "last packet time, seconds since the epoch"),
    "syn_retransmits": ("int64", "SYNs from the originator repeating an earlier SYN's sequence number"),
    "retransmits": (
        "int64",
        "segments with payload that did not advance their sender's sequence space (Zeek's rule), both directions",
    ),
    "rsts": ("object", 'every RST of the flow: `{"index": <0-based in its capture file>, "from": "orig"|"resp"}`'),
    "first_index": ("int64", "index in its capture file of the flow's first packet"),
}


def describe_flow_columns() -> str:
    """The flow table's column reference as a Markdown table (docs/analyze.md holds it verbatim)."""
    lines = ["| column | dtype | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in FLOW_COLUMNS.items()]
    return "\n".join(lines)
