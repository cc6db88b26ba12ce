"""Where an analysis in passes writes what it spills (``diag.passes``, ``diag.spilled``, ``diag.spilledfindings``).

Spilling is there to hold less memory, and a tmpfs keeps its files in memory:
inside a container they even count against the same memory limit as the
process that wrote them. ``/tmp`` is a tmpfs on many systems (Fedora, Arch,
Debian from 13 on), so a 20 GB capture's gigabytes of spilled keys and flow
rows would land in the very memory the budget protects. So when the
temporary directory is the system's default ``/tmp`` and a tmpfs, they go to
``/var/tmp`` instead, which is kept on disk, unless that is in memory too or
cannot be written. A temporary directory anybody chose (``TMPDIR``, ``TEMP``
or ``TMP``, or ``tempfile.tempdir`` set to another place) is used as it is.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from diag.interrupts import held

# File systems whose files live in memory.
IN_MEMORY = frozenset({"tmpfs", "ramfs"})
SYSTEM_TEMPORARY = "/tmp"
ON_DISK_TEMPORARY = "/var/tmp"
CHOSEN_BY = ("TMPDIR", "TEMP", "TMP")  # where tempfile looks first for the user's choice
MOUNTS = Path("/proc/self/mounts")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem_of(path: str, mounts: str) -> str | None:
    """The type of the file system ``path`` (absolute, resolved) is on, from the text of ``/proc/self/mounts``.

    The longest mount point holding the path wins; of equal ones the last listed (a later mount hides an
    earlier one at the same place). None when no line holds it.
    """
    best, kind = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _OCTAL_ESCAPE.sub(lambda escape: chr(int(escape[1], 8)), fields[1])  # "\040" is a space
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), fields[2]
    return kind


def choose_spill_directory(
    environ: Mapping[str, str], temporary: str, fallback: str, mounts: str, fallback_usable: bool
) -> str | None:
    """``fallback`` when the temporary directory ``temporary`` is the system's default, nobody chose it (see
    ``CHOSEN_BY``) and it is in memory, while ``fallback`` is usable and on disk; None otherwise (``tempfile``'s
    own choice)."""
    chosen = any(name in environ for name in CHOSEN_BY) or temporary != SYSTEM_TEMPORARY
    if chosen or filesystem_of(temporary, mounts) not in IN_MEMORY:
        return None
    if not fallback_usable or filesystem_of(fallback, mounts) in IN_MEMORY:
        return None
    return fallback


def spill_directory() -> str | None:
    """The directory for spilled files (None: ``tempfile``'s default), see the module's docstring."""
    try:
        mounts = MOUNTS.read_text()
    except OSError:  # not Linux, or no /proc: nothing tells a tmpfs apart
        return None
    fallback = os.path.realpath(ON_DISK_TEMPORARY)
    usable = os.path.isdir(fallback) and os.access(fallback, os.W_OK | os.X_OK)
    return choose_spill_directory(os.environ, os.path.realpath(tempfile.gettempdir()), fallback, mounts, usable)


def spill_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A new temporary directory for spilled files, removed when closed or collected (at the latest at exit).

    Made with Ctrl-C and ``kill`` held (``diag.interrupts``): neither it nor ``tempfile``'s probe of the
    temporary directory, made on its first use, can be left behind by a signal arriving meanwhile.
    """
    with held():
        return tempfile.TemporaryDirectory(prefix=prefix, dir=spill_directory())


def spill_file(prefix: str) -> IO[bytes]:
    """A new temporary file for spilled bytes, without a name where the system allows (gone when closed),
    made as ``spill_dir`` makes a directory."""
    with held():
        return tempfile.TemporaryFile(prefix=prefix, dir=spill_directory())
