"""A packet cut short is decoded as far as its bytes go, and nothing is made up past that.

Every frame of the reader's test set is written once whole and once cut at
every possible length (captured length k, original length unchanged). Each
decoded field of a cut copy must be the whole frame's value or the column's
'absent' value: a field read from bytes past the cut (the next record, the
buffer's padding) would show up as a third value. This checks the length
guards of the compiled decoder, which reads without bounds checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from test_reader import ethernet_frames, ip_packets, write_pcap

from diag.capture import read_capture
from diag.capture.columns import PACKET_COLUMNS

# Columns that describe the record rather than what was decoded from its bytes,
# and the digest, which covers whatever part of the payload was captured.
NOT_DECODED = {"capture", "index", "ts_ns", "iface", "direction", "link_type", "cap_len", "truncated", "payload_digest"}
ABSENT = {"frag_offset": 0, "ip_version": 0}
IPV6_EXTENSION_HEADERS = [0, 43, 44, 51, 60]  # hop-by-hop, routing, fragment, AH, destination options


def absent_value(column: str) -> object:
    dtype = PACKET_COLUMNS[column][0]
    if dtype == "category":
        return ""
    if dtype == "bool":
        return False
    return ABSENT.get(column, -1)


def cut_everywhere(frames: list[bytes]) -> tuple[list[bytes], np.ndarray]:
    """Each frame whole, then every shorter prefix; the position of its whole copy for each record."""
    records: list[bytes] = []
    whole: list[int] = []
    for frame in frames:
        first = len(records)
        records += [frame[:cut] for cut in range(len(frame), -1, -1)]
        whole += [first] * (len(frame) + 1)
    return records, np.array(whole)


def write_cut_capture(path: Path, frames: list[bytes], link_type: int) -> tuple[pd.DataFrame, np.ndarray]:
    records, whole = cut_everywhere(frames)
    write_pcap(path, records, link_type=link_type)
    # write_pcap records each prefix as a whole packet; restore every original length.
    data = bytearray(path.read_bytes())
    offset = 24
    for record, index in zip(records, whole, strict=True):
        data[offset + 12 : offset + 16] = len(records[index]).to_bytes(4, "little")
        offset += 16 + len(record)
    path.write_bytes(bytes(data))
    return read_capture(path), whole


def usual_linux_segment() -> Packet:
    """A segment with exactly NOP, NOP, timestamps, the option list the decoder reads at fixed places."""
    options = [("NOP", None), ("NOP", None), ("Timestamp", (123456789, 987654321))]
    return IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1, dport=2, flags="PA", options=options) / b"data"


def ethernet_test_frames() -> list[bytes]:
    return [*ethernet_frames(), bytes(Ether() / usual_linux_segment())]


def raw_ip_test_frames() -> list[bytes]:
    return [bytes(packet) for packet in [*ip_packets(), usual_linux_segment()]]


@pytest.mark.parametrize(
    ("link_type", "frames"), [(1, ethernet_test_frames), (101, raw_ip_test_frames)], ids=["ethernet", "raw-ip"]
)
def test_a_cut_packet_keeps_whole_values_or_absent_ones(tmp_path: Path, link_type: int, frames: object) -> None:
    assert callable(frames)
    table, whole = write_cut_capture(tmp_path / "cuts.pcap", frames(), link_type)
    assert len(table) == len(whole)
    assert (table.wire_len.to_numpy() == table.wire_len.to_numpy()[whole]).all()
    made_up = {}
    for column in PACKET_COLUMNS:
        if column in NOT_DECODED:
            continue
        values = table[column].astype(object).to_numpy()
        wrong = (values != values[whole]) & (values != absent_value(column))
        if column == "proto":
            # An IPv6 extension chain cut short: proto names the extension header the walk stopped at.
            wrong &= ~((table.ip_version.to_numpy() == 6) & np.isin(values.astype(int), IPV6_EXTENSION_HEADERS))
        if wrong.any():
            made_up[column] = table.loc[wrong, ["index", "cap_len", "ip_version", column]].head(3).to_dict("records")
    assert not made_up, made_up


def test_a_cut_ip_packet_is_flagged_truncated_once_its_link_header_is_whole(tmp_path: Path) -> None:
    table, whole = write_cut_capture(tmp_path / "cuts.pcap", ethernet_test_frames(), 1)
    truncated = table.truncated.to_numpy()
    cap_len = table.cap_len.to_numpy()
    is_ip = table.ip_version.to_numpy()[whole] != 0
    link_header_whole = cap_len >= 14 + 2 * 4  # Ethernet and the test set's deepest VLAN tag stack
    cut = cap_len < table.wire_len.to_numpy()
    assert (truncated[is_ip & link_header_whole] == cut[is_ip & link_header_whole]).all()
    assert not truncated[~is_ip | (cap_len < 14)].any()
