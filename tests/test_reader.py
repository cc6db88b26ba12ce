"""read_capture on generated captures: every container and link type, fields checked against tshark."""

from __future__ import annotations

import functools
import gzip
import struct
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import require_tools
from reader_reference import compare_with_tshark, tshark_packets
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

import diag.capture.source
from diag.capture import CaptureWarning, digest, dissect, pcap, pcapng, read_capture
from diag.capture.columns import PACKET_COLUMNS
from diag.errors import CaptureError

BASE_NS = 1_764_257_655_195_866_123  # 2025-11-27, with nanoseconds that a µs file must drop


# --- what goes into the captures --------------------------------------------------------------


@functools.cache
def _ip_packets() -> tuple[Packet, ...]:
    return tuple(_build_ip_packets())


def ip_packets() -> list[Packet]:
    return list(_ip_packets())


def _build_ip_packets() -> list[Packet]:
    """IP datagrams covering the header shapes the reader must decode."""
    syn_options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None), ("WScale", 7)]
    quoted_udp = IP(src="198.51.100.10", dst="203.0.113.10", ttl=3, id=4242) / UDP(sport=5353, dport=53) / b"q"
    quoted_tcp6 = IPv6(src="2001:db8::10", dst="2001:db8::20") / TCP(sport=40000, dport=443, flags="S", seq=7)
    return [
        IP(src="203.0.113.10", dst="198.51.100.10", ttl=61, id=1001)
        / TCP(sport=38622, dport=80, flags="S", seq=3_000_000_000, window=64240, options=syn_options),
        IP(src="198.51.100.10", dst="203.0.113.10", ttl=64, id=0, flags="DF")
        / TCP(sport=80, dport=38622, flags="SA", seq=17, ack=3_000_000_001, options=[("MSS", 1400), ("WScale", 0)]),
        IP(src="203.0.113.10", dst="198.51.100.10", id=1002)
        / TCP(sport=38622, dport=80, flags="PA", seq=3_000_000_001, ack=18, options=[("Timestamp", (5, 6))])
        / Raw(b"GET / HTTP/1.1\r\n\r\n"),
        IP(src="203.0.113.10", dst="198.51.100.10", id=1003) / TCP(sport=38622, dport=80, flags="R", seq=9),
        IP(src="192.0.2.1", dst="192.0.2.2", options=[IPOption_RR(routers=["192.0.2.9"])]) / UDP(sport=1, dport=2),
        IP(src="192.0.2.1", dst="192.0.2.2", id=77, flags="MF", frag=0) / UDP(sport=9, dport=10) / (b"a" * 32),
        IP(src="192.0.2.1", dst="192.0.2.2", id=77, frag=5, proto=17) / Raw(b"b" * 24),
        IP(src="203.0.113.10", dst="198.51.100.10") / ICMP(type=3, code=3) / bytes(quoted_udp)[:28],
        IP(src="192.0.2.254", dst="192.0.2.1")
        / ICMP(type=11, code=0)
        / IP(src="192.0.2.1", dst="198.51.100.7")
        / TCP(sport=1234, dport=22),
        IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=8, id=1, seq=1) / b"ping",
        IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=17) / TCP(sport=1, dport=2, flags="A", seq=1, ack=2),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=3, dport=4),
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
        / IPv6ExtHdrFragment(id=0xABCDE, m=1, offset=0)
        / UDP(sport=5, dport=6)
        / (b"x" * 16),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=0xABCDE, offset=3, nh=17) / (b"y" * 8),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / AH(spi=1, seq=1, icv=b"\0" * 12) / TCP(sport=7, dport=8),
        IPv6(src="2001:db8::20", dst="2001:db8::10") / ICMPv6DestUnreach(code=4) / bytes(quoted_tcp6),
        IPv6(src="2001:db8::30", dst="2001:db8::10") / ICMPv6PacketTooBig(mtu=1280) / bytes(quoted_tcp6),
        IPv6(src="::ffff:192.0.2.1", dst="2001:db8::2") / ICMPv6EchoRequest(data=b"hi"),
    ]


