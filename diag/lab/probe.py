"""Talk to a service the way a client does and name what happened.

The probes run in the calling thread's network namespace; use them through
``Lab.call(node, ...)`` to run them inside a lab node. Outcomes use the
vocabulary of a topology's ``expect`` table.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

IP_RECVERR = 11  # report ICMP errors (port unreachable) on an unconnected UDP socket


@dataclass(frozen=True)
class ProbeResult:
    proto: str
    outcome: str  # tcp: connected, timeout, reset; udp: answered, re-sourced, refused, timeout
    reply: str = ""  # what the server said
    source: str = ""  # address:port the reply came from


def tcp_probe(address: str, port: int, timeout: float = 2.0, payload: bytes = b"whoami\n") -> ProbeResult:
    """Connect, send ``payload``, read one answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except TimeoutError:
            return ProbeResult("tcp", "timeout")
        except (ConnectionRefusedError, ConnectionResetError):
            return ProbeResult("tcp", "reset")
        try:
            sock.sendall(payload)
            reply = sock.recv(4096)
        except TimeoutError:
            return ProbeResult("tcp", "connected", source=f"{address}:{port}")
        except (ConnectionResetError, BrokenPipeError):
            return ProbeResult("tcp", "reset", source=f"{address}:{port}")
        return ProbeResult("tcp", "connected", reply.decode(errors="replace").strip(), f"{address}:{port}")


def udp_probe(address: str, port: int, timeout: float = 2.0, payload: bytes = b"whoami") -> ProbeResult:
    """Send one datagram from an unconnected socket and say who answered (if anyone).

    Unconnected, so a reply from another address (a NAT gateway's) is received
    rather than discarded; IP_RECVERR still reports ICMP port unreachable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.settimeout(timeout)
        sock.sendto(payload, (address, port))
        try:
            data, (peer, peer_port) = sock.recvfrom(4096)
        except TimeoutError:
            return ProbeResult("udp", "timeout")
        except ConnectionRefusedError:
            return ProbeResult("udp", "refused")
        outcome = "answered" if (peer, peer_port) == (address, port) else "re-sourced"
        return ProbeResult("udp", outcome, data.decode(errors="replace").strip(), f"{peer}:{peer_port}")
