"""Capture at every hop: one tcpdump per interface of every capture point, inside its namespace.

A point is a name (the vantage: ``client``, ``node-a``, ...), the network
namespace it lives in, and the interfaces to capture there. Each interface gets
its own tcpdump (never ``-i any``: inside a namespace it mislabels interfaces),
with nanosecond timestamps, packet-buffered output and numeric addresses. The
capture is only reported started once every tcpdump said "listening on", so no
traffic can slip past. Stopping sends SIGINT, waits, and reads tcpdump's own
statistics so drops by the kernel are reported, then merges each point's
interfaces into ``<point>.pcapng`` with the interface names kept.

Optionally, ``conntrack -E`` event logs from NAT boxes go to
``<point>.conntrack.log`` as extra evidence.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from diag.errors import CaptureError
from diag.lab.lifetime import start
from diag.scenario.outdir import RAW_DIR
from diag.scenario.pcapng import merge_to_pcapng

DEFAULT_SNAPLEN = 262144
_STAT_LINE = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)")


@dataclass(frozen=True)
class CapturePoint:
    """Where to capture: a vantage name, its namespace, and the interfaces to capture there."""

    name: str
    netns: str
    interfaces: tuple[str, ...]


@dataclass(frozen=True)
class InterfaceStats:
    """tcpdump's own account of one interface's capture."""

    interface: str
    captured: int
    received_by_filter: int
    dropped_by_kernel: int


@dataclass(frozen=True)
class PointCapture:
    """The merged file of one capture point and the statistics behind it."""

    point: str
    path: Path
    packets: int
    interfaces: tuple[InterfaceStats, ...]

    @property
    def dropped_by_kernel(self) -> int:
        return sum(stats.dropped_by_kernel for stats in self.interfaces)


@dataclass
class _Tcpdump:
    point: CapturePoint
    interface: str
    raw_path: Path
    process: subprocess.Popen[str]
    listening: threading.Event = field(default_factory=threading.Event)  # set when it listens or ends
    said_listening: bool = False
    stderr_lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def follow_stderr(self) -> None:
        """Collect tcpdump's stderr; flag the moment it reports listening."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))
            if "listening on " in line:
                self.said_listening = True
                self.listening.set()
        self.listening.set()  # the process ended: stop anyone waiting; the caller checks why

    def statistics(self) -> InterfaceStats:
        counts: dict[str, int] = {}
        for line in self.stderr_lines:
            match = _STAT_LINE.match(line)
            if match:
                counts[match.group(2)] = int(match.group(1))
        return InterfaceStats(
            interface=self.interface,
            captured=counts.get("captured", -1),
            received_by_filter=counts.get("received by filter", -1),
            dropped_by_kernel=counts.get("dropped by kernel", -1),
        )


def tcpdump_argv(interface: str, path: Path, snaplen: int = DEFAULT_SNAPLEN) -> list[str]:
    """The tcpdump command for one interface: named interface, ns timestamps, unbuffered, numeric.

    ``--immediate-mode`` matters as much as ``-U``: without it libpcap hands
    packets over in blocks with a timeout, and a capture stopped right after
    the traffic loses the last block. Immediate mode with a large snap length
    can overrun libpcap's default 2 MiB buffer on a busy machine (seen as
    "dropped by kernel"), so each capture gets 8 MiB (``-B`` is in KiB).
    """
    return [
        "tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "--time-stamp-precision=nano",
        "-s", str(snaplen), "-B", "8192", "-Z", "root", "-w", str(path),
    ]


