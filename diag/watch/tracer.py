"""The helper that reads the kernel's reset and drop tracepoints; run by ``diag.watch.tracefs``, as root.

It runs inside a mount namespace of its own (``unshare -m --propagation
private``), so when tracefs is not mounted on this host it can mount it
there without the host ever seeing the mount. It makes a trace instance of
its own (``instances/<name>``: its events, clock and buffer do not disturb
anyone else's tracing), enables the tracepoints there, says ``ready`` on
stdout and then copies ``trace_pipe`` to stdout line by line. On SIGTERM,
SIGINT or when its parent closes stdin it disables the events and removes
the instance; instances that a killed helper left behind (named after a
process that is gone) are removed when the next one starts.

Usage: ``python -m diag.watch.tracer NAME``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

TRACING = Path("/sys/kernel/tracing")
EVENTS = ("tcp/tcp_send_reset", "tcp/tcp_receive_reset", "skb/kfree_skb")
# Only IPv4/IPv6 packets, and not the drops the kernel gives no reason for (the common, useless kind).
FILTERS = {"skb/kfree_skb": "(protocol == 2048 || protocol == 34525) && reason != 2"}
PREFIX = "diag-"


class Stop(Exception):
    pass


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def _mount() -> None:
    if (TRACING / "instances").is_dir():
        return
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"cannot mount tracefs: {result.stderr.strip() or 'mount failed'}")


def _remove_leftovers() -> None:
    for instance in (TRACING / "instances").glob(PREFIX + "*"):
        owner = instance.name.removeprefix(PREFIX)
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove(instance)


def _remove(instance: Path) -> None:
    for event in EVENTS:
        enable = instance / "events" / event / "enable"
        if enable.exists():
            enable.write_text("0")
    with contextlib.suppress(OSError):  # busy or gone: nothing more to do about it here
        instance.rmdir()


def _stop_at_end_of_input() -> None:
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    name = argv[0]
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        _mount()
        _remove_leftovers()
        instance = TRACING / "instances" / name
        instance.mkdir()
    except OSError as error:
        print(f"tracefs: {error.strerror or error}", file=sys.stderr, flush=True)
        return 1
    try:
        (instance / "trace_clock").write_text("mono")  # CLOCK_MONOTONIC: the reader maps it to Unix time
        enabled = []
        for event in EVENTS:
            directory = instance / "events" / event
            if not directory.is_dir():
                continue  # an older kernel without this tracepoint
            if event in FILTERS:
                with contextlib.suppress(OSError):  # fields differ on this kernel: take the event unfiltered
                    (directory / "filter").write_text(FILTERS[event])
            (directory / "enable").write_text("1")
            enabled.append(event)
        if not enabled:
            print("tracefs: none of the reset tracepoints exists on this kernel", file=sys.stderr, flush=True)
            return 1
        print("ready " + " ".join(enabled), flush=True)
        # The parent closing our stdin (it ended, or died) stops us as a signal would.
        threading.Thread(target=_stop_at_end_of_input, daemon=True).start()
        with (instance / "trace_pipe").open("rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    break
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
    except (Stop, BrokenPipeError):
        pass
    except OSError as error:
        print(f"tracefs: {error.strerror or error}", file=sys.stderr, flush=True)
        return 1
    finally:
        _remove(instance)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
