"""Captures in Amazon S3 (or an S3-compatible store): ``s3://BUCKET/KEY`` read as a stream.

An object is read front to back from the body of one GET, the way standard
input is read: never downloaded to disk, never held whole in memory. A read
that breaks off (a reset connection, a stalled socket) goes on from the byte
it reached with a ranged GET of the same version of the object (its ETag),
a few times at most. A prefix ``s3://BUCKET/PREFIX/`` is listed as a fleet
directory is: ``PREFIX/POINT/<capture objects>``.

Credentials, region and endpoint come from boto3's standard chain: the
``AWS_*`` environment variables (``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_S3`` included), ``AWS_PROFILE`` and the shared config and
credentials files, SSO, an instance or task role. Connecting is bounded (a
short connect timeout, two attempts), so an unreachable endpoint fails in
seconds, in one line.

Paths travel through the analysis as ``pathlib.Path``, which folds the
URL's ``//`` into one ``/`` (``s3:/bucket/key``); both spellings are
recognised here, and ``shown`` gives the URL back for messages and reports.
Nothing here imports boto3 until an object is actually opened or listed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.capture.names import looks_like_capture
from diag.errors import CaptureError, DiagError

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError

SCHEME = "s3://"
_FOLDED = "s3:/"  # what pathlib makes of the scheme
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
ATTEMPTS = 2  # per request, botocore's own retries included
RESUMES = 3  # times a broken-off body is picked up again from where it stopped
FIRST_BYTES_KEPT = 64  # an object's first bytes, kept to read again after a seek back (see S3Body)

_NO_SUCH_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
_ACCESS_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)


def is_s3(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ``s3://`` URL (also as pathlib folds it)."""
    return os.fspath(path).startswith(_FOLDED)


def split(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(bucket, key) of an ``s3://`` URL; the key may be empty (a whole bucket)."""
    text = os.fspath(path)
    rest = text[len(SCHEME) :] if text.startswith(SCHEME) else text[len(_FOLDED) :]
    bucket, _, key = rest.partition("/")
    return bucket, key


def shown(path: str | os.PathLike[str]) -> str:
    """The path as the user wrote it: ``s3://bucket/key`` for an object, the path itself otherwise."""
    if not is_s3(path):
        return os.fspath(path)
    bucket, key = split(path)
    return f"{SCHEME}{bucket}/{key}" if key else f"{SCHEME}{bucket}/"


def check_url(text: str) -> None:
    """Refuse an object URL that a path cannot carry unchanged: no bucket or key, or ``//``, ``.``, ``..``
    segments in the key (pathlib would fold them, and another object would be read)."""
    bucket, key = split(text)
    if not bucket or not key or key.endswith("/"):
        raise DiagError(f"{text}: an S3 capture is s3://BUCKET/KEY, one object (a prefix of many: diag analyze fleet)")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise DiagError(f"{text}: S3 keys with empty, '.' or '..' segments are not supported")


def path_of(text: str) -> Path:
    """``Path(text)``; an ``s3://`` URL is first checked to be one a path carries unchanged (``check_url``)."""
    if text.startswith(SCHEME):
        check_url(text)
    return Path(text)


@functools.cache
def _client() -> Any:
    """One S3 client per process (thread-safe), from the standard chain, with bounded connecting and retries."""
    import boto3
    import botocore.config

    config = botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
        user_agent_extra="diag",
    )
    return boto3.session.Session().client("s3", config=config)


def _problem(error: Exception, url: str, action: str) -> str:
    """botocore's error as one line naming the object (or prefix) and what is wrong."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        message = " ".join(str(details.get("Message", "")).split())
        bucket, _key = split(url)
        if code == "NoSuchBucket":
            return f"{url}: no such bucket {bucket!r}"
        if code in _NO_SUCH_KEY:
            return f"{url}: no such object"
        if code in _ACCESS_DENIED:
            return f"{url}: access denied (the credentials lack {action})"
        if code in _BAD_CREDENTIALS:
            return f"{url}: AWS rejected the credentials ({code})"
        if code == "PreconditionFailed":
            return f"{url}: the object was replaced while it was read"
        return f"{url}: S3 error {code}: {message}".rstrip(": ")
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return (
            f"{url}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run where an instance role is available)"
        )
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
        return f"{url}: cannot reach the S3 endpoint ({error})"
    return f"{url}: S3 client error: {error}"


def _boto_errors() -> tuple[type[BotoCoreError], type[ClientError]]:
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError


def open_object(path: str | os.PathLike[str]) -> S3Body:
    """A raw stream of the object's bytes; any failure to start is one ``CaptureError``."""
    bucket, key = split(path)
    body = S3Body(shown(path), bucket, key)
    body.start()
    return body


