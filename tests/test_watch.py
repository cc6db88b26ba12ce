"""``diag watch``: the live reader, the window, and the command against ``diag analyze pcap`` on the same packets.

The command runs as a separate process, as a user runs it, fed by a pipe on
stdin or by FIFOs that another process writes slowly, record by record, in
timestamp order across the points (``slow_writer.py``), as tcpdumps on one
network would. Its findings must be those ``analyze`` finds in the files,
each once. As root, the incident is built in namespaces and watched live
through tcpdump on its interfaces; the decision latency is printed, not
asserted.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import synthetic
from conftest import PROJECT, require_root, require_tools

from diag import read_capture
from diag.analysis import concat_packets
from diag.capture.live import stream_tables
from diag.diagnose.causes import spec_of
from diag.report import Cause, Finding, PacketRef
from diag.scenario.spec import available_scenarios
from diag.watch.incremental import IncrementalAnalysis
from diag.watch.window import QUIET_S, Decider, Window, analyze_window

CAPTURES = PROJECT / "captures"
INCIDENT_POINTS = ["client", "internet", "nlb", "vpc-router", "node-a", "node-b", "pod-b", "natgw"]
DIAG = [sys.executable, "-m", "diag.cli"]

Key = tuple[str, str, str, str, str, int]


def _key(finding: dict[str, Any]) -> Key:
    packet = finding["packet"] or {"capture": "", "index": -1}
    return (finding["cause"], finding["proto"], finding["flow"]["client"], finding["flow"]["server"],
            packet["capture"], packet["index"])


def _analyze_keys(pairs: list[str]) -> list[Key]:
    result = subprocess.run([*DIAG, "analyze", "pcap", "--json", "-", *pairs],
                            capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert result.returncode == 0, result.stderr
    return sorted(_key(finding) for finding in json.loads(result.stdout)["findings"])


def _watch(args: list[str], stdin: Any = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DIAG, "watch", "--json-lines", "-", *args], stdin=stdin,
                          capture_output=True, text=True, cwd=PROJECT, timeout=timeout)


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# --- the live reader ---------------------------------------------------------------------------


def _pcap_copy(source: Path, out: Path) -> Path:
    """The capture rewritten as classic pcap by tcpdump, an independent writer."""
    subprocess.run(["tcpdump", "-r", str(source), "-w", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
def test_stream_read_in_dribbles_equals_the_file_read(tmp_path: Path, fmt: str) -> None:
    """A pipe fed a few bytes at a time gives, batch by batch, exactly the table of the whole file."""
    source = CAPTURES / "vpc-router.pcapng"
    if fmt == "pcap":
        require_tools("tcpdump")
        source = _pcap_copy(source, tmp_path / "vpc-router.pcap")
    data = source.read_bytes()
    whole = read_capture(source, name="vpc-router")
    list(stream_tables(io.BytesIO(data), "vpc-router", "warm-up"))  # compiled parts loaded before the race
    read_end, write_end = os.pipe()

    def dribble() -> None:
        with os.fdopen(write_end, "wb", buffering=0) as pipe:
            for start in range(0, len(data), 97):
                pipe.write(data[start : start + 97])
                time.sleep(0.005)

    writer = threading.Thread(target=dribble)
    writer.start()
    with os.fdopen(read_end, "rb", buffering=0) as stream:
        parts = list(stream_tables(stream, "vpc-router", "pipe"))  # type: ignore[arg-type]
    writer.join()
    assert len(parts) > 1  # it did hand out packets before the stream ended
    stitched = pd.concat(parts, ignore_index=True)
    assert len(stitched) == len(whole)
    for column in whole.columns:
        assert (stitched[column].astype(str).to_numpy() == whole[column].astype(str).to_numpy()).all(), column


# --- the window ---------------------------------------------------------------------------------


def _table(name: str, start_s: float, count: int, step_s: float) -> pd.DataFrame:
    """A packet table of ``count`` packets of a shipped capture, re-timed to start at ``start_s``."""
    base = read_capture(CAPTURES / "vpc-router.pcapng", name=name)
    rows = base.iloc[np.arange(count) % len(base)].reset_index(drop=True)
    rows["ts_ns"] = (np.int64(start_s * 1e9) + (np.arange(count) * step_s * 1e9)).astype(np.int64)
    return rows


def test_window_keeps_only_its_seconds_per_point() -> None:
    window = Window(["a", "b"], seconds=10)
    for second in range(100):
        window.add("a", _table("a", 1000.0 + second, 5, 0.1))
        window.add("b", _table("b", 5000.0 + second, 2, 0.1))  # another clock altogether
        packets = window.packets()
        assert packets is not None
    sizes = packets.groupby("capture", observed=True).size()
    assert sizes["a"] <= 11 * 5 and sizes["b"] <= 11 * 2  # bounded: 10 s of each, not 100 s
    kept = packets[packets["capture"] == "a"]["ts_ns"].to_numpy()
    assert kept.min() >= (1099.4 - 10) * 1e9 - 1e3  # (float rounding of the cut)
    assert window.points["a"].packets == 500  # everything was seen, only the window is kept


def test_caught_up_needs_every_point_past_the_time_or_idle_or_ended() -> None:
    window = Window(["a", "b"], seconds=30)
    window.add("a", _table("a", 100.0, 3, 1.0))  # a: up to 102
    window.add("b", _table("b", 100.0, 1, 1.0))  # b: up to 100
    assert window.caught_up(101.5, now=50.0, idle_since={"a": None, "b": None}) is False
    assert window.caught_up(101.5, now=50.0, idle_since={"a": None, "b": 50.0 - QUIET_S / 2}) is False
    assert window.caught_up(101.5, now=50.0, idle_since={"a": None, "b": 50.0 - QUIET_S * 2}) is True
    window.end("b")
    assert window.caught_up(101.5, now=50.0, idle_since={"a": None, "b": None}) is True
    assert window.caught_up(103.0, now=50.0, idle_since={"a": None, "b": None}) is False


def _finding(capture: str, index: int, ts: float, cause: str = "asymmetric-return") -> Finding:
    spec = spec_of(Cause(cause))
    return Finding(cause=spec.cause, confidence=0.9, proto="tcp", client="203.0.113.10:40000",
                   server="198.51.100.10:80", packet=PacketRef(capture, index, ts), claimed_src=None,
                   origin=None, summary="", severity=spec.severity, forged=spec.forged)


def test_decider_gives_a_finding_once_even_when_its_symptom_moves() -> None:
    window = Window(["pod", "natgw"], seconds=30)
    window.end("pod")
    window.end("natgw")
    decider = Decider()
    first = decider.decide([_finding("pod", 4, 100.0)], window, now=0.0, idle_since={})
    assert len(first) == 1
    # The same connection's finding, now first seen at a point that caught up later, or at its next RST.
    assert decider.decide([_finding("natgw", 3, 99.9), _finding("pod", 9, 101.0)], window, 0.0, {}) == []
    # Another cause on it, or the same cause a window later, is a new finding.
    assert len(decider.decide([_finding("pod", 4, 100.0, cause="peer-reset")], window, 0.0, {})) == 1
    assert len(decider.decide([_finding("pod", 90, 140.0)], window, 0.0, {})) == 1
    decider.forget_before(120.0)
    assert decider.count == 1


def _stepped(tables: dict[str, pd.DataFrame], rows_a_batch: int) -> tuple[dict[tuple[Any, ...], Finding],
                                                                         list[Finding], Window]:
    """Feed the points' tables to a window in small batches, in time order across points, analyzing
    incrementally after each; returns the latest version of every finding seen, the last step's, the window."""
    batches = []
    for name, table in tables.items():
        for start in range(0, len(table), rows_a_batch):
            part = table.iloc[start : start + rows_a_batch].reset_index(drop=True)
            batches.append((int(part["ts_ns"].max()), name, part))
    batches.sort(key=lambda batch: (batch[0], batch[1]))
    window = Window(list(tables), seconds=3600)
    incremental = IncrementalAnalysis(window)
    latest: dict[tuple[Any, ...], Finding] = {}
    found: list[Finding] = []
    for _ts, name, part in batches:
        window.add(name, part)
        found = incremental.step(0.0, {})
        latest.update((_finding_key(finding), finding) for finding in found)
    for name in tables:
        window.end(name)
    found = incremental.step(0.0, {})
    latest.update((_finding_key(finding), finding) for finding in found)
    return latest, found, window


