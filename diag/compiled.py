"""Compiling the per-packet loops that numpy cannot express without many passes.

A few steps are sequential by nature (chaining pcap record lengths, a TCP
endpoint's state over its packets) or touch every byte once (the payload
digest). numba turns those loops into machine code; everything around them
stays plain numpy and pandas.

Compiled code is cached next to the module (``cache=True``), so only the first
run after an install or an edit pays for compiling; later runs load it. When
the package's directory is not writable (an install owned by another user),
the cache goes to the user's own cache directory instead (see ``_user_cache_dir``).

Loading is what every process pays, so it is kept lean (``_LeanLoadingCache``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

import numba
from numba.core.caching import FunctionCache
from numba.core.compiler_lock import global_compiler_lock
from numba.core.runtime import nrt

F = TypeVar("F", bound=Callable[..., object])
# Where users without a writable home keep their compiled code, one directory per user.
SHARED_CACHE_ROOT = "/var/tmp"


def compiled(function: F) -> F:
    """``function`` compiled with numba in nopython mode, with the same signature for the type checker.

    Bounds are not checked inside compiled loops: callers pass buffers padded
    past every read (``diag.capture.bytesview.PADDING``) or index arrays they
    built themselves.
    """
    dispatcher = numba.njit(nogil=True, boundscheck=False)(function)
    try:
        cache = _LeanLoadingCache(function)  # type: ignore[no-untyped-call]
    except RuntimeError:  # numba found no writable place for its cache
        numba.config.CACHE_DIR = _user_cache_dir()  # type: ignore[attr-defined]
        cache = _LeanLoadingCache(function)  # type: ignore[no-untyped-call]
    # What numba.njit(cache=True) does, with numba's own FunctionCache.
    dispatcher._cache = cache  # type: ignore[attr-defined]
    return cast(F, dispatcher)


class _LeanLoadingCache(FunctionCache):
    """numba's on-disk cache of compiled functions, loaded without making numba ready to compile.

    numba's own ``load_overload`` first refreshes its target context: it imports and registers
    every typing and lowering rule numba has (the unicode, dict, linalg, random... implementations),
    about 0.2 CPU s, most of numba's share of a process's start-up, although what the cache holds is
    machine code already. That code needs only numba's runtime (the memory manager of the arrays it
    allocates: ``rtsys``, set up here) and the C helpers registered when the contexts are made; the
    modules whose objects it refers to are imported as it is unpickled. A function that is not in
    the cache (a first run, an edited source, new argument types) is compiled as before: numba's
    compiler refreshes both contexts itself.
    """

    def load_overload(self, sig: object, target_context: object) -> object:
        try:
            nrt.rtsys.initialize(target_context)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)  # type: ignore[no-untyped-call]
        except Exception:  # numba's internals moved in another release: load the way numba does
            return super().load_overload(sig, target_context)  # type: ignore[no-untyped-call]

    def load_everything_into(self, dispatcher: Any) -> None:
        """Every version of the function this cache holds for this machine, added to numba's ``dispatcher``
        as its first call would add it (``Dispatcher.compile`` on a cache hit), without compiling."""
        target_context = dispatcher.targetctx
        for key in self._cache_file._load_index():  # type: ignore[no-untyped-call]
            signature = key[0]  # then the machine and the function's bytecode, which the load checks
            if tuple(signature) in dispatcher.overloads:
                continue
            loaded: Any = self.load_overload(signature, target_context)
            if loaded is None:  # cached for another machine or another version of the function
                continue
            dispatcher._cache_hits[signature] += 1
            if not loaded.objectmode:
                target_context.insert_user_function(loaded.entry_point, loaded.fndesc, [loaded.library])
            dispatcher.add_overload(loaded)


def load_from_cache(functions: Iterable[object]) -> None:
    """Load now every compiled version of ``functions`` that the on-disk cache holds, compiling nothing.

    A compiled loop is otherwise loaded on its first call, 3-10 ms each (its cache files read, its
    machine code linked). ``diag analyze`` has the loops of the stages after reading loaded while the
    captures are still being read, so the stages no longer wait for them. What the cache lacks (a first
    run, an edited source, other argument types) is compiled on the first call, as before; anything
    unexpected here (another numba release) only leaves the loading to that call.
    """
    for function in functions:
        cache = getattr(function, "_cache", None)
        if isinstance(cache, _LeanLoadingCache):
            try:
                with global_compiler_lock:
                    cache.load_everything_into(function)
            except Exception:  # numba's internals moved: the first call loads (or compiles) as it always did
                continue


def _user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/diag`` or ``~/.cache/diag`` if it can be made, else ``/var/tmp/diag-<uid>``.

    The last one is kept between runs (unlike /tmp, /var/tmp survives reboots
    and is not cleaned as eagerly), so a user without a writable home, such as
    a service account, compiles once instead of on every run. It is used only
    when this user owns it, it is a real directory and nobody else may write
    to it: another user could otherwise plant compiled code in it.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    candidate = Path(base) / "diag"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return str(candidate)
    except OSError:
        pass
    shared = Path(SHARED_CACHE_ROOT) / f"diag-{os.getuid()}"
    if _private_directory(shared):
        return str(shared)
    return tempfile.mkdtemp(prefix="diag-compiled-")  # last resort: a cache for this run only


def _private_directory(path: Path) -> bool:
    """Make ``path`` (mode 0700) if missing; True when it is a directory only this user can write."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        status = path.lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid()
            and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
