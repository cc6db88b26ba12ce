"""Pausing Python's cyclic garbage collector while a stage makes many short-lived, acyclic objects.

Once the flow table exists the process holds hundreds of thousands of Python
objects (each flow's RST list, endpoint texts). Making thousands of findings,
facts and JSON dicts on top of that triggers full collections, each of which
walks every one of those objects: about a quarter of a CPU second on a busy
capture, for nothing, since none of these objects form cycles. Reference
counting still frees them; the collector runs again once the stage is over.
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
