"""Capture points made of several files: ring buffers, rotated files, a directory of captures.

``tcpdump -C/-W`` writes ``pod.pcap0 pod.pcap1 …`` (or ``pod.pcap pod.pcap1 …``
without ``-W``), dumpcap's ring buffer ``pod_00001_20261204183000.pcapng …``;
each set is one vantage point cut into pieces. This module decides which
files make one point (pure functions of names and, for globs and
directories, of what the file system lists) and puts their packet tables
back together in time order, as ``mergecap`` would.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diag.capture.columns import PACKET_COLUMNS
from diag.capture.digest import usable_cpus
from diag.capture.info import CaptureInfo
from diag.capture.location import Location, S3Object, location_of
from diag.capture.names import DUMPCAP_RING, looks_like_capture
from diag.capture.reader import capture_stem
from diag.capture.source import exists_quietly, is_dir_quietly, is_file_quietly
from diag.errors import DiagError

if TYPE_CHECKING:  # naming the files of each point needs no pandas: the command starts reading before loading it
    import pandas as pd

CaptureSpec = str | os.PathLike[str] | S3Object
# One capture point: a file, a directory or glob of files, or a list of them (a ring buffer, rotated files).
PointSpec = CaptureSpec | Sequence[CaptureSpec]

# tcpdump -C numbers the files after the name it was given: pod.pcap, pod.pcap1, … (pod.pcap00 … with -W 10+).
TCPDUMP_ROTATED = re.compile(r"^(?P<base>.+\.(?:pcapng|pcap|cap|dmp))(?P<number>\d+)(?P<gz>\.gz)?$", re.IGNORECASE)
GLOB_CHARACTERS = re.compile(r"[*?\[]")
# Rows from which stacking copies on two threads: below, starting one costs more than it saves.
THREADED_STACK_ROWS = 1 << 18


def rotated_stem(path: Location) -> str | None:
    """The vantage name of a file a rotating capture wrote (``pod.pcap07`` -> ``pod``), None for other names."""
    name = path.name
    match = TCPDUMP_ROTATED.match(name)
    if match:
        return capture_stem(Path(match["base"]))
    match = DUMPCAP_RING.match(name)
    if match:
        return match["base"]
    return None


def point_stem(path: Location) -> str:
    """The default vantage name of a file: its rotation stem when it has one, else its stem."""
    return rotated_stem(path) or capture_stem(path)


def expand_spec(spec: Location, directories: bool = True) -> list[Path] | None:
    """The files a directory or a glob names (sorted), or None when ``spec`` is neither.

    A directory gives its capture files (by name: ``.pcap``, ``.pcapng``, their
    rotated forms, ``.gz``); a path that does not exist but holds ``*``, ``?``
    or ``[`` is a glob. Either one matching nothing is an error.
    """
    if isinstance(spec, S3Object):
        return None  # an object in S3 is always one file (diag.capture.remote lists a fleet's prefixes)
    # The OS may refuse to say (a directory the user cannot search): then it is no directory and
    # no glob, and opening it as a file reports the refusal in one line.
    if directories and is_dir_quietly(spec):
        try:
            files = sorted(child for child in spec.iterdir() if child.is_file() and looks_like_capture(child))
        except OSError as error:
            raise DiagError(f"{spec}: cannot list this directory ({error.strerror or error})") from None
        if not files:
            raise DiagError(f"{spec}: no capture files (.pcap, .pcapng, rotated .pcapN, .gz) in this directory")
        return files
    if not exists_quietly(spec) and GLOB_CHARACTERS.search(str(spec)):
        files = sorted(Path(match) for match in glob.glob(str(spec)) if is_file_quietly(Path(match)))
        if not files:
            raise DiagError(f"{spec}: no file matches this pattern")
        return files
    return None


def files_of(spec: Location) -> Sequence[Location]:
    """The files a directory or a glob names (``expand_spec``), else ``spec`` itself: one file or object."""
    return expand_spec(spec) or [spec]


def check_points(entries: Sequence[tuple[str, Location, bool]]) -> None:
    """Refuse names that would merge files by accident; ``entries`` are (name, path, named explicitly).

    A name may cover several files when it was given explicitly each time
    (``pod=a.pcap pod=b.pcap``, ``pod=DIR``, ``pod='x*'``), or when every file
    has the same rotation stem in one directory (``pod.pcap0 pod.pcap1``).
    Two unrelated files that only share a stem (``a/pod.pcap b/pod.pcap``)
    stay an error.
    """
    by_name: dict[str, list[tuple[Location, bool]]] = {}
    for name, path, named in entries:
        if not name.strip():
            raise DiagError(f"{path}: empty capture name")
        by_name.setdefault(name, []).append((path, named))
    for name, files in by_name.items():
        if len(files) == 1 or all(named for _, named in files):
            continue
        unnamed = [path for path, named in files if not named]
        rotated = any(rotated_stem(path) is not None for path in unnamed)
        if len(unnamed) == len(files) and rotated and len({path.parent for path in unnamed}) == 1:
            continue
        first, second = files[0][0], files[1][0]
        raise DiagError(
            f"two captures are named {name!r} ({first} and {second}); name them with NAME=PATH "
            "(the same NAME given again adds a file to that point)"
        )


def parse_capture_args(captures: Mapping[str, PointSpec] | Sequence[CaptureSpec]) -> list[tuple[str, Location]]:
    """(name, path) pairs from a mapping, or from ``NAME=PATH`` / ``PATH`` items; a name may come back
    several times, once for each file of that capture point.

    Without ``NAME=`` the name is the file's stem (``pod.pcap.gz`` -> ``pod``),
    and rotated files (``pod.pcap0 pod.pcap1``, ``pod_00001_<time>.pcapng``)
    of one directory are one point named ``pod``. The same NAME given again,
    ``NAME=DIR`` and ``NAME=GLOB`` (quoted, so the shell leaves it) add files
    to one point; so does a list in the mapping (``{"pod": [a, b]}``). An
    item whose text before the first '=' names an existing file is taken as
    a path, so odd file names still work. Two unrelated files that would get
    the same name are an error.
    """
    entries: list[tuple[str, Location, bool]] = []  # (name, file, named explicitly)
    if isinstance(captures, Mapping):
        for name, spec in captures.items():
            specs = [spec] if isinstance(spec, str | os.PathLike | S3Object) else list(spec)
            for one in specs:
                entries += [(str(name), file, True) for file in files_of(location_of(one))]
    else:
        for item in captures:
            located = location_of(item)
            if isinstance(located, S3Object):  # an object's key may hold '=' (date=2026-12-04/)
                entries.append((point_stem(located), located, False))
                continue
            text = item if isinstance(item, str) else os.fspath(located)
            name, sep, rest = text.partition("=")
            if isinstance(item, str) and sep and name and rest and not exists_quietly(Path(text)):
                entries += [(name, file, True) for file in files_of(location_of(rest))]
            else:
                files = expand_spec(Path(text), directories=False) or [Path(text)]
                entries += [(point_stem(path), path, False) for path in files]
    if not entries:
        raise DiagError("no capture given")
    check_points(entries)
    return [(name, path) for name, path, _named in entries]


def group_points(pairs: Sequence[tuple[str, Location]]) -> dict[str, list[Location]]:
    """``parse_capture_args``'s pairs as point name -> its files, in the order given (``analyze`` takes it)."""
    points: dict[str, list[Location]] = {}
    for name, path in pairs:
        points.setdefault(name, []).append(path)
    return points


def merge_point(tables: Sequence[pd.DataFrame], infos: Sequence[CaptureInfo]) -> tuple[pd.DataFrame, CaptureInfo]:
    """The packet tables of one point's files as one table in time order, and the point's ``CaptureInfo``.

    Files are put in the order of their first timestamp; when they do not
    overlap in time (a ring buffer) that is the whole merge and each file
    keeps its own record order. Files that overlap are merged packet by
    packet by timestamp (stable: equal times keep file order), as mergecap
    does with files that are each in time order. The ``file`` column is the
    position of the packet's file in ``CaptureInfo.files``; ``index`` stays
    the position within that file.
    """
    if len(tables) == 1:
        info = infos[0]
        return tables[0], point_info(info.name, [info])
    first = [_first_ts(table) for table in tables]
    order = sorted(range(len(tables)), key=lambda position: (first[position] is None, first[position] or 0))
    ordered = [tables[position].assign(file=np.int16(rank)) for rank, position in enumerate(order)]
    merged = stack_tables(ordered)
    if _overlap([tables[position] for position in order]):
        merged = merged.iloc[np.argsort(merged["ts_ns"].to_numpy(), kind="stable")].reset_index(drop=True)
    return merged, point_info(infos[0].name, [infos[position] for position in order])


def concat_packets(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack packet tables (one is returned as it is), keeping categorical columns categorical."""
    return tables[0] if len(tables) == 1 else stack_tables(tables)


def stack_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Packet tables one after the other, categorical columns kept categorical (a plain concat would not).

    The categorical columns are joined apart, by ``union_categoricals``: given
    to ``pd.concat`` with categories that differ between tables, they would be
    turned into strings and back, which took most of the time of stacking
    (11 of 26 s of a 3.2M-packet fleet's analysis). The other columns are
    copied into arrays made for the whole, on two threads for a large table:
    the copy is mostly the kernel setting up the new pages (120,000 page
    faults for four 1M-packet points), which numpy's copies do outside the
    interpreter lock (0.33 s of ``pd.concat`` became 0.15 s).
    """
    import pandas as pd
    from pandas.api.types import union_categoricals

    rows = sum(len(table) for table in tables)
    data: dict[str, object] = {}
    plain: list[str] = []
    for column, (dtype, _meaning) in PACKET_COLUMNS.items():  # in column order: the table's
        if dtype == "category":
            data[column] = union_categoricals([pd.Categorical(table[column]) for table in tables])
        else:
            data[column] = np.empty(rows, dtype=np.result_type(*(table[column].to_numpy().dtype for table in tables)))
            plain.append(column)

    def fill(columns: Sequence[str]) -> None:
        for column in columns:
            target = data[column]
            assert isinstance(target, np.ndarray)
            start = 0
            for table in tables:
                values = table[column].to_numpy()
                target[start : start + len(values)] = values
                start += len(values)

    if rows >= THREADED_STACK_ROWS and usable_cpus() >= 2:
        helper = threading.Thread(target=fill, args=(plain[1::2],), name="diag-stack")
        helper.start()
        try:
            fill(plain[0::2])
        finally:
            helper.join()
    else:
        fill(plain)
    return pd.DataFrame(data, copy=False)


def _first_ts(table: pd.DataFrame) -> int | None:
    stamps = table["ts_ns"].to_numpy()
    stamps = stamps[stamps >= 0]
    return int(stamps.min()) if len(stamps) else None


def _overlap(tables: Sequence[pd.DataFrame]) -> bool:
    """Whether a file holds packets earlier than the last packet of a file before it."""
    latest = None
    for table in tables:
        stamps = table["ts_ns"].to_numpy()
        stamps = stamps[stamps >= 0]
        if not len(stamps):
            continue
        if latest is not None and int(stamps.min()) < latest:
            return True
        latest = max(latest or 0, int(stamps.max()))
    return False


def point_info(name: str, infos: Sequence[CaptureInfo]) -> CaptureInfo:
    """One ``CaptureInfo`` for the point: counts summed, every file listed, warnings naming their file.

    ``path`` then says which files, for the reports that show it: ``ring.pcap3 … ring.pcap2 (5 files)``.
    """
    if len(infos) == 1:
        return replace(infos[0], name=name, files=(infos[0].path,))
    link_types = {info.link_type for info in infos if info.link_type}
    return CaptureInfo(
        name=name,
        path=f"{infos[0].path} … {Path(infos[-1].path).name} ({len(infos)} files)",
        packets=sum(info.packets for info in infos),
        link_type=link_types.pop() if len(link_types) == 1 else ("mixed" if link_types else ""),
        skipped=sum(info.skipped for info in infos),
        warnings=tuple(f"{Path(info.path).name}: {message}" for info in infos for message in info.warnings),
        files=tuple(info.path for info in infos),
    )
