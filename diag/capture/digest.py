"""A 64-bit digest of each packet's transport payload, computed for all packets at once.

The digest lets one segment be recognised in two captures even after NAT
rewrote its addresses and ports: same payload bytes, same digest, in any
capture and any run (the constants below are fixed, not random per process).

It is a multilinear hash: the payload is read as little-endian 64-bit words
w_0..w_k (the last one zero-filled), each multiplied by a fixed odd constant
for its position, summed modulo 2^64, and the sum and the length are mixed by
MurmurHash3's finaliser. A compiled loop reads each payload word by word
straight from the capture's buffer: every payload byte is touched once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from diag.capture.bytesview import ByteView, IntArray, WordLanes
from diag.compiled import compiled

U64 = np.uint64
GOLDEN = 0x9E3779B97F4A7C15  # mixes the length in, so payloads that differ only by trailing zeros differ

_multipliers = np.zeros(0, dtype=U64)

# A batch with at least this many payloads is digested in two halves, the second on a helper thread:
# the compiled loop lets go of the interpreter lock, so a second core halves the digest's wall time.
SPLIT_ROWS = 4096
_helper: tuple[int, ThreadPoolExecutor | None] | None = None  # (process id, pool): a forked child makes its own
_this_thread = threading.local()  # .alone: this thread digests without the helper (see digest_alone)


def _splitmix64(seeds: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    z = seeds + U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def _position_multipliers(words: int) -> npt.NDArray[np.uint64]:
    """The odd constant for each word position, extended as longer payloads appear."""
    global _multipliers
    if len(_multipliers) < words:
        size = max(words, 2 * len(_multipliers), 256)
        _multipliers = _splitmix64(np.arange(size, dtype=U64)) | U64(1)
    return _multipliers[:words]


def payload_digest(view: ByteView, starts: IntArray, lengths: IntArray) -> npt.NDArray[np.uint64]:
    """Digest of ``view`` bytes ``[start, start + length)`` for each row; 0 for empty payloads.

    The rows must lie in the buffer (a payload's last word may reach into the
    buffer's zero padding).
    """
    multipliers = _position_multipliers((int(lengths.max(initial=0)) + 7) // 8)
    lanes = view.word_lanes()
    starts, lengths = starts.astype(np.int64), lengths.astype(np.int64)
    alone = getattr(_this_thread, "alone", False)
    helper = _helper_pool() if len(starts) >= SPLIT_ROWS and not alone else None
    if helper is None:
        return _digest_rows(lanes, starts, lengths, multipliers)
    half = len(starts) // 2
    second = helper.submit(_digest_rows, lanes, starts[half:], lengths[half:], multipliers)
    first = _digest_rows(lanes, starts[:half], lengths[:half], multipliers)
    return np.concatenate([first, second.result()])


@contextmanager
def digest_alone() -> Iterator[None]:
    """Within it, this thread digests whole batches itself: files read side by side already keep every
    CPU busy, and their halves queued for the one helper would wait for each other."""
    before = getattr(_this_thread, "alone", False)
    _this_thread.alone = True
    try:
        yield
    finally:
        _this_thread.alone = before


def _helper_pool() -> ThreadPoolExecutor | None:
    """The one helper thread of this process, or None when it may use a single CPU only."""
    global _helper
    if _helper is None or _helper[0] != os.getpid():
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diag-digest") if usable_cpus() > 1 else None
        _helper = (os.getpid(), pool)
    return _helper[1]


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@compiled
def _digest_rows(
    lanes: WordLanes, starts: IntArray, lengths: IntArray, multipliers: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    digest = np.zeros(len(starts), dtype=np.uint64)
    for row in range(len(starts)):
        digest[row] = digest_one(lanes, starts[row], lengths[row], multipliers)
    return digest


@compiled
def digest_one(
    lanes: WordLanes, start: int, length: int, multipliers: npt.NDArray[np.uint64]
) -> np.uint64:
    """The digest of one payload, for compiled callers (``lanes`` from ``ByteView.word_lanes``)."""
    if length <= 0:
        return np.uint64(0)
    # All words of one payload share its start's alignment, so they are one lane.
    full_words = length // 8
    words = lanes[start % 8][start // 8 : start // 8 + full_words + 1]
    total = np.uint64(0)
    for word in range(full_words):
        total += words[word] * multipliers[word]
    tail_bytes = length - 8 * full_words
    if tail_bytes:
        last = words[full_words] & ((np.uint64(1) << np.uint64(8 * tail_bytes)) - np.uint64(1))
        total += last * multipliers[full_words]
    value = _finalise(total + np.uint64(length) * np.uint64(GOLDEN))
    return value if value != 0 else np.uint64(1)  # 0 is reserved for "no payload"


@compiled
def _finalise(value: np.uint64) -> np.uint64:
    """MurmurHash3's 64-bit finaliser."""
    value ^= value >> np.uint64(33)
    value *= np.uint64(0xFF51AFD7ED558CCD)
    value ^= value >> np.uint64(33)
    value *= np.uint64(0xC4CEB9FE1A85EC53)
    return value ^ (value >> np.uint64(33))
