"""A gzip-compressed capture stream, decompressed as its bytes arrive, for ``diag watch``.

``gzip.GzipFile`` reads ahead until it has a whole buffer, which on a live
pipe would hold packets back until kilobytes more had come. Here each read
takes what the pipe holds (one ``read`` of the unbuffered descriptor) and
hands on whatever that decompresses to, so packets flow as soon as the
compressor flushed them. Members written one after the other (``gzip`` run
again on a rotated file, ``pigz``) are read in turn. The descriptor is the
pipe's, so waiting on it (``select``, ``FIONREAD``) still works.

How live it can be is up to the writer: ``gzip`` itself flushes in blocks
of tens of kilobytes, so a quiet stream arrives late; ``tcpdump -w - | gzip``
suits a busy link, not a trickle.
"""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate data
_READ_SIZE = 1 << 16


class PeekedStream(io.RawIOBase):
    """A raw stream whose first bytes were read already to look at them: they come first."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        super().__init__()
        self.raw = raw
        self._head = head

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            size = min(len(target), len(self._head))
            target[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        return self.raw.readinto(target)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self.raw.close()
        super().close()


class GunzipStream(PeekedStream):
    """The decompressed bytes of a gzip stream (its first bytes peeked already), as they arrive."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        super().__init__(raw, head)
        self._inflate = zlib.decompressobj(_GZIP_WBITS)
        self._in_member = False  # the current member has begun and not ended
        self._ended = False

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._ended:
            pending = self._inflate.unconsumed_tail or self.readinto_raw()
            if not pending:
                self._ended = True
                if self._in_member:
                    raise zlib.error("the gzip stream ends in the middle of a member")
                return 0
            self._in_member = True
            data = self._inflate.decompress(pending, len(target))
            if self._inflate.eof:  # a member ended: what follows is the next one's
                self._head = self._inflate.unused_data + self._head
                self._inflate = zlib.decompressobj(_GZIP_WBITS)
                self._in_member = False
            if data:
                target[: len(data)] = data
                return len(data)
        return 0

    def readinto_raw(self) -> bytes:
        """What the pipe holds (waiting only while it is empty), the peeked bytes first."""
        buffer = bytearray(_READ_SIZE)
        got = PeekedStream.readinto(self, buffer)
        return bytes(buffer[: got or 0])


def decompressing(raw: BinaryIO) -> BinaryIO:
    """``raw``, decompressed if it starts as a gzip stream does (reads its first two bytes to tell)."""
    head = b""
    while len(head) < len(GZIP_MAGIC):
        more = raw.read(len(GZIP_MAGIC) - len(head))
        if not more:
            break
        head += more
    if head == GZIP_MAGIC:
        return GunzipStream(raw, head)  # type: ignore[return-value]
    return PeekedStream(raw, head)  # type: ignore[return-value]