def _finding_key(finding: Finding) -> tuple[Any, ...]:
    assert finding.packet is not None
    return (finding.cause, finding.client, finding.server, finding.packet.capture, finding.packet.index)


@pytest.mark.parametrize("name", list(synthetic.SCENARIOS))
def test_incremental_analysis_finds_what_the_whole_window_does(name: str) -> None:
    """Every finding of the whole window, as each step that revisited its connection last found it: the
    same, evidence and all (clocks of different points shifted, so the correlation aligns them)."""
    scenario = synthetic.SCENARIOS[name]()
    points = sorted({point for point in scenario.recorded})
    shifts = synthetic.shifted(points)
    tables = {point: scenario.table(point, shifts.get(point, 0)) for point in points}
    tables = {p: t for p, t in tables.items() if len(t)}
    latest, _found, _window = _stepped(tables, rows_a_batch=2)
    whole = analyze_window(concat_packets(list(tables.values())))
    for finding in whole:
        key = _finding_key(finding)
        assert key in latest, key
        assert latest[key].to_json() == finding.to_json()


def test_incremental_analysis_of_the_incident_streams() -> None:
    """The incident's eight captures a few packets at a time: the whole window's finding, the same."""
    tables = {name: read_capture(CAPTURES / f"{name}.pcapng", name=name) for name in INCIDENT_POINTS}
    _latest, found, window = _stepped(tables, rows_a_batch=3)
    whole = analyze_window(concat_packets(list(tables.values())))
    packets = window.packets()  # the window gives the tables back as the reader made them
    assert packets is not None and analyze_window(packets) == whole
    assert [f.to_json() for f in found] == [f.to_json() for f in whole] and whole


