"""Labs made for the field-verdict tests: their own addresses, captures taken for the test.

The shipped topologies are rebuilt with every address moved to other ranges
(the VPC to 100.64.0.0/16, the "internet" to 198.19.0.0/16), so a verdict that
leans on the shipped lab's numbers fails here. Each helper builds the lab,
captures at the points asked for (tcpdump on named interfaces, and optionally
``tcpdump -i any`` on one node, which writes Linux cooked captures), drives
traffic from the client's namespace, and leaves the files in a directory.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diag.lab import Lab, parse_topology
from diag.lab.topology import topology_path
from diag.scenario.capture import CapturePoint, CaptureSet

# Shipped prefix -> the field lab's prefix (longest first, so the /15 route goes before its /24s).
ADDRESS_MOVES = (
    ("198.18.0.0/15", "100.64.0.0/16"),
    ("198.18.", "100.64."),
    ("203.0.113.", "198.19.113."),
    ("198.51.100.", "198.19.100."),
    ("192.0.2.", "198.19.2."),
)

# node-a as kube-proxy would program it with externalTrafficPolicy Cluster: DNAT to the pod on
# node-b and SNAT (masquerade), so the reply comes back through node-a and is un-NATed there.
SNAT_SERVICE = """dnat = { port = 30080, to = "pod-b", protocols = ["tcp", "udp"] }"""
SNAT_SERVICE_CLUSTER = """[[nodes.services]]
name = "default/web"
node_port = 30080
policy = "Cluster"
endpoints = ["pod-b"]"""


def moved_topology(name: str, snat: bool = False, lab_name: str = "field") -> str:
    """The shipped topology ``name`` with every address moved; ``snat`` gives node-a kube-proxy's SNAT."""
    text = topology_path(name).read_text()
    for old, new in ADDRESS_MOVES:
        text = text.replace(old, new)
    if snat:
        assert SNAT_SERVICE in text
        text = text.replace(SNAT_SERVICE, SNAT_SERVICE_CLUSTER)
    return text.replace(f'name = "{name}"', f'name = "{lab_name}"', 1)


# A client, one router between it and a server: the injected-reset lab.
ROUTER_LAB = """
name = "field-inject"
[[nodes]]
name = "client"
role = "client"
routes = { default = "router" }
[[nodes]]
name = "router"
role = "internet"
[[nodes]]
name = "server"
role = "pod"
port = 80
routes = { default = "router" }
[[links]]
endpoints = { client = "198.19.50.10/24", router = "198.19.50.1/24" }
[[links]]
endpoints = { server = "198.19.60.10/24", router = "198.19.60.1/24" }
"""


def capture_points(lab: Lab, nodes: Sequence[str], any_on: Sequence[str] = ()) -> list[CapturePoint]:
    points = [CapturePoint(node, lab.netns(node), tuple(lab.interfaces(node))) for node in nodes]
    # tcpdump -i any: one Linux cooked capture of every interface of the node.
    points += [CapturePoint(f"{node}-any", lab.netns(node), ("any",)) for node in any_on]
    return points


def captured(
    lab: Lab, out: Path, nodes: Sequence[str], traffic: Callable[[], Any], any_on: Sequence[str] = ()
) -> dict[str, Path]:
    """Run ``traffic`` while capturing at ``nodes``; the merged capture file of each point."""
    with CaptureSet(capture_points(lab, nodes, any_on), out) as captures:
        traffic()
        files = captures.stop()
    return {capture.point: capture.path for capture in files}


def tcp_connect(address: str, port: int, seconds: float) -> str:
    """A kernel connect() as a client makes it: the outcome's name."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(seconds)
        try:
            sock.connect((address, port))
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        sock.sendall(b"whoami\n")
        try:
            sock.recv(4096)
        except TimeoutError:
            return "no-reply"
        return "connected"


def udp_retries(address: str, port: int, tries: int = 3, gap: float = 0.5) -> list[str]:
    """The same request sent ``tries`` times from one socket, as a client retries; the sources that answered."""
    sources = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(tries):
            sock.sendto(b"whoami", (address, port))
            # Wait the whole gap even when something answers: a re-sourced reply does not satisfy the client.
            deadline = time.monotonic() + gap
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    _, source = sock.recvfrom(4096)
                except TimeoutError:
                    break
                sources.append(f"{source[0]}:{source[1]}")
    return sources


def race_reset(lab: Lab, port: int, seconds: float) -> tuple[str, dict[str, Any]]:
    """An in-path device on ``router`` answers the client's SYN with a forged RST+ACK, then passes the server's SYN-ACK.

    The router drops the server's SYN-ACKs from its forwarding path and the
    injector (``field_injector.py``, run in the router's namespace) hands them
    on itself only after its RST has gone out: what an inline box that
    injects does when it wins the race. Returns the client's outcome and the
    injector's account.
    """
    client_side = lab.topology.link_between("router", "client")
    server_side = lab.topology.link_between("router", "server")
    assert client_side is not None and server_side is not None
    server = lab.address("server")
    drop = ["FORWARD", "-p", "tcp", "-s", server, "--sport", str(port), "--tcp-flags", "SYN,ACK", "SYN,ACK",
            "-j", "DROP"]
    lab.run("router", ["iptables", "-I", *drop])
    try:
        injector = lab.popen("router", [
            sys.executable, str(Path(__file__).with_name("field_injector.py")), client_side.end("router").interface,
            server_side.end("router").interface, server, str(port), str(seconds),
        ], stdout=subprocess.PIPE, text=True)
        assert injector.stdout is not None
        assert injector.stdout.readline().strip() == "ready"
        outcome = lab.call("client", lambda: tcp_connect(server, port, 2.0))
        account, _ = injector.communicate(timeout=seconds + 5)
    finally:
        lab.run("router", ["iptables", "-D", *drop])
    return str(outcome), dict(json.loads(account.strip().splitlines()[-1]))


def build(topology_text: str) -> Lab:
    return Lab(parse_topology(topology_text))


def tshark_lines(path: Path, fields: Sequence[str], display_filter: str = "") -> list[str]:
    """Independent reading of a capture: tshark's fields, one line a packet."""
    argv = ["tshark", "-r", str(path), "-T", "fields", *[a for f in fields for a in ("-e", f)]]
    if display_filter:
        argv += ["-Y", display_filter]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
