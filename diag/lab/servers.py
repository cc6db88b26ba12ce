"""A pod's servers: TCP and UDP on the same port, echo plus a tiny request/response.

Run inside a pod's namespace::

    python -m diag.lab.servers --address 198.18.102.10 --tcp 80 --udp 80 --behaviour normal

Prints ``ready`` on stdout once listening. Addresses are numeric and nothing
resolves names, so the pod sends no DNS. Requests:

* ``whoami`` (a line on TCP, a datagram on UDP): answered with
  ``pod=<name> proto=<tcp|udp> peer=<address:port>``, which shows whether the
  client's address survived the path (client IP preservation, SNAT);
* anything else is echoed back.

Behaviours: ``normal``; ``no-listener`` (bind nothing: the kernel answers
SYNs with RST and datagrams with ICMP port unreachable); ``abort`` (accept,
read, then close with SO_LINGER 0, which sends a RST); ``slow`` (wait
``--delay`` seconds before each reply).

The module uses only the standard library and imports nothing from the
package, so it starts fast (the lab may start dozens of them).
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time

BEHAVIOURS = ("normal", "no-listener", "abort", "slow")


def answer(request: bytes, name: str, proto: str, peer: tuple[str, int]) -> bytes:
    if request.strip() == b"whoami":
        return f"pod={name} proto={proto} peer={peer[0]}:{peer[1]}\n".encode()
    return request


def serve_tcp_connection(conn: socket.socket, peer: tuple[str, int], options: argparse.Namespace) -> None:
    with conn:
        try:
            data = conn.recv(65536)
            if options.behaviour == "abort":
                # SO_LINGER with a zero timeout turns close() into an abortive RST.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            while data:
                if options.behaviour == "slow":
                    time.sleep(options.delay)
                conn.sendall(answer(data, options.name, "tcp", peer))
                data = conn.recv(65536)
        except OSError:
            pass  # the peer went away (or was reset): nothing to report from a lab server


def serve_tcp(sock: socket.socket, options: argparse.Namespace) -> None:
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=serve_tcp_connection, args=(conn, peer, options), daemon=True).start()


def serve_udp(sock: socket.socket, options: argparse.Namespace) -> None:
    while True:
        data, peer = sock.recvfrom(65536)
        if options.behaviour == "slow":
            time.sleep(options.delay)
        if options.behaviour != "abort":
            sock.sendto(answer(data, options.name, "udp", peer), peer)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diag.lab.servers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="0.0.0.0", help="numeric address to bind (default: all)")
    parser.add_argument("--tcp", type=int, metavar="PORT", help="TCP port")
    parser.add_argument("--udp", type=int, metavar="PORT", help="UDP port")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="normal")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before each reply when slow")
    parser.add_argument("--name", default="pod", help="name reported by whoami")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    workers = []
    if options.behaviour != "no-listener":
        try:
            if options.tcp is not None:
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((options.address, options.tcp))
                tcp.listen(128)
                workers.append(threading.Thread(target=serve_tcp, args=(tcp, options), daemon=True))
            if options.udp is not None:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.bind((options.address, options.udp))
                workers.append(threading.Thread(target=serve_udp, args=(udp, options), daemon=True))
        except OSError as error:
            print(f"servers: cannot listen on {options.address}: {error.strerror}", file=sys.stderr)
            return 2
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
