"""Replay: a recorded conversation's client side played against a live lab.

Without root: the conversation is taken from a reference capture with the
right relative sequence numbers and payloads (checked against tshark). As
root: the healthy recording replayed against the SNAT fix completes its
handshake and its exchange; against the incident it departs where the
recording had the SYN-ACK.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT, require_root, require_tools

from diag import read_capture
from diag.capture.proto import ACK
from diag.errors import DiagError
from diag.scenario.conversation import choose_conversation, flag_text, list_conversations, read_payloads

HEALTHY = PROJECT / "captures" / "fix-snat" / "client.pcapng"
INCIDENT_CLIENT = PROJECT / "captures" / "client.pcapng"
UDP_RESOURCED = PROJECT / "captures" / "udp-asymmetric" / "client.pcapng"


def _tshark(path: Path, *fields: str) -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-n", "-Y", "tcp", "-T", "fields", *(a for f in fields for a in ("-e", f))]
    return [line.split("\t") for line in subprocess.run(argv, capture_output=True, text=True,
                                                         check=True).stdout.splitlines()]


def test_conversation_matches_tshark_relative_numbers() -> None:
    require_tools("tshark")
    conversation = choose_conversation(read_capture(HEALTHY))
    rows = _tshark(HEALTHY, "frame.number", "tcp.seq", "tcp.ack", "tcp.len", "tcp.flags")
    assert [s.index + 1 for s in conversation.segments] == [int(r[0]) for r in rows]
    for segment, (_, seq, ack, length, flags) in zip(conversation.segments, rows, strict=True):
        assert segment.rel_seq == int(seq)
        assert segment.payload_len == int(length)
        assert segment.flags == int(flags, 16)
        if segment.flags & ACK:
            assert segment.rel_ack == int(ack)
    assert [flag_text(s.flags) for s in conversation.segments][:3] == ["S", "SA", "A"]


def test_payloads_are_the_captured_bytes() -> None:
    require_tools("tshark")
    conversation = choose_conversation(read_capture(HEALTHY))
    payloads = read_payloads(HEALTHY, {s.index for s in conversation.segments})
    by_tshark = {int(number) - 1: bytes.fromhex(payload.replace(":", ""))
                 for number, payload in _tshark(HEALTHY, "frame.number", "tcp.payload")}
    assert payloads == by_tshark
    assert any(payloads.values())


def test_choosing_a_conversation() -> None:
    packets = read_capture(INCIDENT_CLIENT)
    listing = list_conversations(packets)
    assert len(listing) == 1 and listing[0].starts_with_syn and listing[0].server[1] == 80
    client, server = listing[0].client, listing[0].server
    chosen = choose_conversation(packets, stream=f"{client[0]}:{client[1]}-{server[0]}:{server[1]}")
    assert all(s.from_client and flag_text(s.flags) == "S" for s in chosen.segments)
    assert len({s.rel_seq for s in chosen.segments}) == 1  # the same ISN retransmitted
    with pytest.raises(DiagError, match="--flow 3: the capture has conversations 0 to 0"):
        choose_conversation(packets, flow=3)
    with pytest.raises(DiagError, match="CLIENT:PORT-SERVER:PORT"):
        choose_conversation(packets, stream="client-server")
    with pytest.raises(DiagError, match="no such conversation"):
        choose_conversation(packets, stream="192.0.2.1:1-192.0.2.2:2")


def test_udp_conversation_keeps_its_re_sourced_replies() -> None:
    require_tools("tshark")
    conversation = choose_conversation(read_capture(UDP_RESOURCED))
    assert conversation.proto == "udp" and conversation.server[1] == 80
    rows = subprocess.run(["tshark", "-r", str(UDP_RESOURCED), "-n", "-Y", "udp", "-T", "fields",
                           "-e", "frame.number", "-e", "ip.src", "-e", "udp.length"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert [s.index + 1 for s in conversation.segments] == [int(r.split()[0]) for r in rows]
    replies = [s for s in conversation.segments if not s.from_client]
    assert replies and not any(s.from_server for s in replies)  # every answer came from another address
    assert [s.payload_len for s in conversation.segments] == [int(r.split()[2]) - 8 for r in rows]


def _replay(*argv: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "diag.cli", "replay", *argv, "--json", "-"],
                            capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout[result.stdout.index("{"):])
    return result, document


def test_list_needs_no_lab() -> None:
    result = subprocess.run([sys.executable, "-m", "diag.cli", "replay", str(HEALTHY), "--list"],
                            capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert result.returncode == 0
    assert result.stdout.split()[:3] == ["0", "tcp", "203.0.113.10:58436"] or "tcp" in result.stdout


@pytest.mark.lab
def test_replay_completes_its_handshake_on_the_fix(tmp_path: Path) -> None:
    require_root()
    require_tools("tcpdump", "tshark", "iptables")
    _, document = _replay(str(HEALTHY), "--scenario", "incident", "--fix", "snat", "--out", str(tmp_path / "out"))
    assert document["handshake"] is True
    # The recorded answer names the client's port as the pod saw it, which SNAT picks anew,
    # so its length may differ by a digit; nothing else may.
    for departure in document["departures"]:
        recorded, live = departure["recorded"].split(), departure["live"].split()
        assert recorded[0] == live[0] and recorded[1:] and live[1:], departure
    recorded = choose_conversation(read_capture(HEALTHY))
    assert document["sent"] == sum(s.from_client for s in recorded.segments)
    # The live client capture shows the replayed exchange: the server's SYN-ACK and its answer,
    # and no RST from the client's kernel (the replayer's iptables rule kept it quiet).
    live = _tshark(tmp_path / "out" / "client.pcapng", "tcp.flags.str", "tcp.len", "ip.src")
    flags = [row[0].replace("·", "") for row in live]
    assert "AS" in flags and not any("R" in f for f in flags)
    server_data = [int(row[1]) for row in live if row[2] != "203.0.113.10" and int(row[1]) > 0]
    recorded_data = [s.payload_len for s in recorded.segments if not s.from_client and s.payload_len]
    assert len(server_data) == len(recorded_data)
    pairs = zip(server_data, recorded_data, strict=True)
    assert all(abs(live_len - recorded_len) <= 5 for live_len, recorded_len in pairs)
    # Both FINs were exchanged: the client's acknowledgements followed the live byte stream.
    assert sum("F" in f for f in flags) == 2


@pytest.mark.lab
def test_replay_on_the_incident_departs_at_the_syn_ack(tmp_path: Path) -> None:
    require_root()
    require_tools("tcpdump", "iptables")
    _, document = _replay(str(HEALTHY), "--scenario", "incident")
    assert document["handshake"] is False
    first = document["departures"][0]
    assert (first["recorded"], first["live"]) == ("SA", "nothing")


@pytest.mark.lab
def test_udp_replay_notices_where_replies_come_from(tmp_path: Path) -> None:
    """Recorded on the incident (answers re-sourced by the NAT gateway): the same there, not on the fix."""
    require_root()
    require_tools("tcpdump")
    _, on_incident = _replay(str(UDP_RESOURCED), "--scenario", "udp-asymmetric")
    assert on_incident["outcome"] == "matched", on_incident["departures"]
    _, on_fix = _replay(str(UDP_RESOURCED), "--scenario", "udp-asymmetric", "--fix", "snat")
    notes = [d["note"] for d in on_fix["departures"]]
    assert notes == ["the live reply comes from the service"] * 2