def ethernet_frames() -> list[bytes]:
    return list(_ethernet_frames())


@functools.cache
def _ethernet_frames() -> tuple[bytes, ...]:
    frames = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet) for packet in ip_packets()]
    frames.append(bytes(Ether() / Dot1Q(vlan=42) / IP(src="192.0.2.5", dst="192.0.2.6") / UDP(sport=1, dport=2)))
    frames.append(
        bytes(Ether() / Dot1AD(vlan=300) / Dot1Q(vlan=42) / IPv6(src="2001:db8::5", dst="2001:db8::6") / TCP())
    )
    frames.append(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="192.0.2.1", pdst="192.0.2.2")))
    return tuple(frames)


# --- hand-written containers (every byte order, resolution and block type) ---------------------


def write_pcap(
    path: Path,
    frames: Sequence[bytes],
    link_type: int = 1,
    big_endian: bool = False,
    nanoseconds: bool = False,
    snaplen: int = 262144,
) -> Path:
    endian = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    parts = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, link_type)]
    for number, frame in enumerate(frames):
        ts_ns = BASE_NS + number * 1_000_123_457
        seconds, fraction = divmod(ts_ns, 1_000_000_000)
        fraction = fraction if nanoseconds else fraction // 1000
        captured = frame[:snaplen]
        parts.append(struct.pack(endian + "IIII", seconds, fraction, len(captured), len(frame)) + captured)
    path.write_bytes(b"".join(parts))
    return path


