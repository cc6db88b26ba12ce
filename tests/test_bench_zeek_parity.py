"""bench/zeek_parity.py: the join of Zeek's conn.log with diag's flow table, and the shares it counts.

No Zeek runs here, so the conn.log is written by hand as Zeek writes it (header lines, field order,
``-`` unset, ``(empty)``), for a capture built in the test. Most of its lines are what Zeek makes of the
capture's connections; a few carry planted differences (a conn_state, a history letter, a connection
the capture does not have, a start time beyond the tolerance, roles the other way round, a protocol
diag has no flows for), so every figure the harness prints is known in advance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

HARNESS = PROJECT / "bench" / "zeek_parity.py"
START = 1_700_000_000.0
CLIENT, SERVER, RESOLVER = "192.0.2.10", "198.51.100.80", "198.51.100.53"

HEADER = [
    "#separator \\x09",
    "#set_separator\t,",
    "#empty_field\t(empty)",
    "#unset_field\t-",
    "#path\tconn",
    "#open\t2026-12-05-01-00-00",
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\t"
    "resp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\t"
    "resp_pkts\tresp_ip_bytes\ttunnel_parents",
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\t"
    "count\tstring\tcount\tcount\tcount\tcount\tset[string]",
]


def handshake_and_close(sport: int, at: float) -> list[tuple[float, Any]]:
    """A whole TCP connection: ShADdFf (the server's only pure ACK is its FIN's), SF."""
    c, s = IP(src=CLIENT, dst=SERVER), IP(src=SERVER, dst=CLIENT)
    return [
        (at, c / TCP(sport=sport, dport=80, flags="S", seq=100)),
        (at + 0.001, s / TCP(sport=80, dport=sport, flags="SA", seq=500, ack=101)),
        (at + 0.002, c / TCP(sport=sport, dport=80, flags="A", seq=101, ack=501)),
        (at + 0.003, c / TCP(sport=sport, dport=80, flags="PA", seq=101, ack=501) / (b"g" * 20)),
        (at + 0.004, s / TCP(sport=80, dport=sport, flags="PA", seq=501, ack=121) / (b"r" * 30)),
        (at + 0.005, c / TCP(sport=sport, dport=80, flags="FA", seq=121, ack=531)),
        (at + 0.006, s / TCP(sport=80, dport=sport, flags="FA", seq=531, ack=122)),
        (at + 0.007, c / TCP(sport=sport, dport=80, flags="A", seq=122, ack=532)),
    ]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c, s, r = IP(src=CLIENT, dst=SERVER), IP(src=SERVER, dst=CLIENT), IP(src=RESOLVER, dst=CLIENT)
    frames = [
        *handshake_and_close(40001, 0.0),  # A
        (1.0, c / TCP(sport=40002, dport=80, flags="S", seq=7)),  # B: no answer
        (2.0, IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40003, dport=53) / b"query"),  # C
        (2.001, r / UDP(sport=53, dport=40003) / b"answer"),
        (3.0, c / ICMP(type=8, id=1, seq=1) / (b"p" * 8)),  # D
        (3.001, s / ICMP(type=0, id=1, seq=1) / (b"p" * 8)),
        (4.0, c / TCP(sport=40005, dport=81, flags="S", seq=9)),  # E: refused
        (4.001, s / TCP(sport=81, dport=40005, flags="RA", seq=0, ack=10)),
        *handshake_and_close(40006, 5.0),  # F
        (7.0, c / UDP(sport=40008, dport=5000) / b"late"),  # H
        (8.0, c / UDP(sport=40009, dport=40010) / b"peer"),  # I: between two ephemeral ports
        (8.001, s / UDP(sport=40010, dport=40009) / b"peer"),
    ]
    packets = []
    for offset, packet in frames:
        framed = Ether() / packet
        framed.time = START + offset
        packets.append(framed)
    path = tmp_path_factory.mktemp("parity") / "capture.pcap"
    wrpcap(str(path), packets)
    return path


def line(offset: float, uid: str, orig: tuple[str, int], resp: tuple[str, int], proto: str, state: str,
         history: str) -> str:
    fields = [f"{START + offset:.6f}", uid, orig[0], str(orig[1]), resp[0], str(resp[1]), proto, "-", "0.007000",
              "20", "30", state, "-", "-", "0", history, "1", "40", "1", "40", "-"]
    return "\t".join(fields)


ZEEK_LINES = [
    line(0.0, "CA", (CLIENT, 40001), (SERVER, 80), "tcp", "SF", "ShADdFf"),
    line(1.0, "CB", (CLIENT, 40002), (SERVER, 80), "tcp", "S0", "S"),
    line(2.0, "CC", (CLIENT, 40003), (RESOLVER, 53), "udp", "SF", "Dd"),
    line(3.0, "CD", (CLIENT, 8), (SERVER, 0), "icmp", "OTH", "-"),
    line(4.0, "CE", (CLIENT, 40005), (SERVER, 81), "tcp", "RSTR", "Sr"),  # planted: diag says REJ
    line(5.0, "CF", (CLIENT, 40006), (SERVER, 80), "tcp", "SF", "ShADdFfC"),  # planted: a bad checksum letter
    line(6.0, "CG", (CLIENT, 40007), (SERVER, 80), "tcp", "S0", "S"),  # planted: not in the capture
    line(7.5, "CH", (CLIENT, 40008), (SERVER, 5000), "udp", "S0", "D"),  # planted: 0.5 s after the capture's
    line(8.0, "CI", (SERVER, 40010), (CLIENT, 40009), "udp", "SF", "Dd"),  # planted: roles the other way round
    line(9.0, "CX", (CLIENT, 0), (SERVER, 0), "unknown_transport", "OTH", "-"),  # planted: no flows for it
]


def run_harness(conn_log: Path, capture: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HARNESS), str(conn_log), str(capture), *extra],
                          capture_output=True, text=True, cwd=PROJECT, timeout=120)


EXPECTED = {
    "zeek": 9, "joined": 7, "reversed": 1, "same_conn_state": 5, "same_history": 5,
    "same_conn_state_pct": round(500 / 9, 4), "same_history_pct": round(500 / 9, 4),
    "zeek_only": ["CG", "CH"], "other_protocols": 1,
}  # fmt: skip


def test_the_join_and_the_shares_on_planted_differences(capture: Path, tmp_path: Path) -> None:
    conn_log = tmp_path / "conn.log"
    conn_log.write_text("\n".join([*HEADER, *ZEEK_LINES, "#close\t2026-12-05-01-00-01"]) + "\n")
    result = run_harness(conn_log, capture, "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert {key: figures[key] for key in EXPECTED} == EXPECTED
    assert figures["diag_only"] == ["capture#6"]  # the UDP flow Zeek's line CH was too late to join
    assert figures["conn_state_differences"] == [["RSTR", "REJ", 1], ["SF", "SF (reversed)", 1]]
    assert figures["history_differences"] == [["ShADdFfC", "ShADdFf", 1], ["Dd", "Dd (reversed)", 1]]
    # A wider tolerance lets CH join its flow: one more found, with the same state and history.
    wider = json.loads(run_harness(conn_log, capture, "--json", "--tolerance", "1").stdout)
    assert (wider["joined"], wider["same_conn_state"], wider["same_history"], wider["diag_only"]) == (8, 6, 6, [])
    # The text form says the same.
    text = run_harness(conn_log, capture).stdout
    assert "same conn_state: 5 (55.56 %)" in text and "same history, letter for letter: 5 (55.56 %)" in text
    assert "RSTR -> REJ  1  e.g. CE = capture#4" in text


def test_zeeks_json_logs_give_the_same_figures(capture: Path, tmp_path: Path) -> None:
    fields = HEADER[6].split("\t")[1:]
    records = [dict(zip(fields, text.split("\t"), strict=True)) for text in ZEEK_LINES]
    conn_log = tmp_path / "conn.json"
    conn_log.write_text("".join(json.dumps(record) + "\n" for record in records))
    figures = json.loads(run_harness(conn_log, capture, "--json").stdout)
    assert {key: figures[key] for key in EXPECTED} == EXPECTED


def test_a_file_that_is_no_conn_log_is_one_line_and_status_2(capture: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not\ta\tlog\n")
    result = run_harness(bad, capture)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"zeek_parity: {bad}: not a Zeek conn.log (no #fields line before the "
                                          "first record)"]
    assert run_harness(tmp_path / "missing.log", capture).returncode == 2
