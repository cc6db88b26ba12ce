"""``diag watch``: findings decided live, over a sliding window of packets from one or more capture points."""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from diag.errors import DiagError

HELP = "diagnose live: watch interfaces or capture streams and print each finding as it is decided"

DESCRIPTION = """\
Watch one or more capture points live and print each finding (who really sent
a RST, which SYNs go unanswered) as soon as it is decided, with the same
evidence as 'diag analyze pcap'. The packets of the sliding window (--window,
default 30 s) are kept, and the connections that changed are correlated
across the points and diagnosed again as their packets come (at least every
half second); a finding is printed once, when every point has caught up past
its symptom (delivered later packets or went quiet). A gzip-compressed stream
is decompressed as it comes.

A SOURCE is:
  -              a pcap or pcapng stream on standard input (tcpdump -U --immediate-mode -w -)
  PATH           a FIFO or file carrying a pcap or pcapng stream
  IFACE          an interface, captured here with tcpdump (root)
  IFACE@NETNS    an interface in a named network namespace (ip netns)
NAME= says which point it is (client, node-a, pod, ...); without it, the
interface's name or the file's stem. Names must be unique.
"""

EPILOG = """\
examples:
  tcpdump -i eth0 -U --immediate-mode -w - tcp | diag watch node-a=-
  ssh node-b tcpdump -i eth0 -U --immediate-mode -w - | diag watch node-b=-
  diag watch node=eth0 pod=eth0@cni-1234 --json-lines findings.jsonl
  diag watch --netns diag-demo-pod-b pod=eth-node-b --kernel

output:
  Each finding as 'analyze' renders it, followed by when it was decided; with
  --json-lines FILE ('-': stdout, instead of the text) one JSON object a line:
  the finding as in the report's "findings" plus "decided_at" (Unix time of
  the decision) and, with --kernel, "kernel": who made the RST by the
  kernel's own account (tcp-stack with its reason, netfilter, or
  not-this-host). Notes about the sources go to stderr. More in docs/watch.md.

exit status:
  0  every stream ended (or --duration passed, or Ctrl-C) and was analyzed
  2  bad usage, a source that cannot be opened or is no capture, tcpdump failing
"""

