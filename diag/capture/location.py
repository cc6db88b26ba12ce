"""Where a capture is: a path on this machine, or an object in S3 (``S3Object``).

An ``s3://BUCKET/KEY`` URL is not a path: ``pathlib`` would fold its ``//``
into one ``/`` (and a key's ``a//b`` with it). So a URL is turned into an
``S3Object`` where the user's input is taken in (``location_of``) and travels
as one to the reader; ``str()`` of either kind of location is what a message
or a report shows. ``S3Object`` answers ``name``, ``suffix`` and ``parent`` as
a path does, so naming a capture point after its file works the same for both.
Nothing here talks to S3 (``diag.capture.remote`` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from diag.errors import DiagError

SCHEME = "s3://"
_FOLDED = "s3:/"  # what pathlib makes of the scheme: a Path given for a URL


@dataclass(frozen=True, order=True)
class S3Object:
    """One object, ``s3://bucket/key``; its ``str()`` is the URL as the user wrote it."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The key's last segment, as a path's name (``a/pod.pcap.gz`` -> ``pod.pcap.gz``)."""
        return self.key.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        """The name's last suffix, as a path's (``.gz``)."""
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> str:
        """The URL of the prefix the object is in (``s3://bucket/a/``): files of one folder share it."""
        folder = self.key.rpartition("/")[0]
        return f"{SCHEME}{self.bucket}/{folder}/" if folder else f"{SCHEME}{self.bucket}/"


# A capture file: on this machine (``-`` is standard input) or in S3.
Location = Path | S3Object


def is_url(text: str) -> bool:
    """Whether ``text`` is an ``s3://`` URL."""
    return text.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://`` URL; the key may be empty (a whole bucket) or a prefix."""
    bucket, _, key = url[len(SCHEME) :].partition("/")
    return bucket, key


def parse_url(url: str) -> S3Object:
    """The object an ``s3://BUCKET/KEY`` URL names; ``DiagError`` for a bucket or prefix, and for a key with
    empty, ``.`` or ``..`` segments (which tools that treat keys as paths would read as another object)."""
    bucket, key = split_url(url)
    if not bucket or not key or key.endswith("/"):
        raise DiagError(f"{url}: an S3 capture is s3://BUCKET/KEY, one object (a prefix of many: diag analyze fleet)")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise DiagError(f"{url}: S3 keys with empty, '.' or '..' segments are not supported")
    return S3Object(bucket, key)


def location_of(spec: str | os.PathLike[str] | S3Object) -> Location:
    """A capture as given (a path, an ``s3://`` URL or an ``S3Object``) as a ``Location``.

    A ``Path`` made from a URL (``Path("s3://b/k")``, which pathlib folds to
    ``s3:/b/k``) is taken for that object, as ``diag.analyze`` always took it.
    """
    if isinstance(spec, S3Object):
        return spec
    if isinstance(spec, str):
        return parse_url(spec) if is_url(spec) else Path(spec)
    text = os.fspath(spec)
    if text.startswith(_FOLDED):
        return parse_url(SCHEME + text[len(_FOLDED) :])
    return Path(spec)
