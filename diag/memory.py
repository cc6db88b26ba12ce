"""The memory budget of one analysis: ``--max-memory``, its default, and the check made while reading.

Reading is where an input can make memory grow without bound (a gzip bomb of
tiny records, a sparse file of empty ones), and where the cost of what follows
is set: every packet read becomes a row of the packet table and of the tables
built from it. So the budget is checked against the packets a read would
hold, projected from what was read so far, before each batch is kept; an
input that would not fit stops with one line naming the file and the budget
instead of meeting the kernel's OOM killer (or a MemoryError) later. ``analyze``
and ``flows`` then read the files in passes (``diag.passes``), which hold the
connections' state rather than the packets.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from diag.errors import CaptureError, DiagError

# Peak resident memory of a whole 'analyze pcap' per packet beyond the interpreter's own
# (about 230 MB with numpy, pandas and numba loaded): measured on bench/data/busy.pcap
# (970k packets, 85k flows, thousands of resets), 720 MB in all, 514 B a packet.
# Rounded up, so the analysis after the read fits too. Captures of one packet per
# flow cost about 460 B a flow more (1M flows: 1.1 GB); this per-packet check does
# not see flows. Over the budget, 'analyze' reads in passes (diag.passes).
BYTES_PER_PACKET = 576
# The budget when --max-memory is not given: this share of the memory available now
# (or of the cgroup's limit, when that is lower), leaving the rest to everything else.
DEFAULT_SHARE = 0.5
FALLBACK_BUDGET = 2 << 30  # neither /proc/meminfo nor a cgroup limit could be read

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[kmgt]i?)?b?", re.IGNORECASE)


class MemoryBudgetError(CaptureError):
    """Reading a capture would take more memory than the budget allows."""


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``300000000`` -> bytes.

    K, M, G and T alone are binary (as ``ulimit``, ``free`` and the kernel's own
    limits count them: ``2G`` is 2 GiB); ``KB``/``MB``/``GB`` are decimal,
    ``KiB``/``MiB``/``GiB`` binary. Raises ``ValueError`` on anything else.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (examples: 512M, 2G, 1.5GiB)")
    unit = (match["unit"] or "").lower()
    spelled_b = text.strip().lower().endswith("b") and not text.strip().lower().endswith("ib")
    if unit and not unit.endswith("i") and not spelled_b:
        unit += "i"
    value = float(match["number"]) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return int(value)


def format_size(size: int) -> str:
    """Bytes as a short human figure: ``1.5 GiB``, ``512 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


def available_memory(meminfo: str, cgroup_limit: str | None) -> int | None:
    """The lower of /proc/meminfo's MemAvailable and the cgroup's limit (texts as read), in bytes."""
    candidates = []
    found = re.search(r"^MemAvailable:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if found:
        candidates.append(int(found[1]) * 1024)
    if cgroup_limit is not None and cgroup_limit.strip().isdigit():
        candidates.append(int(cgroup_limit.strip()))
    return min(candidates) if candidates else None


def default_budget() -> int:
    """``DEFAULT_SHARE`` of the memory this process may use, as the machine and its cgroup say."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        meminfo = ""
    available = available_memory(meminfo, _cgroup_limit())
    return int(available * DEFAULT_SHARE) if available else FALLBACK_BUDGET


def cgroup_limit_files(proc_cgroup: str, root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Where this process's cgroup memory limit may be, from /proc/self/cgroup's text, in its lines' order:
    cgroup v2's ``memory.max`` (mounted at the root, or at ``unified/`` beside v1 controllers), and v1's
    ``memory.limit_in_bytes`` under ``memory/`` (a host that mounts the memory controller as v1), at the
    cgroup's path and then at the mount's top: a container that shares the host's cgroup names sees its
    host path here but has its own cgroup mounted at ``memory/`` itself."""
    files = []
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if not relative.startswith("/"):
            continue
        below = relative.lstrip("/")
        if number == "0" and controllers == "":
            files += [root / below / "memory.max", root / "unified" / below / "memory.max"]
        elif "memory" in controllers.split(","):
            files.append(root / "memory" / below / "memory.limit_in_bytes")
            if below:
                files.append(root / "memory" / "memory.limit_in_bytes")
    return files


def _cgroup_limit() -> str | None:
    """The first limit file of ``cgroup_limit_files`` that holds a number (v1's "no limit" is a huge one)."""
    try:
        files = cgroup_limit_files(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    for file in files:
        try:
            text = file.read_text()
        except OSError:
            continue
        if text.strip().isdigit():
            return text
    return None


def budget_option(text: str | None) -> int:
    """The ``--max-memory`` value in bytes (its default when not given); one-line error when it is not a size."""
    if text is None:
        return default_budget()
    try:
        return parse_size(text)
    except ValueError as error:
        raise DiagError(f"--max-memory: {error}") from None


@dataclass
class MemoryBudget:
    """How many bytes the packets of this process may take, how many packets earlier reads kept, and how
    many the reads going on now (files read side by side, ``diag.analysis.read_captures``) project to hold.

    Each read checks its own projection on top of what is kept and of every other read's latest
    projection, so reading files at the same time never lets them hold more together than reading
    them one by one would have allowed.
    """

    limit: int | None = None  # None: no budget (library use, unless a command sets one)
    kept_packets: int = 0
    reading: dict[object, int] = field(default_factory=dict)  # read -> packets it projects to hold
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def check(self, path: str, packets: int, read: object = None) -> None:
        """Raise ``MemoryBudgetError`` if ``packets`` more (a read's projection) would not fit.

        ``read`` (any object standing for one read) records the projection, for the checks of reads
        running at the same time; ``keep`` or ``forget`` with the same object ends it.
        """
        if self.limit is None:
            return
        with self._lock:
            others = sum(projected for other, projected in self.reading.items() if other is not read)
            needed = (self.kept_packets + others + packets) * BYTES_PER_PACKET
            if needed > self.limit:
                held = f"{packets:,} packets" if not others else f"{packets:,} packets (and {others:,} of other reads)"
                raise MemoryBudgetError(
                    f"{path}: about {held} would need about {format_size(needed)} of memory, over the "
                    f"budget of {format_size(self.limit)}; stopped reading (raise it with --max-memory)"
                )
            if read is not None:
                self.reading[read] = packets

    def keep(self, packets: int, read: object = None) -> None:
        """A read ended with ``packets`` kept: they count from now on, its projection no more."""
        with self._lock:
            self.reading.pop(read, None)
            self.kept_packets += packets

    def forget(self, read: object) -> None:
        """A read ended without keeping anything (it failed): its projection no longer counts."""
        with self._lock:
            self.reading.pop(read, None)


_current = MemoryBudget()


def current_budget() -> MemoryBudget:
    """The budget readers in this process check against (none until a command sets one)."""
    return _current


def set_budget(limit: int | None) -> MemoryBudget:
    """A fresh budget of ``limit`` bytes for this process's reads from now on; returned for callers that log it."""
    global _current
    _current = MemoryBudget(limit)
    return _current
