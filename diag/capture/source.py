"""Opening a capture file and feeding its bytes in bounded chunks.

Files are read chunk by chunk, never whole, so a capture larger than memory
still reads and the memory a read needs stays near one chunk plus the packet
table. A plain file is memory-mapped and handed out as windows of the map (no
copy; each window's pages are released once the next is asked for); a
compressed stream, or a file that cannot be mapped, is read into a buffer.
Gzip compression is recognised by its magic bytes, not by the name.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import io
import mmap
import os
import queue
import stat
import sys
import threading
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np

from diag.capture import remote
from diag.capture.bytesview import PADDING, Buffer
from diag.capture.location import Location, S3Object
from diag.capture.records import Diagnostics
from diag.errors import CaptureError

GZIP_MAGIC = b"\x1f\x8b"
# Small enough that a buffer's packet headers stay in the CPU cache while each field is read.
CHUNK_SIZE = 8 * 1024 * 1024
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; Python 3.11 lacks the name


STDIN_NAME = "-"  # the path that means standard input


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise(address, length, advice)`` through ctypes, or None off Linux.

    ``mmap.madvise`` holds the interpreter lock for the whole call, so a helper
    thread mapping pages with it would stop the decoding thread; a ctypes call
    lets it go.
    """
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


MADVISE = _libc_madvise()


def open_capture(path: Location) -> tuple[BinaryIO, bool]:
    """Open ``path`` for reading, decompressing gzip transparently; (stream, was_compressed).

    ``-`` is standard input; an ``S3Object`` (``s3://BUCKET/KEY``) is streamed
    from S3 (``diag.capture.remote``). Pipes, FIFOs, ``/dev/stdin`` and S3 objects cannot
    seek back over the bytes that tell gzip from a capture, so those bytes are
    handed back in front of the rest of the stream instead. Whatever the OS answers
    (no such file, permission denied, an I/O error) becomes one ``CaptureError``
    naming the file.
    """
    if isinstance(path, S3Object):
        raw: BinaryIO = remote.open_object(path)  # type: ignore[assignment]  # a raw stream, read sequentially
    elif str(path) == STDIN_NAME:
        raw = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    else:
        try:
            raw = path.open("rb")
        except OSError as error:
            raise CaptureError(f"{path}: {_os_problem(error, 'cannot open')}") from None
    try:
        magic = _read_start(raw, len(GZIP_MAGIC))
        stream = _rewound(raw, magic)
    except OSError as error:
        raw.close()
        raise CaptureError(f"{path}: {_os_problem(error, 'cannot read')}") from None
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=stream, mode="rb"), True  # type: ignore[return-value]
    return stream, False


