"""What a command says on stderr about the parts of its captures the reader skipped.

``analyze`` and ``flows`` read the same captures and must say the same: how much was read and
skipped, then the first few problems themselves (where the file was cut, which record was damaged),
since a count alone does not tell a reader what they lost.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diag.capture.info import CaptureInfo

# The problems shown per capture; a damaged file can have thousands, the rest are counted.
WARNINGS_PER_CAPTURE = 3


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def warning_lines(info: CaptureInfo) -> list[str]:
    """The lines (without the ``diag: warning:`` prefix) said about one capture; none when it read whole.

    A capture of no packets at all (a header alone: tcpdump stopped before anything matched) is analysed,
    and its report reads healthy; said here so that nobody takes that for a healthy network.
    """
    if not info.warnings and not info.skipped:
        return [] if info.packets else [f"{info.path}: the capture holds no packets (nothing after its header)"]
    lines = [
        f"{info.path}: read {_count(info.packets, 'packet')}, skipped {_count(info.skipped, 'record')} "
        f"({_count(len(info.warnings), 'problem')})"
    ]
    lines += [f"{info.path}: {message}" for message in info.warnings[:WARNINGS_PER_CAPTURE]]
    if len(info.warnings) > WARNINGS_PER_CAPTURE:
        lines.append(f"{info.path}: ... and {len(info.warnings) - WARNINGS_PER_CAPTURE} more")
    return lines


def print_capture_warnings(infos: Iterable[CaptureInfo]) -> None:
    for info in infos:
        for line in warning_lines(info):
            print(f"diag: warning: {line}", file=sys.stderr)
