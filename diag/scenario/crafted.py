"""Crafted traffic with scapy, run inside a lab namespace by a scenario step.

Two behaviours that kernel sockets cannot produce on their own:

``inject-rst``
    An on-path box (run in a router's namespace) watches for the client's
    request and at once sends the client a RST that claims to come from the
    server, with exactly the sequence number the client expects. The genuine
    reply still arrives afterwards: the signature of an injected reset.

``tuple-reuse``
    A client that opens a connection on a fixed source port with scapy and
    then forgets it (no FIN, no RST), so the server still holds the 4-tuple;
    then a kernel socket bound to the same port connects again. The server
    answers the new SYN with a challenge ACK (RFC 5961), the client's kernel
    answers that with a RST, and its SYN retransmission then opens a fresh
    connection.

Each prints one JSON line to stdout; ``inject-rst`` prints ``ready`` first,
once it is sniffing, so the runner can start the traffic.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any


def inject_rst(interface: str, port: int, timeout: float, count: int) -> dict[str, Any]:
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Packet
    from scapy.sendrecv import AsyncSniffer

    # One raw socket opened up front: opening one per packet (scapy's send())
    # costs tens of milliseconds, enough to lose the race to the genuine reply.
    raw_socket = conf.L3socket()

    injected: list[str] = []

    def is_request(packet: Packet) -> bool:
        return bool(
            IP in packet and TCP in packet and packet[TCP].dport == port and len(packet[TCP].payload) > 0
        )

    def spoof_reset(packet: Packet) -> None:
        if len(injected) >= count:
            return
        request_ip, request_tcp = packet[IP], packet[TCP]
        # The client expects the server's next byte at the request's ack number.
        reset = IP(src=request_ip.dst, dst=request_ip.src, ttl=64) / TCP(
            sport=request_tcp.dport, dport=request_tcp.sport, flags="R", seq=request_tcp.ack
        )
        raw_socket.send(reset)
        injected.append(f"{request_ip.dst}:{request_tcp.dport} -> {request_ip.src}:{request_tcp.sport}")

    sniffer = AsyncSniffer(iface=interface, lfilter=is_request, prn=spoof_reset, store=False)
    sniffer.start()
    # AsyncSniffer opens its socket in the background; wait until it exists.
    deadline = time.monotonic() + 5
    while getattr(sniffer, "stop_cb", None) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    print("ready", flush=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end and len(injected) < count:
        time.sleep(0.05)
    time.sleep(0.2)  # let the genuine reply pass while still watching
    sniffer.stop()
    raw_socket.close()
    return {"kind": "inject-rst", "injected": injected, "outcome": "injected" if injected else "nothing-seen"}


def _iptables_drop_resets(source_port: int, add: bool) -> None:
    """Keep the kernel from resetting a connection only scapy knows about."""
    rule = ["OUTPUT", "-p", "tcp", "--sport", str(source_port), "--tcp-flags", "RST", "RST", "-j", "DROP"]
    subprocess.run(["iptables", "-A" if add else "-D", *rule], check=True, capture_output=True)


def tuple_reuse(address: str, port: int, source_port: int, timeout: float) -> dict[str, Any]:
    from scapy.layers.inet import IP, TCP
    from scapy.sendrecv import send, sr1

    result: dict[str, Any] = {"kind": "tuple-reuse", "tuple": f"{source_port} -> {address}:{port}"}
    isn = random.randrange(1 << 32)
    _iptables_drop_resets(source_port, add=True)
    try:
        syn = IP(dst=address) / TCP(sport=source_port, dport=port, flags="S", seq=isn, options=[("MSS", 1460)])
        syn_ack = sr1(syn, timeout=min(timeout, 3), verbose=False)
        if syn_ack is None or TCP not in syn_ack or syn_ack[TCP].flags & 0x12 != 0x12:
            return result | {"outcome": "no-handshake"}
        server_next = syn_ack[TCP].seq + 1
        send(IP(dst=address) / TCP(sport=source_port, dport=port, flags="A", seq=isn + 1, ack=server_next),
             verbose=False)
        request = b"first connection\n"
        send(IP(dst=address) / TCP(sport=source_port, dport=port, flags="PA", seq=isn + 1, ack=server_next)
             / request, verbose=False)
        time.sleep(0.3)  # the server answers; we never acknowledge nor close: the client "forgot"
    finally:
        _iptables_drop_resets(source_port, add=False)
    # Same 4-tuple, now from the kernel: SYN, challenge ACK, RST, then the retried SYN succeeds.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 3)
    sock.bind(("0.0.0.0", source_port))
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        sock.connect((address, port))
        sock.sendall(b"second connection\n")
        reply = sock.recv(65536)
        outcome = "reconnected"
        result["received"] = len(reply)
    except OSError as error:
        outcome, result["error"] = "failed", str(error)
    finally:
        sock.close()
    return result | {"outcome": outcome, "reconnect_seconds": round(time.monotonic() - started, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diag.scenario.crafted", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    inject = sub.add_parser("inject-rst", help="spoof a RST to the client when its request passes")
    inject.add_argument("--interface", required=True)
    inject.add_argument("--port", type=int, required=True, help="the service port the request goes to")
    inject.add_argument("--count", type=int, default=1)
    inject.add_argument("--timeout", type=float, default=10.0)
    reuse = sub.add_parser("tuple-reuse", help="reopen a 4-tuple the server still holds")
    reuse.add_argument("address")
    reuse.add_argument("port", type=int)
    reuse.add_argument("--source-port", type=int, default=40404)
    reuse.add_argument("--timeout", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.kind == "inject-rst":
        result = inject_rst(args.interface, args.port, args.timeout, args.count)
    else:
        result = tuple_reuse(args.address, args.port, args.source_port, args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
