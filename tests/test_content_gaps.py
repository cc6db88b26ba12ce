"""Zeek's content gaps on crafted TCP captures: the ``G``/``g`` history letters and conn.log's ``missed_bytes``.

Zeek's TCP reassembler skips sequence space that the peer acknowledges but no
captured segment carried, reports it as a content gap (``content_gap``, which
conn.zeek adds to ``missed_bytes``) while both endpoints are established or
closing from established, and
writes ``G`` (originator's data) or ``g`` (responder's) into the history at
the 1st, 10th, 100th ... gap. Each capture is written with scapy, read by the
reader, and checked through the conn.log ``diag flows`` writes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import PROJECT
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from test_exports import read_zeek_log
from test_reader import write_pcap

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
CLIENT, SERVER = "192.0.2.5", "198.51.100.80"
C_ISN, S_ISN = 1000, 5000


def client(flags: str, seq: int, ack: int = 0, payload: int = 0) -> bytes:
    return bytes(
        ETH / IP(src=CLIENT, dst=SERVER) / TCP(sport=40000, dport=80, flags=flags, seq=seq, ack=ack) / (b"x" * payload)
    )


def server(flags: str, seq: int, ack: int = 0, payload: int = 0) -> bytes:
    return bytes(
        ETH / IP(src=SERVER, dst=CLIENT) / TCP(sport=80, dport=40000, flags=flags, seq=seq, ack=ack) / (b"y" * payload)
    )


HANDSHAKE = [
    client("S", C_ISN),
    server("SA", S_ISN, C_ISN + 1),
    client("A", C_ISN + 1, S_ISN + 1),
]
CLOSE_AFTER_300 = [  # the client's 300 bytes were acknowledged; both close
    client("FA", C_ISN + 301, S_ISN + 1),
    server("FA", S_ISN + 1, C_ISN + 302),
    client("A", C_ISN + 302, S_ISN + 2),
]


def conn_record(tmp_path: Path, frames: list[bytes]) -> dict[str, Any]:
    """The one conn.log record ``diag flows --format conn.log`` writes for a capture of these frames."""
    capture = write_pcap(tmp_path / "gaps.pcap", frames)
    result = subprocess.run(
        [sys.executable, "-m", "diag.cli", "flows", str(capture), "--format", "conn.log"],
        cwd=PROJECT, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    records = read_zeek_log(result.stdout.decode())["records"]
    assert len(records) == 1, records
    record: dict[str, Any] = records[0]
    return record


def test_a_segment_acknowledged_but_never_captured_is_a_gap_of_its_size(tmp_path: Path) -> None:
    frames = [
        *HANDSHAKE,
        client("PA", C_ISN + 1, S_ISN + 1, 100),
        # C_ISN + 101 .. 201: 100 bytes the capture missed
        client("PA", C_ISN + 201, S_ISN + 1, 100),
        server("A", S_ISN + 1, C_ISN + 301),  # acknowledges all 300
        *CLOSE_AFTER_300,
    ]
    record = conn_record(tmp_path, frames)
    assert record["missed_bytes"] == 100
    assert record["history"] == "ShADaGFf"  # the gap shows when the server's ACK passes the hole
    assert record["conn_state"] == "SF" and record["orig_bytes"] == 300


def test_a_gap_in_the_responders_data_is_g(tmp_path: Path) -> None:
    frames = [
        *HANDSHAKE,
        client("PA", C_ISN + 1, S_ISN + 1, 10),
        # the server's first 50 bytes missed; its next 50 seen
        server("PA", S_ISN + 51, C_ISN + 11, 50),
        client("A", C_ISN + 11, S_ISN + 101),
    ]
    record = conn_record(tmp_path, frames)
    assert record["missed_bytes"] == 50
    assert record["history"] == "ShADdg"


def test_a_retransmission_filling_the_hole_before_the_ack_is_no_gap(tmp_path: Path) -> None:
    frames = [
        *HANDSHAKE,
        client("PA", C_ISN + 1, S_ISN + 1, 100),
        client("PA", C_ISN + 201, S_ISN + 1, 100),  # out of order: the hole is still open
        server("A", S_ISN + 1, C_ISN + 101),  # acknowledges only up to the hole
        client("PA", C_ISN + 101, S_ISN + 1, 100),  # the missing segment arrives
        server("A", S_ISN + 1, C_ISN + 301),
        *CLOSE_AFTER_300,
    ]
    record = conn_record(tmp_path, frames)
    assert record["missed_bytes"] == 0
    assert "G" not in record["history"] and "g" not in record["history"]


def test_a_complete_flow_has_no_gap_and_writes_missed_bytes_0(tmp_path: Path) -> None:
    frames = [
        *HANDSHAKE,
        client("PA", C_ISN + 1, S_ISN + 1, 300),
        server("PA", S_ISN + 1, C_ISN + 301, 20),
        client("A", C_ISN + 301, S_ISN + 21),
        client("FA", C_ISN + 301, S_ISN + 21),
        server("FA", S_ISN + 21, C_ISN + 302),
        client("A", C_ISN + 302, S_ISN + 22),
    ]
    record = conn_record(tmp_path, frames)
    assert (record["missed_bytes"], record["history"], record["conn_state"]) == (0, "ShADdFf", "SF")


def test_gaps_before_the_handshake_completes_are_not_reported(tmp_path: Path) -> None:
    # Midstream: neither end is established in Zeek's sense, so holes are not reported.
    frames = [
        client("PA", C_ISN + 1, S_ISN + 1, 100),
        server("A", S_ISN + 1, C_ISN + 501),
    ]
    record = conn_record(tmp_path, frames)
    assert record["missed_bytes"] == 0 and "G" not in record["history"]


def test_g_is_written_at_the_1st_and_10th_gap(tmp_path: Path) -> None:
    frames = list(HANDSHAKE)
    seq = C_ISN + 1
    for _ in range(10):  # ten times: 10 bytes sent, 10 bytes missed, all 20 acknowledged
        frames.append(client("PA", seq, S_ISN + 1, 10))
        seq += 20
        frames.append(server("A", S_ISN + 1, seq))
    record = conn_record(tmp_path, frames)
    assert record["missed_bytes"] == 100
    assert record["history"].count("G") == 2


def test_a_gap_acknowledged_after_the_senders_fin_is_still_reported(tmp_path: Path) -> None:
    # Closed straight from established is "cleanly closing" for Zeek: the hole before the FIN counts.
    frames = [
        *HANDSHAKE,
        client("PA", C_ISN + 1, S_ISN + 1, 100),
        client("FA", C_ISN + 301, S_ISN + 1),  # the FIN after 300 bytes, 200 of them missed
        server("A", S_ISN + 1, C_ISN + 302),
    ]
    record = conn_record(tmp_path, frames)
    assert record["missed_bytes"] == 200
    assert record["history"] == "ShADFaG"
