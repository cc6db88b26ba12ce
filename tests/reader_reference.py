"""tshark as the independent reference for the capture reader's per-packet fields.

``tshark_packets`` asks tshark for the fields the packet table carries;
``compare_with_tshark`` lists, packet by packet, every field where
``read_capture`` and tshark disagree. Both are used by the generated-capture
tests and by the corpus tests.
"""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

TSHARK_TIMEOUT_S = 60

# tshark field -> short key; all occurrences are asked for (outer header first,
# then the header an ICMP error quotes).
FIELDS = {
    "frame.time_epoch": "time",
    "frame.len": "wire_len",
    "frame.cap_len": "cap_len",
    "frame.protocols": "protocols",
    "frame.packet_flags_direction": "pkt_dir",
    "frame.interface_name": "if_name",
    "sll.pkttype": "sll_pkttype",
    "sll.ifindex": "sll_ifindex",
    "ieee8021ad.id": "svlan",
    "vlan.id": "vlan",
    "ip.version": "ip_ver",
    "ip.src": "ip_src",
    "ip.dst": "ip_dst",
    "ip.ttl": "ip_ttl",
    "ip.id": "ip_id",
    "ip.len": "ip_len",
    "ip.proto": "ip_proto",
    "ip.frag_offset": "ip_frag",
    "ip.flags.mf": "ip_mf",
    "ipv6.src": "ip6_src",
    "ipv6.dst": "ip6_dst",
    "ipv6.hlim": "ip6_hlim",
    "ipv6.plen": "ip6_plen",
    "ipv6.fraghdr.ident": "ip6_frag_id",
    "ipv6.fraghdr.offset": "ip6_frag_off",
    "ipv6.fraghdr.more": "ip6_frag_more",
    "tcp.srcport": "tcp_sport",
    "tcp.dstport": "tcp_dport",
    "tcp.flags": "tcp_flags",
    "tcp.seq": "tcp_seq",
    "tcp.ack": "tcp_ack",
    "tcp.window_size_value": "tcp_win",
    "tcp.len": "tcp_len",
    "tcp.options.mss_val": "tcp_mss",
    "tcp.options.wscale.shift": "tcp_wscale",
    "tcp.options.sack_perm": "tcp_sack_perm",
    "tcp.options.timestamp.tsval": "tcp_tsval",
    "tcp.options.timestamp.tsecr": "tcp_tsecr",
    "udp.srcport": "udp_sport",
    "udp.dstport": "udp_dport",
    "udp.length": "udp_len",
    "icmp.type": "icmp_type",
    "icmp.code": "icmp_code",
    "icmpv6.type": "icmp6_type",
    "icmpv6.code": "icmp6_code",
    "vxlan.vni": "vxlan_vni",
    "geneve.vni": "geneve_vni",
    "gre.key": "gre_key",
}

# Decode-as rules: UDP 8472 is VXLAN as Linux sends it (tshark knows only 4789 by itself).
DECODE_AS = ("udp.port==8472,vxlan",)

# Options that keep tshark's view to the headers as captured, one packet at a time.
PREFERENCES = (
    "tcp.relative_sequence_numbers:FALSE",
    "tcp.analyze_sequence_numbers:FALSE",
    "tcp.desegment_tcp_streams:FALSE",
    "ip.defragment:FALSE",
    "ipv6.defragment:FALSE",
    "tcp.check_checksum:FALSE",
    "udp.check_checksum:FALSE",
)


def tshark_packets(path: Path) -> list[dict[str, list[str]]]:
    """One dict per frame: short key -> list of that field's occurrences (empty when absent)."""
    command = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"]
    for preference in PREFERENCES:
        command += ["-o", preference]
    for rule in DECODE_AS:
        command += ["-d", rule]
    for field in FIELDS:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S, check=False)
    if result.returncode not in (0, 2):  # 2: tshark read a damaged file as far as it could
        raise RuntimeError(f"tshark failed on {path}: {result.stderr.strip()}")
    packets = []
    for line in result.stdout.splitlines():
        values = line.split("\t")
        values += [""] * (len(FIELDS) - len(values))
        packets.append(
            {
                key: [part for part in value.split("|") if part]
                for key, value in zip(FIELDS.values(), values, strict=True)
            }
        )
    return packets


def _int(text: str) -> int:
    return int(text, 0)


def epoch_ns(text: str) -> int:
    return int(Decimal(text) * 1_000_000_000)


