"""Ctrl-C and SIGTERM held back while temporary files are made (``diag.interrupts``), in a process of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT

# Each signal is sent inside a held block: the handler notes it there, and its exception comes out at the end.
# A temporary directory made meanwhile (as the analysis in passes makes them) is gone once it has come out.
HELD = """
import os, signal, sys
from pathlib import Path
from diag import cli
from diag.interrupts import held
from diag.scratch import spill_dir

cli._end_cleanly_on_signals()
for signum, expected in ((signal.SIGTERM, cli._Terminated), (signal.SIGINT, KeyboardInterrupt)):
    made = None
    try:
        with held():
            os.kill(os.getpid(), signum)
            sum(range(10000))  # the handler has run by now, between two of these steps
            made = spill_dir("diag-test-")
            print("still here", Path(made.name).is_dir(), flush=True)
    except expected:
        print("raised at the end", flush=True)
    del made  # the last reference: its finalizer removes the directory
    print("directory removed", not any(Path(sys.argv[1]).iterdir()), flush=True)
"""


def test_a_signal_inside_a_held_block_is_raised_at_its_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", HELD, str(tmp_path)],
        capture_output=True, text=True, cwd=PROJECT, timeout=60, env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["still here True", "raised at the end", "directory removed True"] * 2


# A Python program calling main() (not as its process's command) has its own handlers back once it returns.
CALLER = """
import signal, sys
from diag import cli
print(cli.main(["analyze", "pcap", sys.argv[1]]))
print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_main_called_from_python_gives_back_the_signal_handlers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CALLER, str(tmp_path / "missing.pcap")],
        capture_output=True, text=True, cwd=PROJECT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["2", "True True"]
    assert "missing.pcap" in result.stderr  # the command did run, past where the handlers are installed


def test_a_signal_noted_in_a_block_whose_end_another_interrupted_is_not_raised_later() -> None:
    """A second signal can arrive as a held block ends, after it stopped holding and before it raised the first:
    the second is raised there, and the first must not come out of some later, unrelated block."""
    from diag import interrupts

    def raise_first() -> None:
        raise KeyboardInterrupt("first")

    def raise_second() -> None:
        raise KeyboardInterrupt("second")

    interrupts._pending.append(raise_first)  # the state that end leaves: noted, no block open
    with pytest.raises(KeyboardInterrupt, match="second"):
        interrupts.deliver(raise_second)
    with interrupts.held():
        pass  # raises nothing
    assert interrupts._pending == []