TICK_S = 0.5  # the longest a changed window waits for its analysis
QUEUED_TABLES = 64  # tables read and not yet taken in, at most (the readers wait beyond)
STEP_S = 0.05  # how often the loop looks at the readers and the waiting findings
TCPDUMP_START_S = 10.0
SNAPLEN = 262144
_IFACE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "watch", help=HELP, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="[NAME=]SOURCE", help="interface, IFACE@NETNS, '-' or FIFO")
    parser.add_argument("--window", type=_positive, default=30.0, metavar="SECONDS",
                        help="packets older than this (per point) are forgotten (default 30)")
    parser.add_argument("--netns", metavar="NS",
                        help="network namespace of interface sources given without @NETNS (default: this one)")
    parser.add_argument("--json-lines", metavar="FILE",
                        help="also write one JSON object per finding to FILE ('-': stdout, instead of the text)")
    parser.add_argument("--duration", type=_positive, metavar="SECONDS",
                        help="stop after this long (analyze what came, exit 0; default: until every source ends "
                        "or Ctrl-C)")
    parser.add_argument("--kernel", action="store_true",
                        help="tag each RST with the kernel's own account (tracefs; root; default: off)")
    parser.add_argument("--quiet", action="store_true",
                        help="no notes about the sources on stderr (findings are still printed)")
    parser.set_defaults(func=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


@dataclass(frozen=True)
class Source:
    """One capture point to watch: a stream to read, or an interface to run tcpdump on."""

    name: str
    path: Path | None = None  # '-', a FIFO or a file
    interface: str | None = None
    netns: str | None = None

    def describe(self) -> str:
        if self.interface:
            return f"{self.interface}@{self.netns}" if self.netns else self.interface
        return str(self.path)


def parse_sources(items: list[str], netns: str | None) -> list[Source]:
    """``[NAME=]SOURCE`` items as sources; a bad one raises ``DiagError`` with one line."""
    from diag.capture.reader import capture_stem
    from diag.capture.source import STDIN_NAME, exists_quietly

    sources: list[Source] = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or exists_quietly(Path(item)):
            name, spec = "", item
        if not spec:
            raise DiagError(f"watch: {item!r}: no source after '='")
        if spec == STDIN_NAME or exists_quietly(Path(spec)):
            path = Path(spec)
            if spec != STDIN_NAME and stat.S_ISDIR(path.stat().st_mode):
                raise DiagError(f"watch: {spec}: is a directory, not a stream or interface")
            sources.append(Source(name or capture_stem(path), path=path))
            continue
        interface, _at, namespace = spec.partition("@")
        if "/" in spec or not _IFACE_NAME.match(interface):
            raise DiagError(f"watch: {spec}: no such file or FIFO, and not an interface name")
        if _at and not namespace:
            raise DiagError(f"watch: {spec}: no namespace after '@'")
        sources.append(Source(name or interface, interface=interface, netns=namespace or netns))
    names = [source.name for source in sources]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DiagError(f"watch: the point name {twice[0]!r} is given twice; name each source (NAME=SOURCE)")
    if sum(1 for source in sources if source.path is not None and str(source.path) == STDIN_NAME) > 1:
        raise DiagError("watch: standard input ('-') can be only one source")
    return sources


# Messages from the source threads to the main loop: (kind, point, payload).
Message = tuple[str, str, Any]


@dataclass
class Feeder:
    """A thread reading one source's stream into packet tables on the shared queue."""

    source: Source
    out: queue.Queue[Message]
    slice_s: float = float("inf")  # a table handed over spans at most this much of the stream's time
    process: subprocess.Popen[bytes] | None = None
    listening: threading.Event = field(default_factory=threading.Event)
    stderr_lines: list[str] = field(default_factory=list)
    # Wall-clock time since which the reader waits on an empty stream, every packet handed over; None while busy.
    idle_since: float | None = None

    def _on_idle(self, idle: bool) -> None:
        if not idle:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = time.time()

    def start(self) -> None:
        if self.source.interface:
            self.process = _start_tcpdump(self.source)
            threading.Thread(target=self._read_stderr, daemon=True).start()
        else:
            self.listening.set()
        threading.Thread(target=self._read_stream, daemon=True).start()

    def complaint(self) -> str:
        """tcpdump's own error line ("tcpdump: eth9: No such device exists"), or ip netns exec's."""
        lines = self.stderr_lines
        said = [line for line in lines if line.startswith("tcpdump: ")]
        return (said or lines or ["tcpdump ended without starting to listen"])[-1]

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if "listening on" in line:
                self.listening.set()
            elif line:
                self.stderr_lines.append(line)
        # tcpdump ended: whoever waits learns it from its status, which must be set before they look
        # (stderr closes a moment before the process can be reaped).
        self.process.wait()
        self.listening.set()

    def _read_stream(self) -> None:
        from diag.capture.live import open_stream, stream_tables
        from diag.capture.records import Diagnostics
        from diag.watch.gunzip import decompressing

        name = self.source.name
        diagnostics = Diagnostics(self.source.describe())
        try:
            if self.process is not None:
                assert self.process.stdout is not None
                stream: Any = self.process.stdout
            else:
                assert self.source.path is not None
                stream = open_stream(self.source.path)
            stream = decompressing(stream)  # a gzip stream (tcpdump -w - | gzip) is decompressed as it comes
            noted = 0
            with stream:
                for table in stream_tables(stream, name, self.source.describe(), diagnostics, self._on_idle):
                    for part in _time_slices(table, self.slice_s):
                        self.out.put(("table", name, part))
                    for message in diagnostics.messages[noted:]:
                        self.out.put(("note", name, message))
                    noted = len(diagnostics.messages)
            for message in diagnostics.messages[noted:]:
                self.out.put(("note", name, message))
        except DiagError as error:
            problem = str(error)
            if self.process is not None and self.process.poll() is not None and self.stderr_lines:
                problem = f"{self.source.describe()}: {self.complaint()}"
            self.out.put(("error", name, problem))
            return
        except OSError as error:
            self.out.put(("error", name, f"{self.source.describe()}: {error.strerror or error}"))
            return
        self.out.put(("end", name, None))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # tcpdump flushes and ends its stream

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _time_slices(table: Any, seconds: float) -> list[Any]:
    """The table cut where its packets' times pass ``seconds`` after the first packet of each part."""
    stamps = table["ts_ns"].to_numpy()
    if len(stamps) == 0 or int(stamps.max()) - int(stamps.min()) <= seconds * 1e9:
        return [table]
    parts, start, first = [], 0, int(stamps[0])
    for row, stamp in enumerate(stamps.tolist()):
        if stamp - first > seconds * 1e9:
            parts.append(table.iloc[start:row].reset_index(drop=True))
            start, first = row, stamp
    parts.append(table.iloc[start:].reset_index(drop=True))
    return parts


def _start_tcpdump(source: Source) -> subprocess.Popen[bytes]:
    assert source.interface is not None
    # --immediate-mode: libpcap would otherwise hold packets up to a second in its ring buffer block.
    command = ["tcpdump", "-i", source.interface, "-U", "--immediate-mode", "-w", "-", "-n", "-s", str(SNAPLEN),
               "--time-stamp-precision=nano"]
    if source.netns:
        command = ["ip", "netns", "exec", source.netns, *command]
    try:
        # Its own session: a Ctrl-C reaches watch, which stops tcpdump itself and still reads its last packets.
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                start_new_session=True)
    except OSError as error:
        raise DiagError(f"watch: cannot run {command[0]}: {error.strerror or error}") from None