@functools.lru_cache(maxsize=4096)
def object_size(path: str | os.PathLike[str]) -> int:
    """The object's size in bytes (a HEAD request, once per object and process), 0 when S3 will not say:
    it only sizes progress and memory estimates, which ask several times."""
    bucket, key = split(path)
    try:
        return int(_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except (*_boto_errors(), KeyError, ValueError):
        return 0


class S3Body(io.RawIOBase):
    """An object's bytes from one streaming GET, resumed by a ranged GET after a broken-off read.

    Failures while reading are raised as ``OSError``, as a failing disk's
    would be: the reader then stops in one line naming the byte it reached.
    ``size`` is the object's, so a read can project how many packets it will
    hold (and a memory budget refuse it early), as for a file on disk.
    """

    def __init__(self, url: str, bucket: str, key: str) -> None:
        super().__init__()
        self.url, self.bucket, self.key = url, bucket, key
        self.size = 0
        self.etag = ""
        self._offset = 0  # where the next read starts
        self._body: Any = None
        self._body_at = 0  # where the body's next bytes are in the object
        # The object's first bytes, kept: the reader looks at them to tell gzip from a capture and seeks
        # back, which must not cost a second request (S3 bills per request; an emulator resends it all).
        self._first = b""

    def start(self) -> None:
        """The first GET: what a missing object, bucket or permission answers is raised here as ``CaptureError``."""
        try:
            response = _client().get_object(Bucket=self.bucket, Key=self.key)
        except _boto_errors() as error:
            raise CaptureError(_problem(error, self.url, "s3:GetObject")) from None
        self.size = int(response.get("ContentLength", 0))
        self.etag = str(response.get("ETag", ""))
        self._body = response["Body"]

    def _resume(self) -> None:
        """A ranged GET from the byte reached, of the same version of the object."""
        extra = {"IfMatch": self.etag} if self.etag else {}
        response = _client().get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self._body_at}-", **extra)
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to another byte: back over the first bytes already read at no cost, anywhere else with a
        ranged GET on the next read."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._offset, io.SEEK_END: self.size}[whence]
        target = max(0, base + offset)
        if target <= self._body_at <= len(self._first):
            self._offset = target  # the bytes up to the body's position are all in _first
        elif target != self._offset:
            self._drop_body()
            self._offset = self._body_at = target
        return target

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        if not len(view) or self._offset >= self.size:
            return 0
        if self._offset < self._body_at:  # sought back over the first bytes: hand them out again
            again = self._first[self._offset : self._body_at][: len(view)]
            view[: len(again)] = again
            self._offset += len(again)
            return len(again)
        from urllib3.exceptions import HTTPError

        failures = 0
        while True:
            try:
                if self._body is None:
                    self._resume()
                got = int(self._body.readinto(view))
                if got == 0:  # the body ended before the object's size: a cut connection
                    raise ConnectionError(f"the body ended at byte {self._body_at} of {self.size}")
                if self._body_at == len(self._first) < FIRST_BYTES_KEPT:
                    self._first += bytes(view[: min(got, FIRST_BYTES_KEPT - self._body_at)])
                self._body_at += got
                self._offset = self._body_at
                return got
            except (*_boto_errors(), HTTPError, OSError) as error:
                self._drop_body()
                failures += 1
                # An answer of S3's (the object replaced, access withdrawn) will not change on asking again.
                if failures > RESUMES or isinstance(error, _boto_errors()[1]):
                    raise OSError(_problem(error, self.url, "s3:GetObject").removeprefix(f"{self.url}: ")) from None

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail again; dropped either way
                body.close()

    def close(self) -> None:
        self._drop_body()
        super().close()


def list_points(path: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """A fleet prefix ``s3://BUCKET/PREFIX/``: point name -> its capture objects, as ``diag.fleet`` lists a directory.

    ``PREFIX/POINT/`` is a point when it holds capture objects (by name, as a
    local point's files; deeper prefixes are not looked into); capture
    objects directly under ``PREFIX/`` belong to no point and are refused.
    """
    bucket, prefix = split(path)
    if not bucket:
        raise DiagError(f"{shown(path)}: a fleet in S3 is s3://BUCKET/PREFIX/ (its points PREFIX/POINT/*.pcap*)")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    url = f"{SCHEME}{bucket}/{prefix}"
    folders, loose = _list(url, bucket, prefix)
    captures = [key for key in loose if looks_like_capture(Path(key))]
    if captures:
        raise DiagError(
            f"{SCHEME}{bucket}/{captures[0]}: a capture directly in the fleet prefix; put each point's files in "
            f"{url}POINT/"
        )
    points: dict[str, list[Path]] = {}
    for folder in sorted(folders):
        name = folder[len(prefix) :].rstrip("/")
        if not name or name.startswith("."):
            continue
        _deeper, keys = _list(url, bucket, folder)
        files = sorted(Path(f"{SCHEME}{bucket}/{key}") for key in keys if looks_like_capture(Path(key)))
        if files:
            points[name] = files
    if not points:
        raise DiagError(f"{url}: no capture points (PREFIX/POINT/ holding .pcap/.pcapng objects)")
    return points


def _list(url: str, bucket: str, prefix: str) -> tuple[list[str], list[str]]:
    """(sub-prefixes, object keys) directly under ``prefix``; listing failures as one ``DiagError``."""
    folders: list[str] = []
    keys: list[str] = []
    try:
        pages = _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            folders += [entry["Prefix"] for entry in page.get("CommonPrefixes", [])]
            keys += [entry["Key"] for entry in page.get("Contents", []) if not entry["Key"].endswith("/")]
    except _boto_errors() as error:
        raise DiagError(_problem(error, url, "s3:ListBucket")) from None
    return folders, keys
