"""Progress of a long analysis on stderr: one line per stage, shown only on a terminal and only when slow.

The analysis calls a ``ProgressHook`` (``diag.stages``) as each stage
starts; this module is the command line's hook, drawn with ``rich``. Nothing
is drawn during the first ``PROGRESS_AFTER_S`` seconds, so a quick analysis
prints exactly what it always did, and the lines are erased when the analysis
ends, so stderr keeps only warnings and errors.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from diag.stages import ProgressHook

PROGRESS_AFTER_S = 2.0
# Seconds before progress appears, for a user who wants it sooner (or never, with a large value).
AFTER_ENV = "DIAG_PROGRESS_AFTER"


def _delay() -> float:
    text = os.environ.get(AFTER_ENV, "")
    try:
        return max(0.0, float(text)) if text else PROGRESS_AFTER_S
    except ValueError:
        return PROGRESS_AFTER_S


class _StageLines:
    """A transient rich Progress with one row per stage, started by a timer once the analysis is slow."""

    def __init__(self, progress: Progress, after: float) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._current: TaskID | None = None
        self._closed = self._shown = False
        self._timer = threading.Timer(after, self._show)
        self._timer.daemon = True
        self._timer.start()

    def _show(self) -> None:
        with self._lock:
            if not self._closed:
                self._progress.start()
                self._shown = True

    def __call__(self, stage: str, detail: str) -> AbstractContextManager[object]:
        from diag.stages import STAGES

        number = f"{STAGES.index(stage) + 1}/{len(STAGES)} " if stage in STAGES else ""
        with self._lock:
            if self._current is not None:
                self._progress.update(self._current, completed=1)
                self._progress.stop_task(self._current)
            self._current = self._progress.add_task(f"{number}{stage}: {detail}", total=1)
        return nullcontext()

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            if self._shown:
                self._progress.stop()


@contextmanager
def stage_progress(quiet: bool) -> Iterator[ProgressHook | None]:
    """The hook to give ``analyze``: None with ``quiet`` or when stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    lines = _StageLines(progress, _delay())
    try:
        yield lines
    finally:
        lines.close()
