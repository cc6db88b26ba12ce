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
package, so it starts fast. The lab starts all pods' servers with one
interpreter: ``--spawn FILE`` reads a JSON list of ``{"netns": ..., "args":
[...]}`` and forks one server per entry, each of which joins its pod's
namespace and prints ``ready <name> <pid>``. Every pod still has its own
process living in its own namespace; only the interpreter start-up is shared.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import struct
import sys
import threading
import time

BEHAVIOURS = ("normal", "no-listener", "abort", "slow")
CLONE_NEWNET = 0x40000000


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
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--spawn"] and len(arguments) == 2:
        return spawn(arguments[1])
    return serve(parse_arguments(arguments))


def spawn(spec_path: str) -> int:
    """Fork one server per pod, each inside its pod's namespace (see the module's docstring)."""
    with open(spec_path) as spec_file:
        pods = json.load(spec_file)
    detach = os.environ.get("DIAG_SERVERS_DETACH") == "1"
    libc = ctypes.CDLL(None, use_errno=True)
    sys.stdout.flush()
    for pod in pods:
        if os.fork() == 0:
            status = 1
            try:
                if detach:
                    os.setsid()  # outlive the launching terminal session, as `diag lab up` wants
                fd = os.open(f"/run/netns/{pod['netns']}", os.O_RDONLY)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                os.close(fd)
                status = serve(parse_arguments(pod["args"]), announce=f"ready {pod['name']} {os.getpid()}")
                if status != 0:
                    print(f"failed {pod['name']}: could not listen (exit status {status})", flush=True)
            except BaseException as error:  # report, never fall back into the launcher's loop
                print(f"failed {pod['name']}: {error}", flush=True)
            finally:
                os._exit(status)
    return 0


def serve(options: argparse.Namespace, announce: str = "ready") -> int:
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
    print(announce, flush=True)
    # The lab's process holds the other end of this pipe (diag.lab.lifetime, the same variable
    # name): end-of-file means it is gone, even killed with SIGKILL, and the server goes with it.
    lifeline = os.environ.get("DIAG_SERVERS_LIFELINE")
    try:
        if lifeline:
            while os.read(int(lifeline), 64):
                pass
            return 0
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
