"""The payload digest against a plain-Python reading of its definition (``diag.capture.digest``)."""

from __future__ import annotations

import numpy as np
import pytest

import diag.capture.digest
from diag.capture.bytesview import PADDING, ByteView
from diag.capture.digest import payload_digest

MASK = (1 << 64) - 1


def _splitmix64(seed: int) -> int:
    z = (seed + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _murmur_finaliser(value: int) -> int:
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & MASK
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & MASK
    return value ^ (value >> 33)


def reference_digest(payload: bytes) -> int:
    """Little-endian 64-bit words (the last zero-filled), each times an odd constant for its position."""
    if not payload:
        return 0
    padded = payload + bytes(-len(payload) % 8)
    total = 0
    for position in range(len(padded) // 8):
        word = int.from_bytes(padded[8 * position : 8 * position + 8], "little")
        total += word * (_splitmix64(position) | 1)
    value = _murmur_finaliser((total + len(payload) * 0x9E3779B97F4A7C15) & MASK)
    return value or 1


def test_digest_matches_its_definition_at_every_alignment_and_length() -> None:
    rng = np.random.default_rng(7)
    size = 64 * 1024
    buffer = bytearray(rng.integers(0, 256, size + PADDING, dtype=np.uint8).tobytes())
    buffer[size:] = bytes(PADDING)
    view = ByteView(buffer, size)
    lengths = [*range(0, 41), 63, 64, 65, 1448, 1460, 9000]
    starts = [start for start in range(8) for _ in lengths]  # every alignment of a 64-bit word
    starts = [start + 100 * row for row, start in enumerate(starts)]
    all_lengths = lengths * 8
    digests = payload_digest(view, np.array(starts), np.array(all_lengths))
    expected = [reference_digest(bytes(buffer[s : s + n])) for s, n in zip(starts, all_lengths, strict=True)]
    assert digests.tolist() == expected


def test_digest_ignores_the_bytes_after_the_payload_even_at_the_end_of_the_data() -> None:
    payload = b"GET / HTTP/1.1\r\n\r\n"
    digests = []
    for trailer in (b"\x00" * 5, b"\xff" * 5, b""):
        data = payload + trailer
        buffer = bytearray(data + bytes(PADDING))
        digests.append(int(payload_digest(ByteView(buffer, len(data)), np.array([0]), np.array([len(payload)]))[0]))
    assert digests == [reference_digest(payload)] * 3


def test_a_large_batch_digested_in_two_halves_matches_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    size = 256 * 1024
    buffer = bytearray(rng.integers(0, 256, size + PADDING, dtype=np.uint8).tobytes())
    buffer[size:] = bytes(PADDING)
    view = ByteView(buffer, size)
    count = 5001  # odd: the halves differ in size
    starts = rng.integers(0, size - 1500, count)
    lengths = rng.integers(0, 1500, count)
    monkeypatch.setattr(diag.capture.digest, "SPLIT_ROWS", 16)
    digests = payload_digest(view, starts, lengths)
    expected = [reference_digest(bytes(buffer[s : s + n])) for s, n in zip(starts, lengths, strict=True)]
    assert digests.tolist() == expected