def _healthy_connections(copies: int, start_ns: int) -> pd.DataFrame:
    """``copies`` healthy connections at the pod, each its own (client port, sequence numbers), 3 ms apart."""
    base = synthetic.healthy(background=False).table("pod")
    base = base[(base["sport"] == 41000) | (base["dport"] == 41000)].reset_index(drop=True)  # the connection closed
    assert not (base["tcp_flags"] & 0x04).any()
    base["ts_ns"] -= int(base["ts_ns"].min())
    parts = []
    for k in range(copies):
        part = base.copy()
        from_client = part["dport"] == 80
        part.loc[from_client, "sport"] += k + 1
        part.loc[~from_client, "dport"] += k + 1
        part["seq"] = (part["seq"] + k * 100_003) % 2**32
        part["ack"] = np.where(part["ack"] > 0, (part["ack"] + k * 100_003) % 2**32, 0)
        part["ts_ns"] += start_ns + k * 3_000_000
        parts.append(part)
    return concat_packets(parts).reset_index(drop=True)


def test_incremental_analysis_revisits_only_what_changed() -> None:
    """After many healthy connections, a forged reset: the step that finds it diagnoses its connection, not
    the window."""
    background = _healthy_connections(300, int(1000e9))
    window = Window(["pod"], seconds=3600)
    incremental = IncrementalAnalysis(window)
    window.add("pod", background)
    assert incremental.step(0.0, {}) == [] and incremental.last.packets < 10  # nothing suspect: nothing diagnosed
    forged = synthetic.incident().table("pod")
    forged["ts_ns"] += int(1002e9) - int(forged["ts_ns"].min())
    window.add("pod", forged)
    found = incremental.step(0.0, {})
    assert [finding.cause for finding in found] == ["asymmetric-return"]
    assert 0 < incremental.last.packets <= len(forged) + 2 < len(background) // 10


# --- the command --------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["pod-b", "natgw", "node-b", "client"])
def test_pcap_stream_on_stdin_gives_the_findings_of_analyze(point: str) -> None:
    path = CAPTURES / f"{point}.pcapng"
    with path.open("rb") as stdin:
        result = _watch([f"{point}=-"], stdin=stdin)
    assert result.returncode == 0, result.stderr
    found = _lines(result.stdout)
    assert sorted(_key(finding) for finding in found) == _analyze_keys([f"{point}={path}"])
    for finding in found:
        assert finding["evidence"] and finding["decided_at"] > finding["packet"]["ts"]


