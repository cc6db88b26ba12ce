"""Capture at every hop, on namespaces built here: client -- router -- server, joined by veth pairs.

Checks that every tcpdump listens before traffic starts (the very first SYN is
captured), that a point with two interfaces becomes one pcapng whose packets
carry their interface names (read by diag and by tshark alike), that a
forwarded packet shows on both of the router's interfaces, and that tcpdump's
own statistics are read back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tools

from diag import read_capture
from diag.capture.proto import SYN, TCP
from diag.errors import CaptureError
from diag.scenario.capture import CapturePoint, CaptureSet
from diag.scenario.pcapng import merge_to_pcapng

pytestmark = pytest.mark.lab
PREFIX = f"dcap{os.getpid() % 100000}"
CLIENT, ROUTER, SERVER = f"{PREFIX}-c", f"{PREFIX}-r", f"{PREFIX}-s"
SERVER_ADDRESS = "10.77.2.2"
CLIENT_PY = Path(__file__).resolve().parent.parent / "diag" / "scenario" / "client.py"

ECHO_SERVER = """
import socket
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", 8080))
listener.listen()
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(conn.recv(100))
"""


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture(scope="module")
def three_namespaces() -> Iterator[None]:
    require_root()
    require_tools("tcpdump", "tshark", "ip", "ethtool")
    made: list[str] = []
    server = None
    try:
        for name in (CLIENT, ROUTER, SERVER):
            _ip("netns", "add", name)
            made.append(name)
        _ip("link", "add", "eth0", "netns", CLIENT, "type", "veth", "peer", "name", "eth0", "netns", ROUTER)
        _ip("link", "add", "eth1", "netns", ROUTER, "type", "veth", "peer", "name", "eth0", "netns", SERVER)
        for ns, interface, address in ((CLIENT, "eth0", "10.77.1.2/24"), (ROUTER, "eth0", "10.77.1.1/24"),
                                       (ROUTER, "eth1", "10.77.2.1/24"), (SERVER, "eth0", f"{SERVER_ADDRESS}/24")):
            _ip("-n", ns, "addr", "add", address, "dev", interface)
            _ip("-n", ns, "link", "set", interface, "up")
            subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", interface, "tx", "off"],
                           check=True, capture_output=True)
        for ns in (CLIENT, ROUTER, SERVER):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                           check=True)
        _ip("-n", CLIENT, "route", "add", "default", "via", "10.77.1.1")
        _ip("-n", SERVER, "route", "add", "default", "via", "10.77.2.1")
        subprocess.run(["ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", SERVER, sys.executable, "-c", ECHO_SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def _connect(port: int = 8080) -> str:
    result = subprocess.run(["ip", "netns", "exec", CLIENT, sys.executable, "-I", str(CLIENT_PY), "tcp",
                             SERVER_ADDRESS, str(port), "--syn-retries", "1"],
                            capture_output=True, text=True, timeout=15, check=True)
    return result.stdout


def _tshark(path: Path, *fields: str, display_filter: str = "") -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-n", "-T", "fields", *(arg for f in fields for arg in ("-e", f))]
    if display_filter:
        argv += ["-Y", display_filter]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return [line.split("\t") for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def captured(three_namespaces: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("capture")
    points = [CapturePoint("client", CLIENT, ("eth0",)), CapturePoint("router", ROUTER, ("eth0", "eth1")),
              CapturePoint("server", SERVER, ("eth0",))]
    with CaptureSet(points, out) as capture_set:
        # No sleep: the capture must already be listening when start() returns.
        assert '"outcome": "ok"' in _connect()
        assert '"outcome": "refused"' in _connect(port=8081)
        results = capture_set.stop()
    return out, results


def test_one_file_per_point_and_nothing_else(captured: tuple[Path, list]) -> None:
    out, results = captured
    assert sorted(p.name for p in out.iterdir()) == ["client.pcapng", "router.pcapng", "server.pcapng"]
    assert [r.point for r in results] == ["client", "router", "server"]


def test_first_syn_is_captured_everywhere(captured: tuple[Path, list]) -> None:
    out, _ = captured
    for point in ("client", "router", "server"):
        packets = read_capture(out / f"{point}.pcapng")
        syns = packets[(packets["proto"] == TCP) & (packets["tcp_flags"] == SYN) & (packets["dport"] == 8080)]
        assert len(syns) >= 1, point


def test_interface_names_survive_the_merge(captured: tuple[Path, list]) -> None:
    out, _ = captured
    router = out / "router.pcapng"
    packets = read_capture(router)
    by_tshark = [row[0] for row in _tshark(router, "frame.interface_name")]
    assert list(packets["iface"].astype(str)) == by_tshark
    assert set(by_tshark) == {"eth0", "eth1"}


def test_forwarded_packets_show_on_both_router_interfaces(captured: tuple[Path, list]) -> None:
    out, _ = captured
    rows = _tshark(out / "router.pcapng", "frame.interface_name", "tcp.seq_raw",
                   display_filter="tcp.flags.syn==1 && tcp.flags.ack==0 && tcp.dstport==8080")
    by_seq: dict[str, set[str]] = {}
    for interface, seq in rows:
        by_seq.setdefault(seq, set()).add(interface)
    assert by_seq and all(interfaces == {"eth0", "eth1"} for interfaces in by_seq.values())


def test_timestamps_are_nanosecond_and_ordered(captured: tuple[Path, list]) -> None:
    out, _ = captured
    router = out / "router.pcapng"
    packets = read_capture(router)
    epochs = [row[0] for row in _tshark(router, "frame.time_epoch")]
    assert [int(e.replace(".", "")) for e in epochs] == list(packets["ts_ns"])
    assert packets["ts_ns"].is_monotonic_increasing
    assert any(e[-3:] != "000" for e in epochs)  # real nanosecond digits, not microseconds padded


def test_statistics_come_from_tcpdump(captured: tuple[Path, list]) -> None:
    _, results = captured
    for result in results:
        assert result.dropped_by_kernel == 0
        assert sum(i.captured for i in result.interfaces) == result.packets
        assert len(_tshark(result.path, "frame.number")) == result.packets


def test_a_missing_interface_is_one_clear_error(three_namespaces: None, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(CaptureError, match=r"tcpdump on client/nosuch0"):
        CaptureSet([CapturePoint("client", CLIENT, ("nosuch0",))], tmp_path).start()
    assert time.monotonic() - started < 10
    assert not (tmp_path / ".raw").exists()


def test_merge_rejects_a_file_that_is_not_pcap(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"not a capture at all, just text")
    with pytest.raises(CaptureError, match="not a classic pcap"):
        merge_to_pcapng([("eth0", bogus)], tmp_path / "out.pcapng")


def test_snaplen_cuts_packets(three_namespaces: None, tmp_path: Path) -> None:
    with CaptureSet([CapturePoint("client", CLIENT, ("eth0",))], tmp_path, snaplen=60) as capture_set:
        _connect()
        (result,) = capture_set.stop()
    rows = _tshark(result.path, "frame.cap_len", "frame.len")
    assert rows and all(int(cap) <= 60 for cap, _ in rows)
    assert any(int(wire) > 60 for _, wire in rows)
    packets = read_capture(result.path)
    assert packets["truncated"].any() and (packets["cap_len"] <= 60).all()


def test_merge_orders_microsecond_pcaps_and_names_interfaces(tmp_path: Path) -> None:
    """Merging is checked against tshark on pcaps scapy wrote (microsecond, one per interface)."""
    require_tools("tshark")
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    def packets(start: float, port: int) -> list:
        made = []
        for number in range(3):
            # Explicit MACs: without them scapy would try to resolve one over the network.
            link = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            packet = link / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=port, dport=53) / b"x"
            packet.time = start + number * 0.002
            made.append(packet)
        return made

    wrpcap(str(tmp_path / "a.pcap"), packets(1_700_000_000.000100, 1000))
    wrpcap(str(tmp_path / "b.pcap"), packets(1_700_000_000.001100, 2000))
    merged = tmp_path / "merged.pcapng"
    assert merge_to_pcapng([("ens1", tmp_path / "a.pcap"), ("ens2", tmp_path / "b.pcap")], merged) == 6
    rows = _tshark(merged, "frame.interface_name", "udp.srcport", "frame.time_epoch")
    assert [(r[0], r[1]) for r in rows] == [("ens1", "1000"), ("ens2", "2000")] * 3
    stamps = [float(r[2]) for r in rows]
    assert stamps == sorted(stamps) and abs(stamps[0] - 1_700_000_000.0001) < 1e-6
    table = read_capture(merged)
    assert list(table["iface"].astype(str)) == [r[0] for r in rows]
