"""What the reader learnt about one capture file, beside its packet table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CaptureInfo:
    """One capture file that went into the report."""

    name: str
    path: str
    packets: int
    link_type: str
    skipped: int = 0
    warnings: tuple[str, ...] = ()
    # Every file of the point in time order (a ring buffer, rotated files); the ``file`` column indexes it.
    files: tuple[str, ...] = ()
