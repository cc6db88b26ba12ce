"""Replay the client side of a recorded conversation against a live lab, with scapy.

Run inside the client's namespace::

    python -m diag.scenario.replay CAPTURE --to ADDR:PORT [--flow N | --stream C:P-S:Q] [--timeout S]

The recorded client packets are sent in order to the live service from a fresh
source port, with their flags and payloads; TCP sequence numbers are mapped
from the recording onto a new client ISN and, once the live SYN-ACK arrives,
acknowledgements onto the live server's ISN, so the handshake really happens
(which tcpreplay cannot do). An iptables rule in the namespace keeps the
kernel, which knows nothing of this connection, from resetting it.

Before each client packet the replayer waits (briefly) for the server packets
the recording showed before it, and compares what arrived: missing replies,
different flags, different payload lengths, replies from another source, and
live packets the recording did not have. One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.capture.proto import ACK, FIN, RST, SYN
from diag.scenario.conversation import Conversation, Segment, choose_conversation, flag_text, read_payloads

# Flags compared between recording and live exchange (PSH and ECN bits are a sender's whim).
_COMPARED = SYN | ACK | FIN | RST


@dataclass
class LivePacket:
    flags: int  # -1 for UDP
    seq: int
    payload_len: int
    source: str

    def describe(self) -> str:
        what = flag_text(self.flags) or "datagram"
        return f"{what} {self.payload_len} bytes" if self.payload_len else what


@dataclass
class Replay:
    conversation: Conversation
    target: tuple[str, int]
    reply_wait: float
    departures: list[dict[str, Any]] = field(default_factory=list)
    received: list[LivePacket] = field(default_factory=list)
    sent: int = 0
    handshake: bool = False

    def depart(self, segment: Segment | None, recorded: str, live: str, note: str = "") -> None:
        self.departures.append({"recorded_index": segment.index if segment else None,
                                "recorded": recorded, "live": live, "note": note})


def _drop_kernel_resets(source_port: int, add: bool) -> None:
    rule = ["OUTPUT", "-p", "tcp", "--sport", str(source_port), "--tcp-flags", "RST", "RST", "-j", "DROP"]
    subprocess.run(["iptables", "-A" if add else "-D", *rule], check=True, capture_output=True)


def compare(replay: Replay, expected: list[Segment], arrived: list[LivePacket]) -> None:
    """Record every difference between the server packets expected and those that arrived, in order."""
    for position, segment in enumerate(expected):
        if position >= len(arrived):
            replay.depart(segment, segment.describe(), "nothing", f"no reply within {replay.reply_wait} s")
            continue
        live = arrived[position]
        recorded_flags = segment.flags & _COMPARED if segment.flags >= 0 else -1
        live_flags = live.flags & _COMPARED if live.flags >= 0 else -1
        if recorded_flags != live_flags or segment.payload_len != live.payload_len:
            replay.depart(segment, segment.describe(), live.describe())
        service = f"{replay.target[0]}:{replay.target[1]}"
        if segment.from_server and live.source != service:
            replay.depart(segment, f"from {service}", f"from {live.source}", "reply re-sourced")
        elif not segment.from_server and live.source == service:
            replay.depart(segment, "re-sourced reply", f"from {service}", "the live reply comes from the service")
    for live in arrived[len(expected):]:
        replay.depart(None, "nothing", live.describe(), "the live server sent more than the recording shows")


def _take(inbox: queue.Queue[LivePacket], wanted: int, wait: float) -> list[LivePacket]:
    """Up to ``wanted`` live packets, waiting at most ``wait`` seconds in all (then whatever else is there)."""
    taken: list[LivePacket] = []
    deadline = time.monotonic() + wait
    while len(taken) < wanted:
        try:
            taken.append(inbox.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            break
    return taken


def play(replay: Replay, payloads: dict[int, bytes], timeout: float) -> None:
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.packet import Packet, Raw
    from scapy.sendrecv import AsyncSniffer

    conversation, (address, port) = replay.conversation, replay.target
    interface, _, _ = conf.route.route(address)
    source_port = random.randrange(20000, 60000)
    client_isn = random.randrange(1 << 32)
    server_isn: int | None = None
    inbox: queue.Queue[LivePacket] = queue.Queue()
    last_seen: set[tuple[int, int, int]] = set()
    # How far each server's byte stream got (relative to its ISN): when the live
    # server sends more or fewer bytes than the recorded one (an answer naming a
    # port, say), the client's acknowledgements follow the live stream.
    live_next = recorded_next = 0

    def from_server(packet: Packet) -> None:
        nonlocal server_isn, live_next
        layer = TCP if conversation.proto == "tcp" else UDP
        if IP not in packet or layer not in packet or packet[layer].dport != source_port:
            return
        if conversation.proto == "tcp" and (packet[IP].src != address or packet[TCP].sport != port):
            return
        segment = packet[layer]
        flags = int(segment.flags) if layer is TCP else -1
        seq = int(segment.seq) if layer is TCP else 0
        key = (flags, seq, len(segment.payload))
        if layer is TCP and key in last_seen:
            return  # the live server retransmitted: one sighting is enough for the comparison
        last_seen.add(key)
        if layer is TCP and flags & (SYN | ACK) == SYN | ACK:
            server_isn = seq
        if layer is TCP and server_isn is not None:
            end = (seq - server_isn) % (1 << 32) + len(segment.payload) + bool(flags & SYN) + bool(flags & FIN)
            live_next = max(live_next, end)
        inbox.put(LivePacket(flags, seq, len(segment.payload), f"{packet[IP].src}:{segment.sport}"))

    sniffer = AsyncSniffer(iface=interface, prn=from_server, store=False)
    sniffer.start()
    time.sleep(0.3)  # the sniffer's socket opens in the background
    sender = conf.L3socket()
    if conversation.proto == "tcp":
        _drop_kernel_resets(source_port, add=True)
    deadline = time.monotonic() + timeout
    try:
        expected: list[Segment] = []
        recorded_server: set[tuple[int, int, int]] = set()
        for segment in conversation.segments:
            if time.monotonic() > deadline:
                replay.depart(segment, segment.describe(), "not sent", "replay ran out of time")
                break
            if not segment.from_client:
                key = (segment.flags, segment.rel_seq, segment.payload_len)
                if segment.flags < 0 or key not in recorded_server:  # a TCP retransmission is no new reply
                    recorded_server.add(key)
                    expected.append(segment)
                if segment.flags >= 0:
                    end = segment.rel_seq + segment.payload_len + bool(segment.flags & SYN)
                    recorded_next = max(recorded_next, end + bool(segment.flags & FIN))
                continue
            arrived = _take(inbox, len(expected), replay.reply_wait if expected else 0.05)
            compare(replay, expected, arrived)
            replay.received += arrived
            expected = []
            if any(p.flags >= 0 and p.flags & RST for p in arrived):
                replay.depart(segment, segment.describe(), "not sent", "the live server reset the connection")
                break
            payload = payloads.get(segment.index, b"")
            if conversation.proto == "udp":
                packet = IP(dst=address) / UDP(sport=source_port, dport=port) / Raw(payload)
            else:
                ack = 0
                if segment.flags & ACK:
                    if server_isn is None:
                        replay.depart(segment, segment.describe(), "not sent", "no live SYN-ACK to acknowledge")
                        break
                    shift = live_next - recorded_next if live_next and recorded_next else 0
                    ack = (server_isn + segment.rel_ack + shift) % (1 << 32)
                    replay.handshake = replay.handshake or segment.rel_ack == 1
                seq = (client_isn + segment.rel_seq) % (1 << 32)
                packet = IP(dst=address) / TCP(sport=source_port, dport=port, flags=segment.flags & 0xFF,
                                               seq=seq, ack=ack, window=65535) / Raw(payload)
            sender.send(packet)
            replay.sent += 1
        else:
            arrived = _take(inbox, len(expected), replay.reply_wait)
            compare(replay, expected, arrived)
            replay.received += arrived
        time.sleep(0.2)
        extra = _take(inbox, 1 << 30, 0.0)
        compare(replay, [], extra)
        replay.received += extra
    finally:
        sniffer.stop()
        sender.close()
        if conversation.proto == "tcp":
            _drop_kernel_resets(source_port, add=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diag.scenario.replay", description=__doc__.splitlines()[0])
    parser.add_argument("capture", type=Path)
    parser.add_argument("--to", required=True, metavar="ADDR:PORT", help="the live service")
    parser.add_argument("--flow", type=int)
    parser.add_argument("--stream", metavar="CLIENT:PORT-SERVER:PORT")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--reply-wait", type=float, default=1.0, help="seconds to wait for each expected reply")
    args = parser.parse_args(argv)
    from diag import read_capture

    conversation = choose_conversation(read_capture(args.capture), args.flow, args.stream)
    payloads = read_payloads(args.capture, {s.index for s in conversation.segments if s.from_client})
    host, _, port = args.to.rpartition(":")
    replay = Replay(conversation, (host, int(port)), args.reply_wait)
    play(replay, payloads, args.timeout)
    outcome = "departed" if replay.departures else "matched"
    print(json.dumps({
        "kind": "replay", "outcome": outcome, "conversation": conversation.label, "handshake": replay.handshake,
        "sent": replay.sent, "received": len(replay.received), "departures": replay.departures,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
