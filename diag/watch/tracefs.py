"""The kernel account at run time: the tracer helper started and read, events kept for a while, REJECT counters.

Everything here is I/O; what an event means for a RST is ``diag.watch.kernel``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from diag.errors import DiagError
from diag.watch.kernel import KernelEvent, WireRst, account, parse_line, reject_rule_matches

START_S = 10.0
KEEP_EVENTS = 200_000  # bounded memory: a watch over hours keeps the recent events only


class KernelTrace:
    """The tracer helper, run in a private mount namespace, and the events it reports."""

    def __init__(self, process: subprocess.Popen[bytes], points: Mapping[str, str | None],
                 log: IO[str] | None = None) -> None:
        self.process = process
        self.log = log  # every event as a JSON line, when given (run-scenario's kernel.jsonl)
        self.points = dict(points)  # point -> its network namespace (None: this host's own)
        self.events: collections.deque[KernelEvent] = collections.deque(maxlen=KEEP_EVENTS)
        self.drops: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        # The trace clock is CLOCK_MONOTONIC; this maps it onto Unix time (µs-level drift over hours).
        self.clock_to_unix = time.time() - time.monotonic()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    @classmethod
    def start(cls, points: Mapping[str, str | None], log: IO[str] | None = None) -> KernelTrace:
        """Start the helper; ``DiagError`` in one line when tracing is not possible here."""
        if os.geteuid() != 0:
            raise DiagError("the kernel's tracepoints need root")
        unshare = shutil.which("unshare")
        if unshare is None:
            raise DiagError("unshare (util-linux) is not installed")
        name = f"diag-{os.getpid()}"
        command = [unshare, "-m", "--propagation", "private", sys.executable, "-m", "diag.watch.tracer", name]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   bufsize=0, start_new_session=True)
        assert process.stdout is not None and process.stderr is not None
        ready = threading.Event()
        first: list[bytes] = []

        def wait_ready() -> None:
            assert process.stdout is not None
            first.append(process.stdout.readline())
            ready.set()

        threading.Thread(target=wait_ready, daemon=True).start()
        if not ready.wait(START_S) or not first[0].startswith(b"ready"):
            process.kill()
            _out, err = process.communicate(timeout=5)
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise DiagError(lines[-1] if lines else "the tracer did not start")
        return cls(process, points, log)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            event = parse_line(raw.decode("utf-8", "replace"), self.clock_to_unix)
            if event is None:
                continue
            with self.lock:
                if event.kind == "drop":
                    self.drops[event.reason or "?"] += 1
                self.events.append(event)
                if self.log is not None:
                    self.log.write(json.dumps(event.to_json()) + "\n")

    def snapshot(self) -> list[KernelEvent]:
        with self.lock:
            return list(self.events)

    def account(self, rsts: list[WireRst], origin: str | None) -> dict[str, Any]:
        time.sleep(0.05)  # the tracer's last lines are a pipe away
        with self.lock:
            events = list(self.events)
        return account(rsts, events, origin, self.reject_counts())

    def reject_counts(self) -> dict[str, int]:
        """Per watched point on this host, packets its REJECT tcp-reset rules matched (iptables-save -c)."""
        counts = {}
        for point, netns in self.points.items():
            command = ["iptables-save", "-c"]
            if netns:
                command = ["ip", "netns", "exec", netns, *command]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if result.returncode == 0:
                counts[point] = reject_rule_matches(result.stdout)
        return counts

    def drop_summary(self) -> str:
        with self.lock:
            top = self.drops.most_common(5)
        return ", ".join(f"{reason} {count}" for reason, count in top) or "none"

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the helper removes its trace instance and ends
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                self.process.wait(timeout=5)
        self.reader.join(timeout=5)  # its last events are written before the caller closes the log