# Protocol names tshark lists before the network layer in frame.protocols.
LINK_LAYER_NAMES = {"frame", "pkt_comment", "eth", "ethertype", "vlan", "sll", "null", "loop", "raw", "ieee8021ad"}


def expected_family(protocols: str) -> int:
    """4 or 6 when tshark's first protocol after the link layer is IPv4 or IPv6, else 0."""
    for name in protocols.split(":"):
        if name not in LINK_LAYER_NAMES:
            return {"ip": 4, "ipv6": 6}.get(name, 0)
    return 0


def tags_before_ip(protocols: str) -> int:
    """How many VLAN tags tshark saw before the first IP header."""
    names = protocols.split(":")
    for stop, name in enumerate(names):
        if name in ("ip", "ipv6"):
            return sum(1 for tag in names[:stop] if tag in ("vlan", "ieee8021ad"))
    return 0


# Where each key's occurrences come from, to skip those of the outer headers of a tunnelled packet.
KEY_LAYERS = {"ip_": "ip", "ip6_": "ipv6", "tcp_": "tcp", "udp_": "udp", "icmp_": "icmp", "icmp6_": "icmpv6"}
# tshark's name of the layer right after the outermost IP header -> diag's tunnel type.
TUNNEL_LAYERS = {"vxlan": "vxlan", "geneve": "geneve", "gre": "gre", "ip": "ip-in-ip", "ipv6": "ip-in-ip"}
TUNNEL_KEYS = {"vxlan": "vxlan_vni", "geneve": "geneve_vni", "gre": "gre_key", "gre-udp": "gre_key"}


def innermost_ip(protocols: str) -> int:
    """Position in tshark's layer list of the innermost IP header that no ICMP error quotes, -1 if none."""
    names = protocols.split(":")
    last = -1
    for position, name in enumerate(names):
        if name in ("icmp", "icmpv6"):
            break
        if name in ("ip", "ipv6"):
            last = position
    return last


def tunnel_of(protocols: str) -> str:
    """diag's name of the outermost tunnel in tshark's layer list ('' when it shows none)."""
    names = [name for name in protocols.split(":") if not name.startswith("ipv6.")]  # IPv6 extension headers
    first = next((position for position, name in enumerate(names) if name in ("ip", "ipv6")), -1)
    if first < 0 or first + 1 >= len(names):
        return ""
    after = names[first + 1 : first + 3]
    if after[0] == "udp" and len(after) > 1:
        return {"vxlan": "vxlan", "geneve": "geneve", "gre": "gre-udp"}.get(after[1], "")
    return TUNNEL_LAYERS.get(after[0], "")


def inner_view(ref: dict[str, list[str]]) -> dict[str, list[str]]:
    """``ref`` with the occurrences of the layers before the innermost IP header dropped."""
    protocols = ref["protocols"][0] if ref["protocols"] else ""
    names = protocols.split(":")
    before = names[: innermost_ip(protocols)]
    view = dict(ref)
    for key, values in ref.items():
        layer = next((name for prefix, name in sorted(KEY_LAYERS.items(), key=lambda kv: -len(kv[0]))
                      if key.startswith(prefix)), None)  # fmt: skip
        if key == "ip_ver":  # tshark puts ip.version in IPv6 headers too
            view[key] = values[before.count("ip") + before.count("ipv6") :]
        elif layer is not None:
            view[key] = values[before.count(layer) :]
    inner = names[innermost_ip(protocols)] if innermost_ip(protocols) >= 0 else ""
    view["protocols"] = [":".join(["raw", *names[innermost_ip(protocols) :]])] if inner else ref["protocols"]
    return view


def _compare_tunnel(row: dict[str, Any], ref: dict[str, list[str]], check: Any) -> None:
    """The outer header of a packet diag opened: addresses, tunnel type and VNI or key as tshark shows them."""
    protocols = ref["protocols"][0] if ref["protocols"] else ""
    outer = "ip" if protocols.split(":")[expected_layer(protocols)] == "ip" else "ip6"
    if ref[f"{outer}_src"]:
        check("outer_src", row["outer_src"], ref[f"{outer}_src"][0])
        check("outer_dst", row["outer_dst"], ref[f"{outer}_dst"][0])
        ttl = ref["ip_ttl" if outer == "ip" else "ip6_hlim"]
        if row["outer_src"] != "" and ttl:
            check("outer_ttl", row["outer_ttl"], _int(ttl[0]))
    tunnel = tunnel_of(protocols)
    check("tunnel", row["tunnel"], tunnel)
    key = TUNNEL_KEYS.get(tunnel)
    if key:
        check("tunnel_id", row["tunnel_id"], _int(ref[key][0]) if ref[key] else -1)


