"""The ``diag`` command line.

Each top-level command lives in ``diag.commands.<name>`` and registers its own
sub-parser; this module only wires them together and turns user-facing errors
into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NoReturn

from diag.datafiles import add_lab_paths
from diag.errors import DiagError
from diag.gcpause import end_startup, pause_for_startup
from diag.interrupts import deliver

# numpy asks the kernel for 2 MB pages on large arrays; on these machines setting them up cost most of a
# many-capture correlation's time (4 of 6.6 CPU s on four 1M-packet captures), and diag's arrays are
# short-lived. Read by numpy when it is first imported, which the commands do later; a user's own setting wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

# glibc's mallopt parameters: how many heaps ("arenas") threads may allocate from; how much free memory at
# the heap's top is given back to the system; how many blocks may be mapped on their own.
M_ARENA_MAX = -8
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


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


def _reuse_freed_memory() -> None:
    """Keep the memory an analysis frees for its next tables instead of giving it back to the system.

    glibc maps every block above 32 MB (a column of a few million rows) on its own and unmaps it when
    freed, and trims the heap's free top: the next table then starts on fresh pages, which the kernel
    zeroes on first touch. On four 1M-packet captures that was most of the process's 2.4 s of system
    time (about 770,000 page faults for a 2.3 GB peak). Every block comes from the one heap and stays
    there once freed (up to 2 GB free at its top), so later tables reuse it. Only for a command that ends
    its process when done (an analysis): a long-lived caller keeps glibc's defaults.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator decides
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


# Module names under diag.commands, in the order --help lists them.
COMMANDS = ("scenario", "analyze", "watch", "flows", "lab", "replay", "aws")
# The command word each of them registers (tests/test_startup.py checks it against their parsers).
COMMAND_WORDS = {
    "run-scenario": "scenario",
    "analyze": "analyze",
    "watch": "watch",
    "flows": "flows",
    "lab": "lab",
    "replay": "replay",
    "aws": "aws",
}

EPILOG = """\
examples:
  diag run-scenario                      reproduce the NLB/NAT-gateway incident and print the verdict
  diag run-scenario --list               every scenario and fix, one line each
  diag analyze pcap client=c.pcap pod=p.pcap --json -
                                         diagnose captures taken at several points
  diag lab up incident                   build the incident's topology and leave it up to explore
  diag aws check --region eu-west-1      look for the risky setup in an AWS account
"""