def test_gzip_stream_on_stdin_is_decompressed_as_it_comes(tmp_path: Path) -> None:
    """``tcpdump -w - | gzip | diag watch x=-``: the same findings as analyze on the plain file, each once;
    a stream of two gzip members (as concatenated .gz files are) is read whole."""
    path = CAPTURES / "pod-b.pcapng"
    data = path.read_bytes()
    compressed = tmp_path / "pod-b.pcapng.gz"
    compressed.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    with compressed.open("rb") as stdin:
        result = _watch(["pod-b=-"], stdin=stdin)
    assert result.returncode == 0, result.stderr
    found = sorted(_key(finding) for finding in _lines(result.stdout))
    assert found == _analyze_keys([f"pod-b={path}"]) and found


def _repeated_incident(times: int, apart_s: float) -> bytes:
    """A pcap stream of the incident's connection at the pod, ``times`` times ``apart_s`` seconds apart,
    each time a new connection (client port and sequence numbers moved)."""
    import struct

    from scapy.all import rdpcap

    frames = [(float(p.time), bytes(p)) for p in rdpcap(str(CAPTURES / "pod-b.pcapng"))]
    frames = [(ts - frames[0][0], data) for ts, data in frames if data[12:14] == b"\x08\x00" and data[23] == 6]
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for k in range(times):
        for offset, data in frames:
            sport, dport, seq, ack = struct.unpack_from("!HHII", data, 34)
            ports = (sport + k + 1, dport) if dport == 80 else (sport, dport + k + 1)
            shift = k * 1_000_003
            moved = struct.pack("!HHII", *ports, (seq + shift) % 2**32, (ack + shift) % 2**32 if ack else 0)
            when = 1_800_000_000 + k * apart_s + offset
            record = struct.pack("<IIII", int(when), int(when % 1 * 1e6), len(data), len(data))
            out += record + data[:34] + moved + data[46:]
    return out


def test_a_stream_read_faster_than_real_time_gives_each_finding_once() -> None:
    """Minutes of stream read in a moment, through a 2 s window: every connection's finding, once."""
    result = subprocess.run([*DIAG, "watch", "--window", "2", "--json-lines", "-", "x=-"],
                            input=_repeated_incident(40, 5.0), capture_output=True, cwd=PROJECT, timeout=300)
    assert result.returncode == 0, result.stderr
    found = [(f["cause"], f["flow"]["client"]) for f in _lines(result.stdout.decode())]
    assert len(found) == len(set(found)) == 40
    assert {cause for cause, _client in found} == {"asymmetric-return"}


