"""Decoding packet headers for a whole batch at once.

Every step works on arrays of byte offsets: "the IP header of these rows
starts here", "their TCP header starts there". A row leaves a step (and keeps
the column's 'absent' value) as soon as its bytes run out or a header makes no
sense, so a damaged packet yields what could be read of it and never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from diag.capture import linktypes as lt
from diag.capture.addresses import AddressColumn
from diag.capture.arrays import distinct, is_one_of
from diag.capture.bytesview import ByteView, IntArray
from diag.capture.digest import payload_digest
from diag.capture.records import DIR_IN, DIR_OUT, Interface, RecordBatch

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_TPIDS = np.array([0x8100, 0x88A8, 0x9100, 0x9200], dtype=np.int64)
MAX_VLAN_TAGS = 4

BSD_AF_INET = 2
BSD_AF_INET6 = np.array([24, 28, 30], dtype=np.int64)  # NetBSD/OpenBSD, FreeBSD, Darwin

IPV6_EXTENSIONS = np.array([0, 43, 60, 44, 51], dtype=np.int64)  # hop-by-hop, routing, dest opts, fragment, AH
IPV6_FRAGMENT = 44
IPV6_AH = 51
MAX_IPV6_EXTENSIONS = 8

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
ICMP_ERRORS = np.array([3, 4, 5, 11, 12], dtype=np.int64)  # unreachable, quench, redirect, time exceeded, param
ICMPV6_ERRORS = np.array([1, 2, 3, 4], dtype=np.int64)  # unreachable, too big, time exceeded, param problem
NOP_NOP_TIMESTAMPS = 0x0101080A  # option kinds 1, 1, then 8 with length 10
USUAL_OPTIONS_LEN = 12

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
    "ifindex": -1,  # SLL2 interface index, turned into the iface column by the reader
}
BOOL_COLUMNS = ("more_fragments", "truncated", "sack_perm")
ADDRESS_COLUMNS = ("src", "dst", "inner_src", "inner_dst")


@dataclass
class Decoded:
    """The decoded columns of one batch; address columns are filled into shared builders."""

    columns: dict[str, np.ndarray]
    direction: IntArray
    payload_digest: npt.NDArray[np.uint64]


def decode_batch(
    batch: RecordBatch, interfaces: list[Interface], addresses: dict[str, AddressColumn], row_base: int
) -> Decoded:
    """Decode every packet of ``batch``; addresses go to ``addresses`` at rows ``row_base + i``."""
    count = len(batch)
    cols: dict[str, np.ndarray] = {name: np.full(count, absent, dtype=np.int64) for name, absent in INT_COLUMNS.items()}
    for name in BOOL_COLUMNS:
        cols[name] = np.zeros(count, dtype=bool)
    view = batch.view
    end = batch.data_off + batch.cap_len  # end of the captured bytes
    iface_link = np.array([iface.link_type for iface in interfaces], dtype=np.int64)
    link = iface_link[batch.iface]
    direction = batch.direction.copy()

    # Link layer: where the network header starts and which one it is (4, 6 or 0).
    net = np.full(count, -1, dtype=np.int64)
    family = np.zeros(count, dtype=np.int64)
    for link_type in distinct(link):
        rows = np.flatnonzero(link == link_type)
        _decode_link(view, int(link_type), rows, batch.data_off[rows], end[rows], net, family, cols, direction)

    ip_end = np.full(count, -1, dtype=np.int64)
    transport = np.full(count, -1, dtype=np.int64)
    # Where the packet ended on the wire: the datagram's end when its header leaves the length
    # at 0 (segmentation offload, BIG TCP), since then only the capture knows it.
    wire_end = batch.data_off + batch.wire_len
    for version, decode in ((4, _decode_ipv4), (6, _decode_ipv6)):
        rows = np.flatnonzero(family == version)
        decode(view, rows, net, end, wire_end, cols, ip_end, transport, addresses, row_base)

    payload_start = np.full(count, -1, dtype=np.int64)
    limit = np.minimum(ip_end, end)  # transport bytes end at the datagram's end or the capture's
    proto = cols["proto"]
    has_transport = transport >= 0
    _decode_tcp(view, np.flatnonzero(has_transport & (proto == TCP)), transport, limit, ip_end, cols, payload_start)
    _decode_udp(view, np.flatnonzero(has_transport & (proto == UDP)), transport, limit, cols, payload_start)
    for icmp_proto in (ICMP, ICMPV6):
        rows = np.flatnonzero(has_transport & (proto == icmp_proto))
        _decode_icmp(view, rows, icmp_proto, transport, limit, ip_end, cols, payload_start, addresses, row_base)

    # The payload digest covers the payload bytes actually captured.
    rows = np.flatnonzero(payload_start >= 0)
    digest = np.zeros(count, dtype=np.uint64)
    if len(rows):
        starts = payload_start[rows]
        stop = np.minimum(limit[rows], starts + np.maximum(cols["payload_len"][rows], 0))
        digest[rows] = payload_digest(view, starts, np.maximum(stop - starts, 0))
    return Decoded(columns=cols, direction=direction, payload_digest=digest)


def _decode_link(
    view: ByteView,
    link_type: int,
    rows: IntArray,
    start: IntArray,
    end: IntArray,
    net: IntArray,
    family: IntArray,
    cols: dict[str, np.ndarray],
    direction: IntArray,
) -> None:
    """Fill ``net`` and ``family`` for the rows of one link type."""
    if link_type == lt.EN10MB:
        ok = end - start >= 14
        rows, start, end = rows[ok], start[ok], end[ok]
        _after_ethertype(view, rows, view.be16(start + 12), start + 14, end, net, family, cols)
    elif link_type == lt.LINUX_SLL:
        ok = end - start >= 16
        rows, start, end = rows[ok], start[ok], end[ok]
        _set_direction(direction, rows, view.be16(start))
        _after_ethertype(view, rows, view.be16(start + 14), start + 16, end, net, family, cols)
    elif link_type == lt.LINUX_SLL2:
        ok = end - start >= 20
        rows, start, end = rows[ok], start[ok], end[ok]
        cols["ifindex"][rows] = view.be32(start + 4)
        _set_direction(direction, rows, view.u8(start + 10))
        _after_ethertype(view, rows, view.be16(start), start + 20, end, net, family, cols)
    elif link_type in (lt.RAW, lt.DLT_RAW_LINUX, lt.DLT_RAW_OPENBSD, lt.IPV4, lt.IPV6):
        ok = end > start
        rows, start = rows[ok], start[ok]
        version = view.u8(start) >> 4
        net[rows] = start
        # RAW says "IPv4 or IPv6, see the version"; IPV4 and IPV6 fix the version.
        allowed = {lt.IPV4: (4,), lt.IPV6: (6,)}.get(link_type, (4, 6))
        family[rows] = np.where(is_one_of(version, allowed), version, 0)
    elif link_type in (lt.NULL, lt.LOOP):
        ok = end - start >= 4
        rows, start = rows[ok], start[ok]
        if link_type == lt.LOOP:
            af = view.be32(start)
        else:
            # NULL carries the address family in the byte order of the machine that wrote it.
            af = view.le32(start)
            swapped = af > 0xFFFF
            af[swapped] = view.be32(start[swapped])
        net[rows] = start + 4
        family[rows] = np.where(af == BSD_AF_INET, 4, np.where(is_one_of(af, BSD_AF_INET6), 6, 0))


def _set_direction(direction: IntArray, rows: IntArray, packet_type: IntArray) -> None:
    """Linux packet types: 0-3 arrived (to us, broadcast, multicast, to another host), 4 we sent."""
    direction[rows] = np.where(packet_type == 4, DIR_OUT, np.where(packet_type <= 3, DIR_IN, direction[rows]))


def _after_ethertype(
    view: ByteView,
    rows: IntArray,
    ethertype: IntArray,
    pos: IntArray,
    end: IntArray,
    net: IntArray,
    family: IntArray,
    cols: dict[str, np.ndarray],
) -> None:
    """Skip 802.1Q/802.1ad tags (the outermost gives ``vlan``) and note IPv4/IPv6 payloads."""
    vlan = cols["vlan"]
    for _ in range(MAX_VLAN_TAGS):
        tagged = is_one_of(ethertype, VLAN_TPIDS) & (pos + 4 <= end)
        if not tagged.any():
            break
        tagged_rows = rows[tagged]
        tag_pos = pos[tagged]
        outermost = vlan[tagged_rows] < 0
        vlan[tagged_rows[outermost]] = view.be16(tag_pos[outermost]) & 0x0FFF
        ethertype[tagged] = view.be16(tag_pos + 2)
        pos[tagged] = tag_pos + 4
    net[rows] = pos
    family[rows] = np.where(ethertype == ETHERTYPE_IPV4, 4, np.where(ethertype == ETHERTYPE_IPV6, 6, 0))


def _decode_ipv4(
    view: ByteView,
    rows: IntArray,
    net: IntArray,
    end: IntArray,
    wire_end: IntArray,
    cols: dict[str, np.ndarray],
    ip_end: IntArray,
    transport: IntArray,
    addresses: dict[str, AddressColumn],
    row_base: int,
) -> None:
    start = net[rows]
    first = view.u8(start)
    ok = (end[rows] - start >= 20) & (first >> 4 == 4) & ((first & 0x0F) >= 5)
    cols["truncated"][rows[~ok]] = True  # an IPv4 ethertype without a whole IPv4 header
    rows, start, first = rows[ok], start[ok], first[ok]
    header = view.headers(start, 20)
    header_len = (first & 0x0F) * 4
    total_len = header.be16(2)
    flags_frag = header.be16(6)
    proto = header.u8(9)
    offloaded = total_len == 0
    total_len = np.where(offloaded, wire_end[rows] - start, total_len)
    cols["ip_version"][rows] = 4
    cols["ip_len"][rows] = total_len
    cols["ip_id"][rows] = header.be16(4)
    cols["more_fragments"][rows] = (flags_frag & 0x2000) != 0
    frag_offset = (flags_frag & 0x1FFF) * 8
    cols["frag_offset"][rows] = frag_offset
    cols["ttl"][rows] = header.u8(8)
    cols["proto"][rows] = proto
    addresses["src"].add_ipv4(rows + row_base, header.be32(12))
    addresses["dst"].add_ipv4(rows + row_base, header.be32(16))
    # A header that claims more than went on the wire is believed only as far as the wire goes.
    datagram_end = np.minimum(start + total_len, wire_end[rows])
    ip_end[rows] = datagram_end
    cols["truncated"][rows] = end[rows] < datagram_end
    has_transport = (frag_offset == 0) & (header_len <= total_len)
    has_transport &= start + header_len <= end[rows]
    transport[rows[has_transport]] = (start + header_len)[has_transport]


def walk_ipv6_extensions(
    view: ByteView, pos: IntArray, next_header: IntArray, limit: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
    """Follow IPv6 extension headers to the upper-layer header.

    Returns (upper-layer protocol, its offset or -1 when not reachable,
    fragment offset in bytes, M flag, fragment identification or -1).
    """
    pos = pos.copy()
    next_header = next_header.copy()
    count = len(pos)
    frag_offset = np.zeros(count, dtype=np.int64)
    more = np.zeros(count, dtype=np.int64)
    ident = np.full(count, -1, dtype=np.int64)
    reachable = np.ones(count, dtype=bool)
    for _ in range(MAX_IPV6_EXTENSIONS):
        extension = is_one_of(next_header, IPV6_EXTENSIONS) & reachable
        if not extension.any():
            break
        cut = extension & (pos + 8 > limit)
        reachable &= ~cut
        extension &= ~cut
        at = pos[extension]
        kind = next_header[extension]
        fragment = kind == IPV6_FRAGMENT
        length = np.where(fragment, 8, np.where(kind == IPV6_AH, (view.u8(at + 1) + 2) * 4, (view.u8(at + 1) + 1) * 8))
        frag_rows = np.flatnonzero(extension)[fragment]
        frag_field = view.be16(at[fragment] + 2)
        frag_offset[frag_rows] = (frag_field >> 3) * 8
        more[frag_rows] = frag_field & 1
        ident[frag_rows] = view.be32(at[fragment] + 4)
        next_header[extension] = view.u8(at)
        pos[extension] = at + length
    # Past the last extension the upper-layer header must be in the datagram, and not a later fragment.
    upper = np.where(reachable & (frag_offset == 0) & (pos <= limit), pos, -1)
    return next_header, upper, frag_offset, more, ident


def _decode_ipv6(
    view: ByteView,
    rows: IntArray,
    net: IntArray,
    end: IntArray,
    wire_end: IntArray,
    cols: dict[str, np.ndarray],
    ip_end: IntArray,
    transport: IntArray,
    addresses: dict[str, AddressColumn],
    row_base: int,
) -> None:
    start = net[rows]
    ok = (end[rows] - start >= 40) & (view.u8(start) >> 4 == 6)
    cols["truncated"][rows[~ok]] = True
    rows, start = rows[ok], start[ok]
    payload_len = view.be16(start + 4)
    payload_len = np.where(payload_len == 0, wire_end[rows] - start - 40, payload_len)  # jumbogram or offload
    cols["ip_version"][rows] = 6
    cols["ip_len"][rows] = 40 + payload_len
    cols["ttl"][rows] = view.u8(start + 7)
    addresses["src"].add_ipv6(rows + row_base, view.block(start + 8, 16))
    addresses["dst"].add_ipv6(rows + row_base, view.block(start + 24, 16))
    datagram_end = np.minimum(start + 40 + payload_len, wire_end[rows])
    ip_end[rows] = datagram_end
    cols["truncated"][rows] = end[rows] < datagram_end
    limit = np.minimum(datagram_end, end[rows])
    proto, upper, frag_offset, more, ident = walk_ipv6_extensions(view, start + 40, view.u8(start + 6), limit)
    cols["proto"][rows] = proto
    cols["frag_offset"][rows] = frag_offset
    cols["more_fragments"][rows] = more != 0
    cols["ip_id"][rows] = ident
    transport[rows] = upper


def _decode_tcp(
    view: ByteView,
    rows: IntArray,
    transport: IntArray,
    limit: IntArray,
    ip_end: IntArray,
    cols: dict[str, np.ndarray],
    payload_start: IntArray,
) -> None:
    start = transport[rows]
    ok = limit[rows] - start >= 20
    rows, start = rows[ok], start[ok]
    header = view.headers(start, 20)
    cols["sport"][rows] = header.be16(0)
    cols["dport"][rows] = header.be16(2)
    cols["seq"][rows] = header.be32(4)
    cols["ack"][rows] = header.be32(8)
    header_len = (header.u8(12) >> 4) * 4
    cols["tcp_flags"][rows] = header.u8(13)
    cols["win"][rows] = header.be16(14)
    sane = (header_len >= 20) & (start + header_len <= ip_end[rows])
    cols["payload_len"][rows[sane]] = (ip_end[rows] - start - header_len)[sane]
    payload_start[rows[sane]] = (start + header_len)[sane]
    with_options = sane & (header_len > 20)
    _decode_tcp_options(
        view,
        rows[with_options],
        start[with_options] + 20,
        np.minimum(start + header_len, limit[rows])[with_options],
        cols,
    )


def _decode_tcp_options(
    view: ByteView, rows: IntArray, pos: IntArray, stop: IntArray, cols: dict[str, np.ndarray]
) -> None:
    """Walk the option lists of all rows in step: one option per row per round."""
    # Nearly every segment of a Linux connection carries exactly NOP, NOP,
    # timestamps: read those at their fixed places, as the walk would find them.
    usual_bytes = view.headers(pos, USUAL_OPTIONS_LEN)
    usual = (stop - pos == USUAL_OPTIONS_LEN) & (usual_bytes.be32(0) == NOP_NOP_TIMESTAMPS)
    cols["tsval"][rows[usual]] = usual_bytes.be32(4)[usual]
    cols["tsecr"][rows[usual]] = usual_bytes.be32(8)[usual]
    rows, pos, stop = rows[~usual], pos[~usual], stop[~usual]
    for _ in range(40):  # at most 40 option bytes, so at most 40 options
        active = pos < stop
        if not active.any():
            return
        rows, pos, stop = rows[active], pos[active], stop[active]
        kind = view.u8(pos)
        length = np.where(kind <= 1, 1, view.u8(pos + 1))
        fits = pos + length <= stop
        for option, size, column in ((2, 4, "mss"), (3, 3, "wscale")):
            hit = (kind == option) & (length == size) & fits
            reader = view.be16 if option == 2 else view.u8
            cols[column][rows[hit]] = reader(pos[hit] + 2)
        cols["sack_perm"][rows[(kind == 4) & (length == 2) & fits]] = True
        stamp = (kind == 8) & (length == 10) & fits
        cols["tsval"][rows[stamp]] = view.be32(pos[stamp] + 2)
        cols["tsecr"][rows[stamp]] = view.be32(pos[stamp] + 6)
        # End of list, or a length that cannot be right: stop walking that row.
        pos = np.where((kind == 0) | (length < 2) & (kind > 1), stop, pos + length)


def _decode_udp(
    view: ByteView,
    rows: IntArray,
    transport: IntArray,
    limit: IntArray,
    cols: dict[str, np.ndarray],
    payload_start: IntArray,
) -> None:
    start = transport[rows]
    ok = limit[rows] - start >= 8
    rows, start = rows[ok], start[ok]
    header = view.headers(start, 8)
    cols["sport"][rows] = header.be16(0)
    cols["dport"][rows] = header.be16(2)
    udp_len = header.be16(4)
    sane = udp_len >= 8
    cols["payload_len"][rows[sane]] = udp_len[sane] - 8
    payload_start[rows[sane]] = start[sane] + 8


def _decode_icmp(
    view: ByteView,
    rows: IntArray,
    icmp_proto: int,
    transport: IntArray,
    limit: IntArray,
    ip_end: IntArray,
    cols: dict[str, np.ndarray],
    payload_start: IntArray,
    addresses: dict[str, AddressColumn],
    row_base: int,
) -> None:
    start = transport[rows]
    ok = limit[rows] - start >= 4
    rows, start = rows[ok], start[ok]
    icmp_type = view.u8(start)
    cols["icmp_type"][rows] = icmp_type
    cols["icmp_code"][rows] = view.u8(start + 1)
    body = (ip_end[rows] - start) >= 8
    cols["payload_len"][rows[body]] = (ip_end[rows] - start - 8)[body]
    payload_start[rows[body]] = start[body] + 8

    # The datagram an error quotes: its addresses, protocol and ports tie the error to its flow.
    errors = is_one_of(icmp_type, ICMP_ERRORS if icmp_proto == ICMP else ICMPV6_ERRORS)
    rows, inner = rows[errors], start[errors] + 8
    inner_limit = limit[rows]
    if icmp_proto == ICMP:
        first = view.u8(inner)
        ok = (inner_limit - inner >= 20) & (first >> 4 == 4) & ((first & 0x0F) >= 5)
        rows, inner, first, inner_limit = rows[ok], inner[ok], first[ok], inner_limit[ok]
        addresses["inner_src"].add_ipv4(rows + row_base, view.be32(inner + 12))
        addresses["inner_dst"].add_ipv4(rows + row_base, view.be32(inner + 16))
        inner_proto = view.u8(inner + 9)
        not_later_fragment = (view.be16(inner + 6) & 0x1FFF) == 0
        upper = np.where(not_later_fragment, inner + (first & 0x0F) * 4, -1)
    else:
        ok = (inner_limit - inner >= 40) & (view.u8(inner) >> 4 == 6)
        rows, inner, inner_limit = rows[ok], inner[ok], inner_limit[ok]
        addresses["inner_src"].add_ipv6(rows + row_base, view.block(inner + 8, 16))
        addresses["inner_dst"].add_ipv6(rows + row_base, view.block(inner + 24, 16))
        inner_proto, upper, _, _, _ = walk_ipv6_extensions(view, inner + 40, view.u8(inner + 6), inner_limit)
    cols["inner_proto"][rows] = inner_proto
    ported = (upper >= 0) & (upper + 4 <= inner_limit) & ((inner_proto == TCP) | (inner_proto == UDP))
    cols["inner_sport"][rows[ported]] = view.be16(upper[ported])
    cols["inner_dport"][rows[ported]] = view.be16(upper[ported] + 2)
