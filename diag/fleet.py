"""A fleet of capture points: one directory per point, or a manifest naming each point's files.

When an incident hits a cluster, every node captures at once, each into a
ring of files. ``diag analyze fleet`` takes the lot in one of two shapes:

- a directory ``FLEET/POINT/…`` whose subdirectories are the points, each
  holding that point's capture files (``.pcap``, ``.pcapng``, rotated
  ``.pcapN``, ``.gz``; see ``diag.capture.points``), or an S3 prefix
  ``s3://BUCKET/FLEET/POINT/…`` laid out the same way (``diag.capture.remote``);
- a TOML manifest, for files that are not laid out that way::

      [points.node-a]
      files = ["/captures/node-a/ring*.pcap"]
      [points.pod]
      files = ["pod/eth0.pcapng", "pod/eth1.pcapng"]

  Each entry of ``files`` is a file, a directory or a glob, or an
  ``s3://BUCKET/KEY`` object; relative entries are relative to the
  manifest's own directory.

Both give ``{point: [files]}``, points in name order and files sorted, so
the analysis (and its order of reading) is the same whoever lists the
directory; ``diag.capture.points.merge_point`` then puts each point's files
in time order.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from diag.capture import remote
from diag.capture.location import Location, is_url, location_of
from diag.capture.names import fleet_layout
from diag.capture.points import files_of
from diag.capture.source import is_dir_quietly, is_file_quietly
from diag.errors import DiagError

MANIFEST_SUFFIX = ".toml"


def fleet_points(source: str | os.PathLike[str]) -> dict[str, list[Location]]:
    """The points of a fleet directory, manifest or S3 prefix, as point name -> its files (see the module's
    text)."""
    if isinstance(source, str) and is_url(source):
        objects: dict[str, list[Location]] = {point: [*files] for point, files in remote.list_points(source).items()}
        return objects
    source = Path(source)
    if is_file_quietly(source) and source.suffix.lower() == MANIFEST_SUFFIX:
        return manifest_points(source)
    if is_dir_quietly(source):
        return directory_points(source)
    if is_file_quietly(source):
        raise DiagError(f"{source}: not a fleet directory or a .toml manifest (one capture: diag analyze pcap)")
    raise DiagError(f"{source}: no such fleet directory or manifest")


def directory_points(root: Path) -> dict[str, list[Location]]:
    """``root/POINT/<capture files>``: every subdirectory with capture files is a point
    (``diag.capture.names.fleet_layout``'s rules, the same as an S3 prefix's).

    Subdirectories without captures (notes, logs) are passed over; capture
    files lying in ``root`` itself belong to no point and are refused rather
    than silently left out.
    """
    files: list[tuple[str, str, Location]] = []
    for child in _listing(root):
        if is_file_quietly(child):
            files.append(("", child.name, child))
        elif is_dir_quietly(child) and not child.name.startswith("."):
            files += [(child.name, entry.name, entry) for entry in _listing(child) if is_file_quietly(entry)]
    loose, points = fleet_layout(files)
    if loose:
        raise DiagError(
            f"{loose[0]}: a capture directly in the fleet directory; put each point's files in {root}/POINT/"
        )
    if not points:
        raise DiagError(f"{root}: no capture points (subdirectories holding .pcap/.pcapng files)")
    return points


def _listing(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError as error:
        raise DiagError(f"{directory}: cannot list this directory ({error.strerror or error})") from None


def manifest_points(manifest: Path) -> dict[str, list[Location]]:
    """The points a TOML manifest names (``[points.NAME] files = [...]``)."""
    try:
        document = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except OSError as error:
        raise DiagError(f"{manifest}: cannot read ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DiagError(f"{manifest}: not a valid TOML manifest ({error})") from None
    return parse_manifest(document, manifest.parent, str(manifest))


def parse_manifest(document: dict[str, object], base: Path, where: str) -> dict[str, list[Location]]:
    """A parsed manifest's points; ``base`` anchors relative entries and ``where`` names the manifest in errors."""
    unknown = sorted(set(document) - {"points"})
    if unknown:
        raise DiagError(f"{where}: unknown top-level key {unknown[0]!r} (a manifest has [points.NAME] tables)")
    table = document.get("points")
    if not isinstance(table, dict) or not table:
        raise DiagError(f"{where}: no [points.NAME] tables")
    points: dict[str, list[Location]] = {}
    for name in sorted(table):
        entry = table[name]
        if not isinstance(entry, dict):
            raise DiagError(f"{where}: points.{name} must be a table with files = [...]")
        extra = sorted(set(entry) - {"files"})
        if extra:
            raise DiagError(f"{where}: points.{name}: unknown key {extra[0]!r} (only files)")
        files = entry.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(item, str) and item for item in files):
            raise DiagError(f"{where}: points.{name}.files must be a non-empty list of paths")
        paths: list[Location] = []
        for item in files:
            spec = location_of(item) if is_url(item) or Path(item).is_absolute() else base / item
            paths += files_of(spec)
        points[name] = paths
    return points