def test_public_captures_on_stdin_give_the_findings_of_analyze(corpus: Path) -> None:
    for name in ("of10_pf5240.pcap", "bgp-bgpsec.pcap"):
        path = corpus / "tcpdump" / "tests" / name
        with path.open("rb") as stdin:
            result = _watch([f"x={'-'}"], stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert sorted(_key(f) for f in _lines(result.stdout)) == _analyze_keys([f"x={path}"]), name


def test_text_output_renders_each_finding_as_analyze_does() -> None:
    with (CAPTURES / "pod-b.pcapng").open("rb") as stdin:
        result = subprocess.run([*DIAG, "watch", "pod-b=-"], stdin=stdin, capture_output=True, text=True,
                                cwd=PROJECT, timeout=300)
    assert result.returncode == 0, result.stderr
    report = subprocess.run([*DIAG, "analyze", "pcap", f"pod-b={CAPTURES / 'pod-b.pcapng'}"],
                            capture_output=True, text=True, cwd=PROJECT, timeout=300).stdout
    assert result.stdout.startswith("FINDING: asymmetric-return")
    evidence = [line for line in result.stdout.splitlines() if line.startswith("    - ")]
    assert evidence and all(line in report for line in evidence)
    assert "  decided      at " in result.stdout


def _fifo_watch(tmp_path: Path, points: dict[str, Path], delay: float) -> tuple[subprocess.CompletedProcess[str],
                                                                                   list[str]]:
    fifos = {}
    for name in points:
        fifos[name] = tmp_path / f"{name}.fifo"
        os.mkfifo(fifos[name])
    writer = subprocess.Popen([sys.executable, str(PROJECT / "tests" / "slow_writer.py"), "--delay", str(delay),
                               *(f"{fifos[name]}={path}" for name, path in points.items())], cwd=PROJECT)
    try:
        result = _watch([f"{name}={fifo}" for name, fifo in fifos.items()])
    finally:
        assert writer.wait(timeout=60) == 0
    return result, [f"{name}={path}" for name, path in points.items()]


@pytest.mark.slow
def test_several_fifos_written_slowly_give_the_findings_of_analyze_once(tmp_path: Path) -> None:
    points = {name: CAPTURES / f"{name}.pcapng" for name in INCIDENT_POINTS}
    result, pairs = _fifo_watch(tmp_path, points, delay=0.03)
    assert result.returncode == 0, result.stderr
    found = [_key(finding) for finding in _lines(result.stdout)]
    assert Counter(found).most_common(1)[0][1] == 1  # never the same finding twice
    assert sorted(found) == _analyze_keys(pairs)
    assert found and found[0][0] == "asymmetric-return" and found[0][4] == "natgw"


@pytest.mark.slow
def test_udp_fifos_give_the_findings_of_analyze(tmp_path: Path) -> None:
    folder = CAPTURES / "udp-asymmetric"
    points = {path.stem: path for path in sorted(folder.glob("*.pcapng"))}
    result, pairs = _fifo_watch(tmp_path, points, delay=0.01)
    assert result.returncode == 0, result.stderr
    found = [_key(finding) for finding in _lines(result.stdout)]
    assert len(found) == len(set(found))
    assert sorted(found) == _analyze_keys(pairs)


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["pod=/no/such/capture"], None, "no such file or FIFO"),
        (["pod=-"], b"this is not a capture at all", "not a pcap or pcapng capture (the stream"),
        (["pod=-"], b"", "ended before any capture header"),
        (["a=-", "b=-"], b"", "standard input ('-') can be only one source"),
        (["pod=captures"], None, "is a directory"),
        (["x=" + str(CAPTURES / "pod-b.pcapng"), "x=" + str(CAPTURES / "natgw.pcapng")], None, "given twice"),
        (["pod=-", "--window", "0"], b"", "must be more than 0"),
    ],
)
def test_bad_source_is_one_line_and_exit_2(args: list[str], stdin: bytes | None, words: str) -> None:
    result = subprocess.run([*DIAG, "watch", *args], input=stdin, capture_output=True, cwd=PROJECT, timeout=60)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert words in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("diag")]) == 1


def test_missing_interface_is_one_line_and_exit_2() -> None:
    require_tools("tcpdump")
    result = subprocess.run([*DIAG, "watch", "x=nosuchif9"], capture_output=True, text=True, cwd=PROJECT,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nosuchif9" in result.stderr, result.stderr


# --- live, in the lab ---------------------------------------------------------------------------


def _connect(netns: str, address: str, port: int) -> None:
    """One kernel TCP client connection attempt from inside a lab namespace; refused or timed out is fine."""
    script = ("import socket\ns = socket.socket(); s.settimeout(2.5)\n"
              f"try:\n    s.connect(({address!r}, {port}))\nexcept OSError:\n    pass\n")
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script], timeout=30)


