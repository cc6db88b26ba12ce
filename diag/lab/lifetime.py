"""Tying what a lab starts to the process that started it, so nothing outlives a killed run.

A run killed with SIGKILL runs no handler and no ``finally``: whatever it
started must notice by itself. Two mechanisms cover the two kinds of child:

- a direct child (tcpdump, conntrack, a client step) gets the kernel's
  parent-death signal (``PR_SET_PDEATHSIG``): SIGKILL as soon as its parent
  dies. The signal follows the *thread* that forked the child, so children
  are started from long-lived threads only (the main thread, in practice);
- the pod servers are grandchildren (one launcher forks them into their
  namespaces and exits), so a parent-death signal would fire at once; they
  hold the read end of a pipe instead (a *lifeline*) whose write end only
  the running process holds. The kernel closes it when that process dies,
  and every server reads end-of-file and exits.

The parent-death signal is set by ``setpriv --pdeathsig`` (util-linux) in
front of the command rather than by a ``preexec_fn`` calling prctl: with a
``preexec_fn`` Python runs its fork handlers around the fork, and a Ctrl-C
arriving then (on any thread) raises inside a handler, where Python swallows
the exception, so the run would not stop. ``setpriv`` sets the signal and
execs the command, which keeps it across its own exec (``ip netns exec``).

Owners are recognised by pid *and* start time, so a reused pid never makes a
dead owner look alive.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

LIFELINE_VARIABLE = "DIAG_SERVERS_LIFELINE"  # the inherited read end's descriptor number, for the servers


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def tied(argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that the command is killed (SIGKILL) when this process dies.

    Without setpriv (util-linux older than 2.33, or none) the command runs as
    given and only a teardown stops it.
    """
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)


def start(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` of a child that dies with this process (see the module's docstring)."""
    return subprocess.Popen(tied(argv), **popen_kwargs)


def lifeline() -> tuple[int, int]:
    """(read end, write end) of a new lifeline pipe; the read end is to be passed to children (pass_fds)."""
    return os.pipe()


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when no such process runs (zombies count as gone)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3 of proc(5)); the start time is field 22.
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (``started`` 0: any start time)."""
    now = process_start(pid)
    return now is not None and (started == 0 or now == started)
