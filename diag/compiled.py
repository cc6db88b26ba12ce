"""Compiling the per-packet loops that numpy cannot express without many passes.

A few steps are sequential by nature (chaining pcap record lengths, a TCP
endpoint's state over its packets) or touch every byte once (the payload
digest). numba turns those loops into machine code; everything around them
stays plain numpy and pandas.

Compiled code is cached next to the module (``cache=True``), so only the first
run after an install or an edit pays for compiling; later runs load it. When
the package's directory is not writable (an install owned by another user),
the cache goes to the user's own cache directory instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., object])


def compiled(function: F) -> F:
    """``function`` compiled with numba in nopython mode, with the same signature for the type checker.

    Bounds are not checked inside compiled loops: callers pass buffers padded
    past every read (``diag.capture.bytesview.PADDING``) or index arrays they
    built themselves.
    """
    try:
        dispatcher = numba.njit(cache=True, nogil=True, boundscheck=False)(function)
    except RuntimeError:  # numba found no writable place for its cache
        numba.config.CACHE_DIR = _user_cache_dir()  # type: ignore[attr-defined]
        dispatcher = numba.njit(cache=True, nogil=True, boundscheck=False)(function)
    return cast(F, dispatcher)


def _user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/diag`` or ``~/.cache/diag`` if it can be made, else a private temporary directory."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    candidate = Path(base) / "diag"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return str(candidate)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="diag-compiled-")