@pytest.mark.lab
@pytest.mark.slow
def test_incident_watched_live_in_namespaces_with_the_kernel_account() -> None:
    """The incident's forged RST, live: asymmetric-return from the NAT gateway, which the kernel account
    calls netfilter-made; a RST from a closed port on the pod is the pod's TCP stack, reason NO_SOCKET."""
    require_root()
    require_tools("tcpdump", "iptables-restore", "unshare")
    lab = f"w{os.getpid() % 100000}"
    up = subprocess.run([*DIAG, "lab", "up", "incident", "--name", lab], capture_output=True, text=True,
                        cwd=PROJECT, timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        ns = f"diag-{lab}-"
        watch = subprocess.Popen(
            [*DIAG, "watch", "--kernel", "--json-lines", "-", f"client=eth-internet@{ns}client",
             f"natgw=eth-vpc-router@{ns}natgw", f"node-a=eth-vpc-router@{ns}node-a", f"pod-b=eth-node-b@{ns}pod-b"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT)
        assert watch.stderr is not None
        notes = [watch.stderr.readline(), watch.stderr.readline()]  # kernel account on; tcpdumps listening
        assert "kernel account on" in notes[0] and "watching 4 point(s)" in notes[1], notes
        _connect(f"{ns}client", "198.51.100.10", 80)  # through the NLB: the incident
        _connect(f"{ns}node-b", "198.18.102.10", 81)  # straight to the pod, where nothing listens on 81
        time.sleep(0.5)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
    finally:
        subprocess.run([*DIAG, "lab", "down", lab], capture_output=True, cwd=PROJECT, timeout=120)
    found = _lines(out)
    incident = [f for f in found if f["flow"]["server"] == "198.51.100.10:80"]
    closed = [f for f in found if f["flow"]["server"].endswith(":81")]
    assert [f["cause"] for f in incident] == ["asymmetric-return"], out
    assert incident[0]["origin"] == "natgw"
    assert incident[0]["kernel"]["made_by"] == "netfilter" and incident[0]["kernel"]["box"] == "natgw"
    assert len(closed) == 1, out
    assert closed[0]["kernel"]["made_by"] == "tcp-stack" and closed[0]["kernel"]["reason"] == "NO_SOCKET"
    for finding in incident + closed:
        latency = finding["decided_at"] - finding["packet"]["ts"]
        print(f"\nwatched live: {finding['cause']} ({finding['kernel']['made_by']}) decided {latency:.3f} s "
              "after its RST was captured")


def test_kernel_account_unprivileged_is_one_line_and_the_watch_goes_on() -> None:
    require_root()  # to become nobody
    require_tools("setpriv")
    nobody = 65534
    environment = {key: value for key, value in os.environ.items() if key != "XDG_CACHE_HOME"}
    environment["HOME"] = "/nonexistent"
    with (CAPTURES / "pod-b.pcapng").open("rb") as stdin:
        result = subprocess.run(
            ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", str(PROJECT / ".venv/bin/diag"),
             "watch", "--kernel", "--json-lines", "-", "pod-b=-"],
            stdin=stdin, capture_output=True, text=True, timeout=300, env=environment, cwd="/")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "kernel" in line] == [
        "diag: watch: no kernel account: the kernel's tracepoints need root; watching without it"]
    assert [f["cause"] for f in _lines(result.stdout)] == ["asymmetric-return"]


# --- the kernel account, pure -------------------------------------------------------------------

TRACE = """\
         python3-7773    [001] ..s1.  3246.406596: tcp_send_reset: skbaddr=000000004e5e5c47 skaddr=0000000000000000 src=203.0.113.1:81 dest=203.0.113.10:40040 state=UNKNOWN reason=NO_SOCKET
         python3-7773    [001] .Ns1.  3246.407388: kfree_skb: skbaddr=000000004e5e5c47 rx_sk=0000000000000000 protocol=2048 location=tcp_v4_rcv+0x99/0x1400 reason: NO_SOCKET
         python3-7773    [001] .N...  3246.407411: tcp_receive_reset: family=AF_INET sport=40040 dport=81 saddr=203.0.113.10 daddr=203.0.113.1 saddrv6=::ffff:203.0.113.10 daddrv6=::ffff:203.0.113.1 sock_cookie=1001
"""  # noqa: E501  (real trace_pipe lines of this kernel, kept whole)


