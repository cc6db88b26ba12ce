"""One recorded conversation, ready to be replayed: pure functions over a capture's packet table.

A conversation is a TCP connection or a UDP exchange between two endpoints,
taken from a capture read by ``diag.read_capture``. Sequence numbers are kept
relative to each side's initial sequence number, so the replayer can map them
onto the live server's ISN; payloads come from the capture file itself (the
packet table holds only their digest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from diag.capture.proto import ACK, FIN, PSH, RST, SYN, TCP, UDP
from diag.errors import DiagError

_FLAG_LETTERS = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A"))


def flag_text(flags: int) -> str:
    """TCP flags in scapy's letters, e.g. 0x12 -> ``SA``."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit) if flags >= 0 else ""


@dataclass(frozen=True)
class Segment:
    """One packet of the conversation, seen from the client's side."""

    index: int  # position in the capture file
    from_client: bool
    flags: int  # -1 for UDP
    rel_seq: int  # relative to the sender's ISN (TCP), 0 for UDP
    rel_ack: int  # relative to the receiver's ISN, -1 when the ACK flag is off
    payload_len: int
    offset_s: float  # since the conversation's first packet
    from_server: bool = True  # a reply sent from the server's own address and port (not re-sourced)

    def describe(self) -> str:
        what = flag_text(self.flags) or "datagram"
        return f"{what} {self.payload_len} bytes" if self.payload_len else what


@dataclass(frozen=True)
class Conversation:
    proto: str  # "tcp" or "udp"
    client: tuple[str, int]
    server: tuple[str, int]
    segments: tuple[Segment, ...]

    @property
    def label(self) -> str:
        return f"{self.proto} {self.client[0]}:{self.client[1]} -> {self.server[0]}:{self.server[1]}"


@dataclass
class ConversationSummary:
    """A conversation as listed for choosing: protocol, endpoints, packet count."""

    proto: str
    client: tuple[str, int]
    server: tuple[str, int]
    packets: int = 0
    starts_with_syn: bool = False


def _records(packets: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(key): value for key, value in row.items()} for row in packets.to_dict(orient="records")]


def list_conversations(packets: pd.DataFrame) -> list[ConversationSummary]:
    """Every TCP/UDP conversation in order of first appearance.

    The client is the sender of the first SYN (TCP) or of the first datagram.
    """
    transport = packets[packets["proto"].isin([TCP, UDP]) & (packets["sport"] >= 0)]
    seen: dict[tuple[str, frozenset[tuple[str, int]]], ConversationSummary] = {}
    for row in _records(transport):
        proto = "tcp" if row["proto"] == TCP else "udp"
        a, b = (str(row["src"]), int(row["sport"])), (str(row["dst"]), int(row["dport"]))
        summary = seen.setdefault((proto, frozenset((a, b))), ConversationSummary(proto, a, b))
        summary.packets += 1
        is_syn = proto == "tcp" and int(row["tcp_flags"]) & (SYN | ACK) == SYN
        if is_syn and not summary.starts_with_syn:
            summary.client, summary.server, summary.starts_with_syn = a, b, summary.packets == 1
    return list(seen.values())


_STREAM = re.compile(r"^(\d+\.\d+\.\d+\.\d+):(\d+)-(\d+\.\d+\.\d+\.\d+):(\d+)$")


