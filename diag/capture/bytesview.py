"""Vectorised reads of fixed-width fields at many byte offsets of one buffer.

Packet headers sit at arbitrary, unaligned offsets. A numpy array with a
stride of one byte and a multi-byte dtype turns "the big-endian 32-bit value
starting at byte k" into element ``k`` of that array, so one fancy-indexing
operation reads the same field of a million packets at once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
WordLanes = tuple[npt.NDArray[np.uint64], ...]
# A read buffer: a bytearray, or a window (memoryview) of a memory-mapped file.
Buffer = bytearray | memoryview | bytes

# Zero bytes kept after the real data so that a read past the end of a
# short, damaged packet, or the last 64-bit word of a payload digest, never
# leaves the buffer.
PADDING = 256


def read_only(array: np.ndarray) -> np.ndarray:
    """``array`` as a read-only view, as a window of a mapped file already is.

    numba compiles a loop once per distinct argument type, and whether an array
    may be written is part of its type: a mapped window and a bytearray (the
    file's last bytes, a compressed stream, a pipe) would each get a compiled
    version of every loop, compiled, cached and loaded apart. Given alike, one
    version serves every buffer.
    """
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


class ByteView:
    """Field reads over ``data[:length]``; ``data`` must hold ``PADDING`` more bytes."""

    def __init__(self, data: Buffer, length: int) -> None:
        if len(data) < length + PADDING:
            raise ValueError("buffer lacks the trailing padding")
        self.data = data
        self.length = length
        self.u8_view = read_only(np.frombuffer(data, dtype=np.uint8))
        self._views: dict[int, np.ndarray] = {}
        self._last = len(data) - 8  # highest offset at which an 8-byte read still fits

    def _records(self, width: int) -> np.ndarray:
        """The buffer as overlapping ``width``-byte records, one starting at every byte.

        Gathering such void records is a plain copy per row, which numpy does
        several times faster than gathering an unaligned multi-byte dtype.
        """
        records = self._views.get(width)
        if records is None:
            count = len(self.data) - width + 1
            records = np.ndarray(shape=(count,), dtype=np.dtype((np.void, width)), buffer=self.data, strides=(1,))
            self._views[width] = records
        return records

    def _field(self, offsets: IntArray, dtype: str) -> IntArray:
        records = self._records(np.dtype(dtype).itemsize)
        return records[self._clip(offsets)].view(dtype).astype(np.int64)

    def _clip(self, offsets: IntArray) -> IntArray:
        # A safety net: callers mask out-of-range packets first, but a damaged
        # header must never turn into an IndexError. (Negative offsets, which
        # callers never produce, would only wrap to the zero padding.)
        return np.minimum(offsets, self._last)

    def u8(self, offsets: IntArray) -> IntArray:
        return self.u8_view[self._clip(offsets)].astype(np.int64)

    def be16(self, offsets: IntArray) -> IntArray:
        return self._field(offsets, ">u2")

    def le16(self, offsets: IntArray) -> IntArray:
        return self._field(offsets, "<u2")

    def be32(self, offsets: IntArray) -> IntArray:
        return self._field(offsets, ">u4")

    def le32(self, offsets: IntArray) -> IntArray:
        return self._field(offsets, "<u4")

    def u32(self, offsets: IntArray, big_endian: bool) -> IntArray:
        return self.be32(offsets) if big_endian else self.le32(offsets)

    def u16(self, offsets: IntArray, big_endian: bool) -> IntArray:
        return self.be16(offsets) if big_endian else self.le16(offsets)

    def word_lanes(self) -> WordLanes:
        """The buffer as little-endian 64-bit words, in 8 lanes: ``lanes[k][j]`` starts at byte ``k + 8 * j``.

        Any 8 bytes of the buffer are one element, whatever their alignment:
        the word at byte offset ``o`` is ``lanes[o % 8][o // 8]``. No copy;
        each lane is a plain contiguous array, which compiled loops read at
        full speed (a single strided (8, n) view read several times slower).
        """
        size = len(self.data)
        lanes = (np.frombuffer(self.data, dtype="<u8", offset=k, count=(size - k) // 8) for k in range(8))
        return tuple(read_only(lane) for lane in lanes)

    def headers(self, offsets: IntArray, width: int) -> HeaderBlock:
        """The ``width`` bytes at each offset, copied once, for reading several fields of one header.

        One gather per header instead of one per field: a gather costs the same
        whatever its width, while reading a column of the small copy is a cheap
        strided pass. Callers pass offsets whose ``width`` bytes lie in the data.
        """
        records = self._records(width)
        rows = records[np.minimum(offsets, len(records) - 1)]
        return HeaderBlock(rows.view(np.uint8).reshape(len(offsets), width))

    def block(self, offsets: IntArray, width: int) -> npt.NDArray[np.uint8]:
        """``width`` consecutive bytes at each offset, as an (n, width) array."""
        index = self._clip(offsets)[:, None] + np.arange(width, dtype=np.int64)[None, :]
        rows: npt.NDArray[np.uint8] = self.u8_view[np.minimum(index, len(self.data) - 1)]
        return rows


class HeaderBlock:
    """Fields at fixed positions of equal-width headers copied into one (rows, width) array."""

    def __init__(self, rows: npt.NDArray[np.uint8]) -> None:
        self.rows = rows

    def _column(self, position: int, dtype: str) -> IntArray:
        size = np.dtype(dtype).itemsize
        if position % size == 0 and self.rows.shape[1] % size == 0:
            return self.rows.view(dtype)[:, position // size].astype(np.int64)
        # An unaligned field: assembled from its bytes, most significant first.
        order = range(position, position + size)
        value = np.zeros(len(self.rows), dtype=np.int64)
        for byte in order if dtype[0] == ">" else reversed(order):
            value = (value << 8) | self.rows[:, byte]
        return value

    def u8(self, position: int) -> IntArray:
        return self.rows[:, position].astype(np.int64)

    def be16(self, position: int) -> IntArray:
        return self._column(position, ">u2")

    def be32(self, position: int) -> IntArray:
        return self._column(position, ">u4")

    def u32(self, position: int, big_endian: bool) -> IntArray:
        return self._column(position, ">u4" if big_endian else "<u4")
