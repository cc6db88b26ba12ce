"""One capture point in several files: ring buffers, rotated files, NAME repeated, NAME=DIR, NAME=GLOB.

The reference is mergecap's merge of the same files read as one capture;
the ring buffer is a real one, written by tcpdump -C/-W in a network
namespace while traffic runs over its loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT, require_root, require_tools
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from diag.analysis import analyze, parse_capture_args, read_captures
from diag.capture import read_capture
from diag.errors import DiagError

# Columns that say where a packet sits in its file or how the point is named, not what it is.
PLACE_COLUMNS = ["capture", "index", "file"]


def run_diag(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diag.cli", *map(str, args)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def write_pcap_at(path: Path, packets: list[tuple[int, bytes]]) -> Path:
    """A microsecond pcap of (timestamp ns, Ethernet frame) records, in the order given."""
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts_ns, frame in packets:
        seconds, fraction = divmod(ts_ns, 1_000_000_000)
        parts.append(struct.pack("<IIII", seconds, fraction // 1000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(parts))
    return path


def conversation(count: int, start_ns: int = 1_764_257_655_000_000_000) -> list[tuple[int, bytes]]:
    frames = []
    for number in range(count):
        packet = IP(src="198.51.100.7", dst="198.18.0.9", id=number) / TCP(sport=40000, dport=80, seq=number)
        frames.append((start_ns + number * 1_000_000, bytes(Ether() / packet)))
    return frames


def same_packets(ours: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Columns whose values differ, the place columns aside."""
    columns = [column for column in ours.columns if column not in PLACE_COLUMNS]
    return [
        column
        for column in columns
        if ours[column].astype(object).tolist() != reference[column].astype(object).tolist()
    ]


def test_rotated_names_make_one_point_and_unrelated_files_stay_apart(tmp_path: Path) -> None:
    ring = [tmp_path / name for name in ("pod.pcap", "pod.pcap1", "pod.pcap2")]
    dumpcap = [tmp_path / f"node_{n:05d}_2026120418{n:02d}00.pcapng" for n in (1, 2)]
    for path in [*ring, *dumpcap, tmp_path / "a.pcap"]:
        path.touch()
    pairs = parse_capture_args([str(path) for path in [*ring, *dumpcap]])
    assert pairs == [("pod", path) for path in ring] + [("node", path) for path in dumpcap]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pod.pcap").touch()
    with pytest.raises(DiagError, match="two captures are named 'pod'"):
        parse_capture_args([str(tmp_path / "pod.pcap"), str(tmp_path / "other" / "pod.pcap")])
    with pytest.raises(DiagError, match="two captures are named 'pod'"):
        parse_capture_args([str(tmp_path / "pod.pcap1"), str(tmp_path / "other" / "pod.pcap")])
    # Named explicitly, any files may make one point.
    assert parse_capture_args([f"pod={ring[0]}", f"pod={tmp_path / 'a.pcap'}"]) == [
        ("pod", ring[0]),
        ("pod", tmp_path / "a.pcap"),
    ]


