"""Compiling the per-packet loops that numpy cannot express without many passes.

A few steps are sequential by nature (chaining pcap record lengths, a TCP
endpoint's state over its packets) or touch every byte once (the payload
digest). numba turns those loops into machine code; everything around them
stays plain numpy and pandas.

Compiled code is cached next to the module (``cache=True``), so only the first
run after an install or an edit pays for compiling; later runs load it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., object])


def compiled(function: F) -> F:
    """``function`` compiled with numba in nopython mode, with the same signature for the type checker.

    Bounds are not checked inside compiled loops: callers pass buffers padded
    past every read (``diag.capture.bytesview.PADDING``) or index arrays they
    built themselves.
    """
    return cast(F, numba.njit(cache=True, nogil=True, boundscheck=False)(function))
