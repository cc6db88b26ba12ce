"""The packet table: one row per captured packet, the same columns for every capture.

This module is the single place where the columns are defined and documented;
``read_capture`` produces exactly these columns in this order, and everything
downstream (flows, correlation, diagnosis, plots) relies on them.

Conventions:
- Integers that can be absent use ``-1`` (never NaN) so columns stay compact
  numpy integers; strings that can be absent are the empty string.
- Addresses are strings in their usual text form (``192.0.2.1``, ``2001:db8::1``)
  held as pandas categoricals, so a million rows cost a few bytes each.
- Timestamps are integer nanoseconds since the Unix epoch, after applying the
  file's resolution and pcapng ``if_tsoffset``.
"""

from __future__ import annotations

from typing import Final

# name -> (numpy/pandas dtype, meaning)
PACKET_COLUMNS: Final[dict[str, tuple[str, str]]] = {
    "capture": ("category", "capture point name (vantage: client, node-a, pod, ...)"),
    "index": ("int64", "0-based position of the packet in its file (all records, skipped ones included)"),
    "file": (
        "int16",
        "which file of the capture point the packet is from: its position in CaptureInfo.files (0 for a "
        "point read from one file; a ring buffer's files in time order)",
    ),
    "ts_ns": ("int64", "timestamp, ns since the Unix epoch; -1 when the record has none (pcapng Simple Packet Block)"),
    "iface": ("category", "interface name (pcapng if_name, SLL2 ifindex as 'if<N>', else the interface id as text)"),
    "direction": ("category", "'in', 'out' or '' where the link type says (SLL packet type, pcapng epb_flags)"),
    "link_type": ("int32", "LINKTYPE_* of the packet's interface"),
    "vlan": ("int32", "outermost 802.1Q/802.1ad VLAN id, -1 when untagged"),
    "ip_version": ("int8", "4 or 6; 0 when the packet is not IP (ARP, LLDP, ...)"),
    "src": ("category", "IP source address"),
    "dst": ("category", "IP destination address"),
    "proto": ("int16", "IP protocol of the transport header (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), -1 if none"),
    "sport": ("int32", "TCP/UDP source port, -1 when absent"),
    "dport": ("int32", "TCP/UDP destination port, -1 when absent"),
    "ttl": ("int16", "IPv4 TTL or IPv6 hop limit, -1 when not IP"),
    "ip_id": ("int32", "IPv4 identification (IPv6 fragment header id when present), -1 otherwise"),
    "frag_offset": ("int32", "fragment offset in bytes, 0 for unfragmented packets"),
    "more_fragments": ("bool", "the MF flag (IPv4) or M flag (IPv6 fragment header)"),
    "ip_len": ("int32", "IP total length from the header (IPv6: 40 + payload length), -1 when not IP"),
    "cap_len": ("int32", "bytes captured"),
    "wire_len": ("int32", "bytes on the wire (original length)"),
    "truncated": ("bool", "the capture cut the packet before the end of its IP datagram"),
    "tcp_flags": (
        "int16",
        "TCP flags (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80), -1 if not TCP",
    ),
    "seq": ("int64", "TCP sequence number, -1 if not TCP"),
    "ack": ("int64", "TCP acknowledgement number (as on the wire, even without ACK), -1 if not TCP"),
    "win": ("int32", "TCP window field (unscaled), -1 if not TCP"),
    "mss": ("int32", "TCP MSS option, -1 when absent"),
    "wscale": ("int16", "TCP window-scale option shift, -1 when absent"),
    "sack_perm": ("bool", "TCP SACK-permitted option present"),
    "tsval": ("int64", "TCP timestamp option TSval, -1 when absent"),
    "tsecr": ("int64", "TCP timestamp option TSecr, -1 when absent"),
    "payload_len": ("int32", "transport payload length from the headers (not what was captured), -1 if unknown"),
    "payload_digest": ("uint64", "64-bit hash of the captured transport payload, 0 when empty; survives NAT"),
    "icmp_type": ("int16", "ICMP/ICMPv6 type, -1 otherwise"),
    "icmp_code": ("int16", "ICMP/ICMPv6 code, -1 otherwise"),
    "inner_src": ("category", "source address of the datagram quoted inside an ICMP error, '' otherwise"),
    "inner_dst": ("category", "destination address of the quoted datagram, '' otherwise"),
    "inner_proto": ("int16", "IP protocol of the quoted datagram, -1 otherwise"),
    "inner_sport": ("int32", "source port of the quoted datagram, -1 otherwise"),
    "inner_dport": ("int32", "destination port of the quoted datagram, -1 otherwise"),
    "tunnel": (
        "category",
        "outermost tunnel the packet came in: 'vxlan' (UDP 4789, 8472), 'geneve' (UDP 6081), 'gre', 'gre-udp' "
        "(UDP 4754), 'ip-in-ip' (IP protocols 4 and 41); '' when not tunnelled. The IP and transport columns "
        "above then describe the innermost packet carried (ip_version 0 when that is not IP, ARP for one)",
    ),
    "tunnel_id": ("int64", "VXLAN or Geneve VNI, GRE key; -1 when the tunnel has none or there is no tunnel"),
    "outer_src": (
        "category",
        "source address of the outermost IP header when the row holds what a tunnel carried, '' otherwise",
    ),
    "outer_dst": ("category", "destination address of that outermost IP header, '' otherwise"),
    "outer_ttl": (
        "int16",
        "TTL or hop limit of that outermost IP header, -1 otherwise (it goes down across the underlay, where "
        "the carried packet's own TTL stays the same)",
    ),
    "tunnel_broken": (
        "bool",
        "a tunnel header, or the IP header it carries, is cut short or malformed: the row keeps the packet "
        "as opened so far (the outer one for a single tunnel)",
    ),
}

COLUMN_NAMES: Final[tuple[str, ...]] = tuple(PACKET_COLUMNS)


def describe_columns() -> str:
    """The column reference as a Markdown table (used by the docs and ``--help``)."""
    lines = ["| column | dtype | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {dtype} | {meaning} |" for name, (dtype, meaning) in PACKET_COLUMNS.items()]
    return "\n".join(lines)
