"""Which file names are captures, and how a fleet's files make its capture points.

Below both the local listing (``diag.fleet``, ``points``) and the S3 one (``remote``), so the rules are
written once and neither listing imports the other for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

# dumpcap / Wireshark ring buffers: NAME_<5-digit file number>_<YYYYmmddHHMMSS>.pcapng
DUMPCAP_RING = re.compile(r"^(?P<base>.+)_\d{5}_\d{14}(?P<suffix>\.(?:pcapng|pcap)(?:\.gz)?)?$", re.IGNORECASE)
# pod.pcap, pod.pcapng.gz, and tcpdump -C's rotations of them (pod.pcap1, pod.pcap07)
CAPTURE_NAME = re.compile(r"\.(?:pcapng|pcap|cap|dmp)\d*(?:\.gz)?$", re.IGNORECASE)

File = TypeVar("File")  # where a listed file is: a Path, an S3Object


def is_capture_name(name: str) -> bool:
    """A capture by its file name (hidden files never: editors' and sync tools' leftovers)."""
    return not name.startswith(".") and bool(CAPTURE_NAME.search(name) or DUMPCAP_RING.match(name))


def looks_like_capture(path: Path) -> bool:
    """A capture by its name (see ``is_capture_name``)."""
    return is_capture_name(path.name)


def fleet_layout(files: Iterable[tuple[str, str, File]]) -> tuple[list[File], dict[str, list[File]]]:
    """A fleet's files sorted into capture points: (captures lying in the fleet itself, point -> its captures).

    ``files`` are ``(folder, name, file)`` for each file directly in the fleet
    (folder ``""``) or directly in one of its folders; deeper files are not
    the caller's to give. A folder is a point when it holds captures (by
    name); hidden folders are never points. Points come in name order, the
    captures of each (and the loose ones) sorted by name, so a directory and
    an S3 prefix laid out alike give the same points in the same order.
    """
    loose: list[tuple[str, File]] = []
    points: dict[str, list[tuple[str, File]]] = {}
    for folder, name, file in files:
        if not is_capture_name(name) or folder.startswith("."):
            continue
        if folder:
            points.setdefault(folder, []).append((name, file))
        else:
            loose.append((name, file))
    return _by_name(loose), {point: _by_name(points[point]) for point in sorted(points)}


def _by_name(named: list[tuple[str, File]]) -> list[File]:
    return [file for _name, file in sorted(named, key=lambda pair: pair[0])]