def test_a_directory_or_a_glob_names_the_files_of_one_point(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    folder.mkdir()
    files = [folder / f"x.pcap{n}" for n in range(3)]
    for path in files:
        path.touch()
    (folder / "README").write_text("not a capture")
    assert parse_capture_args([f"pod={folder}"]) == [("pod", path) for path in files]
    assert parse_capture_args([f"pod={folder}/x.pcap*"]) == [("pod", path) for path in files]
    assert parse_capture_args({"pod": [str(files[2]), files[0]]}) == [("pod", files[2]), ("pod", files[0])]
    assert parse_capture_args({"pod": str(folder)}) == [("pod", path) for path in files]
    with pytest.raises(DiagError, match="no file matches"):
        parse_capture_args([f"pod={folder}/y*.pcap"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiagError, match="no capture files"):
        parse_capture_args([f"pod={tmp_path / 'empty'}"])


def test_files_that_overlap_in_time_are_merged_packet_by_packet(tmp_path: Path) -> None:
    packets = conversation(40)
    whole = write_pcap_at(tmp_path / "whole.pcap", packets)
    # Two interfaces' worth of files: even and odd packets, each file in time order, given out of order.
    odd = write_pcap_at(tmp_path / "odd.pcap", packets[1::2])
    even = write_pcap_at(tmp_path / "even.pcap", packets[::2])
    tables, infos = read_captures(parse_capture_args([f"pod={odd}", f"pod={even}"]))
    assert len(tables) == len(infos) == 1
    merged, info = tables[0], infos[0]
    assert same_packets(merged, read_capture(whole)) == []
    assert info.files == (str(even), str(odd)) and info.packets == 40
    assert info.path == f"{even} … odd.pcap (2 files)"
    # Each packet is findable: file k of info.files, 0-based index in it.
    assert merged["file"].tolist() == [0, 1] * 20
    assert merged["index"].tolist() == [n // 2 for n in range(40)]


def test_analyze_takes_a_list_of_files_for_one_point(tmp_path: Path) -> None:
    packets = conversation(30)
    parts = [write_pcap_at(tmp_path / f"pod.pcap{n}", packets[n * 10 : (n + 1) * 10]) for n in range(3)]
    whole = write_pcap_at(tmp_path / "whole.pcap", packets)
    report = analyze({"pod": [str(parts[2]), str(parts[0]), str(parts[1])]})
    assert [info.name for info in report.captures] == ["pod"]
    assert report.captures[0].files == tuple(str(path) for path in parts)  # time order, not the order given
    assert same_packets(report.packets, read_capture(whole)) == []
    assert report.packets.groupby("file")["index"].agg(["min", "max"]).values.tolist() == [[0, 9]] * 3


def test_a_glob_that_matches_nothing_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_diag("analyze", "pcap", f"pod={tmp_path}/nothing*.pcap")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no file matches" in result.stderr and "Traceback" not in result.stderr


# --- a real ring buffer -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ring_buffer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """tcpdump -C 1 -W 5 on a namespace's loopback while about 6.5 MB of UDP and some TCP go over it.

    The ring wraps (more than five 1 MB files' worth), so file names are not in time order.
    """
    require_root()
    require_tools("tcpdump", "ip")
    folder = tmp_path_factory.mktemp("ring")
    namespace = f"diagring{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        in_namespace = ["ip", "netns", "exec", namespace]
        subprocess.run([*in_namespace, "ip", "link", "set", "lo", "up"], check=True)
        dump = subprocess.Popen(
            [*in_namespace, "tcpdump", "-i", "lo", "-n", "-U", "-Z", "root", "-C", "1", "-W", "5", "-w",
             str(folder / "ring.pcap")],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert dump.stderr is not None
        line = dump.stderr.readline()  # "listening on lo ...": packets from here on are captured
        assert "listening" in line, line
        subprocess.run([*in_namespace, sys.executable, __file__, "--traffic"], check=True, timeout=120)
        time.sleep(0.5)
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=30)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    yield sorted(folder.glob("ring.pcap*"))


def make_traffic() -> None:
    """About 6,500 UDP datagrams of 1,000 bytes and a few short TCP exchanges, on 127.0.0.1."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 9999))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    listener = socket.create_server(("127.0.0.1", 8080))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for number in range(6500):
        sender.sendto(number.to_bytes(4, "big") * 250, ("127.0.0.1", 9999))
        if number % 1000 == 0:
            with socket.create_connection(("127.0.0.1", 8080)) as client:
                server, _ = listener.accept()
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                server.recv(100)
                server.close()
            time.sleep(0.01)


@pytest.mark.lab
def test_a_tcpdump_ring_buffer_reads_as_its_mergecap_merge(ring_buffer: list[Path], tmp_path: Path) -> None:
    require_tools("mergecap", "editcap")
    files = ring_buffer
    assert len(files) == 5, files
    merged_file = tmp_path / "merged.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged_file), *map(str, files)], check=True)
    reference = read_capture(merged_file)
    assert len(reference) > 4000  # about five full 1 MB files: the oldest were overwritten

    # Unnamed, as the shell expands ring.pcap*: one point, named after the files.
    tables, infos = read_captures(parse_capture_args([str(path) for path in files]))
    assert [info.name for info in infos] == ["ring"]
    table, info = tables[0], infos[0]
    assert same_packets(table, reference) == []
    assert info.packets == len(reference) and len(info.files) == 5
    firsts = [read_capture(path)["ts_ns"].min() for path in map(Path, info.files)]
    assert firsts == sorted(firsts) and list(info.files) != sorted(info.files)  # time order; the ring wrapped
    for position, path in enumerate(info.files):
        part = read_capture(path)
        rows = table[table["file"] == position]
        assert rows["index"].tolist() == part["index"].tolist()
        assert rows["ts_ns"].tolist() == part["ts_ns"].tolist()

    # pcap and pcapng mixed: one file rewritten as pcapng reads the same.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for number, path in enumerate(files):
        target = mixed / path.name
        if number == 2:
            subprocess.run(["editcap", "-F", "pcapng", str(path), str(target)], check=True)
        else:
            target.write_bytes(path.read_bytes())
    tables, _infos = read_captures(parse_capture_args([f"node={mixed}"]))
    assert same_packets(tables[0], reference) == []

    # The command line: one capture point in the JSON report, every packet counted.
    result = run_diag("analyze", "pcap", "--json", "-", *files)
    assert result.returncode == 0, result.stderr
    captures = json.loads(result.stdout)["captures"]
    assert [(c["name"], c["packets"]) for c in captures] == [("ring", len(reference))]


if __name__ == "__main__" and sys.argv[1:] == ["--traffic"]:
    make_traffic()


def test_a_packet_of_a_multi_file_point_is_found_in_its_own_file(tmp_path: Path) -> None:
    # Each file of a point counts its packets from 0, so (point, index) names one packet per file:
    # the ladder and --flow must take the file into account to find the symptom packet.
    from diag.plot.flowview import _row_of_ref
    from diag.report import PacketRef

    packets = conversation(12)
    first = write_pcap_at(tmp_path / "pod.pcap0", packets[:6])
    second = write_pcap_at(tmp_path / "pod.pcap1", packets[6:])
    report = analyze({"pod": [first, second]})
    table = report.packets
    assert sorted(set(table["file"].tolist())) == [0, 1] and table["index"].duplicated().any()
    for label, row in table.iterrows():
        ref = PacketRef("pod", int(row["index"]), row["ts_ns"] / 1e9, int(row["file"]))
        assert _row_of_ref(table, ref) == label
