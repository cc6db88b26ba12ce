"""Pausing Python's cyclic garbage collector while a stage makes many short-lived, acyclic objects.

Once the flow table exists the process holds hundreds of thousands of Python
objects (each flow's RST list, endpoint texts). Making thousands of findings,
facts and JSON dicts on top of that triggers full collections, each of which
walks every one of those objects: about a quarter of a CPU second on a busy
capture, for nothing, since none of these objects form cycles. Reference
counting still frees them; the collector runs again once the stage is over.

A process's start-up is the same case: loading numpy, pandas, numba and the
analysis makes about 150,000 objects that live as long as the process, and
the collections they trigger cost about a tenth of the loading
(``pause_for_startup``, ``end_startup``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off (restored after, as it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_startup_paused = False


def pause_for_startup() -> None:
    """Turn the collector off while the process loads its modules, until ``end_startup``.

    Only for a process of its own (the command line's): a library caller's collector is left alone.
    """
    global _startup_paused
    if gc.isenabled():
        gc.disable()
        _startup_paused = True


def end_startup() -> None:
    """The modules are loaded: what they made is kept out of every later collection (``gc.freeze``,
    which leaves reference counting to free it as ever) and the collector runs again. Once; a no-op
    when ``pause_for_startup`` did not pause it."""
    global _startup_paused
    if _startup_paused:
        _startup_paused = False
        gc.freeze()
        gc.enable()
