"""Header blocks and set helpers read the same values as the per-field reads and numpy's own set tests."""

from __future__ import annotations

import numpy as np
import pytest

from diag.capture.arrays import distinct, is_one_of
from diag.capture.bytesview import PADDING, ByteView


@pytest.mark.parametrize("width", [8, 12, 16, 20, 23])
def test_header_block_fields_match_per_field_reads(width: int) -> None:
    rng = np.random.default_rng(width)
    data = bytearray(rng.bytes(4096)) + bytearray(PADDING)
    view = ByteView(data, 4096)
    offsets = np.sort(rng.integers(0, 4096 - width, 500))
    block = view.headers(offsets, width)
    for position in range(width):
        assert (block.u8(position) == view.u8(offsets + position)).all()
    for position in range(width - 1):  # aligned and unaligned 16-bit fields
        assert (block.be16(position) == view.be16(offsets + position)).all()
    for position in range(width - 3):
        assert (block.be32(position) == view.be32(offsets + position)).all()
        assert (block.u32(position, big_endian=False) == view.le32(offsets + position)).all()
        assert (block.u32(position, big_endian=True) == view.be32(offsets + position)).all()


def test_set_helpers_agree_with_numpy() -> None:
    rng = np.random.default_rng(7)
    choices = np.array([0x8100, 0x88A8, 0x9100, 0x9200], dtype=np.int64)
    for values in (
        rng.choice(np.array([0x0800, 0x8100, 0x86DD, 0x9200]), 1000),
        np.full(1000, 1, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
        rng.integers(0, 300, 1000),
    ):
        assert (is_one_of(values, choices) == np.isin(values, choices)).all()
        assert (is_one_of(values, (1, 2)) == np.isin(values, [1, 2])).all()
        found = distinct(values)
        assert found.dtype == np.unique(values).dtype and (found == np.unique(values)).all()


@pytest.mark.parametrize("kind", ["bytearray", "bytes", "memoryview"])
def test_every_buffer_is_handed_to_compiled_loops_read_only(kind: str) -> None:
    # numba compiles a loop once per argument type, writability included: a mapped window (read-only)
    # and a bytearray (a file's last bytes, a compressed stream) must look alike to it.
    data = bytearray(100 + PADDING)
    buffer = {"bytearray": data, "bytes": bytes(data), "memoryview": memoryview(data)}[kind]
    view = ByteView(buffer, 100)
    assert not view.u8_view.flags.writeable
    assert not any(lane.flags.writeable for lane in view.word_lanes())
    data[0] = 7  # a view of the same bytes, not a copy
    assert view.u8_view[0] == (0 if kind == "bytes" else 7)
