"""Forwarded copies inside one capture: crafted packets, and the lab's router captures against tshark.

A box captured on two interfaces sees a forwarded packet twice (in on one,
out on the other, TTL one lower, same IP ID). Those later copies, and only
those, are marked: a repeat on the same interface or a retransmission a
second later is a packet of its own, and a copy NAT rewrote belongs to
another flow.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT, require_root, require_tools
from packets import make_packets

from diag import read_capture
from diag.flows import build_flows
from diag.flows.copies import DUPLICATE_WINDOW_NS, copy_origins, forwarded_copies, packet_keys

SYN = {"src": "203.0.113.10", "dst": "198.51.100.10", "sport": 39386, "dport": 80, "flags": "S", "seq": 1000}
# Another packet on the second interface, so the capture has two of them in every test.
OTHER = {"src": "192.0.2.7", "dst": "192.0.2.8", "sport": 5000, "dport": 6000, "flags": "A", "seq": 1, "iface": "eth1"}


def seen(iface: str, t: float, ip_id: int = 61898, ttl: int = 64, **fields: Any) -> dict[str, Any]:
    return {**SYN, "iface": iface, "t": t, "ip_id": ip_id, "ttl": ttl, **fields}


def copies(rows: list[dict[str, Any]]) -> list[bool]:
    return [bool(v) for v in forwarded_copies(make_packets(rows))]


def test_copy_on_another_interface_is_marked_and_points_at_the_first() -> None:
    rows = [seen("eth0", 0.0), seen("eth1", 0.000012, ttl=63)]
    assert copies(rows) == [False, True]
    assert copy_origins(make_packets(rows)).tolist() == [-1, 0]


def test_repeat_on_the_same_interface_is_not_a_copy() -> None:
    # Same packet, same IP ID, 1 ms apart, same interface: a real duplicate on the wire.
    assert copies([seen("eth0", 0.0), seen("eth0", 0.001), OTHER]) == [False, False, False]


def test_retransmission_a_second_later_on_another_interface_is_not_a_copy() -> None:
    # Even with the same IP ID (some stacks send 0 on every SYN-ACK or RST).
    assert copies([seen("eth0", 0.0), seen("eth1", 1.0, ttl=63)]) == [False, False]


def test_each_retransmission_keeps_its_own_copy() -> None:
    rows = [
        seen("eth0", 0.0, ip_id=1),
        seen("eth1", 0.00001, ip_id=1, ttl=63),
        seen("eth0", 1.0, ip_id=2),
        seen("eth1", 1.00001, ip_id=2, ttl=63),
    ]
    assert copy_origins(make_packets(rows)).tolist() == [-1, 0, -1, 2]


def test_burst_of_identical_packets_pairs_the_kth_of_each_interface() -> None:
    # Two identical packets 2 ms apart, each forwarded: two originals, two copies.
    rows = [seen("eth0", 0.0), seen("eth1", 0.00001, ttl=63), seen("eth0", 0.002), seen("eth1", 0.00201, ttl=63)]
    assert copy_origins(make_packets(rows)).tolist() == [-1, 0, -1, 2]


def test_a_packet_through_a_bridge_and_out_again_has_one_origin() -> None:
    # In on a pod's veth, on the bridge, out on the uplink: three copies of one packet.
    rows = [seen("veth1", 0.0), seen("cni0", 0.000005), seen("eth0", 0.00001, ttl=63)]
    assert copy_origins(make_packets(rows)).tolist() == [-1, 0, 0]


def test_nat_rewritten_copy_is_another_flows_packet() -> None:
    rows = [seen("eth0", 0.0), seen("eth1", 0.00001, ttl=63, dst="198.18.10.10", dport=30080)]
    assert copies(rows) == [False, False]


def test_different_ip_id_captures_or_window_are_not_copies() -> None:
    assert copies([seen("eth0", 0.0, ip_id=1), seen("eth1", 0.00001, ip_id=2)]) == [False, False]
    other_capture = [seen("eth0", 0.0, capture="a"), seen("eth1", 0.00001, capture="b"), {**OTHER, "capture": "a"}]
    assert copies(other_capture) == [False, False, False]
    late = DUPLICATE_WINDOW_NS / 1e9 + 0.005
    assert copies([seen("eth0", 0.0), seen("eth1", late)]) == [False, False]
    assert [bool(v) for v in forwarded_copies(make_packets([seen("eth0", 0.0), seen("eth1", late)]), 10**9)] == [
        False,
        True,
    ]


def test_cooked_any_capture_tells_copies_by_direction() -> None:
    # tcpdump -i any with Linux cooked v1: one interface id, but in and out.
    rows = [seen("0", 0.0, direction="in"), seen("0", 0.00001, ttl=63, direction="out")]
    assert copies(rows) == [False, True]
    assert copies([seen("0", 0.0, direction="out"), seen("0", 0.001, direction="out"), OTHER]) == [False, False, False]


def test_the_first_copy_in_time_is_the_origin_whatever_the_file_order() -> None:
    rows = [seen("eth1", 0.00001, ttl=63), seen("eth0", 0.0)]
    assert copy_origins(make_packets(rows)).tolist() == [1, -1]


def test_non_ip_rows_and_single_interface_captures_have_no_copies() -> None:
    assert copies([{"iface": "eth0"}, {"iface": "eth1"}]) == [False, False]
    assert copies([seen("eth0", 0.0)] * 3) == [False, False, False]
    assert copies([]) == []


def test_packet_keys_ignore_addresses_and_ip_id() -> None:
    table = make_packets([seen("eth0", 0.0), seen("eth1", 0.0, ip_id=5, dst="198.18.10.10", dport=30080)])
    keys = packet_keys(table)
    assert keys[0] == keys[1] != 0


# --------------------------------------------------------------------------- the lab's captures

CAPTURES = PROJECT / "captures"
# Capture points recorded on two interfaces of a forwarding box, and one on a single interface.
TWO_INTERFACE_POINTS = ("internet", "vpc-router", "node-b")


def tshark_copies(path: str) -> np.ndarray:
    """The forwarded copies by the plain definition, one packet at a time, from tshark's own fields."""
    fields = ["frame.interface_name", "frame.time_epoch", "ip.src", "ip.dst", "ip.id", "ip.proto"]
    fields += ["tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "tcp.len"]
    out = subprocess.run(
        ["tshark", "-r", path, "-T", "fields", *[arg for f in fields for arg in ("-e", f)], "-E", "occurrence=f"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    marked = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        if not row[2]:
            continue  # not IP
        for j in range(i):
            earlier = rows[j]
            close = float(row[1]) - float(earlier[1]) <= DUPLICATE_WINDOW_NS / 1e9
            if close and earlier[0] != row[0] and earlier[2:] == row[2:] and not marked[j]:
                marked[i] = True
                break
    return marked


@pytest.mark.parametrize("point", [*TWO_INTERFACE_POINTS, "pod-b"])
def test_lab_router_copies_agree_with_tshark_fields(point: str) -> None:
    require_tools("tshark")
    path = CAPTURES / f"{point}.pcapng"
    if not path.exists():
        pytest.skip(f"reference capture missing: {path}")
    expected = tshark_copies(str(path))
    found = forwarded_copies(read_capture(path))
    assert found.tolist() == expected.tolist()
    assert found.any() == (point in TWO_INTERFACE_POINTS)


def test_copies_of_a_large_two_interface_table_are_found_in_bulk() -> None:
    # 20,000 flows, every packet forwarded: exactly the second copy of each is marked.
    n = 20_000
    table = make_packets([seen("eth0", 0.0)]).iloc[np.zeros(2 * n, dtype=np.int64)].reset_index(drop=True)
    table["sport"] = np.repeat(np.arange(n, dtype=np.int32) + 1024, 2)
    table["iface"] = pd.Categorical(np.tile(["eth0", "eth1"], n))
    table["ts_ns"] = table["ts_ns"] + np.arange(2 * n) * 1000
    marked = forwarded_copies(table)
    assert marked.tolist() == [False, True] * n


# --------------------------------------------------------------------------- a live router, tcpdump -i any

# A one-shot TCP server and client for the namespaces (numeric addresses, no DNS).
_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); c.recv(100); c.sendall(b"world" * 100); c.close()
"""
_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=5); c.sendall(b"hello")
while c.recv(4096): pass
c.close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _in(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _start_tcpdump(ns: str, argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        # A small snap length: in immediate mode every ring slot is snap-length sized, and the default
        # (256 KiB) leaves a handful of slots, which a busy machine overruns even at this rate.
        _in(ns, "tcpdump", "-n", "-U", "--immediate-mode", "-s", "2048", *argv),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline()]
    while lines[-1] and "listening on" not in lines[-1]:  # capturing from "listening on ..." on
        lines.append(proc.stderr.readline())
    assert "listening on" in lines[-1], lines
    return proc


def _stop(proc: subprocess.Popen[str], how: signal.Signals) -> str:
    """Stop a process we started (killed if it does not stop in time); its stderr."""
    if proc.poll() is None:
        proc.send_signal(how)
    try:
        return proc.communicate(timeout=10)[1] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1] or ""


def test_a_live_router_captured_with_any_counts_each_packet_once(tmp_path: Path) -> None:
    """client -- router -- server in namespaces; the router's -i any captures (cooked v1 and v2) count
    each forwarded packet of one TCP exchange once."""
    require_root()
    require_tools("ip", "tcpdump")
    tag = "cpy" + secrets.token_hex(3)
    client, router, server = f"{tag}c", f"{tag}r", f"{tag}s"
    created: list[str] = []
    dumps: list[subprocess.Popen[str]] = []
    listener: subprocess.Popen[str] | None = None
    try:
        for ns in (client, router, server):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", client, "link", "add", "eth0", "type", "veth", "peer", "name", "eth-c", "netns", router)
        _ip("-n", server, "link", "add", "eth0", "type", "veth", "peer", "name", "eth-s", "netns", router)
        for ns, dev, address in (
            (client, "eth0", "192.0.2.1/30"),
            (router, "eth-c", "192.0.2.2/30"),
            (router, "eth-s", "198.51.100.1/30"),
            (server, "eth0", "198.51.100.2/30"),
        ):
            _ip("-n", ns, "addr", "add", address, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", client, "route", "add", "default", "via", "192.0.2.2")
        _ip("-n", server, "route", "add", "default", "via", "198.51.100.1")
        subprocess.run(_in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True)

        paths = {name: tmp_path / f"{name}.pcap" for name in ("client", "any", "any2")}
        dumps.append(_start_tcpdump(client, ["-i", "eth0", "-w", str(paths["client"])]))
        dumps.append(_start_tcpdump(router, ["-i", "any", "-y", "LINUX_SLL", "-w", str(paths["any"])]))
        dumps.append(_start_tcpdump(router, ["-i", "any", "-y", "LINUX_SLL2", "-w", str(paths["any2"])]))
        listener = subprocess.Popen(
            _in(server, sys.executable, "-c", _SERVER, "198.51.100.2"), stdout=subprocess.PIPE, text=True
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        subprocess.run(_in(client, sys.executable, "-c", _CLIENT, "198.51.100.2"), check=True, timeout=10)
        listener.wait(timeout=10)
        time.sleep(0.3)  # the last ACK reaches every capture
    finally:
        try:
            stats = [_stop(proc, signal.SIGINT) for proc in dumps]  # tcpdump writes what it holds, and its counts
            if listener is not None:
                _stop(listener, signal.SIGTERM)
        finally:
            for ns in created:
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    columns = ["history", "conn_state", "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "retransmits"]
    client_flows = build_flows(read_capture(paths["client"]))
    assert list(client_flows[client_flows.resp == "198.51.100.2:8080"].conn_state) == ["SF"]
    for name in ("any", "any2"):
        table = read_capture(paths[name])
        tcp = table[table.dport.eq(8080) | table.sport.eq(8080)]
        # The router saw every packet twice: in on one interface, out on the other ...
        assert (tcp.direction == "in").sum() == (tcp.direction == "out").sum() > 0, name
        # ... and counts each once: as its arrivals alone, where each packet is seen once, count it.
        arrivals = build_flows(table[table.direction == "in"].reset_index(drop=True))
        seen = build_flows(table)
        assert list(seen.conn_state) == ["SF"], (name, seen, stats)
        assert seen[columns].equals(arrivals[columns]), (name, seen, arrivals)
