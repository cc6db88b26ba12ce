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

An object travels through the analysis as a ``diag.capture.location.S3Object``
(never as a path, which would fold the URL's ``//``); its ``str()`` is the URL.
Nothing here imports boto3 until an object is actually opened or listed.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import TYPE_CHECKING, Any

from diag.capture.location import SCHEME, S3Object, split_url
from diag.capture.names import fleet_layout
from diag.errors import CaptureError, DiagError

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
ATTEMPTS = 2  # per request, botocore's own retries included
RESUMES = 3  # times a broken-off body is picked up again from where it stopped

_NO_SUCH_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
_ACCESS_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)


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
        bucket, _key = split_url(url)
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


def open_object(target: S3Object) -> S3Body:
    """A raw stream of the object's bytes; any failure to start is one ``CaptureError``."""
    body = S3Body(target)
    body.start()
    return body


@functools.lru_cache(maxsize=4096)
def object_size(target: S3Object) -> int:
    """The object's size in bytes (a HEAD request, once per object and process), 0 when S3 will not say:
    it only sizes progress and memory estimates, which ask several times."""
    try:
        return int(_client().head_object(Bucket=target.bucket, Key=target.key)["ContentLength"])
    except (*_boto_errors(), KeyError, ValueError):
        return 0


class S3Body(io.RawIOBase):
    """An object's bytes from one streaming GET, resumed by a ranged GET after a broken-off read.

    Read front to back, as a pipe is: it does not seek (the reader puts the
    bytes it looks at to tell gzip from a capture back in front itself, see
    ``diag.capture.source``), so nothing of the object is kept here.
    Failures while reading are raised as ``OSError``, as a failing disk's
    would be: the reader then stops in one line naming the byte it reached.
    ``size`` is the object's, so a read can project how many packets it will
    hold (and a memory budget refuse it early), as for a file on disk.
    """

    def __init__(self, target: S3Object) -> None:
        super().__init__()
        self.object = target
        self.url = str(target)
        self.size = 0
        self.etag = ""
        self._body: Any = None
        self._position = 0  # the next byte of the object to read

    def start(self) -> None:
        """The first GET: what a missing object, bucket or permission answers is raised here as ``CaptureError``."""
        try:
            response = _client().get_object(Bucket=self.object.bucket, Key=self.object.key)
        except _boto_errors() as error:
            raise CaptureError(_problem(error, self.url, "s3:GetObject")) from None
        self.size = int(response.get("ContentLength", 0))
        self.etag = str(response.get("ETag", ""))
        self._body = response["Body"]

    def _resume(self) -> None:
        """A ranged GET from the byte reached, of the same version of the object."""
        extra = {"IfMatch": self.etag} if self.etag else {}
        response = _client().get_object(
            Bucket=self.object.bucket, Key=self.object.key, Range=f"bytes={self._position}-", **extra
        )
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        if not len(view) or self._position >= self.size:
            return 0
        from urllib3.exceptions import HTTPError

        failures = 0
        while True:
            try:
                if self._body is None:
                    self._resume()
                got = int(self._body.readinto(view))
                if got == 0:  # the body ended before the object's size: a cut connection
                    raise ConnectionError(f"the body ended at byte {self._position} of {self.size}")
                self._position += got
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


def list_points(url: str) -> dict[str, list[S3Object]]:
    """A fleet prefix ``s3://BUCKET/PREFIX/``: point name -> its capture objects, as ``diag.fleet`` lists a
    directory (``diag.capture.names.fleet_layout``'s rules: ``PREFIX/POINT/`` is a point when it holds
    capture objects; objects deeper down are not looked at; captures directly under ``PREFIX/`` belong to no
    point and are refused).

    The whole prefix is listed once (one paginated ListObjectsV2, 1,000 keys a request), not once per point.
    """
    bucket, prefix = split_url(url)
    if not bucket:
        raise DiagError(f"{url}: a fleet in S3 is s3://BUCKET/PREFIX/ (its points PREFIX/POINT/*.pcap*)")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    url = f"{SCHEME}{bucket}/{prefix}"
    files = []
    for key in _keys_under(url, bucket, prefix):
        parts = key[len(prefix) :].split("/")
        if len(parts) <= 2:  # PREFIX/NAME or PREFIX/POINT/NAME
            folder, name = parts if len(parts) == 2 else ("", parts[0])
            files.append((folder, name, S3Object(bucket, key)))
    loose, points = fleet_layout(files)
    if loose:
        raise DiagError(f"{loose[0]}: a capture directly in the fleet prefix; put each point's files in {url}POINT/")
    if not points:
        raise DiagError(f"{url}: no capture points (PREFIX/POINT/ holding .pcap/.pcapng objects)")
    return points


def _keys_under(url: str, bucket: str, prefix: str) -> list[str]:
    """Every object key under ``prefix``, at any depth; listing failures as one ``DiagError``."""
    keys: list[str] = []
    try:
        for page in _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [entry["Key"] for entry in page.get("Contents", [])]
    except _boto_errors() as error:
        raise DiagError(_problem(error, url, "s3:ListBucket")) from None
    return keys