def _os_problem(error: OSError, doing: str) -> str:
    """The OS's answer in the words a user expects, without the errno number."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a capture file"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"{doing}: {error.strerror or error}"


def _read_start(raw: BinaryIO, size: int) -> bytes:
    """The first ``size`` bytes (fewer only at the end): a pipe may hand them over one by one."""
    parts = []
    while size > 0:
        data = raw.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def _rewound(raw: BinaryIO, start: bytes) -> BinaryIO:
    """``raw`` as if ``start`` had never been read from it."""
    if raw.seekable():
        raw.seek(-len(start), os.SEEK_CUR)
        return raw
    return io.BufferedReader(_Prefixed(raw, start), buffer_size=1 << 16)


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with some bytes already read from it put back in front."""

    def __init__(self, stream: BinaryIO, prefix: bytes) -> None:
        super().__init__()
        self.stream = stream
        self._prefix = prefix

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    def readinto(self, target: Any) -> int | None:
        view = memoryview(target).cast("B")
        if self._prefix:
            count = min(len(view), len(self._prefix))
            view[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        count_read: int | None = self.stream.readinto(view)  # type: ignore[attr-defined]
        return count_read  # None only from a non-blocking stream with nothing to read yet, as for any raw stream

    def close(self) -> None:
        self.stream.close()
        super().close()


class Feed:
    """Hands out successive buffers of the file, each starting with what the last one left over."""

    def __init__(self, stream: BinaryIO, diagnostics: Diagnostics, chunk_size: int | None = None) -> None:
        self.stream = stream
        self.diagnostics = diagnostics
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.eof = False
        self.bytes_read = 0  # offset in the (decompressed) file of the end of what was read
        # Small files get small buffers: size chunks to what is left of a plain file, and
        # let them grow geometrically for compressed streams, whose size is unknown.
        self.size = file_size(stream)
        self.next_chunk = min(self.chunk_size, 1 << 20)
        self._buffer: bytearray | None = None
        self._map = self._map_file()
        self._can_populate = sys.platform == "linux"
        self._mapped_from = 0  # start of the window handed out last, to release it later
        # The next window's pages are mapped and its bytes pulled into the CPU cache by a helper
        # thread while this one is decoded (see _prepare_ahead); ready up to _ahead_until.
        self._bytes: np.ndarray | None = None  # the map as an array, made on first use (it pins the map)
        self._helper: _Helper | None = None  # the thread that prepares windows ahead, started with the first
        self._ahead = False  # a window is being prepared, or was, since the reading thread last asked
        self._ahead_until = 0

    def _map_file(self) -> mmap.mmap | None:
        if not self.size:
            return None
        try:
            return mmap.mmap(self.stream.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None  # a pipe or special file: read it instead

    def read_exact(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the file)."""
        parts = []
        wanted = size
        while wanted > 0 and not self.eof:
            data = self._read(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
        result = b"".join(parts)
        self.bytes_read += len(result)
        return result

    def _read(self, size: int) -> bytes:
        try:
            data = self.stream.read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            self.eof = True
            self.diagnostics.warn(f"the file cannot be read past byte {self.bytes_read} ({error}); the rest is skipped")
            return b""
        except OSError as error:
            raise self._os_failure(error) from None
        if not data:
            self.eof = True
        return data

    def _os_failure(self, error: OSError) -> CaptureError:
        """The OS failed a read (EIO, a vanished network share): damaged content is warned about and
        skipped, but this is no property of the capture, so the read stops here, in one line."""
        return CaptureError(f"{self.diagnostics.path}: cannot read past byte {self.bytes_read}: "
                            f"{error.strerror or error}")

    def _shrunk(self) -> bool:
        """Whether the file is now shorter than when it was mapped (unknown counts as no)."""
        try:
            now = os.fstat(self.stream.fileno()).st_size
        except (OSError, ValueError):
            return False
        return self.size is not None and now < self.size

    def _check_not_shrunk(self) -> None:
        """Stop in one line when the mapped file was cut shorter since it was opened.

        Touching a mapped page past a file's new end kills the process with
        SIGBUS, and a capture can shrink under a reader (a ring buffer that
        tcpdump -C/-W rewrites in place). Checked before each window; a cut
        made while one window is being decoded can still get past this.
        """
        try:
            now = os.fstat(self.stream.fileno()).st_size
        except (OSError, ValueError):
            return
        if self.size is not None and now < self.size:
            raise CaptureError(f"{self.diagnostics.path}: the file shrank from {self.size} to {now} bytes while "
                               "it was read (is something rewriting it?)")

    def _next_window(self, carried: int, minimum: int) -> tuple[Buffer, int]:
        assert self._map is not None and self.size is not None
        self._check_not_shrunk()
        start = self.bytes_read - carried  # the carried bytes are still in the file, just before
        stop = min(self.size, self.bytes_read + max(self.chunk_size, minimum))
        prepared = self._wait_ahead() >= min(stop + PADDING, self.size)
        released_from = self._mapped_from
        self._mapped_from = start
        if not prepared:
            self._release(released_from, start)
            self._populate(start, stop + PADDING)
            released_from = start
        self.bytes_read = stop
        self.eof = stop >= self.size
        if not self.eof:
            self._prepare_ahead(released_from, start, stop, min(self.size, stop + self.chunk_size) + PADDING)
        elif self._helper is not None:
            self._helper.stop()  # nothing is left to prepare
        if stop + PADDING <= self.size:
            window = memoryview(self._map)[start : stop + PADDING]
            if not prepared:
                _warm_cache(window)
            return window, stop - start
        # The file's last bytes: copied, so zero padding can follow them.
        tail = bytearray(stop - start + PADDING)
        tail[: stop - start] = self._map[start:stop]
        return tail, stop - start

    def _prepare_ahead(self, release_from: int, release_to: int, start: int, stop: int) -> None:
        """On a helper thread: drop the pages of ``[release_from, release_to)``, decoded already, then map
        ``[start, stop)`` and stream it into the CPU cache, while this thread decodes the window before it.

        Both run outside the interpreter lock (a ctypes call, a numpy reduction), so on a machine with a
        second core the reading thread no longer waits for the kernel's page set-up: about a tenth of a
        second per million packets.
        """
        assert self._map is not None and self.size is not None
        if self._bytes is None:
            self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        data, page = self._bytes, mmap.PAGESIZE
        stop = min(stop, self.size)  # never touch a page past the file's end
        populate = self._can_populate and MADVISE is not None

        self._ahead_until = 0  # until the helper says otherwise, nothing is prepared

        def prepare() -> None:
            release_start, release_stop = release_from - release_from % page, release_to - release_to % page
            if MADVISE is not None and release_stop > release_start:
                MADVISE(data[release_start:].ctypes.data, release_stop - release_start, mmap.MADV_DONTNEED)
            page_start = start - start % page
            if (
                populate
                and MADVISE is not None
                and MADVISE(data[page_start:].ctypes.data, stop - page_start, MADV_POPULATE_READ) != 0
            ):
                # Refused (EFAULT: the file shrank under us). Touching those pages here
                # would kill the process with SIGBUS; the reading thread maps the window
                # itself, notices the cut and stops in one line.
                return
            # Populated pages are dropped again by a cut made since, so look once more right
            # before touching them (a cut in between can still get past, as the docstring of
            # _check_not_shrunk says).
            if self._shrunk():
                return
            data[start:stop:64].max(initial=0)  # as _warm_cache; faults the pages in if populating is unsupported
            self._ahead_until = stop

        if self._helper is None:
            self._helper = _Helper()
            weakref.finalize(self, self._helper.stop)  # a read that ends early lets its helper go too
        self._helper.run(prepare)
        self._ahead = True

    def _wait_ahead(self) -> int:
        """Wait for what the helper was last given; how far the file is prepared (0: nothing)."""
        if not self._ahead or self._helper is None:
            return 0
        self._helper.wait()
        self._ahead = False
        return self._ahead_until

    def _populate(self, start: int, stop: int) -> None:
        """Map a window's pages in one system call rather than one page fault per page (Linux 5.14+)."""
        assert self._map is not None and self.size is not None
        if not self._can_populate:
            return
        page_start = start - start % mmap.PAGESIZE
        try:
            self._map.madvise(MADV_POPULATE_READ, page_start, min(stop, self.size) - page_start)
        except OSError as error:
            if error.errno == errno.EFAULT:  # pages past the file's end: it shrank just now
                self._check_not_shrunk()
            self._can_populate = False  # an older kernel: page faults it is
        except ValueError:
            self._can_populate = False

    def _release(self, start: int, stop: int) -> None:
        """Drop the pages of windows already decoded from this process's memory (not from the page cache)."""
        assert self._map is not None
        page_start = start - start % mmap.PAGESIZE
        page_stop = stop - stop % mmap.PAGESIZE
        if page_stop > page_start and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, page_start, page_stop - page_start)

    def _read_into(self, target: memoryview) -> int:
        try:
            if isinstance(self.stream, gzip.GzipFile):
                # read1 hands over what one step decompressed, so a stream that breaks
                # off later still yields everything before the break.
                data = self.stream.read1(len(target))
                target[: len(data)] = data
                got = len(data)
            else:
                got = self.stream.readinto(target)  # type: ignore[attr-defined]
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            self.eof = True
            self.diagnostics.warn(f"the file cannot be read past byte {self.bytes_read} ({error}); the rest is skipped")
            return 0
        except OSError as error:
            raise self._os_failure(error) from None
        if not got:
            self.eof = True
        return int(got or 0)

    def next_buffer(self, carry: bytes | memoryview, minimum: int = 0) -> tuple[Buffer, int]:
        """A new buffer: ``carry`` followed by up to one chunk (at least ``minimum`` bytes) of the file.

        Returns (buffer, length); the buffer holds at least ``PADDING`` bytes after
        ``length`` (the file's next bytes, or zeros at its end).
        """
        if self._map is not None:
            return self._next_window(len(carry), minimum)
        if self.size is not None:
            want = min(self.chunk_size, max(self.size - self.bytes_read, 0) + 1)
        else:
            want = self.next_chunk
            self.next_chunk = min(self.chunk_size, 2 * self.next_chunk)
        want = max(want, minimum)
        # The previous buffer is reused when big enough: its packets have been
        # decoded into arrays of their own by the time the next one is asked for.
        needed = len(carry) + want + PADDING
        buffer = self._buffer
        if buffer is None or len(buffer) < needed:
            buffer = self._buffer = bytearray(needed)
        buffer[: len(carry)] = carry
        length = len(carry)
        view = memoryview(buffer)
        try:
            while length < len(carry) + want and not self.eof:
                got = self._read_into(view[length : len(carry) + want])
                if not got:
                    break
                length += got
                self.bytes_read += got
        finally:
            view.release()
        buffer[length : length + PADDING] = bytes(PADDING)
        return buffer, length


class _Helper:
    """One thread that runs the read-ahead of one file, a window at a time.

    A thread started for every window cost its creation and, before the reading thread could go on, a
    hand-over of the interpreter lock to the new thread (``Thread.start`` waits until it runs): up to a
    switch interval (5 ms) each while another thread held the lock, as the main thread does while it
    imports pandas during a background read. Handing a job to a waiting thread costs neither.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._done = threading.Event()
        # A daemon: what it does is only ever ahead of the reading, never needed to finish it.
        threading.Thread(target=_run_jobs, args=(self._jobs, self._done), name="diag-read-ahead", daemon=True).start()

    def run(self, job: Callable[[], None]) -> None:
        """Have ``job`` run on the helper thread (after the one given before, which ``wait`` waits for)."""
        self._done.clear()
        self._jobs.put(job)

    def wait(self) -> None:
        self._done.wait()

    def stop(self) -> None:
        """Let the thread end once its current job is done; calling it again does no harm."""
        self._jobs.put(None)


def _run_jobs(jobs: queue.SimpleQueue[Callable[[], None] | None], done: threading.Event) -> None:
    # A function of its own, holding only the queue and the event: the file's Feed can be freed (and its
    # finalizer stop this thread) while the thread waits for a job.
    while (job := jobs.get()) is not None:
        try:
            job()
        except Exception:  # the window is then prepared by the reading thread, which sees any real fault
            pass
        finally:
            del job
            done.set()


def _warm_cache(window: memoryview) -> None:
    """Read one byte of every 64-byte cache line of a mapped window, in order.

    The record walk then finds each header in the CPU cache instead of waiting
    for memory at every record (a stream the hardware prefetches well, where
    the walk's jumps from record to record are not); the later gathers of
    header fields and payload words profit too while the window stays cached.
    """
    np.frombuffer(window, dtype=np.uint8)[::64].max(initial=0)


def file_size(stream: BinaryIO) -> int | None:
    """Size of a plain file on disk; None for a decompressing stream, a pipe, a FIFO or a device.

    Only a regular file read from its start can be sized and mapped: the
    size of anything else says nothing about what will come through it.
    """
    if isinstance(stream, gzip.GzipFile):
        return None
    raw = stream.raw if isinstance(stream, io.BufferedReader) else None
    if isinstance(raw, _Prefixed) and isinstance(raw.stream, remote.S3Body):
        return raw.stream.size  # an object in S3 (open_capture's), never mapped: its size serves the estimates
    try:
        status = os.fstat(stream.fileno())
        if not stat.S_ISREG(status.st_mode) or stream.tell() != 0:
            return None
    except (OSError, AttributeError, ValueError):
        return None
    return status.st_size


def exists_quietly(path: Location) -> TypeGuard[Path]:
    """Whether ``path`` names something here, False where the OS will not say (an unsearchable directory)
    and for an object in S3."""
    if isinstance(path, S3Object):
        return False
    try:
        path.stat()
    except (OSError, ValueError):
        return False
    return True


def is_dir_quietly(path: Location) -> TypeGuard[Path]:
    """Whether ``path`` is a directory here, False where the OS will not say (and for an object in S3)."""
    if isinstance(path, S3Object):
        return False
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except (OSError, ValueError):
        return False


def is_file_quietly(path: Location) -> TypeGuard[Path]:
    """Whether ``path`` is a regular file here, False where the OS will not say (and for an object in S3)."""
    if isinstance(path, S3Object):
        return False
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except (OSError, ValueError):
        return False


def capture_size(path: Location) -> int:
    """Bytes in a capture file, for progress and memory estimates; 0 for a stream or anything unreadable.

    An object in S3 is sized by a HEAD request.

    Never raises: asking the size of a file in a directory one cannot
    search, or of one that has just disappeared, must not end in a
    traceback; opening it later reports the problem in one line.
    """
    if isinstance(path, S3Object):
        return remote.object_size(path)
    if str(path) == STDIN_NAME:
        return 0
    try:
        status = path.stat()
    except (OSError, ValueError):
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0