def choose_conversation(packets: pd.DataFrame, flow: int | None = None, stream: str | None = None) -> Conversation:
    """The conversation numbered ``flow`` in ``list_conversations``, the one matching ``stream``
    (``CLIENT:PORT-SERVER:PORT``), or by default the first TCP connection that starts with a SYN."""
    listing = list_conversations(packets)
    if not listing:
        raise DiagError("the capture holds no TCP or UDP conversation to replay")
    if stream is not None:
        match = _STREAM.match(stream.strip())
        if match is None:
            raise DiagError(f"--stream {stream!r}: write CLIENT:PORT-SERVER:PORT")
        ends = {(match.group(1), int(match.group(2))), (match.group(3), int(match.group(4)))}
        chosen = [c for c in listing if {c.client, c.server} == ends]
        if not chosen:
            raise DiagError(f"--stream {stream}: no such conversation in the capture")
        summary = chosen[0]
    elif flow is not None:
        if not 0 <= flow < len(listing):
            raise DiagError(f"--flow {flow}: the capture has conversations 0 to {len(listing) - 1}")
        summary = listing[flow]
    else:
        summary = next((c for c in listing if c.starts_with_syn), listing[0])
    return build_conversation(packets, summary.proto, summary.client, summary.server)


def _rows(packets: pd.DataFrame, proto: str, client: tuple[str, int], server: tuple[str, int]) -> pd.DataFrame:
    number = TCP if proto == "tcp" else UDP
    src, dst = packets["src"].astype(str), packets["dst"].astype(str)
    sport, dport = packets["sport"], packets["dport"]
    forward = (src == client[0]) & (sport == client[1]) & (dst == server[0]) & (dport == server[1])
    backward = (src == server[0]) & (sport == server[1]) & (dst == client[0]) & (dport == client[1])
    if proto == "udp":
        # A UDP reply may come back from another address (re-sourced by a NAT on the way): it is
        # still this exchange's reply when it reaches the client's port.
        backward = (dst == client[0]) & (dport == client[1]) & ~forward
    rows = packets[(packets["proto"] == number) & (forward | backward)]
    # A point capturing several interfaces sees a forwarded packet twice: keep its first sighting.
    if "iface" in rows and rows["iface"].astype(str).nunique() > 1:
        rows = rows[rows["iface"].astype(str) == str(rows["iface"].iloc[0])]
    return rows


def build_conversation(
    packets: pd.DataFrame, proto: str, client: tuple[str, int], server: tuple[str, int]
) -> Conversation:
    rows = _rows(packets, proto, client, server)
    start_ns = int(rows["ts_ns"].iloc[0])
    isn: dict[bool, int] = {}
    segments = []
    for row in _records(rows):
        from_client = str(row["src"]) == client[0] and int(row["sport"]) == client[1]
        flags = int(row["tcp_flags"]) if proto == "tcp" else -1
        rel_seq = rel_ack = 0
        if proto == "tcp":
            if flags & SYN:
                if from_client and from_client in isn and int(row["seq"]) != isn[True]:
                    break  # a new connection on the same 4-tuple: the recorded one ended here
                isn[from_client] = int(row["seq"])
            own, peer = isn.get(from_client), isn.get(not from_client)
            rel_seq = (int(row["seq"]) - own) % (1 << 32) if own is not None else int(row["seq"])
            rel_ack = (int(row["ack"]) - peer) % (1 << 32) if flags & ACK and peer is not None else -1
        length = max(int(row["payload_len"]), 0)
        offset_s = (int(row["ts_ns"]) - start_ns) / 1e9
        from_server = str(row["src"]) == server[0] and int(row["sport"]) == server[1]
        segments.append(Segment(int(row["index"]), from_client, flags, rel_seq, rel_ack, length, offset_s,
                                from_server))
    return Conversation(proto, client, server, tuple(segments))


def read_payloads(path: Path, indexes: set[int]) -> dict[int, bytes]:
    """Transport payloads of the packets at ``indexes`` in the file (scapy does the dissection)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet import TCP as ScapyTCP
    from scapy.layers.inet import UDP as ScapyUDP
    from scapy.utils import PcapReader

    payloads: dict[int, bytes] = {}
    with PcapReader(str(path)) as reader:
        for position, packet in enumerate(reader):
            if position in indexes and IP in packet:
                for layer in (ScapyTCP, ScapyUDP):
                    if layer in packet:
                        payloads[position] = bytes(packet[layer].payload)
                        break
            if position >= max(indexes, default=-1):
                break
    return payloads