class CaptureSet:
    """tcpdump at every capture point (and optional conntrack logs), started and stopped together.

    Use as a context manager: entering starts every capture and returns once
    all of them listen; leaving stops whatever still runs (also on error).
    ``stop()`` returns the merged files and their statistics.
    """

    def __init__(
        self,
        points: Sequence[CapturePoint],
        out_dir: Path,
        snaplen: int = DEFAULT_SNAPLEN,
        conntrack: Sequence[CapturePoint] = (),
        listen_timeout: float = 5.0,
    ) -> None:
        names = [point.name for point in points]
        if len(set(names)) != len(names):
            raise CaptureError(f"capture point names repeat: {', '.join(names)}")
        if snaplen <= 0:
            raise CaptureError(f"snaplen must be positive, not {snaplen}")
        for tool in ("tcpdump", "ip"):
            if shutil.which(tool) is None:
                raise CaptureError(f"{tool} is not installed (./quickstart installs it)")
        self.points = tuple(points)
        self.out_dir = out_dir
        self.snaplen = snaplen
        self.conntrack_points = tuple(conntrack)
        self.listen_timeout = listen_timeout
        self._raw_dir = out_dir / RAW_DIR
        self._tcpdumps: list[_Tcpdump] = []
        self._conntracks: list[subprocess.Popen[bytes]] = []
        self._results: list[PointCapture] | None = None

    def __enter__(self) -> CaptureSet:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._results is None:
            self._terminate_all()

    def start(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._raw_dir.mkdir(exist_ok=True)
        try:
            self._start_conntrack()
            for point in self.points:
                for interface in point.interfaces:
                    self._tcpdumps.append(self._start_tcpdump(point, interface))
            self._wait_listening()
        except BaseException:
            self._terminate_all()
            raise

    def _start_conntrack(self) -> None:
        if self.conntrack_points and shutil.which("conntrack") is None:
            raise CaptureError("conntrack is not installed (./quickstart installs it)")
        for point in self.conntrack_points:
            log = (self.out_dir / f"{point.name}.conntrack.log").open("wb")
            argv = ["ip", "netns", "exec", point.netns, "conntrack", "-E", "-o", "timestamp"]
            self._conntracks.append(start(argv, stdout=log, stderr=subprocess.DEVNULL))
            log.close()  # the child holds its own descriptor

    def _start_tcpdump(self, point: CapturePoint, interface: str) -> _Tcpdump:
        raw_path = self._raw_dir / f"{point.name}.{interface}.pcap"
        argv = ["ip", "netns", "exec", point.netns, *tcpdump_argv(interface, raw_path, self.snaplen)]
        # Killed with this process even by SIGKILL (no teardown runs then): see diag.lab.lifetime.
        process = start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        tcpdump = _Tcpdump(point, interface, raw_path, process)
        tcpdump.reader = threading.Thread(target=tcpdump.follow_stderr, daemon=True)
        tcpdump.reader.start()
        return tcpdump

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.listen_timeout
        for tcpdump in self._tcpdumps:
            tcpdump.listening.wait(max(0.0, deadline - time.monotonic()))
            if not tcpdump.said_listening or tcpdump.process.poll() is not None:
                time.sleep(0.05)  # let the reader thread collect the last words
                said = "; ".join(tcpdump.stderr_lines[-2:]) or "no output"
                state = "exited" if tcpdump.listening.is_set() else "did not start listening"
                raise CaptureError(
                    f"tcpdump on {tcpdump.point.name}/{tcpdump.interface} {state} ({said})"
                )

    def stop(self, timeout: float = 5.0) -> list[PointCapture]:
        """Stop every capture cleanly, merge each point into ``<point>.pcapng``; return what was captured."""
        if self._results is not None:
            return self._results
        self._settle()
        for tcpdump in self._tcpdumps:
            if tcpdump.process.poll() is None:
                tcpdump.process.send_signal(signal.SIGINT)
        for tcpdump in self._tcpdumps:
            _wait_or_kill(tcpdump.process, timeout)
            if tcpdump.reader is not None:
                tcpdump.reader.join(timeout)
        self._stop_conntrack(timeout)
        results = []
        for point in self.points:
            mine = [t for t in self._tcpdumps if t.point is point]
            missing = [t.interface for t in mine if not t.raw_path.exists()]
            if missing:
                raise CaptureError(f"tcpdump wrote no file for {point.name}/{', '.join(missing)}")
            path = self.out_dir / f"{point.name}.pcapng"
            packets = merge_to_pcapng([(t.interface, t.raw_path) for t in mine], path)
            results.append(PointCapture(point.name, path, packets, tuple(t.statistics() for t in mine)))
        shutil.rmtree(self._raw_dir, ignore_errors=True)
        self._results = results
        return results

    def _settle(self, quiet: float = 0.15, longest: float = 1.0) -> None:
        """Wait until no capture file has grown for ``quiet`` seconds: the last packets are written."""
        deadline = time.monotonic() + longest
        sizes: list[int] = []
        while time.monotonic() < deadline:
            now = [t.raw_path.stat().st_size if t.raw_path.exists() else 0 for t in self._tcpdumps]
            if now == sizes:
                return
            sizes = now
            time.sleep(quiet)

    def _stop_conntrack(self, timeout: float) -> None:
        for process in self._conntracks:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self._conntracks:
            _wait_or_kill(process, timeout)

    def _terminate_all(self) -> None:
        for process in [t.process for t in self._tcpdumps] + list(self._conntracks):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in [t.process for t in self._tcpdumps] + list(self._conntracks):
            _wait_or_kill(process, 2.0)
        shutil.rmtree(self._raw_dir, ignore_errors=True)


def _wait_or_kill(process: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