class Output:
    """Where decided findings go: text on stdout, JSON lines to a file or stdout."""

    def __init__(self, json_lines: str | None) -> None:
        self.json_file: IO[str] | None = None
        self.text = json_lines != "-"
        if json_lines == "-":
            self.json_file = sys.stdout
        elif json_lines:
            try:
                self.json_file = open(json_lines, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
            except OSError as error:
                raise DiagError(f"watch: {json_lines}: cannot write: {error.strerror or error}") from None

    def finding(self, finding: Any, decided_at: float, kernel_note: dict[str, Any] | None) -> None:
        from diag.report.text import format_ts, render_finding

        if self.text:
            text = render_finding(finding)
            when = f"  decided      at {format_ts(decided_at)}"
            if finding.packet is not None:
                when += f" ({decided_at - finding.packet.ts:.3f} s after the symptom was captured)"
            lines = [text.rstrip("\n"), when]
            if kernel_note:
                lines.append(f"  kernel       {kernel_note['account']}")
            sys.stdout.write("\n".join(lines) + "\n\n")
            sys.stdout.flush()
        if self.json_file is not None:
            record = finding.to_json()
            record["decided_at"] = round(decided_at, 6)
            if kernel_note:
                record["kernel"] = kernel_note
            self.json_file.write(json.dumps(record) + "\n")
            self.json_file.flush()

    def close(self) -> None:
        if self.json_file is not None and self.json_file is not sys.stdout:
            self.json_file.close()


def run(args: argparse.Namespace) -> int:
    sources = parse_sources(args.sources, args.netns)
    output = Output(args.json_lines)
    try:
        return _watch(sources, args, output)
    finally:
        output.close()


def _note(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"diag: watch: {text}", file=sys.stderr, flush=True)


def _watch(sources: list[Source], args: argparse.Namespace, output: Output) -> int:
    from diag.capture.records import CaptureWarning
    from diag.watch.incremental import IncrementalAnalysis
    from diag.watch.window import Decider, Window, analyze_window

    # The reader records damaged parts and also warns; the notes on stderr carry them instead.
    warnings.simplefilter("ignore", CaptureWarning)
    # Bounded: a source read faster than it is analyzed (a file, a replay) waits for the analysis
    # instead of piling tables up in memory.
    messages: queue.Queue[Message] = queue.Queue(maxsize=QUEUED_TABLES)
    # A table never spans more than a quarter of the window (a file read in one go would otherwise
    # come as one table, and the window would slide past most of it before any analysis).
    feeders = [Feeder(source, messages, slice_s=args.window / 4) for source in sources]
    kernel = _start_kernel(args, sources) if args.kernel else None
    if kernel is not None:
        _note(args, "kernel account on: tcp_send_reset, tcp_receive_reset and kfree_skb from this host's kernel")
    stopping = threading.Event()
    previous = _on_stop_signals(stopping)
    try:
        _warm_up()
        for feeder in feeders:
            feeder.start()
        _wait_listening(feeders)
        if any(source.interface for source in sources):  # the moment tcpdump listens is worth knowing
            _note(args, f"watching {len(sources)} point(s): "
                  + ", ".join(f"{source.name}={source.describe()}" for source in sources))
        window = Window([source.name for source in sources], args.window)
        decider = Decider()
        incremental = IncrementalAnalysis(window)
        deadline = time.monotonic() + args.duration if args.duration else None
        findings: list[Any] = []
        stop_asked_at: float | None = None
        last_analysis = last_took = 0.0
        while not window.all_ended:
            # Wake often: a window that changed is analyzed as soon as every reader has handed over
            # what it read (at most every TICK_S while packets keep coming), and findings waiting
            # for the points to catch up are looked at again. Each analysis revisits only the
            # connections that may have changed (diag.watch.incremental).
            try:
                kind, point, payload = messages.get(timeout=STEP_S)
                _take(kind, point, payload, window, args)
            except queue.Empty:
                pass
            if (stopping.is_set() or (deadline and time.monotonic() >= deadline)) and stop_asked_at is None:
                stop_asked_at = time.monotonic()
                for feeder in feeders:
                    feeder.stop()
                if not any(feeder.process for feeder in feeders):
                    break  # streams from elsewhere: stop reading, analyze what came
            if stop_asked_at is not None and time.monotonic() - stop_asked_at > 5:
                break  # a tcpdump that does not end its stream: analyze what came
            # Idleness first, then what is queued: a reader idle by now has queued all it read.
            idle = {feeder.source.name: feeder.idle_since for feeder in feeders}
            _drain(messages, window, args)
            if window.all_ended:
                break
            all_idle = all(when is not None for name, when in idle.items() if not window.points[name].ended)
            since = time.monotonic() - last_analysis
            # After an analysis that took D seconds, the readers get D/2 seconds before the next one: a
            # burst that takes long to analyze is analyzed less often, but the streams are still
            # read as fast as they come. (Analyses revisit only what changed, so they stay short.)
            behind = window.unanalyzed_s() >= window.seconds / 4
            if window.changed and (behind or ((all_idle or since >= TICK_S) and since >= 1.5 * last_took)):
                last_analysis = time.monotonic()
                findings = incremental.step(time.time(), idle)
                last_took = time.monotonic() - last_analysis
            now = time.time()
            decided = decider.decide(findings, window, now, idle)
            for finding in decided:
                _emit(output, finding, now, kernel, incremental.rsts_of(finding))
                incremental.given(finding)
            if decided:
                # Out of the list too: the decider forgets what it gave once the window has moved on,
                # and this list is looked at again until the next analysis replaces it.
                given = {id(finding) for finding in decided}
                findings = [finding for finding in findings if id(finding) not in given]
            oldest = window.oldest_kept()
            if oldest is not None:
                decider.forget_before(oldest - window.seconds)
        # Whatever is still queued (the last tables of streams that just ended), analyzed as it is taken
        # in, then the last analysis: of the whole window, as 'analyze' would make it (see
        # diag.watch.incremental for what the steps before could not see).
        _drain(messages, window, args)
        while not messages.empty():
            findings = incremental.step(time.time(), {})
            now = time.time()
            for finding in decider.decide(findings, window, now, {}):
                _emit(output, finding, now, kernel, incremental.rsts_of(finding))
                incremental.given(finding)
            _drain(messages, window, args)
        packets = window.packets()
        findings = analyze_window(packets) if packets is not None else []
        now = time.time()
        for finding in decider.decide(findings, window, now, {}, final=True):
            _emit(output, finding, now, kernel, packets)
        total = sum(state.packets for state in window.points.values())
        _note(args, f"{total} packet(s) from {len(sources)} point(s); {decider.count} finding(s) in the last window")
        if kernel is not None:
            _note(args, f"kernel drops with a reason while watching (IP, top 5): {kernel.drop_summary()}")
        return 0
    finally:
        _restore_signals(previous)
        for feeder in feeders:
            feeder.kill()
        if kernel is not None:
            kernel.close()


def _tiny_capture() -> bytes:
    """A pcap of one refused connection (SYN, RST+ACK) between two documentation addresses."""
    import struct

    def frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, seq: int, ack: int) -> bytes:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
        return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp

    client, server = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
    frames = [frame(client, server, 40000, 80, 0x02, 1000, 0), frame(server, client, 80, 40000, 0x14, 0, 1001)]
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for number, data in enumerate(frames):
        out += struct.pack("<IIII", 1_000_000_000, number * 1000, len(data), len(data)) + data
    return out


