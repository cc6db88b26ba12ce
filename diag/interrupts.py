"""Ctrl-C and ``kill`` held back for a moment: while a temporary file or directory is made and its removal arranged.

A signal's Python handler runs between two steps of the main thread, so the
``KeyboardInterrupt`` (or SIGTERM's exception, ``diag.cli``) it raises can fall
between ``mkdtemp`` making a directory and ``TemporaryDirectory`` arranging
its removal, or between ``tempfile``'s probe file being made and its ``try``:
the file or directory is then left behind, which is what an analysis in
passes promises never to do. Inside ``held()`` the handlers installed through
``deliver`` only note the signal; the exception is raised as the block ends,
when whatever it made is in the hands of something that removes it.

Only the main thread holds signals (their handlers run there), and only
handlers that go through ``deliver`` wait: those ``diag.cli`` installs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_depth = 0  # how many held() blocks the main thread is in
_pending: list[Callable[[], None]] = []  # what the handlers would have raised meanwhile, the first first


@contextmanager
def held() -> Iterator[None]:
    """Within the block, signals delivered through ``deliver`` wait; the first of them is raised at its end."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            first = _pending[0]
            _pending.clear()
            first()


def deliver(raise_it: Callable[[], None]) -> None:
    """For a signal handler: ``raise_it()`` now, or at the end of the ``held()`` block the main thread is in."""
    if _depth:
        _pending.append(raise_it)
        return
    # Any still noted came in a block whose end this signal interrupted (between its count going to 0 and its
    # raise): this one's exception ends it instead, and none is raised later, at the end of an unrelated block.
    _pending.clear()
    raise_it()