def _option(endian: str, code: int, value: bytes) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(endian: str, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(endian + "II", block_type, length) + body + struct.pack(endian + "I", length)


def pcapng_section(
    endian: str, interfaces: list[tuple[int, str, int, int]], packets: list[tuple[str, int, int, bytes, int]]
) -> bytes:
    """One section: interfaces (link type, name, if_tsresol, if_tsoffset) and packets
    (block kind "epb"/"pb"/"spb", interface, timestamp units, frame, epb_flags)."""
    shb = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    blocks = [_block(endian, 0x0A0D0D0A, shb)]
    for link_type, name, tsresol, tsoffset in interfaces:
        options = _option(endian, 2, name.encode()) if name else b""
        options += _option(endian, 9, bytes([tsresol])) + _option(endian, 14, struct.pack(endian + "q", tsoffset))
        options += _option(endian, 0, b"")
        blocks.append(_block(endian, 1, struct.pack(endian + "HHI", link_type, 0, 0) + options))
    for kind, interface, units, frame, flags in packets:
        padded = frame + b"\0" * (-len(frame) % 4)
        if kind == "spb":
            blocks.append(_block(endian, 3, struct.pack(endian + "I", len(frame)) + padded))
            continue
        options = (_option(endian, 2, struct.pack(endian + "I", flags)) + _option(endian, 0, b"")) if flags else b""
        if kind == "epb":
            head = struct.pack(endian + "IIIII", interface, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
            blocks.append(_block(endian, 6, head + padded + options))
        else:
            head = struct.pack(endian + "HHIIII", interface, 0, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
            blocks.append(_block(endian, 2, head + padded + options))
    return b"".join(blocks)


def read_quietly(path: Path, **kwargs: object) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureWarning)
        return read_capture(path, **kwargs)  # type: ignore[arg-type]


def assert_agrees_with_tshark(path: Path, ignore: frozenset[str] = frozenset()) -> pd.DataFrame:
    require_tools("tshark")
    frame = read_quietly(path)
    problems = compare_with_tshark(frame, tshark_packets(path), ignore)
    assert not problems, f"{path.name}: read_capture and tshark disagree:\n" + "\n".join(problems[:40])
    return frame


def assert_same_packets(left: pd.DataFrame, right: pd.DataFrame) -> None:
    columns = [column for column in PACKET_COLUMNS if column != "capture"]
    pd.testing.assert_frame_equal(left[columns], right[columns], check_categorical=False)


# --- the table itself ---------------------------------------------------------------------------


def test_columns_and_dtypes_follow_the_contract(tmp_path: Path) -> None:
    frame = read_capture(write_pcap(tmp_path / "node-a.pcap", ethernet_frames()))
    assert list(frame.columns) == list(PACKET_COLUMNS)
    for column, (dtype, _meaning) in PACKET_COLUMNS.items():
        assert str(frame[column].dtype) == dtype, column
    assert frame["index"].tolist() == list(range(len(frame)))
    assert set(frame["capture"]) == {"node-a"}
    info = frame.attrs["capture_info"]
    assert (info.name, info.packets, info.link_type, info.skipped) == ("node-a", len(frame), "EN10MB", 0)


def test_name_defaults_to_the_stem_without_capture_suffixes(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "pod.pcap", ethernet_frames()[:2])
    zipped = tmp_path / "pod-b.pcap.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert read_capture(zipped).attrs["capture_info"].name == "pod-b"
    assert set(read_capture(path, name="client")["capture"]) == {"client"}


def test_decoded_fields_of_known_packets(tmp_path: Path) -> None:
    frame = read_capture(write_pcap(tmp_path / "known.pcap", ethernet_frames(), nanoseconds=True))
    syn = frame.iloc[0]
    assert (syn.src, syn.dst, syn.sport, syn.dport, syn.proto) == ("203.0.113.10", "198.51.100.10", 38622, 80, 6)
    assert (syn.tcp_flags, syn.seq, syn.mss, syn.wscale, syn.sack_perm, syn.tsval, syn.tsecr) == (
        2, 3_000_000_000, 1460, 7, True, 123456, 0,
    )  # fmt: skip
    assert syn.ts_ns == BASE_NS and syn.ttl == 61 and syn.ip_id == 1001
    request = frame.iloc[2]
    assert request.payload_len == len(b"GET / HTTP/1.1\r\n\r\n") and request.payload_digest != 0
    assert frame.iloc[0].payload_digest == 0
    first_fragment, later_fragment = frame.iloc[5], frame.iloc[6]
    assert first_fragment.more_fragments and first_fragment.sport == 9
    assert later_fragment.frag_offset == 40 and later_fragment.sport == -1 and later_fragment.proto == 17
    unreachable = frame.iloc[7]
    assert (unreachable.icmp_type, unreachable.icmp_code) == (3, 3)
    assert (unreachable.inner_src, unreachable.inner_dst, unreachable.inner_proto) == (
        "198.51.100.10", "203.0.113.10", 17,
    )  # fmt: skip
    assert (unreachable.inner_sport, unreachable.inner_dport) == (5353, 53)
    v6_fragment = frame.iloc[12]
    assert (v6_fragment.ip_id, v6_fragment.more_fragments, v6_fragment.proto, v6_fragment.sport) == (
        0xABCDE, True, 17, 5,
    )  # fmt: skip
    too_big = frame.iloc[16]
    assert (too_big.icmp_type, too_big.inner_src, too_big.inner_sport, too_big.inner_dport) == (
        2, "2001:db8::10", 40000, 443,
    )  # fmt: skip
    assert frame.iloc[17].src == "::ffff:192.0.2.1"
    qinq = frame.iloc[-2]
    assert (qinq.vlan, qinq.ip_version) == (300, 6)
    arp = frame.iloc[-1]
    assert (arp.ip_version, arp.src, arp.proto, arp.sport) == (0, "", -1, -1)


def test_payload_digest_recognises_a_segment_after_nat(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 6 + b"tail"
    before = IP(src="203.0.113.10", dst="198.51.100.10") / TCP(sport=40000, dport=80, seq=5) / payload
    after = IP(src="10.0.0.5", dst="198.18.102.10", ttl=60) / TCP(sport=31000, dport=8080, seq=5) / payload
    other = IP(src="10.0.0.5", dst="198.18.102.10") / TCP(sport=31000, dport=8080) / (payload[:-1] + b"X")
    shorter = IP(src="10.0.0.5", dst="198.18.102.10") / TCP(sport=31000, dport=8080) / payload[:-1]
    one = read_capture(write_pcap(tmp_path / "a.pcap", [bytes(Ether() / before)]))
    two = read_capture(
        write_pcap(tmp_path / "b.pcap", [bytes(before), bytes(after), bytes(other), bytes(shorter)], 101)
    )
    digests = two.payload_digest.tolist()
    assert one.payload_digest.iloc[0] == digests[0] == digests[1]
    assert len({digests[0], digests[2], digests[3]}) == 3


def test_truncated_packets_are_flagged_and_keep_their_header_lengths(tmp_path: Path) -> None:
    frames = [bytes(Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / TCP() / (b"z" * 500))]
    frame = read_capture(write_pcap(tmp_path / "snap.pcap", frames, snaplen=80))
    row = frame.iloc[0]
    assert row.truncated and row.cap_len == 80 and row.wire_len == 554
    assert row.ip_len == 540 and row.payload_len == 500 and row.payload_digest != 0


# --- containers, compared with tshark -----------------------------------------------------------


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("nanoseconds", [False, True], ids=["us", "ns"])
def test_pcap_variants_agree_with_tshark(tmp_path: Path, big_endian: bool, nanoseconds: bool) -> None:
    path = write_pcap(tmp_path / "v.pcap", ethernet_frames(), big_endian=big_endian, nanoseconds=nanoseconds)
    frame = assert_agrees_with_tshark(path)
    expected_first = BASE_NS if nanoseconds else BASE_NS // 1000 * 1000
    assert frame.ts_ns.iloc[0] == expected_first


def test_gzip_reads_the_same_as_the_plain_file(tmp_path: Path) -> None:
    plain = write_pcap(tmp_path / "plain.pcap", ethernet_frames(), nanoseconds=True)
    zipped = tmp_path / "zipped.cap"  # no .gz in the name: detected by magic
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert_same_packets(read_capture(plain), read_capture(zipped))


def test_small_buffers_read_the_same_as_one_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = ethernet_frames() * 20
    plain = write_pcap(tmp_path / "many.pcap", frames)
    section = pcapng_section("<", [(1, "eth0", 9, 0)], [("epb", 0, BASE_NS + i, f, 0) for i, f in enumerate(frames)])
    nextgen = tmp_path / "many.pcapng"
    nextgen.write_bytes(section)
    whole_pcap, whole_ng = read_capture(plain), read_capture(nextgen)
    zipped = tmp_path / "many.pcap.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    monkeypatch.setattr(diag.capture.source, "CHUNK_SIZE", 333)  # records straddle every buffer boundary
    assert_same_packets(whole_pcap, read_capture(plain))
    assert_same_packets(whole_ng, read_capture(nextgen))
    # A compressed stream has no size to size the table from: it grows batch by batch.
    assert_same_packets(whole_pcap, read_capture(zipped))
    assert len(whole_ng) == len(frames)


def test_each_compiled_loop_has_one_version_for_every_kind_of_buffer(tmp_path: Path) -> None:
    # Mapped windows (read-only) and bytearrays (a file's last bytes, a compressed stream) get the same
    # argument types, so a process compiles or loads each loop once, not once per kind of buffer.
    frames = ethernet_frames() * 20
    plain = write_pcap(tmp_path / "many.pcap", frames)
    zipped = tmp_path / "many.pcap.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    section = pcapng_section("<", [(1, "eth0", 9, 0)], [("epb", 0, BASE_NS + i, f, 0) for i, f in enumerate(frames)])
    nextgen = tmp_path / "many.pcapng"
    nextgen.write_bytes(section)
    big = write_pcap(tmp_path / "big.pcap", frames * 400)  # 12 MB: a mapped window, then the copied tail
    for path in (plain, zipped, nextgen, big):
        read_capture(path)
    for loop in (pcap._chain_lengths, pcapng._skim_blocks, dissect._decode_packets, digest._digest_rows):
        assert len(loop.signatures) == 1, (loop.py_func.__name__, loop.signatures)


def test_pcapng_interfaces_resolutions_flags_and_sections_agree_with_tshark(tmp_path: Path) -> None:
    frames = ethernet_frames()
    ip_only = [bytes(packet) for packet in ip_packets()]
    seconds = BASE_NS // 10**9
    first = pcapng_section(
        "<",
        [(1, "eth0", 9, 0), (101, "tun0", 6, 0), (1, "", 0x80 | 20, 0), (1, "off", 3, 3600)],
        [
            ("epb", 0, BASE_NS, frames[0], 1),
            ("epb", 1, BASE_NS // 1000 + 5, ip_only[1], 2),
            ("epb", 2, (seconds << 20) + 123456, frames[2], 0),
            ("epb", 3, seconds * 1000 + 999, frames[3], 0),
            ("pb", 0, BASE_NS + 7, frames[4], 2),
            ("epb", 0, BASE_NS + 8, frames[5], 0),
        ],
    )
    second = pcapng_section(
        ">",
        [(101, "raw-be", 9, 0), (1, "eth-be", 6, 0)],
        [("epb", 0, BASE_NS + 9, ip_only[6], 1), ("epb", 1, BASE_NS // 1000, frames[8], 2)],
    )
    path = tmp_path / "multi.pcapng"
    path.write_bytes(first + second)
    # tshark 4.0 names the second section's interfaces after the first section's
    # (same interface numbers); the names are checked below instead.
    frame = assert_agrees_with_tshark(path, ignore=frozenset({"iface"}))
    assert frame.iface.tolist() == ["eth0", "tun0", "2", "off", "eth0", "eth0", "raw-be", "eth-be"]
    assert frame.direction.tolist() == ["in", "out", "", "", "out", "", "in", "out"]
    assert frame.link_type.tolist() == [1, 101, 1, 1, 1, 1, 101, 1]
    assert frame.ts_ns.iloc[3] == (seconds + 3600) * 10**9 + 999_000_000  # if_tsoffset
    assert frame.ts_ns.iloc[2] == seconds * 10**9 + 123456 * 10**9 // 2**20  # 2^-20 s resolution
    assert frame.attrs["capture_info"].link_type == "mixed"


def test_pcapng_simple_packet_blocks_have_no_timestamp(tmp_path: Path) -> None:
    frames = ethernet_frames()[:3]
    path = tmp_path / "spb.pcapng"
    path.write_bytes(pcapng_section("<", [(1, "eth0", 6, 0)], [("spb", 0, 0, frame, 0) for frame in frames]))
    frame = read_capture(path)
    assert frame.ts_ns.tolist() == [-1, -1, -1]
    assert frame.sport.tolist()[:2] == [38622, 80]


# --- link types -----------------------------------------------------------------------------------


def sll_header(packet_type: int, protocol: int) -> bytes:
    return struct.pack(">HHH8sH", packet_type, 1, 6, b"\x02\0\0\0\0\x01\0\0", protocol)


def sll2_header(packet_type: int, protocol: int, ifindex: int) -> bytes:
    return struct.pack(">HHIHBB8s", protocol, 0, ifindex, 1, packet_type, 6, b"\x02\0\0\0\0\x01\0\0")


def ethertype_of(packet: Packet) -> int:
    return 0x86DD if packet.version == 6 else 0x0800


def test_linux_cooked_v1_gives_direction(tmp_path: Path) -> None:
    packets = ip_packets()
    frames = [sll_header([0, 4, 1, 3][i % 4], ethertype_of(p)) + bytes(p) for i, p in enumerate(packets)]
    frames.append(sll_header(4, 0x0806) + bytes(ARP()))
    frame = assert_agrees_with_tshark(write_pcap(tmp_path / "any.pcap", frames, link_type=113))
    assert frame.direction.tolist()[:4] == ["in", "out", "in", "in"]
    assert frame.attrs["capture_info"].link_type == "LINUX_SLL"


def test_linux_cooked_v2_gives_direction_and_interface(tmp_path: Path) -> None:
    packets = ip_packets()
    frames = [sll2_header([4, 0][i % 2], ethertype_of(p), 3 + i % 2) + bytes(p) for i, p in enumerate(packets)]
    frame = assert_agrees_with_tshark(write_pcap(tmp_path / "any2.pcap", frames, link_type=276))
    assert frame.direction.tolist()[:2] == ["out", "in"]
    assert frame.iface.tolist()[:3] == ["if3", "if4", "if3"]
    assert frame.attrs["capture_info"].link_type == "LINUX_SLL2"


@pytest.mark.parametrize("link_type", [101, 12, 14, 228, 229])
def test_raw_ip_link_types(tmp_path: Path, link_type: int) -> None:
    packets = ip_packets()
    if link_type == 228:
        packets = [p for p in packets if p.version == 4]
    elif link_type == 229:
        packets = [p for p in packets if p.version == 6]
    path = write_pcap(tmp_path / "raw.pcap", [bytes(p) for p in packets], link_type=link_type)
    frame = read_capture(path)
    assert len(frame) == len(packets) and (frame.ip_version == [p.version for p in packets]).all()
    if link_type in (101, 228, 229):  # tshark reads 12 and 14 as other link types on Linux
        assert_agrees_with_tshark(path)


@pytest.mark.parametrize(("link_type", "endian"), [(0, "<"), (0, ">"), (108, ">")], ids=["null-le", "null-be", "loop"])
def test_null_and_loop_link_types(tmp_path: Path, link_type: int, endian: str) -> None:
    frames = []
    for number, packet in enumerate(ip_packets()):
        family = 2 if packet.version == 4 else [24, 28, 30][number % 3]
        frames.append(struct.pack(endian + "I", family) + bytes(packet))
    frame = assert_agrees_with_tshark(write_pcap(tmp_path / "lo.pcap", frames, link_type=link_type))
    assert (frame.ip_version > 0).all()


def test_unsupported_link_type_is_counted_and_warned(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "wifi.pcap", [b"\0" * 40, b"\0" * 50], link_type=127)
    with pytest.warns(CaptureWarning, match="IEEE802_11_RADIO"):
        frame = read_capture(path)
    info = frame.attrs["capture_info"]
    assert len(frame) == 0 and info.skipped == 2 and info.link_type == "IEEE802_11_RADIO"
    assert "IEEE802_11_RADIO" in info.warnings[0]


def test_mixed_link_types_keep_indices_of_skipped_packets(tmp_path: Path) -> None:
    frames = ethernet_frames()
    section = pcapng_section(
        "<", [(1, "eth0", 6, 0), (127, "wlan0", 6, 0)], [("epb", i % 2, 1000 + i, frames[i], 0) for i in range(6)]
    )
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(section)
    with pytest.warns(CaptureWarning):
        frame = read_capture(path)
    assert frame["index"].tolist() == [0, 2, 4]
    assert frame.attrs["capture_info"].skipped == 3


# --- damaged and unreadable input -----------------------------------------------------------------


def test_file_cut_mid_record_gives_the_complete_packets_and_a_warning(tmp_path: Path) -> None:
    whole = write_pcap(tmp_path / "whole.pcap", ethernet_frames())
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[:-30])
    # The cut record is the last: numbered from 1 as Wireshark numbers its frames (and the report quotes them).
    with pytest.warns(CaptureWarning, match=f"ends inside record {len(ethernet_frames())} "):
        frame = read_capture(cut)
    assert len(frame) == len(ethernet_frames()) - 1
    assert frame.attrs["capture_info"].skipped == 1
    assert_same_packets(frame, read_capture(whole).iloc[:-1])


def test_pcapng_cut_mid_block_gives_the_complete_packets(tmp_path: Path) -> None:
    frames = ethernet_frames()
    data = pcapng_section("<", [(1, "eth0", 6, 0)], [("epb", 0, 1000 + i, f, 0) for i, f in enumerate(frames)])
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:-10])
    with pytest.warns(CaptureWarning):
        frame = read_capture(cut)
    assert len(frame) == len(frames) - 1


def test_absurd_record_length_stops_with_a_warning(tmp_path: Path) -> None:
    data = bytearray(write_pcap(tmp_path / "ok.pcap", ethernet_frames()[:3]).read_bytes())
    second = 24 + 16 + len(ethernet_frames()[0])
    data[second + 8 : second + 12] = struct.pack("<I", 0x7FFFFFF0)
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(bytes(data))
    with pytest.warns(CaptureWarning, match="damaged"):
        frame = read_capture(damaged)
    assert len(frame) == 1


def test_truncated_gzip_stream_gives_what_was_decompressed(tmp_path: Path) -> None:
    plain = write_pcap(tmp_path / "p.pcap", ethernet_frames() * 50)
    packed = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.warns(CaptureWarning):
        frame = read_capture(cut)
    assert 0 < len(frame) < len(ethernet_frames()) * 50


def test_header_only_capture_is_an_empty_table(tmp_path: Path) -> None:
    frame = read_capture(write_pcap(tmp_path / "empty.pcap", []))
    assert len(frame) == 0 and list(frame.columns) == list(PACKET_COLUMNS)
    assert {column: str(frame[column].dtype) for column in frame} == {c: d for c, (d, _) in PACKET_COLUMNS.items()}
    assert frame.attrs["capture_info"].link_type == "EN10MB"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a pcap or pcapng"),
        (b"\xd4\xc3\xb2\xa1\x02\x00\x04", "cut short"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x11\x22\x33\x44", "byte-order"),
        (gzip.compress(b"plain text, compressed"), "not a pcap or pcapng"),
    ],
    ids=["missing", "empty", "text", "short-header", "bad-pcapng", "gzip-text"],
)
def test_unreadable_input_raises_one_clear_capture_error(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaptureError, match=message) as caught:
        read_capture(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_directory_raises_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="directory"):
        read_capture(tmp_path)


def test_reading_never_modifies_the_file(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "keep.pcap", ethernet_frames())
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_capture(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_addresses_are_categoricals_of_distinct_values(tmp_path: Path) -> None:
    frame = read_capture(write_pcap(tmp_path / "c.pcap", ethernet_frames() * 30))
    assert isinstance(frame.src.dtype, pd.CategoricalDtype)
    assert len(frame.src.cat.categories) == len(set(frame.src))
    assert np.array_equal(
        frame.src.iloc[: len(ethernet_frames())].to_numpy(), frame.src.iloc[-len(ethernet_frames()) :].to_numpy()
    )


@pytest.mark.parametrize("container", ["pcap", "pcapng", "pcap.gz"])
def test_randomly_damaged_files_never_raise_anything_but_capture_error(tmp_path: Path, container: str) -> None:
    frames = ethernet_frames()
    if container == "pcapng":
        original = pcapng_section(
            "<", [(1, "eth0", 9, 0)], [("epb", 0, BASE_NS + i, f, 1) for i, f in enumerate(frames)]
        )
    else:
        original = write_pcap(tmp_path / "seed.pcap", frames).read_bytes()
    rng = np.random.default_rng(20261127)
    path = tmp_path / f"damaged.{container}"
    for _ in range(60):
        data = bytearray(original)
        for position in rng.integers(0, len(data), rng.integers(1, 12)):
            data[position] = int(rng.integers(0, 256))
        data = data[: int(rng.integers(len(data) // 2, len(data) + 1))]
        path.write_bytes(gzip.compress(bytes(data)) if container.endswith(".gz") else bytes(data))
        try:
            frame = read_quietly(path)
        except CaptureError:
            continue
        assert list(frame.columns) == list(PACKET_COLUMNS)
        assert (frame.cap_len >= 0).all() and frame["index"].is_monotonic_increasing


def test_pages_mapped_ahead_of_the_rows_leave_what_is_written_meanwhile_as_written() -> None:
    # The helper maps the columns' pages while the reading thread writes rows into them: what is written
    # before, during and after stays, whichever gets to a page first.

    from diag.capture.reader import _map_pages_ahead

    rows = 2_000_000
    columns = [np.empty(rows, dtype=dtype) for dtype in (np.int64, np.int32, np.int16, np.bool_)]
    for column in columns:
        column[:1000] = 1
    _map_pages_ahead(columns, 1000, rows)
    for column in columns:
        column[1000:] = np.arange(1000, rows) % 2
    for thread in threading.enumerate():
        if thread.name == "diag-table-pages":
            thread.join()
    for column in columns:
        assert (column[:1000] == 1).all()
        assert (column[1000:] == np.arange(1000, rows) % 2).all()