def _warm_up() -> None:
    """Run the reader and the analysis once on a tiny capture, before any real packet.

    Their compiled parts load on first use, which takes a good part of a
    second; paid here, it does not delay the first finding.
    """
    import io

    from diag.capture.live import stream_tables
    from diag.watch.incremental import IncrementalAnalysis
    from diag.watch.window import Window, analyze_window

    window = Window(["warm-up"])
    for table in stream_tables(io.BytesIO(_tiny_capture()), "warm-up", "warm-up"):
        analyze_window(table)
        window.add("warm-up", table)
    IncrementalAnalysis(window).step(time.time(), {})


def _drain(messages: queue.Queue[Message], window: Any, args: argparse.Namespace) -> None:
    """Take in what is queued, but stop once the window's packets not yet analyzed span a quarter of it:
    a stream read faster than real time (a file, a backlog) must not slide the window past packets no
    analysis has seen."""
    while window.unanalyzed_s() < window.seconds / 4:
        try:
            kind, point, payload = messages.get_nowait()
        except queue.Empty:
            return
        _take(kind, point, payload, window, args)


def _take(kind: str, point: str, payload: Any, window: Any, args: argparse.Namespace) -> None:
    if kind == "table":
        window.add(point, payload)
    elif kind == "end":
        window.end(point)
    elif kind == "note":
        _note(args, f"{point}: {payload}")
    elif kind == "error":
        raise DiagError(f"watch: {payload}")