def expected_layer(protocols: str) -> int:
    """Position of the first IP header in tshark's layer list."""
    names = protocols.split(":")
    return next((position for position, name in enumerate(names) if name in ("ip", "ipv6")), 0)


def compare_with_tshark(
    frame: pd.DataFrame, packets: list[dict[str, list[str]]], ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Every disagreement between the packet table and tshark, one line each (empty when they agree).

    ``ignore`` names fields where tshark is known to be wrong or to differ on purpose.
    """
    problems: list[str] = []
    if len(frame) != len(packets):
        return [f"{len(frame)} rows but tshark shows {len(packets)} frames"]
    rows: list[dict[str, Any]] = frame.to_dict(orient="records")
    for row, ref in zip(rows, packets, strict=True):
        number = row["index"]

        def check(what: str, ours: object, theirs: object, number: int = number) -> None:
            if ours != theirs and what not in ignore:
                problems.append(f"packet {number}: {what}: read_capture {ours!r}, tshark {theirs!r}")

        if ref["time"]:
            check("ts_ns", row["ts_ns"], epoch_ns(ref["time"][0]))
        check("wire_len", row["wire_len"], _int(ref["wire_len"][0]))
        check("cap_len", row["cap_len"], _int(ref["cap_len"][0]))
        if ref["sll_pkttype"]:
            pkttype = _int(ref["sll_pkttype"][0])
            check("direction", row["direction"], "out" if pkttype == 4 else "in" if pkttype <= 3 else "")
        elif ref["pkt_dir"]:
            flags = _int(ref["pkt_dir"][0])
            check("direction", row["direction"], {1: "in", 2: "out"}.get(flags, ""))
        if ref["sll_ifindex"]:
            check("iface", row["iface"], f"if{_int(ref['sll_ifindex'][0])}")
        elif ref["if_name"] and ref["if_name"][0] != "unknown":  # tshark's word for an unnamed interface
            check("iface", row["iface"], ref["if_name"][0])

        # The vlan column is the outer frame's; every other header is the innermost one diag opened.
        tags = ref["svlan"] or ref["vlan"]
        tagged = tags and tags_before_ip(ref["protocols"][0])
        if row["outer_src"] == "":
            check("outer_ttl", row["outer_ttl"], -1)
        else:
            protocols = ref["protocols"][0] if ref["protocols"] else ""
            if row["ip_version"] == 0:  # a tunnel carrying something other than IP: only the outer header
                _compare_tunnel(row, ref, check)
                continue
            if innermost_ip(protocols) == expected_layer(protocols):
                check("tunnel", row["tunnel"], "")  # diag opened a tunnel tshark did not
                continue
            _compare_tunnel(row, ref, check)
            ref = inner_view(ref)
        family = expected_family(ref["protocols"][0] if ref["protocols"] else "")
        if family == 4 and ref["ip_ver"] and ref["ip_ver"][0] != "4":
            family = 0  # tshark forced an IPv4 dissection on a header of another version
        if row["ip_version"] == 0:
            if family and not row["truncated"]:
                problems.append(f"packet {number}: tshark decodes IPv{family}, read_capture found no IP header")
            continue
        check("ip_version", row["ip_version"], family)
        # The outermost tag (an 802.1ad service tag when there is one), if it precedes the IP header;
        # tags of frames tunnelled inside (ERSPAN, VXLAN) come later in tshark's list.
        check("vlan", row["vlan"], _int(tags[0]) if tagged else -1)
        if row["ip_version"] == 4 and ref["ip_src"]:
            check("src", row["src"], ref["ip_src"][0])
            check("dst", row["dst"], ref["ip_dst"][0])
            check("ttl", row["ttl"], _int(ref["ip_ttl"][0]))
            check("ip_id", row["ip_id"], _int(ref["ip_id"][0]))
            check("ip_len", row["ip_len"], _int(ref["ip_len"][0]))
            check("proto", row["proto"], _int(ref["ip_proto"][0]))
            if ref["ip_frag"]:
                check("frag_offset", row["frag_offset"], 8 * _int(ref["ip_frag"][0]))  # tshark: 8-byte units
            if ref["ip_mf"]:
                check("more_fragments", row["more_fragments"], ref["ip_mf"][0] in ("1", "True"))
        elif row["ip_version"] == 6 and ref["ip6_src"]:
            check("src", row["src"], ref["ip6_src"][0])
            check("dst", row["dst"], ref["ip6_dst"][0])
            check("ttl", row["ttl"], _int(ref["ip6_hlim"][0]))
            if _int(ref["ip6_plen"][0]):  # 0: a jumbogram, whose length tshark shows elsewhere
                check("ip_len", row["ip_len"], 40 + _int(ref["ip6_plen"][0]))
            # A fragment header seen by tshark may belong to a datagram quoted inside ICMPv6.
            if ref["ip6_frag_id"] and (row["ip_id"] >= 0 or len(ref["ip6_frag_id"]) >= len(ref["ip6_src"])):
                check("ip_id", row["ip_id"], _int(ref["ip6_frag_id"][0]))
                check("frag_offset", row["frag_offset"], 8 * _int(ref["ip6_frag_off"][0]))
                check("more_fragments", row["more_fragments"], ref["ip6_frag_more"][0] in ("1", "True"))
        _compare_transport(row, ref, check)
    return problems


def _compare_transport(row: dict[str, Any], ref: dict[str, list[str]], check: Any) -> None:
    proto = row["proto"]
    if proto == 6 and row["sport"] >= 0 and ref["tcp_sport"]:
        check("sport", row["sport"], _int(ref["tcp_sport"][0]))
        check("dport", row["dport"], _int(ref["tcp_dport"][0]))
        check("seq", row["seq"], _int(ref["tcp_seq"][0]))
        flags = _int(ref["tcp_flags"][0])
        check("tcp_flags", row["tcp_flags"], flags & 0xFF)
        if flags & 0x10 and ref["tcp_ack"]:
            check("ack", row["ack"], _int(ref["tcp_ack"][0]))
        check("win", row["win"], _int(ref["tcp_win"][0]))
        if ref["tcp_len"] and row["payload_len"] >= 0:
            check("payload_len", row["payload_len"], _int(ref["tcp_len"][0]))
        check("mss", row["mss"], _int(ref["tcp_mss"][0]) if ref["tcp_mss"] else -1)
        check("wscale", row["wscale"], _int(ref["tcp_wscale"][0]) if ref["tcp_wscale"] else -1)
        check("sack_perm", row["sack_perm"], bool(ref["tcp_sack_perm"]))
        check("tsval", row["tsval"], _int(ref["tcp_tsval"][0]) if ref["tcp_tsval"] else -1)
        check("tsecr", row["tsecr"], _int(ref["tcp_tsecr"][0]) if ref["tcp_tsecr"] else -1)
    elif proto == 17 and row["sport"] >= 0 and ref["udp_sport"]:
        check("sport", row["sport"], _int(ref["udp_sport"][0]))
        check("dport", row["dport"], _int(ref["udp_dport"][0]))
        if row["payload_len"] >= 0:
            check("payload_len", row["payload_len"], _int(ref["udp_len"][0]) - 8)
    elif proto in (1, 58) and row["icmp_type"] >= 0:
        prefix = "icmp" if proto == 1 else "icmp6"
        if ref[f"{prefix}_type"]:
            check("icmp_type", row["icmp_type"], _int(ref[f"{prefix}_type"][0]))
            check("icmp_code", row["icmp_code"], _int(ref[f"{prefix}_code"][0]))
        _compare_quoted(row, ref, check, "ip" if proto == 1 else "ip6")


def _compare_quoted(row: dict[str, Any], ref: dict[str, list[str]], check: Any, ip: str) -> None:
    """The datagram inside an ICMP error: tshark's second IP header, first TCP/UDP header."""
    if row["inner_src"] == "" or len(ref[f"{ip}_src"]) < 2:
        return
    check("inner_src", row["inner_src"], ref[f"{ip}_src"][1])
    check("inner_dst", row["inner_dst"], ref[f"{ip}_dst"][1])
    if row["inner_sport"] >= 0:
        kind = "tcp" if row["inner_proto"] == 6 else "udp"
        if ref[f"{kind}_sport"]:
            check("inner_sport", row["inner_sport"], _int(ref[f"{kind}_sport"][0]))
            check("inner_dport", row["inner_dport"], _int(ref[f"{kind}_dport"][0]))
