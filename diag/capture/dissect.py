"""Decoding packet headers: one compiled pass over the packets of a batch.

Each packet is read front to back: link layer, VLAN tags, IPv4 or IPv6 (with
its extension headers), then TCP (with options), UDP or ICMP/ICMPv6 (with the
datagram an error quotes). A tunnel (VXLAN, Geneve, GRE, GRE in UDP, IP in
IP) is opened first: the row then describes the packet it carries, and the
outer header keeps only its addresses, the tunnel type and its VNI or key.
A field is read only when its bytes lie inside the captured packet (and, for
transport headers, inside the datagram), so no read leaves the buffer. A
packet stops being decoded as soon as its bytes run out or a header makes no
sense: it keeps what was read so far and the 'absent'
value of every other column, so damaged input never raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from diag.capture import linktypes as lt
from diag.capture.addresses import AddressColumn
from diag.capture.bytesview import ByteView, IntArray
from diag.capture.digest import payload_digest
from diag.capture.proto import GRE, ICMP, ICMP_ERROR_TYPES, ICMPV6, ICMPV6_ERROR_TYPES, IPIP, IPV6_IN_IP, TCP, UDP
from diag.capture.records import DIR_IN, DIR_OUT, Interface, RecordBatch
from diag.compiled import compiled

Bytes = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame inside GRE or Geneve
MAX_VLAN_TAGS = 4

# Tunnel types, the codes of the ``tunnel`` column (0: not tunnelled).
TUNNEL_NAMES = ["", "vxlan", "geneve", "gre", "gre-udp", "ip-in-ip"]
VXLAN, GENEVE, GRE_TUNNEL, GRE_UDP, IP_IN_IP = 1, 2, 3, 4, 5
VXLAN_PORTS = (4789, 8472)  # IANA's port and the Linux kernel's default
GENEVE_PORT = 6081
GRE_UDP_PORT = 4754
NOT_IP = -1  # the 'IP version' of what a tunnel carries when it is not IP
MAX_TUNNEL_DEPTH = 4  # tunnels inside tunnels opened before the reader stops and keeps what it has
GRE_CHECKSUM, GRE_ROUTING, GRE_KEY, GRE_SEQUENCE, GRE_VERSION = 0x8000, 0x4000, 0x2000, 0x1000, 0x0007

BSD_AF_INET = 2
BSD_AF_INET6_VALUES = (24, 28, 30)  # NetBSD/OpenBSD, FreeBSD, Darwin

VLAN_TPIDS = (0x8100, 0x88A8, 0x9100, 0x9200)
IPV6_FRAGMENT, IPV6_AH = 44, 51
IPV6_EXTENSIONS = (0, 43, 60, IPV6_FRAGMENT, IPV6_AH)  # hop-by-hop, routing, dest opts, fragment, AH
MAX_IPV6_EXTENSIONS = 8

NOP_NOP_TIMESTAMPS = 0x0101080A  # option kinds 1, 1, then 8 with length 10
USUAL_OPTIONS_LEN = 12
MAX_TCP_OPTIONS = 40  # at most 40 option bytes, so at most 40 options

# Integer columns decoded here and their 'absent' value (see diag.capture.columns).
INT_COLUMNS: dict[str, int] = {
    "vlan": -1,
    "ip_version": 0,
    "proto": -1,
    "sport": -1,
    "dport": -1,
    "ttl": -1,
    "ip_id": -1,
    "frag_offset": 0,
    "ip_len": -1,
    "tcp_flags": -1,
    "seq": -1,
    "ack": -1,
    "win": -1,
    "mss": -1,
    "wscale": -1,
    "tsval": -1,
    "tsecr": -1,
    "payload_len": -1,
    "icmp_type": -1,
    "icmp_code": -1,
    "inner_proto": -1,
    "inner_sport": -1,
    "inner_dport": -1,
    "tunnel": 0,  # a code of TUNNEL_NAMES, turned into the tunnel column by the reader
    "tunnel_id": -1,
    "outer_ttl": -1,
    "ifindex": -1,  # SLL2 interface index, turned into the iface column by the reader
}
BOOL_COLUMNS = ("more_fragments", "truncated", "sack_perm", "tunnel_broken")
ADDRESS_COLUMNS = ("src", "dst", "inner_src", "inner_dst", "outer_src", "outer_dst")
_ABSENT = np.array(list(INT_COLUMNS.values()), dtype=np.int64)

# Positions of the columns in the tuples of arrays the compiled loop fills.
_INT = {name: position for position, name in enumerate(INT_COLUMNS)}
VLAN, IP_VERSION, PROTO = _INT["vlan"], _INT["ip_version"], _INT["proto"]
SPORT, DPORT, TTL, IP_ID = _INT["sport"], _INT["dport"], _INT["ttl"], _INT["ip_id"]
FRAG_OFFSET, IP_LEN, TCP_FLAGS = _INT["frag_offset"], _INT["ip_len"], _INT["tcp_flags"]
SEQ, ACK, WIN, MSS, WSCALE = _INT["seq"], _INT["ack"], _INT["win"], _INT["mss"], _INT["wscale"]
TSVAL, TSECR, PAYLOAD_LEN = _INT["tsval"], _INT["tsecr"], _INT["payload_len"]
ICMP_TYPE, ICMP_CODE = _INT["icmp_type"], _INT["icmp_code"]
INNER_PROTO, INNER_SPORT, INNER_DPORT = _INT["inner_proto"], _INT["inner_sport"], _INT["inner_dport"]
IFINDEX, TUNNEL, TUNNEL_ID, OUTER_TTL = _INT["ifindex"], _INT["tunnel"], _INT["tunnel_id"], _INT["outer_ttl"]
MORE_FRAGMENTS = BOOL_COLUMNS.index("more_fragments")
TRUNCATED = BOOL_COLUMNS.index("truncated")
SACK_PERM = BOOL_COLUMNS.index("sack_perm")
TUNNEL_BROKEN = BOOL_COLUMNS.index("tunnel_broken")

# The addresses found, listed by the compiled loop in row order: for each pair
# of address columns (the packet's own, the quoted datagram's, the tunnel's outer header) and IP version,
# the rows and, for IPv4, the two values, for IPv6, the offset of the IP header
# (source at +8, destination at +24).
ADDRESS_PAIRS = (("src", "dst"), ("inner_src", "inner_dst"), ("outer_src", "outer_dst"))
OWN, QUOTED, OUTER = 0, 1, 2
FOUND_V4, FOUND_V6 = 0, 1
ROW, SOURCE, DESTINATION = 0, 1, 2
HEADER = 1
IPV6_SOURCE_AT, IPV6_DESTINATION_AT = 8, 24
# The packets with a transport payload, in row order: row, where it starts, how much of it was captured.
START, CAPTURED = 1, 2

IntColumns = tuple[IntArray, ...]
BoolColumns = tuple[BoolArray, ...]


@dataclass
class Decoded:
    """The decoded columns of one batch; address columns are filled into shared builders."""

    columns: dict[str, np.ndarray]
    direction: IntArray
    payload_digest: npt.NDArray[np.uint64]


@dataclass
class _Found:
    """What the compiled loop lists besides the columns (see ``ADDRESS_PAIRS`` and ``START``)."""

    counts: IntArray  # [pair, FOUND_V4 or FOUND_V6]
    ipv4: IntArray  # [pair, ROW/SOURCE/DESTINATION, i]
    ipv6: IntArray  # [pair, ROW/HEADER, i]
    payloads: IntArray  # [ROW/START/CAPTURED, i]

    @classmethod
    def empty(cls, count: int) -> _Found:
        return cls(
            counts=np.zeros((len(ADDRESS_PAIRS), 2), dtype=np.int64),
            ipv4=np.empty((len(ADDRESS_PAIRS), 3, count), dtype=np.int64),
            ipv6=np.empty((len(ADDRESS_PAIRS), 2, count), dtype=np.int64),
            payloads=np.empty((3, count), dtype=np.int64),
        )


def decode_batch(
    batch: RecordBatch, interfaces: list[Interface], addresses: dict[str, AddressColumn], row_base: int
) -> Decoded:
    """Decode every packet of ``batch``; addresses go to ``addresses`` at rows ``row_base + i``."""
    count = len(batch)
    view = batch.view
    # One array per column, not one 2-D block: the reader keeps some columns as
    # they are, and a row of a block would keep the whole block alive.
    ints = tuple(np.empty(count, dtype=np.int64) for _ in INT_COLUMNS)
    flags = tuple(np.zeros(count, dtype=bool) for _ in BOOL_COLUMNS)
    found = _Found.empty(count)
    direction = batch.direction.copy()
    payload_count = _decode_packets(
        view.u8_view,
        view.length,
        batch.data_off,
        batch.cap_len,
        batch.wire_len,
        batch.iface,
        np.array([iface.link_type for iface in interfaces], dtype=np.int64),
        _ABSENT,
        ints,
        flags,
        direction,
        found.counts,
        found.ipv4,
        found.ipv6,
        found.payloads,
    )
    _add_addresses(view, found, addresses, row_base)

    # The payload digest covers the payload bytes actually captured.
    digest = np.zeros(count, dtype=np.uint64)
    if payload_count:
        rows, starts, captured = found.payloads[:, :payload_count]
        digest[rows] = payload_digest(view, starts, captured)
    columns: dict[str, np.ndarray] = dict(zip(INT_COLUMNS, ints, strict=True))
    columns.update(zip(BOOL_COLUMNS, flags, strict=True))
    return Decoded(columns=columns, direction=direction, payload_digest=digest)


def _add_addresses(view: ByteView, found: _Found, addresses: dict[str, AddressColumn], row_base: int) -> None:
    """Hand each address column its IPv4 values and IPv6 bytes (copies: the lists are per batch)."""
    for pair, (source, destination) in enumerate(ADDRESS_PAIRS):
        listed = found.counts[pair, FOUND_V4]
        if listed:
            rows = found.ipv4[pair, ROW, :listed] + row_base
            # Copied as 32-bit values, which IPv4 addresses are: half the memory kept until the table is made.
            addresses[source].add_ipv4(rows, found.ipv4[pair, SOURCE, :listed].astype(np.uint32))
            addresses[destination].add_ipv4(rows, found.ipv4[pair, DESTINATION, :listed].astype(np.uint32))
        listed = found.counts[pair, FOUND_V6]
        if listed:
            rows = found.ipv6[pair, ROW, :listed] + row_base
            header = found.ipv6[pair, HEADER, :listed]
            addresses[source].add_ipv6(rows, view.block(header + IPV6_SOURCE_AT, 16))
            addresses[destination].add_ipv6(rows, view.block(header + IPV6_DESTINATION_AT, 16))


@compiled
def _decode_packets(
    data: Bytes,
    length: int,
    data_off: IntArray,
    cap_len: IntArray,
    wire_len: IntArray,
    iface: IntArray,
    iface_link: IntArray,
    absent: IntArray,
    ints: IntColumns,
    flags: BoolColumns,
    direction: IntArray,
    address_counts: IntArray,
    ipv4_found: IntArray,
    ipv6_found: IntArray,
    payloads: IntArray,
) -> int:
    """Decode each packet into row ``i`` of the columns (``flags`` start all False, ``address_counts`` at 0).

    Lists the addresses and the payloads found (see ``ADDRESS_PAIRS``) and
    returns how many payloads it listed.

    The common path (link layer, IPv4, the IPv6 header, TCP, UDP, the ICMP
    header) is written out in this one loop: a call to another compiled
    function that takes an array costs reference counting on every call, far
    more than decoding a header. Rarer or longer parts (IPv6 extension
    headers, TCP options other than the usual ones, the datagram an ICMP
    error quotes) are pure helpers that return what they read.
    """
    for column in range(len(absent)):
        ints[column][:] = absent[column]
    payload_count = 0
    # An unsigned row number: numba then knows it is not negative and adds no
    # negative-index wraparound to each of the many stores below.
    for row in range(np.uint64(len(data_off))):
        start = data_off[row]
        # Records lie inside the buffer's data; the bound only makes sure no read can leave it.
        end = min(start + cap_len[row], length)
        if start < 0:
            continue

        # Link layer: where the network header starts (net) and which one it is (family 4, 6 or 0).
        interface = iface[row]  # the containers only list packets of interfaces they described
        link_type = iface_link[interface] if 0 <= interface < len(iface_link) else -1
        net = -1
        family = 0
        ethertype = -1  # set for the link types that name their payload by an ethertype
        if link_type == lt.EN10MB:
            if end - start >= 14:
                ethertype, net = _be16(data, start + 12), start + 14
        elif link_type == lt.LINUX_SLL:
            if end - start >= 16:
                direction[row] = _linux_direction(_be16(data, start), direction[row])
                ethertype, net = _be16(data, start + 14), start + 16
        elif link_type == lt.LINUX_SLL2:
            if end - start >= 20:
                ints[IFINDEX][row] = _be32(data, start + 4)
                direction[row] = _linux_direction(_u8(data, start + 10), direction[row])
                ethertype, net = _be16(data, start), start + 20
        elif link_type in (lt.RAW, lt.DLT_RAW_LINUX, lt.DLT_RAW_OPENBSD, lt.IPV4, lt.IPV6):
            if end > start:
                net = start
                family = _raw_family(link_type, _u8(data, start) >> 4)
        elif link_type in (lt.NULL, lt.LOOP) and end - start >= 4:
            net = start + 4
            family = _bsd_family(link_type, _le32(data, start), _be32(data, start))
        if ethertype >= 0:
            # 802.1Q/802.1ad tags: skipped, the outermost gives the VLAN id.
            for _ in range(MAX_VLAN_TAGS):
                if not (ethertype in VLAN_TPIDS and net + 4 <= end):
                    break
                if ints[VLAN][row] < 0:
                    ints[VLAN][row] = _be16(data, net) & 0x0FFF
                ethertype = _be16(data, net + 2)
                net += 4
            family = 4 if ethertype == ETHERTYPE_IPV4 else 6 if ethertype == ETHERTYPE_IPV6 else 0

        # Network layer: where the datagram ends and where its transport header starts.
        # A header that leaves the length at 0 (segmentation offload, BIG TCP, jumbograms)
        # ends where the packet ended on the wire, since then only the capture knows it.
        wire_end = start + wire_len[row]

        # Tunnels: one look at the protocol (and the UDP port) in the common path; only
        # the packets that may carry another go to the helper, which opens them.
        carrier = False
        udp = -1
        if family == 4 and end - net >= 20:
            outer_proto = _u8(data, net + 9)
            if outer_proto == UDP:
                udp = net + (_u8(data, net) & 0x0F) * 4
                carrier = udp + 4 <= end and _is_tunnel_port(_be16(data, udp + 2))
            else:
                carrier = outer_proto in (GRE, IPIP, IPV6_IN_IP)
        elif family == 6 and end - net >= 40:
            outer_proto = _u8(data, net + 6)
            if outer_proto == UDP:
                carrier = net + 44 <= end and _is_tunnel_port(_be16(data, net + 42))
            else:
                carrier = outer_proto in (GRE, IPIP, IPV6_IN_IP) or outer_proto in IPV6_EXTENSIONS
        if carrier:
            # The usual overlay packet, VXLAN or Geneve over IPv4 carrying an untagged IPv4 or IPv6 frame
            # with no tunnel inside, is opened right here: a call per packet would cost more than the
            # reading. Anything else, damaged ones included, goes to decapsulate, which judges it fully.
            inner, inner_family, inner_end = udp + 30, 0, wire_end  # UDP 8, VXLAN or Geneve 8, Ethernet 14
            kind = 0
            if udp >= 0 and _u8(data, net) >> 4 == 4 and _be16(data, net + 6) & 0x1FFF == 0:
                total_len = _be16(data, net + 2)
                inner_end = min(net + total_len, wire_end) if total_len else wire_end
                port = _be16(data, udp + 2)
                if port == VXLAN_PORTS[0] or port == VXLAN_PORTS[1]:
                    kind = VXLAN
                elif (
                    port == GENEVE_PORT
                    and udp + 16 <= min(inner_end, end)
                    and _u8(data, udp + 8) >> 6 == 0  # version 0 carrying Ethernet, after its options
                    and _be16(data, udp + 10) == ETHERTYPE_TEB
                ):
                    kind = GENEVE
                    inner += (_u8(data, udp + 8) & 0x3F) * 4
                carried = -1
                if kind and inner + 40 <= min(inner_end, end):
                    ethertype = _be16(data, inner - 2)
                    first = _u8(data, inner)
                    if ethertype == ETHERTYPE_IPV4 and first >> 4 == 4 and first & 0x0F >= 5:
                        carried = _u8(data, inner + 9)
                        inner_family = 4 if carried in (TCP, ICMP, UDP) else 0
                    elif ethertype == ETHERTYPE_IPV6 and first >> 4 == 6:
                        carried = _u8(data, inner + 6)
                        inner_family = 6 if carried in (TCP, ICMPV6, UDP) else 0
                    if carried == UDP and inner_family:
                        # Not a tunnel in the tunnel (its ports come first in either IP header).
                        at = inner + (first & 0x0F) * 4 if inner_family == 4 else inner + 40
                        if at + 4 > min(inner_end, end) or _is_tunnel_port(_be16(data, at + 2)):
                            inner_family = 0
            if inner_family:
                ints[TUNNEL][row] = kind
                ints[TUNNEL_ID][row] = (_be16(data, udp + 12) << 8) | _u8(data, udp + 14)
            else:
                tunnel, tunnel_id, broken, inner, inner_family, inner_end = decapsulate(
                    data, net, family, end, wire_end
                )
                if tunnel:
                    ints[TUNNEL][row] = tunnel
                    ints[TUNNEL_ID][row] = tunnel_id
                    flags[TUNNEL_BROKEN][row] = broken
            if inner_family:
                if family == 4:
                    _list_ipv4(address_counts, ipv4_found, OUTER, row, _be32(data, net + 12), _be32(data, net + 16))
                    ints[OUTER_TTL][row] = _u8(data, net + 8)
                else:
                    _list_ipv6(address_counts, ipv6_found, OUTER, row, net)
                    ints[OUTER_TTL][row] = _u8(data, net + 7)  # hop limit
                net, family, wire_end = inner, inner_family, inner_end

        if family == 4:
            if end - net < 20 or _u8(data, net) >> 4 != 4 or _u8(data, net) & 0x0F < 5:
                flags[TRUNCATED][row] = True  # an IPv4 ethertype without a whole IPv4 header
                continue
            header_len = (_u8(data, net) & 0x0F) * 4
            total_len = _be16(data, net + 2)
            if total_len == 0:
                total_len = wire_end - net
            flags_frag = _be16(data, net + 6)
            frag_offset = (flags_frag & 0x1FFF) * 8
            ints[IP_VERSION][row] = 4
            ints[IP_LEN][row] = total_len
            ints[IP_ID][row] = _be16(data, net + 4)
            flags[MORE_FRAGMENTS][row] = (flags_frag & 0x2000) != 0
            ints[FRAG_OFFSET][row] = frag_offset
            ints[TTL][row] = _u8(data, net + 8)
            proto = _u8(data, net + 9)
            ints[PROTO][row] = proto
            _list_ipv4(address_counts, ipv4_found, OWN, row, _be32(data, net + 12), _be32(data, net + 16))
            # A header that claims more than went on the wire is believed only as far as the wire goes.
            ip_end = min(net + total_len, wire_end)
            flags[TRUNCATED][row] = end < ip_end
            if frag_offset != 0 or header_len > total_len or net + header_len > end:
                continue  # a later fragment, or a header longer than the datagram or the capture
            transport = net + header_len
        elif family == 6:
            if end - net < 40 or _u8(data, net) >> 4 != 6:
                flags[TRUNCATED][row] = True
                continue
            ipv6_payload_len = _be16(data, net + 4)
            if ipv6_payload_len == 0:
                ipv6_payload_len = wire_end - net - 40
            ints[IP_VERSION][row] = 6
            ints[IP_LEN][row] = 40 + ipv6_payload_len
            ints[TTL][row] = _u8(data, net + 7)
            _list_ipv6(address_counts, ipv6_found, OWN, row, net)
            ip_end = min(net + 40 + ipv6_payload_len, wire_end)
            flags[TRUNCATED][row] = end < ip_end
            proto, transport, frag_offset, more, ident = walk_ipv6_extensions(
                data, net + 40, _u8(data, net + 6), min(ip_end, end)
            )
            ints[PROTO][row] = proto
            ints[FRAG_OFFSET][row] = frag_offset
            flags[MORE_FRAGMENTS][row] = more != 0
            ints[IP_ID][row] = ident
            if transport < 0:
                continue
        else:
            continue

        # Transport layer: its bytes end at the datagram's end or the capture's.
        limit = min(ip_end, end)
        payload = -1
        payload_len = -1
        if proto == TCP:
            if limit - transport < 20:
                continue
            ints[SPORT][row] = _be16(data, transport)
            ints[DPORT][row] = _be16(data, transport + 2)
            ints[SEQ][row] = _be32(data, transport + 4)
            ints[ACK][row] = _be32(data, transport + 8)
            header_len = (_u8(data, transport + 12) >> 4) * 4
            ints[TCP_FLAGS][row] = _u8(data, transport + 13)
            ints[WIN][row] = _be16(data, transport + 14)
            if header_len < 20 or transport + header_len > ip_end:
                continue
            payload = transport + header_len
            payload_len = ip_end - payload
            options, options_end = transport + 20, min(payload, limit)
            # Nearly every segment of a Linux connection carries exactly NOP, NOP, timestamps:
            # read at their fixed places, as the general walk would find them.
            if options_end - options == USUAL_OPTIONS_LEN and _be32(data, options) == NOP_NOP_TIMESTAMPS:
                ints[TSVAL][row] = _be32(data, options + 4)
                ints[TSECR][row] = _be32(data, options + 8)
            elif header_len > 20:
                mss, wscale, sack_perm, tsval, tsecr = _tcp_options(data, options, options_end)
                ints[MSS][row] = mss
                ints[WSCALE][row] = wscale
                flags[SACK_PERM][row] = sack_perm
                ints[TSVAL][row] = tsval
                ints[TSECR][row] = tsecr
        elif proto == UDP:
            if limit - transport < 8:
                continue
            ints[SPORT][row] = _be16(data, transport)
            ints[DPORT][row] = _be16(data, transport + 2)
            udp_len = _be16(data, transport + 4)
            if udp_len >= 8:
                payload = transport + 8
                payload_len = udp_len - 8
        elif proto in (ICMP, ICMPV6):
            if limit - transport < 4:
                continue
            icmp_type = _u8(data, transport)
            ints[ICMP_TYPE][row] = icmp_type
            ints[ICMP_CODE][row] = _u8(data, transport + 1)
            if ip_end - transport >= 8:
                payload = transport + 8
                payload_len = ip_end - payload
            if _is_icmp_error(proto, icmp_type):
                quoted = transport + 8
                version, inner_proto, inner_sport, inner_dport = _quoted_datagram(data, proto, quoted, limit)
                if version == 4:
                    source, destination = _be32(data, quoted + 12), _be32(data, quoted + 16)
                    _list_ipv4(address_counts, ipv4_found, QUOTED, row, source, destination)
                elif version == 6:
                    _list_ipv6(address_counts, ipv6_found, QUOTED, row, quoted)
                if version:
                    ints[INNER_PROTO][row] = inner_proto
                    ints[INNER_SPORT][row] = inner_sport
                    ints[INNER_DPORT][row] = inner_dport
        if payload >= 0:
            ints[PAYLOAD_LEN][row] = payload_len
            # The digest covers the payload bytes actually captured.
            stop = min(limit, payload + max(payload_len, 0))
            payloads[ROW, payload_count] = row
            payloads[START, payload_count] = payload
            payloads[CAPTURED, payload_count] = max(stop - payload, 0)
            payload_count += 1
    return payload_count


@compiled
def _is_tunnel_port(port: int) -> bool:
    return port in (VXLAN_PORTS[0], VXLAN_PORTS[1], GENEVE_PORT, GRE_UDP_PORT)


@compiled
def decapsulate(data: Bytes, net: int, family: int, end: int, wire_end: int) -> tuple[int, int, bool, int, int, int]:
    """Open the tunnels around the IP packet at ``net``, outermost first, up to ``MAX_TUNNEL_DEPTH`` deep.

    Returns (tunnel type of the outermost tunnel or 0, its VNI or GRE key or
    -1, broken, the innermost IP header's offset, its version, where its
    datagram ends on the wire). The version is 0 when nothing was opened:
    no tunnel, or one whose header, or the IP header inside, is cut short or
    makes no sense (then ``broken``); it is ``NOT_IP`` when the tunnel
    carries something other than IP (ARP, an ERSPAN mirror), which is then
    no more an IP packet than it would be captured bare. A tunnel inside a
    tunnel that is broken leaves the packet opened as far as it went.
    """
    tunnel = 0
    tunnel_id = -1
    opened_net, opened_family, opened_end = net, 0, wire_end
    for depth in range(MAX_TUNNEL_DEPTH):
        proto, transport, ip_end = _ip_payload(data, net, family, end, wire_end)
        if transport < 0:
            break
        limit = min(ip_end, end)
        kind, ident, inner, inner_family, broken = _tunnel_header(data, proto, transport, limit)
        if kind == 0:
            break
        if depth == 0:
            tunnel, tunnel_id = kind, ident
        if not broken and inner_family == 4:
            broken = limit - inner < 20 or _u8(data, inner) >> 4 != 4 or _u8(data, inner) & 0x0F < 5
        elif not broken and inner_family == 6:
            broken = limit - inner < 40 or _u8(data, inner) >> 4 != 6
        if broken:
            return tunnel, tunnel_id, True, opened_net, opened_family, opened_end
        if inner_family == 0:
            return tunnel, tunnel_id, False, inner, NOT_IP, ip_end  # a tunnel carrying something other than IP
        net, family, wire_end = inner, inner_family, ip_end
        opened_net, opened_family, opened_end = net, family, wire_end
    return tunnel, tunnel_id, False, opened_net, opened_family, opened_end


@compiled
def _ip_payload(data: Bytes, net: int, family: int, end: int, wire_end: int) -> tuple[int, int, int]:
    """(protocol, offset of the upper-layer header or -1, end of the datagram) of a whole IP header at ``net``.

    The upper layer is -1 for a later fragment, a header longer than the
    datagram or the capture, or extension headers cut short: as the main
    loop judges them.
    """
    if family == 4:
        if end - net < 20 or _u8(data, net) >> 4 != 4 or _u8(data, net) & 0x0F < 5:
            return -1, -1, wire_end
        header_len = (_u8(data, net) & 0x0F) * 4
        total_len = _be16(data, net + 2)
        if total_len == 0:
            total_len = wire_end - net
        ip_end = min(net + total_len, wire_end)
        proto = _u8(data, net + 9)
        if _be16(data, net + 6) & 0x1FFF != 0 or header_len > total_len or net + header_len > end:
            return proto, -1, ip_end
        return proto, net + header_len, ip_end
    if end - net < 40 or _u8(data, net) >> 4 != 6:
        return -1, -1, wire_end
    payload_len = _be16(data, net + 4)
    if payload_len == 0:
        payload_len = wire_end - net - 40
    ip_end = min(net + 40 + payload_len, wire_end)
    proto, upper, _, _, _ = walk_ipv6_extensions(data, net + 40, _u8(data, net + 6), min(ip_end, end))
    return proto, upper, ip_end


@compiled
def _tunnel_header(data: Bytes, proto: int, transport: int, limit: int) -> tuple[int, int, int, int, bool]:
    """The tunnel an IP payload of protocol ``proto`` at ``transport`` is, if any.

    Returns (tunnel type or 0, VNI or key or -1, offset of the carried IP
    header, its version or 0 when it carries no IP, broken). Only whole
    headers are read: a header cut short at ``limit`` is broken.
    """
    if proto in (IPIP, IPV6_IN_IP):
        return IP_IN_IP, -1, transport, 4 if proto == IPIP else 6, False
    if proto == GRE:
        inner, inner_family, key, broken = _gre(data, transport, limit)
        if inner == -2:
            return 0, -1, -1, 0, False  # GRE of another version (PPTP): not an overlay tunnel
        return GRE_TUNNEL, key, inner, inner_family, broken
    if proto != UDP or limit - transport < 8:
        return 0, -1, -1, 0, False
    port = _be16(data, transport + 2)
    header = transport + 8
    if port == VXLAN_PORTS[0] or port == VXLAN_PORTS[1]:
        if limit - header < 8:
            return VXLAN, -1, -1, 0, True
        vni = (_be16(data, header + 4) << 8) | _u8(data, header + 6)
        inner, inner_family, broken = _ethernet_payload(data, header + 8, limit)
        return VXLAN, vni, inner, inner_family, broken
    if port == GENEVE_PORT:
        if limit - header < 8:
            return GENEVE, -1, -1, 0, True
        vni = (_be16(data, header + 4) << 8) | _u8(data, header + 6)
        options_len = (_u8(data, header) & 0x3F) * 4
        payload = header + 8 + options_len
        if _u8(data, header) >> 6 != 0 or payload > limit:
            return GENEVE, vni, -1, 0, True  # a version this reader does not know, or options cut short
        inner, inner_family, broken = _typed_payload(data, _be16(data, header + 2), payload, limit)
        return GENEVE, vni, inner, inner_family, broken
    if port == GRE_UDP_PORT:
        inner, inner_family, key, broken = _gre(data, header, limit)
        if inner == -2:
            return GRE_UDP, -1, -1, 0, True  # RFC 8086 carries GRE version 0 only
        return GRE_UDP, key, inner, inner_family, broken
    return 0, -1, -1, 0, False


@compiled
def _gre(data: Bytes, at: int, limit: int) -> tuple[int, int, int, bool]:
    """(offset of the payload, its IP version or 0, key or -1, broken) of the GRE header at ``at``.

    The offset is -2 for a GRE version other than 0. RFC 2784 has the
    receiver drop a packet with the routing bit set: broken here too.
    """
    if limit - at < 4:
        return -1, 0, -1, True
    bits = _be16(data, at)
    if bits & GRE_VERSION != 0:
        return -2, 0, -1, False
    if bits & GRE_ROUTING:
        return -1, 0, -1, True
    header_len = 4
    if bits & GRE_CHECKSUM:
        header_len += 4  # checksum and a reserved half-word
    key = -1
    if bits & GRE_KEY:
        if limit - at < header_len + 4:
            return -1, 0, -1, True
        key = _be32(data, at + header_len)
        header_len += 4
    if bits & GRE_SEQUENCE:
        header_len += 4
    if at + header_len > limit:
        return -1, 0, key, True
    inner, inner_family, broken = _typed_payload(data, _be16(data, at + 2), at + header_len, limit)
    return inner, inner_family, key, broken


@compiled
def _typed_payload(data: Bytes, ethertype: int, at: int, limit: int) -> tuple[int, int, bool]:
    """(offset of the IP header, its version or 0, broken) of a payload that an ethertype names."""
    if ethertype == ETHERTYPE_IPV4:
        return at, 4, False
    if ethertype == ETHERTYPE_IPV6:
        return at, 6, False
    if ethertype == ETHERTYPE_TEB:
        return _ethernet_payload(data, at, limit)
    return -1, 0, False


@compiled
def _ethernet_payload(data: Bytes, at: int, limit: int) -> tuple[int, int, bool]:
    """(offset of the IP header, its version or 0, broken) inside the Ethernet frame at ``at`` (VLAN tags skipped)."""
    if limit - at < 14:
        return -1, 0, True
    ethertype = _be16(data, at + 12)
    net = at + 14
    for _ in range(MAX_VLAN_TAGS):
        if ethertype not in VLAN_TPIDS:
            break
        if net + 4 > limit:
            return -1, 0, True
        ethertype = _be16(data, net + 2)
        net += 4
    if ethertype == ETHERTYPE_IPV4:
        return net, 4, False
    if ethertype == ETHERTYPE_IPV6:
        return net, 6, False
    return -1, 0, False


@compiled
def _list_ipv4(counts: IntArray, found: IntArray, pair: int, row: int, source: int, destination: int) -> None:
    listed = counts[pair, FOUND_V4]
    found[pair, ROW, listed] = row
    found[pair, SOURCE, listed] = source
    found[pair, DESTINATION, listed] = destination
    counts[pair, FOUND_V4] = listed + 1


@compiled
def _list_ipv6(counts: IntArray, found: IntArray, pair: int, row: int, header: int) -> None:
    listed = counts[pair, FOUND_V6]
    found[pair, ROW, listed] = row
    found[pair, HEADER, listed] = header
    counts[pair, FOUND_V6] = listed + 1


# Byte reads. Offsets are never negative: an unsigned index spares the
# negative-index wraparound numba would otherwise add to every read.
@compiled
def _u8(data: Bytes, at: int) -> int:
    return int(np.int64(data[np.uint64(at)]))


@compiled
def _be16(data: Bytes, at: int) -> int:
    return (_u8(data, at) << 8) | _u8(data, at + 1)


@compiled
def _be32(data: Bytes, at: int) -> int:
    return (_be16(data, at) << 16) | _be16(data, at + 2)


@compiled
def _le32(data: Bytes, at: int) -> int:
    return (_u8(data, at + 3) << 24) | (_u8(data, at + 2) << 16) | (_u8(data, at + 1) << 8) | _u8(data, at)


@compiled
def _linux_direction(packet_type: int, known: int) -> int:
    """Linux packet types: 0-3 arrived (to us, broadcast, multicast, to another host), 4 we sent."""
    if packet_type == 4:
        return DIR_OUT
    if packet_type <= 3:
        return DIR_IN
    return known


@compiled
def _raw_family(link_type: int, version: int) -> int:
    """RAW says "IPv4 or IPv6, see the version"; IPV4 and IPV6 fix the version."""
    if link_type == lt.IPV4:
        return 4 if version == 4 else 0
    if link_type == lt.IPV6:
        return 6 if version == 6 else 0
    return version if version == 4 or version == 6 else 0


@compiled
def _bsd_family(link_type: int, little_endian: int, big_endian: int) -> int:
    """The IP version of a NULL or LOOP packet from the address family in its 4-byte header."""
    family = big_endian
    # NULL carries the address family in the byte order of the machine that wrote it.
    if link_type == lt.NULL and little_endian <= 0xFFFF:
        family = little_endian
    if family == BSD_AF_INET:
        return 4
    return 6 if family in BSD_AF_INET6_VALUES else 0


@compiled
def _is_icmp_error(icmp_proto: int, icmp_type: int) -> bool:
    if icmp_proto == ICMP:  # unreachable, source quench, redirect, time exceeded, parameter problem
        return icmp_type in ICMP_ERROR_TYPES
    return icmp_type in ICMPV6_ERROR_TYPES


@compiled
def walk_ipv6_extensions(data: Bytes, pos: int, next_header: int, limit: int) -> tuple[int, int, int, int, int]:
    """Follow IPv6 extension headers from ``pos`` to the upper-layer header.

    Returns (upper-layer protocol, its offset or -1 when not reachable,
    fragment offset in bytes, M flag, fragment identification or -1).
    """
    frag_offset = 0
    more = 0
    ident = -1
    for _ in range(MAX_IPV6_EXTENSIONS):
        if next_header not in IPV6_EXTENSIONS:
            break
        if pos + 8 > limit:
            return next_header, -1, frag_offset, more, ident  # an extension header cut short
        if next_header == IPV6_FRAGMENT:
            header_len = 8
            frag_field = _be16(data, pos + 2)
            frag_offset = (frag_field >> 3) * 8
            more = frag_field & 1
            ident = _be32(data, pos + 4)
        elif next_header == IPV6_AH:
            header_len = (_u8(data, pos + 1) + 2) * 4
        else:
            header_len = (_u8(data, pos + 1) + 1) * 8
        next_header = _u8(data, pos)
        pos += header_len
    # Past the last extension the upper-layer header must be in the datagram, and not a later fragment.
    upper = pos if frag_offset == 0 and pos <= limit else -1
    return next_header, upper, frag_offset, more, ident


@compiled
def _tcp_options(data: Bytes, pos: int, stop: int) -> tuple[int, int, bool, int, int]:
    """(mss, wscale, sack_perm, tsval, tsecr) from the option list in ``[pos, stop)``, -1 when absent.

    An option is taken only when it fits whole; the walk ends at the end of
    the list or at a length that cannot be right.
    """
    mss = wscale = tsval = tsecr = -1
    sack_perm = False
    for _ in range(MAX_TCP_OPTIONS):
        if pos >= stop:
            break
        kind = _u8(data, pos)
        if kind == 0:  # end of list
            break
        if kind == 1:  # no-operation
            pos += 1
            continue
        if pos + 1 >= stop:
            break  # no room for a length byte, so no option fits
        length = _u8(data, pos + 1)
        if length < 2:
            break
        if pos + length <= stop:
            if kind == 2 and length == 4:
                mss = _be16(data, pos + 2)
            elif kind == 3 and length == 3:
                wscale = _u8(data, pos + 2)
            elif kind == 4 and length == 2:
                sack_perm = True
            elif kind == 8 and length == 10:
                tsval = _be32(data, pos + 2)
                tsecr = _be32(data, pos + 6)
        pos += length
    return mss, wscale, sack_perm, tsval, tsecr


@compiled
def _quoted_datagram(data: Bytes, icmp_proto: int, inner: int, limit: int) -> tuple[int, int, int, int]:
    """The datagram an ICMP error quotes at ``inner``: its addresses, protocol and ports tie the error to its flow.

    Returns (IP version, protocol, source port, destination port): the
    version is 0 when no whole IP header of the version the ICMP flavour
    implies is quoted, the ports are -1 when not quoted.
    """
    if icmp_proto == ICMP:
        if limit - inner < 20 or _u8(data, inner) >> 4 != 4 or _u8(data, inner) & 0x0F < 5:
            return 0, -1, -1, -1
        version = 4
        proto = _u8(data, inner + 9)
        not_later_fragment = _be16(data, inner + 6) & 0x1FFF == 0
        upper = inner + (_u8(data, inner) & 0x0F) * 4 if not_later_fragment else -1
    else:
        if limit - inner < 40 or _u8(data, inner) >> 4 != 6:
            return 0, -1, -1, -1
        version = 6
        proto, upper, _, _, _ = walk_ipv6_extensions(data, inner + 40, _u8(data, inner + 6), limit)
    if upper >= 0 and upper + 4 <= limit and proto in (TCP, UDP):
        return version, proto, _be16(data, upper), _be16(data, upper + 2)
    return version, proto, -1, -1