def test_trace_lines_parse_and_tag_a_rst() -> None:
    from diag.watch.kernel import WireRst, account, parse_line, reject_rule_matches

    events = [parse_line(line, 1_000_000.0) for line in TRACE.splitlines()]
    assert [e.kind for e in events if e] == ["send_reset", "drop", "receive_reset"]
    sent = events[0]
    assert sent is not None and (sent.src, sent.dst, sent.reason) == ("203.0.113.1:81", "203.0.113.10:40040",
                                                                      "NO_SOCKET")
    assert sent.ts == pytest.approx(1_003_246.406596)
    real = [e for e in events if e]
    rst = WireRst("203.0.113.1:81", "203.0.113.10:40040", 1_003_246.4066)
    note = account([rst], real, None, {})
    assert note["made_by"] == "tcp-stack" and note["reason"] == "NO_SOCKET" and note["received_by_socket"]
    # The other direction (the peer's own RST), the same RST two seconds later, or on another port: not this event's.
    assert account([WireRst(rst.dst, rst.src, rst.ts)], real[:1], None, {})["made_by"] == "not-this-host"
    assert account([WireRst(rst.src, rst.dst, rst.ts + 2)], real, None, {})["made_by"] == "not-this-host"
    forged = WireRst("203.0.113.10:40041", "198.18.102.10:80", rst.ts)
    assert account([forged], real, "natgw", {"natgw": 3, "pod-b": 0})["made_by"] == "netfilter"
    assert account([forged], real, "natgw", {"natgw": 0})["made_by"] == "not-this-host"
    saved = ('[21:1260] -A NATGW-NO-STATE -p tcp -m comment --comment "reset it" -j REJECT --reject-with tcp-reset\n'
             "[5:300] -A FORWARD -j ACCEPT\n")
    assert reject_rule_matches(saved) == 21


# --- ground truth in run-scenario ---------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize(("name", "made_by", "reason"), [
    ("incident", "netfilter", "REJECT --reject-with tcp-reset"),
    ("port-closed", "tcp-stack", "NO_SOCKET"),
])
def test_run_scenario_records_the_kernel_account_as_ground_truth(run_of: Any, name: str, made_by: str,
                                                                   reason: str) -> None:
    run = run_of(name)
    report = json.loads((run.out / "report.json").read_text())
    truth = report["ground_truth"]
    assert truth["agrees"] is True, truth
    verdict = report["findings"][0] if len(report["findings"]) == 1 else None
    assert verdict is not None and verdict["cause"] == run.scenario.expect_cause
    assert [(r["point"], r["made_by"], r["reason"]) for r in truth["rsts"]] == [
        (verdict["packet"]["capture"], made_by, reason)]
    events = [json.loads(line) for line in (run.out / "kernel.jsonl").read_text().splitlines()]
    assert all(event["kind"] in ("send_reset", "receive_reset", "drop") for event in events)
    if made_by == "tcp-stack":
        assert any(e["kind"] == "send_reset" and e["reason"] == reason for e in events)


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize("name", available_scenarios())
def test_every_scenario_agrees_with_its_kernel(run_of: Any, name: str) -> None:
    """The scenario's diagnosis against what the kernels of its boxes did: a disagreement fails it."""
    report = json.loads((run_of(name).out / "report.json").read_text())
    assert report["ground_truth"]["agrees"] is True, report["ground_truth"]


@pytest.mark.lab
@pytest.mark.slow
def test_run_scenario_watch_writes_the_findings_of_its_report(tmp_path: Path) -> None:
    """run-scenario --watch: diag watch over every capture point while the traffic runs (watch.jsonl)."""
    require_root()
    require_tools("tcpdump", "iptables-restore")
    out = tmp_path / "out"
    result = subprocess.run([*DIAG, "run-scenario", "incident", "--watch", "--out", str(out)],
                            capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "diag watch failed" not in result.stderr
    watched = [json.loads(line) for line in (out / "watch.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())

    def what(finding: dict[str, Any]) -> tuple[str, str, str, str | None]:
        # Packet numbers differ: watch reads each box's interfaces as one 'any' capture.
        return finding["cause"], finding["flow"]["client"], finding["flow"]["server"], finding["origin"]

    assert sorted(map(what, watched)) == sorted(map(what, report["findings"]))
    assert [f["cause"] for f in watched] == ["asymmetric-return"]
    print(f"\nrun-scenario --watch: decided {watched[0]['decided_at'] - watched[0]['packet']['ts']:.3f} s "
          "after the RST was captured")
