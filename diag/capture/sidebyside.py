"""Reading several capture files at once: side by side on the CPUs, and in the background.

The compiled parts of a read (the record walk, the decoding, the payload
digest) let go of the interpreter lock, so two files read at once take little
more than the time of one on two CPUs, and a read started on a thread of its
own goes on while the main thread is still importing pandas and the stages
after reading (about half a second of a short analysis). This module imports
no pandas itself, so ``diag analyze`` can start reading before loading it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from diag.capture.digest import digest_alone, usable_cpus
from diag.capture.info import CaptureInfo
from diag.capture.location import Location, S3Object
from diag.capture.reader import ReadStopped, read_capture
from diag.capture.source import capture_size, is_file_quietly

if TYPE_CHECKING:
    import pandas as pd

# diag.stages.ProgressHook: hook(stage, detail) -> a context held while the stage runs.
Progress = Callable[[str, str], AbstractContextManager[object]]
FileRead = tuple["pd.DataFrame", CaptureInfo]


def read_files(
    pairs: Sequence[tuple[str, Location]], progress: Progress | None = None, stop: threading.Event | None = None
) -> list[FileRead]:
    """The packet table and ``CaptureInfo`` of every (point name, file) pair, in order, read on as many
    threads as there are CPUs (and files).

    The problems a read finds are recorded in its ``CaptureInfo`` only, never raised as Python warnings
    (whose filters are one set for the whole process). The memory budget counts the packets every read
    going on projects to hold (``diag.memory``), so reading side by side stays within ``--max-memory`` as
    reading one by one does. When one read fails the others stop at their next batch, and the error
    raised is that of the first file (in the order given) that failed for a reason of its own. Once
    ``stop`` is set from outside, every read stops the same way.
    """
    stop = stop or threading.Event()
    workers = min(len(pairs), usable_cpus())
    # Pipes, FIFOs and standard input are read one after another, in the order given, each opened only
    # when its turn comes (what feeds them may be waiting for an earlier one to be read).
    if workers < 2 or not all(is_file_quietly(path) or isinstance(path, S3Object) for _, path in pairs):
        return [_read_one(name, path, progress, stop) for name, path in pairs]

    def read(name: str, path: Location) -> FileRead:
        try:
            with digest_alone():  # the other CPUs read the other files
                return _read_one(name, path, progress, stop)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="diag-read") as pool:
        futures = [pool.submit(read, name, path) for name, path in pairs]
        try:
            wait(futures)
        finally:
            stop.set()  # an interrupt here: the reads give up rather than run to their end first
    failures = [future.exception() for future in futures]
    first = next((error for error in failures if error is not None and not isinstance(error, ReadStopped)), None)
    if first is not None:
        raise first
    return [future.result() for future in futures]


def _read_one(name: str, path: Location, progress: Progress | None, stop: threading.Event) -> FileRead:
    with progress("read", _read_detail(name, path)) if progress else nullcontext():
        table = read_capture(path, name=name, stop=stop, warn=False)
    return table, info_of(table, name, path)


def _read_detail(name: str, path: Location) -> str:
    """What the progress line says of a read. Only asked when progress is shown: an S3 object's size is
    a request of its own."""
    size = capture_size(path)
    return f"{name} ({path}, {size / 1e6:.{1 if size < 10e6 else 0}f} MB)" if size else f"{name} ({path})"


def info_of(table: pd.DataFrame, name: str, path: Location) -> CaptureInfo:
    """The ``CaptureInfo`` the reader left on ``table`` (a bare one if it left none)."""
    info = table.attrs.get("capture_info")
    if not isinstance(info, CaptureInfo):
        info = CaptureInfo(name=name, path=str(path), packets=len(table), link_type="")
    return info


class BackgroundRead:
    """``read_files(pairs)`` started now on a thread of its own; ``result`` waits for it, ``cancel`` drops it.

    ``diag analyze`` starts it as soon as its options are checked, then imports the rest of the
    analysis while the files are read. The memory budget in force when it starts is the one the reads
    check (``diag.memory.set_budget`` first).
    """

    def __init__(self, pairs: Sequence[tuple[str, Location]], progress: Progress | None = None) -> None:
        self.pairs = list(pairs)
        self._stop = threading.Event()
        self._files: list[FileRead] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(progress,), name="diag-read-background")
        self._thread.start()

    def _run(self, progress: Progress | None) -> None:
        try:
            self._files = read_files(self.pairs, progress, self._stop)
        except BaseException as error:  # handed to the thread that asks for the result
            self._error = error

    def result(self) -> list[FileRead]:
        """The files read, in order; what the read raised is raised here."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._files is None:
            raise ReadStopped("the background read was cancelled")
        return self._files

    def cancel(self) -> None:
        """Stop the reads at their next batch and wait for them (nothing is raised)."""
        self._stop.set()
        self._thread.join()
        self._files = None
        self._error = None
