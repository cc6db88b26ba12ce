"""A 64-bit digest of each packet's transport payload, computed for all packets at once.

The digest lets one segment be recognised in two captures even after NAT
rewrote its addresses and ports: same payload bytes, same digest, in any
capture and any run (the constants below are fixed, not random per process).

It is a multilinear hash: the payload is read as little-endian 64-bit words
w_0..w_k (the last one zero-filled), each multiplied by a fixed odd constant
for its position, summed modulo 2^64, and the sum and the length are mixed by
MurmurHash3's finaliser. Packets are grouped by word count, so each group is
one rectangular copy and one matrix-vector product over numpy arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from diag.capture.bytesview import ByteView, IntArray

U64 = np.uint64
# Elements per gathered block: bounds the temporary memory (8 bytes each).
BLOCK_BUDGET = 1 << 21
BUCKET_WORDS = 16
COMMON_ROWS = 64

_multipliers = np.zeros(0, dtype=U64)


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


def _finalise(value: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    value = value ^ (value >> U64(33))
    value = value * U64(0xFF51AFD7ED558CCD)
    value = value ^ (value >> U64(33))
    value = value * U64(0xC4CEB9FE1A85EC53)
    return value ^ (value >> U64(33))


def payload_digest(view: ByteView, starts: IntArray, lengths: IntArray) -> npt.NDArray[np.uint64]:
    """Digest of ``view`` bytes ``[start, start + length)`` for each row; 0 for empty payloads."""
    digest = np.zeros(len(starts), dtype=U64)
    words = (lengths + 7) // 8
    # Common word counts (full-sized segments) get a block of their own; the
    # scattered rest share blocks by bucket, so a buffer needs a handful of
    # blocks rather than one per distinct length.
    exact = (np.bincount(words) >= COMMON_ROWS)[words]
    width = np.where(exact, words, -(-words // BUCKET_WORDS) * BUCKET_WORDS)
    key = width * 2 + ~exact  # exact and bucketed rows of one width stay apart
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    group_starts = np.flatnonzero(np.diff(sorted_key, prepend=-1))
    group_ends = np.append(group_starts[1:], len(order))
    for first, stop in zip(group_starts, group_ends, strict=True):
        group_width = int(sorted_key[first]) // 2
        if group_width == 0:
            continue
        step = max(1, BLOCK_BUDGET // group_width)
        for part in range(first, stop, step):
            rows = order[part : min(part + step, stop)]
            digest[rows] = _digest_block(view, starts[rows], lengths[rows], words[rows], group_width)
    digest[(digest == 0) & (lengths > 0)] = 1  # 0 is reserved for "no payload"
    return digest


def _digest_block(
    view: ByteView, starts: IntArray, lengths: IntArray, words: IntArray, width: int
) -> npt.NDArray[np.uint64]:
    block = view.words(starts, width)  # a fresh copy: masked in place
    exact = bool((words == width).all())
    if not exact:  # a bucket: zero the words past each payload
        block *= np.arange(width)[None, :] < words[:, None]
    # Zero the bytes past the payload's end in its last word (none to zero when it is full).
    tail_bytes = lengths - 8 * (words - 1)  # 1..8 bytes of the last word are payload
    if (tail_bytes < 8).any():
        partial = (U64(1) << (8 * np.minimum(tail_bytes, 7)).astype(U64)) - U64(1)
        keep = np.where(tail_bytes >= 8, ~U64(0), partial)
        if exact:
            last_words = block[:, width - 1]  # a view: the column is masked in place
            last_words &= keep
        else:
            flat = block.reshape(-1)
            flat[np.arange(len(starts)) * width + words - 1] &= keep
    total = np.einsum("ij,j->i", block, _position_multipliers(width))
    return _finalise(total + lengths.astype(U64) * U64(0x9E3779B97F4A7C15))
