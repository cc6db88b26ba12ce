"""The ``diag`` command line.

Each top-level command lives in ``diag.commands.<name>`` and registers its own
sub-parser; this module only wires them together and turns user-facing errors
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from diag.datafiles import add_lab_paths
from diag.errors import DiagError

# numpy asks the kernel for 2 MB pages on large arrays; on these machines setting them up cost most of a
# many-capture correlation's time (4 of 6.6 CPU s on four 1M-packet captures), and diag's arrays are
# short-lived. Read by numpy when it is first imported, which the commands do later; a user's own setting wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

# glibc's mallopt parameter for how many heaps ("arenas") threads may allocate from.
M_ARENA_MAX = -8


def _one_malloc_arena() -> None:
    """Let every thread allocate from one heap, as a single-threaded process does.

    glibc gives a thread that allocates its own arena, and memory freed in one
    arena is not reused for another's allocations: reading captures on threads
    (``diag.capture.sidebyside``) while the main thread builds tables raised a
    busy capture's peak by about 60 MB (588 -> 656 MiB), given back with one
    arena. The threads allocate few, large blocks, so sharing costs nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator decides
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


# Module names under diag.commands, in the order --help lists them.
COMMANDS = ("scenario", "analyze", "watch", "flows", "lab", "replay", "aws")

EPILOG = """\
examples:
  diag run-scenario                      reproduce the NLB/NAT-gateway incident and print the verdict
  diag run-scenario --list               every scenario and fix, one line each
  diag analyze pcap client=c.pcap pod=p.pcap --json -
                                         diagnose captures taken at several points
  diag lab up incident                   build the incident's topology and leave it up to explore
  diag aws check --region eu-west-1      look for the risky setup in an AWS account
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diag",
        description="Reproduce, capture and diagnose the network failures behind mysterious TCP resets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"diag.commands.{name}").register(subparsers)
    return parser


def _version() -> str:
    from diag import __version__

    return __version__


class _Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so every ``finally`` and ``with`` on the stack runs.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it.
    """


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _end_cleanly_on_sigterm() -> None:
    """``kill`` ends a command as Ctrl-C does: temporary files (an analysis in passes) are removed on the way out.

    Only where nobody chose otherwise (the lab and the watch install their own handlers while they run).
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


def main(argv: Sequence[str] | None = None) -> int:
    _one_malloc_arena()
    parser = build_parser()
    args = parser.parse_args(argv)
    add_lab_paths(getattr(args, "lab_path", None) or [])
    _end_cleanly_on_sigterm()
    try:
        status: int = args.func(args)
    except DiagError as error:
        print(f"diag: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diag: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("diag: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        # `diag ... | head` closed the pipe: not an error worth a traceback.
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
