"""Reading a capture stream as it is written: packet tables handed out batch by batch, as bytes arrive.

``read_capture`` fills a whole chunk before it decodes anything, which is
right for a file but would hold a live stream's packets back until megabytes
have come through a pipe. Here each read takes whatever the pipe holds (one
``read`` system call on the unbuffered descriptor), the pcap or pcapng walker
decodes the complete records in it, and the rest waits for the next read. The
tables have exactly the columns of ``read_capture``'s, and ``index`` counts
records from the start of the stream, so a packet keeps the number it would
have in the file the stream was saved to.

Gzip is not read here: a compressed stream is flushed in blocks, which would
defeat watching it live.
"""

from __future__ import annotations

import array
import fcntl
import io
import os
import select
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from diag.capture.bytesview import PADDING, Buffer
from diag.capture.reader import TableBuilder, format_batches
from diag.capture.records import Diagnostics, RecordBatch
from diag.capture.source import GZIP_MAGIC, STDIN_NAME, Feed
from diag.errors import CaptureError

# The most one buffer takes from the pipe: big enough for a burst, small enough to hand it on quickly.
LIVE_READ_SIZE = 4 << 20
# How long a buffer keeps gathering what else arrives after its first bytes.
GATHER_S = 0.02


class LiveFeed(Feed):
    """A ``Feed`` whose buffers hold whatever the stream had ready, never waiting for a full chunk."""

    def __init__(self, stream: BinaryIO, diagnostics: Diagnostics,
                 on_idle: Callable[[bool], None] | None = None) -> None:
        super().__init__(stream, diagnostics, LIVE_READ_SIZE)
        # Told True just before a read that will wait (everything read so far has been handed
        # out), False once bytes came: a watcher then knows this stream has nothing pending.
        self.on_idle = on_idle
        if self._map is not None:  # a regular file is read like a pipe too: it may still be growing
            self._map.close()
            self._map = None

    def next_buffer(self, carry: bytes | memoryview, minimum: int = 0) -> tuple[Buffer, int]:
        want = max(self.chunk_size, minimum)
        buffer = bytearray(len(carry) + want + PADDING)
        buffer[: len(carry)] = carry
        length = len(carry)
        view = memoryview(buffer)
        gather_until: float | None = None
        try:
            # The first read returns what the pipe holds (blocking only while it is empty).
            # Then, for GATHER_S at most, whatever else arrives joins the same buffer: a
            # busy stream comes in batches of thousands of packets rather than a handful,
            # which is what the tables downstream are fast with; a quiet one waits no longer.
            while not self.eof and length < len(carry) + want:
                if gather_until is None:
                    if self.on_idle is not None and not pending_bytes(self.stream):
                        self.on_idle(True)
                elif not _readable(self.stream, gather_until - time.monotonic()):
                    break
                got = self._read_into(view[length : len(carry) + want])
                if self.on_idle is not None:
                    self.on_idle(False)
                length += got
                self.bytes_read += got
                if gather_until is None and length - len(carry) >= minimum:
                    gather_until = time.monotonic() + GATHER_S
        finally:
            view.release()
        return buffer, length


def _readable(stream: BinaryIO, timeout: float) -> bool:
    """Whether the stream has bytes (or its end) to read within ``timeout`` seconds."""
    if timeout <= 0:
        return pending_bytes(stream) != 0
    try:
        ready, _, _ = select.select([stream.fileno()], [], [], timeout)
    except (OSError, ValueError, AttributeError):
        return True  # no descriptor (an in-memory stream): reading will not wait
    return bool(ready)


def pending_bytes(stream: BinaryIO) -> int:
    """Bytes waiting in a pipe, FIFO or socket (FIONREAD); -1 when the stream cannot say."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(stream.fileno(), termios.FIONREAD, count, True)
    except (OSError, ValueError, AttributeError):
        return -1
    return count[0]


def open_stream(path: Path) -> BinaryIO:
    """An unbuffered reader of ``path`` (``-``: standard input), so a read returns what is there."""
    try:
        if str(path) == STDIN_NAME:
            return io.FileIO(os.dup(sys.stdin.fileno()), "rb")
        return io.FileIO(path, "rb")
    except OSError as error:
        problem = "no such file" if isinstance(error, FileNotFoundError) else (error.strerror or str(error))
        raise CaptureError(f"{path}: {problem}") from None


def stream_tables(stream: BinaryIO, name: str, path: str, diagnostics: Diagnostics | None = None,
                  on_idle: Callable[[bool], None] | None = None) -> Iterator[pd.DataFrame]:
    """Packet tables of the pcap or pcapng stream, one per batch of records, as they arrive.

    Raises ``CaptureError`` when the stream is not a capture; damaged parts
    are recorded in ``diagnostics`` and skipped, as ``read_capture`` does.
    ``on_idle`` is called as ``LiveFeed`` says; a table is yielded before the
    stream is read again, so "idle" means every packet read has been handed out.
    """
    diagnostics = diagnostics or Diagnostics(path)
    feed = LiveFeed(stream, diagnostics, on_idle)
    for batch in _batches(feed, path, diagnostics):
        builder = TableBuilder(name, diagnostics)
        builder.add(batch)
        table = builder.finish()
        if len(table):
            yield table


def _batches(feed: LiveFeed, path: str, diagnostics: Diagnostics) -> Iterator[RecordBatch]:
    magic = feed.read_exact(4)
    if not magic:
        raise CaptureError(f"{path}: the stream ended before any capture header")
    if magic[:2] == GZIP_MAGIC:
        raise CaptureError(f"{path}: a gzip-compressed stream cannot be watched live (decompress it first)")
    yield from format_batches(feed, magic, Path(path), diagnostics, "the stream")