def _wait_listening(feeders: list[Feeder]) -> None:
    """Return once every tcpdump listens; one that failed to start ends the watch in one line."""
    deadline = time.monotonic() + TCPDUMP_START_S
    for feeder in feeders:
        feeder.listening.wait(max(0.0, deadline - time.monotonic()))
        process = feeder.process
        if process is None:
            continue
        if process.poll() is not None or not feeder.listening.is_set():
            time.sleep(0.1)  # let the stderr reader take tcpdump's last words
            raise DiagError(f"watch: {feeder.source.describe()}: {feeder.complaint()}")


def _emit(output: Output, finding: Any, now: float, kernel: Any, packets: Any) -> None:
    note = None
    if kernel is not None and packets is not None and finding.packet is not None and finding.proto == "tcp":
        from diag.watch.kernel import wire_rsts

        client_port = int(finding.client.rpartition(":")[2] or 0)
        rsts = wire_rsts(packets, finding.packet.capture, finding.packet.index, client_port)
        if rsts:
            note = kernel.account(rsts, finding.origin)
    output.finding(finding, now, note)


def _start_kernel(args: argparse.Namespace, sources: list[Source]) -> Any:
    """The kernel's account of resets, or None with one line saying why it is not available."""
    from diag.watch.tracefs import KernelTrace

    # Only interfaces captured here are boxes of this host; a stream may come from anywhere.
    points = {source.name: source.netns for source in sources if source.interface}
    try:
        return KernelTrace.start(points)
    except DiagError as error:
        _note(args, f"no kernel account: {error}; watching without it")
        return None


def _on_stop_signals(stopping: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM ask the watch to stop cleanly (a second SIGINT interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stopping.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)

