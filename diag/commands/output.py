"""Writing the files a command produces (``--json``, ``--plot``) safely.

Three promises, whatever is already at the target path:

- checked before any work: a target that cannot or must not be written (a
  symbolic link, a directory, an existing file without ``--force``, a
  directory that does not exist, a plot suffix no plotter writes) is refused
  before the captures are read, not after minutes of analysis;
- never through a symbolic link: a link at the target is refused, and the
  file is published by renaming or linking a new file into place, which
  replaces a directory entry and never writes into whatever a link points to;
- atomic: the content goes to a temporary file in the target's directory
  first, so a reader sees the old file or the whole new one, never half, and
  a failed run leaves no partial output.

A character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe)
is a stream, not a file: nothing there can be replaced, so it is written
straight into, links to it included, with no ``--force`` needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from diag.errors import DiagError

PLOT_SUFFIXES = (".png", ".svg")


def is_stream(path: Path) -> bool:
    """A character device or a FIFO, reached directly or through links."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def check_output(target: str | os.PathLike[str], force: bool, option: str) -> Path:
    """``target`` as a Path, once it is known that it may be written; else a one-line DiagError."""
    path = Path(target)
    if is_stream(path):
        return path
    try:
        status: os.stat_result | None = path.lstat()
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise DiagError(f"{option} {path}: {error.strerror or error}") from None
    if status is not None:
        if stat.S_ISLNK(status.st_mode):
            raise DiagError(f"{option} {path}: is a symbolic link; diag does not write through links")
        if stat.S_ISDIR(status.st_mode):
            raise DiagError(f"{option} {path}: is a directory")
        if not force:
            raise DiagError(f"{option} {path}: already exists (--force replaces it)")
    parent = path.parent
    if not parent.is_dir():
        raise DiagError(f"{option} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiagError(f"{option} {path}: cannot write in {parent} (permission denied)")
    return path


def check_plot(target: str | os.PathLike[str], force: bool, option: str = "--plot") -> Path:
    path = check_output(target, force, option)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise DiagError(f"{option} {path}: a ladder diagram is written as .png or .svg, "
                        f"not {path.suffix or 'a name without suffix'}")
    return path


@contextlib.contextmanager
def atomic_path(target: Path, force: bool, option: str) -> Iterator[Path]:
    """A temporary path beside ``target`` (same suffix) to write; put in place when the block succeeds."""
    check_output(target, force, option)
    if is_stream(target):
        yield target  # a device or pipe: nothing to replace, the content goes straight in
        return
    try:
        descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    except OSError as error:
        raise DiagError(f"{option} {target}: cannot write: {error.strerror or error}") from None
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        _publish(temporary, target, force, option)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(target: Path, text: str, force: bool, option: str) -> None:
    """``text`` (UTF-8) as the whole of ``target``, which appears only once it is complete."""
    write_atomically_with(target, lambda sink: sink.write(text.encode("utf-8")), force, option)


def write_atomically_with(target: Path, write: Callable[[BinaryIO], object], force: bool, option: str) -> None:
    """What ``write`` writes to a binary file, piece by piece if it likes (a document too large to hold as
    one string), as the whole of ``target``, which appears only once it is complete."""
    with atomic_path(target, force, option) as temporary:
        try:
            with open(temporary, "wb") as sink:
                write(sink)
                sink.flush()
                if temporary != target:  # a device or pipe has nothing to sync (and /dev/null refuses)
                    os.fsync(sink.fileno())
        except OSError as error:
            raise DiagError(f"{option} {target}: cannot write: {error.strerror or error}") from None


def _publish(temporary: Path, target: Path, force: bool, option: str) -> None:
    """Move the finished file into place: a new directory entry, never a write through a link."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would make reports private by surprise
    if force:
        check_output(target, force, option)  # a link planted meanwhile is refused, not replaced
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)  # fails if anything (a file, a link) appeared there meanwhile
    except FileExistsError:
        raise DiagError(f"{option} {target}: already exists (--force replaces it)") from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise DiagError(f"{option} {target}: cannot write: {error.strerror or error}") from None
        # A file system without hard links: rename, after one more look.
        check_output(target, force, option)
        os.replace(temporary, target)