# Set on the parsed arguments by the innermost (sub-)parser that read them: whose usage a mistake is about.
PARSER_PROG = "parser_prog"


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its mistakes said in one line, as every other bad input is.

    argparse prints the whole usage (seven lines for ``analyze pcap``) above its message; the usage is what
    ``--help`` is for, so the line points there. Sub-parsers are made of this class too (``add_subparsers``
    uses the parent's), and each notes its ``prog`` on the arguments it read, so that an option no parser
    took is reported against the command it was given to, not against ``diag`` itself.
    """

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if not hasattr(parsed, PARSER_PROG):  # the innermost parser returns first and is kept
            setattr(parsed, PARSER_PROG, self.prog)
        return parsed, extras


def usage_error(prog: str, message: str) -> NoReturn:
    """End with one line on stderr and exit status 2: the mistake, and where the usage is explained."""
    print(f"{prog}: {message}; see '{prog} --help'", file=sys.stderr)
    sys.exit(2)


def parse_command_line(parser: argparse.ArgumentParser, words: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args``, with arguments no parser took reported against the command they were given to."""
    unknown = _unknown_leading_options(parser, words)
    if unknown:
        # argparse would say only that the command is missing, which is not the mistake made.
        usage_error(parser.prog, f"unrecognized arguments: {' '.join(unknown)}")
    args, extras = parser.parse_known_args(words)
    if extras:
        usage_error(getattr(args, PARSER_PROG, parser.prog), f"unrecognized arguments: {' '.join(extras)}")
    return args


def _unknown_leading_options(parser: argparse.ArgumentParser, words: Sequence[str]) -> list[str]:
    """The options given before the command that ``parser`` itself does not take, as written or abbreviated
    (argparse takes ``--vers`` for ``--version``)."""
    known = [option for action in parser._actions for option in action.option_strings]
    leading = itertools.takewhile(lambda word: word.startswith("-"), words)
    return [
        word
        for word in leading
        if word not in known and not (word.startswith("--") and any(option.startswith(word) for option in known))
    ]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line's parser; given ``command`` (a module of ``COMMANDS``), with that command's
    sub-parser alone: the others' modules are then not even imported (see ``_command_of``)."""
    parser = _Parser(
        prog="diag",
        description="Reproduce, capture and diagnose the network failures behind mysterious TCP resets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        if command is None or name == command:
            importlib.import_module(f"diag.commands.{name}").register(subparsers)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The module of the command ``argv`` names, or None when the whole parser is wanted (no command yet,
    ``--help``, ``--version``, a word no command has: argparse's message then lists them all).

    An analysis's wall time starts with its parser: building every command's costs about 20 ms more
    than building the one called, spent before the capture's read can start.
    """
    for word in argv:
        if word.startswith("-"):
            return None  # the only options before the command are --help and --version
        module = COMMAND_WORDS.get(word)
        return module if module in COMMANDS else None
    return None


def _version() -> str:
    from diag import __version__

    return __version__


class _Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so every ``finally`` and ``with`` on the stack runs.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it.
    """


# What signal.signal takes and signal.getsignal gives.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _raise_terminated() -> None:
    raise _Terminated


def _raise_interrupted() -> None:
    raise KeyboardInterrupt


def _terminate(signum: int, frame: object) -> None:
    deliver(_raise_terminated)


def _interrupt(signum: int, frame: object) -> None:
    deliver(_raise_interrupted)


def _end_cleanly_on_signals() -> list[tuple[int, _Handler]]:
    """``kill`` ends a command as Ctrl-C does: temporary files (an analysis in passes) are removed on the way out.

    Both raise their exception through ``diag.interrupts``, so that one arriving while a temporary file or
    directory is being made waits until its removal is arranged. Only where nobody chose otherwise (the lab
    and the watch install their own handlers while they run). Returns the handlers replaced, by signal, for
    ``_restore_handlers``.
    """
    replaced: list[tuple[int, _Handler]] = []
    if threading.current_thread() is not threading.main_thread():
        return replaced
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
        replaced.append((signal.SIGTERM, signal.SIG_DFL))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
        replaced.append((signal.SIGINT, signal.default_int_handler))
    return replaced


def _restore_handlers(replaced: list[tuple[int, _Handler]]) -> None:
    """Put back what ``_end_cleanly_on_signals`` replaced: a Python program that called ``main`` keeps its own
    ways (SIGTERM ending it at once, not with ``_Terminated`` raised long after the command returned)."""
    for signum, handler in replaced:
        signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run one command; its exit status.

    ``own_process``: the caller is the process's entry point and exits with that status at once (the
    ``diag`` script, ``python -m diag.cli``). A command that allows it (``analyze``: its parser's default
    ``exit_without_teardown``) then ends the process here when it succeeds, see ``_exit_now``. Its
    start-up also runs without the cyclic collector (``diag.gcpause.pause_for_startup``), until the
    command has loaded its modules (one whose parser sets ``ends_startup`` says when) or now.
    """
    if own_process:
        pause_for_startup()
    _one_malloc_arena()
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_of(words))
    args = parse_command_line(parser, words)
    if own_process and getattr(args, "exit_without_teardown", False):
        _reuse_freed_memory()
    if not getattr(args, "ends_startup", False):
        end_startup()
    add_lab_paths(getattr(args, "lab_path", None) or [])
    replaced = _end_cleanly_on_signals()
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
    finally:
        if not own_process:  # the process's own command keeps them until it has exited, temporary files removed
            _restore_handlers(replaced)
    if own_process and getattr(args, "exit_without_teardown", False):
        _exit_now(status)
    return status


def run() -> None:
    """The ``diag`` console script."""
    sys.exit(main(own_process=True))


def _exit_now(status: int) -> NoReturn:
    """End the process with ``status`` as exiting would, without freeing its memory object by object.

    After an analysis the interpreter's own exit spends about 0.15 CPU s (0.3 s of wall time on a busy
    capture) deallocating the packet and flow tables and the report's objects, memory the kernel takes
    back at once. What exiting does that matters is done here, in its order: ``threading``'s shutdown
    (idle thread pools are told to stop, such as the payload digest's, and threads that are not daemons
    are waited for), the functions registered with ``atexit`` (among them the finalizers of temporary
    directories still open, such as a flow table kept on disk), the standard streams flushed.
    """
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter's exit calls first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left (`diag ... | head`): nothing more to say, as above
            pass
        except (OSError, ValueError):  # what Python's exit gives when it cannot flush them (a full disk)
            status = 120
    os._exit(status)


if __name__ == "__main__":
    run()
