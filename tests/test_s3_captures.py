"""Captures read straight from S3: ``diag analyze pcap s3://…`` and ``diag analyze fleet s3://…/``.

moto runs as a real HTTP server on loopback; the shipped captures are
uploaded to it and every run is a fresh ``diag`` process that finds the
endpoint the way a user's would, through ``AWS_ENDPOINT_URL_S3`` in its
environment (boto3 reads it; diag passes no endpoint of its own). The JSON
report of a run on the S3 objects must be the local run's, byte for byte,
once the objects' URLs are written as the local paths they were uploaded
from. Nothing here can reach AWS.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT, require_tools
from moto_fixture import fresh_account

pytest.importorskip("moto.server")

CAPTURES = PROJECT / "captures"
INCIDENT_POINTS = ("client", "natgw", "node-b", "pod-b", "vpc-router")
BUCKET = "incident-0412"
TIMEOUT_S = 120  # a run that hangs (an endpoint that never answers) fails the test instead of the suite


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An empty bucket on a freshly reset moto, fake credentials and the endpoint in this test's environment
    (which the diag processes inherit); the boto3 client that fills it."""
    import boto3

    fresh_account(moto_endpoint, monkeypatch)
    monkeypatch.delenv("DIAG_CLUSTER", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    client = boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return client


def _diag(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diag.cli", *argv], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=PROJECT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _report(*argv: str) -> str:
    done = _diag("analyze", *argv[:1], "-q", "--json", "-", *argv[1:])
    assert done.returncode == 0, done.stderr
    return done.stdout


def _upload(s3: Any, local: Path, root: Path) -> str:
    """``local`` (under ``root``) uploaded under the same relative key; its URL."""
    key = local.relative_to(root).as_posix()
    s3.upload_file(str(local), BUCKET, key)
    return f"s3://{BUCKET}/{key}"


def _as_local(report: str, root: Path) -> str:
    """The S3 run's JSON with the objects' URLs written as the local paths they were uploaded from."""
    return report.replace(json.dumps(f"s3://{BUCKET}/")[1:-1], json.dumps(f"{root}/")[1:-1])


@pytest.fixture(scope="module")
def laid_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The incident's captures laid out as in the bucket: one file, a gzip file, a key with '=', a fleet."""
    require_tools("editcap")
    root = tmp_path_factory.mktemp("bucket")
    (root / "one").mkdir()
    shutil.copy(CAPTURES / "client.pcapng", root / "one" / "client.pcapng")
    (root / "one" / "natgw.pcapng.gz").write_bytes(gzip.compress((CAPTURES / "natgw.pcapng").read_bytes()))
    (root / "date=2026-11-27").mkdir()
    for point in INCIDENT_POINTS:
        shutil.copy(CAPTURES / f"{point}.pcapng", root / "date=2026-11-27" / f"{point}.pcapng")
    fleet = root / "fleet"
    for point in INCIDENT_POINTS:  # each point a ring of dumpcap files, as test_fleet cuts them
        (fleet / point).mkdir(parents=True)
        subprocess.run(
            ["editcap", "-c", "4", str(CAPTURES / f"{point}.pcapng"), str(fleet / point / f"{point}.pcapng")],
            check=True,
        )
    (fleet / "notes").mkdir()
    (fleet / "notes" / "README.txt").write_text("captured during the incident\n")  # no point: no captures
    return root


@pytest.fixture
def bucket(s3: Any, laid_out: Path) -> Path:
    """Every file of ``laid_out`` uploaded to the bucket under its relative path; the local root."""
    for local in sorted(laid_out.rglob("*")):
        if local.is_file():
            _upload(s3, local, laid_out)
    return laid_out


def test_one_object_gives_the_report_of_the_local_file(bucket: Path) -> None:
    local = _report("pcap", str(bucket / "one" / "client.pcapng"))
    remote = _report("pcap", f"s3://{BUCKET}/one/client.pcapng")
    assert json.loads(remote)["captures"][0]["path"] == f"s3://{BUCKET}/one/client.pcapng"
    assert json.loads(remote)["captures"][0]["name"] == "client"  # named after the key's file, as a path is
    assert _as_local(remote, bucket) == local


def test_a_gzip_object_gives_the_report_of_the_local_file(bucket: Path) -> None:
    local = _report("pcap", str(bucket / "one" / "natgw.pcapng.gz"))
    remote = _report("pcap", f"s3://{BUCKET}/one/natgw.pcapng.gz")
    assert json.loads(local)["captures"][0]["packets"] > 0
    assert _as_local(remote, bucket) == local


def test_several_objects_named_or_not_give_the_report_of_the_local_files(bucket: Path) -> None:
    """Five points, one named with NAME= and all under a key holding '=' (a path, not NAME=PATH)."""
    folder = "date=2026-11-27"
    arguments = [f"{folder}/{point}.pcapng" for point in INCIDENT_POINTS]
    local = _report("pcap", f"gateway={bucket}/{arguments[1]}", *[str(bucket / item) for item in arguments if
                                                                   "natgw" not in item])
    remote = _report("pcap", f"gateway=s3://{BUCKET}/{arguments[1]}",
                     *[f"s3://{BUCKET}/{item}" for item in arguments if "natgw" not in item])  # fmt: skip
    names = sorted(capture["name"] for capture in json.loads(remote)["captures"])
    assert names == sorted(["gateway", "client", "node-b", "pod-b", "vpc-router"])
    assert json.loads(remote)["verdict"] is not None
    assert _as_local(remote, bucket) == local


def test_a_fleet_prefix_gives_the_report_of_the_local_fleet_directory(bucket: Path) -> None:
    local = _report("fleet", str(bucket / "fleet"))
    for prefix in ("fleet/", "fleet"):
        remote = _report("fleet", f"s3://{BUCKET}/{prefix}")
        assert _as_local(remote, bucket) == local
    document = json.loads(local)
    assert sorted(capture["name"] for capture in document["captures"]) == sorted(INCIDENT_POINTS)
    assert all(capture["path"].endswith(" files)") for capture in document["captures"])  # each a ring of files


def test_a_manifest_may_name_objects(bucket: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.toml"
    lines = []
    for point in ("client", "pod-b"):
        lines += [f"[points.{point}]", f'files = ["s3://{BUCKET}/date=2026-11-27/{point}.pcapng"]']
    manifest.write_text("\n".join(lines) + "\n")
    local = _report("pcap", *(f"{point}={bucket}/date=2026-11-27/{point}.pcapng" for point in ("client", "pod-b")))
    assert _as_local(_report("fleet", str(manifest)), bucket) == local


def test_a_manifest_object_a_path_would_change_is_refused(bucket: Path, tmp_path: Path) -> None:
    """As on the command line: ``one//client`` would be read as ``one/client``, another object."""
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'[points.client]\nfiles = ["s3://{BUCKET}/one//client.pcapng"]\n')
    assert _one_line_error(_diag("analyze", "fleet", str(manifest))) == (
        f"diag: s3://{BUCKET}/one//client.pcapng: S3 keys with empty, '.' or '..' segments are not supported"
    )


@pytest.mark.slow
def test_cluster_workers_open_the_objects_themselves(bucket: Path) -> None:
    """Only the URLs travel: each worker process of a local cluster reads its points from S3."""
    pytest.importorskip("distributed")
    local = _report("fleet", str(bucket / "fleet"))
    remote = _report("fleet", "--cluster", "local:2", f"s3://{BUCKET}/fleet/")
    assert _as_local(remote, bucket) == local


@pytest.mark.slow
def test_under_a_memory_cap_the_objects_are_read_in_passes(s3: Any, tmp_path: Path) -> None:
    """Four generated points over a 40M budget: the streamed objects are analysed in passes, as the files are."""
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_busy.py"), "--profile", "busy", "--packets", "30000",
         "--flows", "1500", "--points", "4", "--seed", "3", "--out-dir", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    files = sorted(tmp_path.glob("busy-p*.pcap"))
    urls = [_upload(s3, path, tmp_path) for path in files]
    uncapped = _report("pcap", *map(str, files))
    capped = _report("pcap", "--max-memory", "40M", *map(str, files))
    remote = _report("pcap", "--max-memory", "40M", *urls)
    assert capped == uncapped
    assert _as_local(remote, tmp_path) == uncapped
    # The same budget refuses standard input, which cannot be read twice: the cap does force passes here.
    with files[0].open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "diag.cli", "analyze", "pcap", "-q", "--max-memory", "40M", "--json", "-",
             "-", *map(str, files[1:])],
            stdin=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=PROJECT,
        )  # fmt: skip
    assert done.returncode == 2 and "cannot be read more than once" in done.stderr


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["pcap", f"s3://{BUCKET}/one/missing.pcap"], f"diag: s3://{BUCKET}/one/missing.pcap: no such "
                     "object", id="no-such-key"),
        pytest.param(["pcap", "s3://no-such-bucket/client.pcapng"], "diag: s3://no-such-bucket/client.pcapng: no "
                     "such bucket 'no-such-bucket'", id="no-such-bucket"),
        pytest.param(["fleet", "s3://no-such-bucket/fleet/"], "diag: s3://no-such-bucket/fleet/: no such bucket "
                     "'no-such-bucket'", id="fleet-no-such-bucket"),
        pytest.param(["fleet", f"s3://{BUCKET}/one/"], f"diag: s3://{BUCKET}/one/client.pcapng: a capture directly "
                     f"in the fleet prefix; put each point's files in s3://{BUCKET}/one/POINT/", id="loose-captures"),
        pytest.param(["fleet", f"s3://{BUCKET}/fleet/notes/"], f"diag: s3://{BUCKET}/fleet/notes/: no capture points "
                     "(PREFIX/POINT/ holding .pcap/.pcapng objects)", id="prefix-without-captures"),
        pytest.param(["fleet", f"s3://{BUCKET}/nothing/"], f"diag: s3://{BUCKET}/nothing/: no capture points "
                     "(PREFIX/POINT/ holding .pcap/.pcapng objects)", id="empty-prefix"),
        pytest.param(["pcap", f"s3://{BUCKET}/fleet/notes/README.txt"], f"diag: s3://{BUCKET}/fleet/notes/README.txt:"
                     " not a pcap or pcapng capture (the file starts with bytes 63 61 70 74)", id="not-a-capture"),
        pytest.param(["pcap", f"s3://{BUCKET}"], f"diag: s3://{BUCKET}: an S3 capture is s3://BUCKET/KEY, one object "
                     "(a prefix of many: diag analyze fleet)", id="bucket-only"),
        pytest.param(["pcap", f"s3://{BUCKET}/one//client.pcapng"], f"diag: s3://{BUCKET}/one//client.pcapng: S3 "
                     "keys with empty, '.' or '..' segments are not supported", id="empty-segment"),
    ],
)
def test_what_s3_does_not_hold_is_one_line_and_exit_2(bucket: Path, argv: list[str], expected: str) -> None:
    assert _one_line_error(_diag("analyze", *argv)) == expected


def test_no_credentials_is_one_line(bucket: Path) -> None:
    env = {name: "" for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = _diag("analyze", "pcap", f"s3://{BUCKET}/one/client.pcapng", env=env)
    assert _one_line_error(done).startswith(f"diag: s3://{BUCKET}/one/client.pcapng: no AWS credentials found")


def test_an_endpoint_nobody_listens_on_is_one_line(bucket: Path) -> None:
    """A loopback port with nothing behind it (the port of a socket just closed): refused, in one line, soon."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _diag("analyze", "fleet", f"s3://{BUCKET}/fleet/", env={"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"})
    assert _one_line_error(done).startswith(f"diag: s3://{BUCKET}/fleet/: cannot reach the S3 endpoint")


@functools.cache
def _auth_switch(endpoint: str) -> functools.partial[urllib.request.Request]:
    # Not a form: werkzeug would swallow a form-encoded body and moto would read an empty count.
    return functools.partial(
        urllib.request.Request, f"{endpoint}/moto-api/reset-auth", method="POST", headers={"Content-Type": "text/plain"}
    )


@pytest.mark.parametrize(
    ("allowed", "argv", "lacking"),
    [
        pytest.param(["s3:ListBucket"], ["pcap", f"s3://{BUCKET}/one/client.pcapng"], "s3:GetObject", id="get"),
        pytest.param(["s3:GetObject"], ["fleet", f"s3://{BUCKET}/fleet/"], "s3:ListBucket", id="list"),
    ],
)
def test_access_denied_names_the_permission(
    bucket: Path, moto_endpoint: str, allowed: list[str], argv: list[str], lacking: str
) -> None:
    """moto enforces IAM for a user whose policy lacks one permission."""
    import boto3

    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_endpoint)
    iam.create_user(UserName="reader")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": allowed, "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="partial", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    urllib.request.urlopen(_auth_switch(moto_endpoint)(data=b"0")).close()  # enforce IAM from the next request on
    try:
        done = _diag("analyze", *argv, env=env)
    finally:
        urllib.request.urlopen(_auth_switch(moto_endpoint)(data=b"inf")).close()
    assert _one_line_error(done) == f"diag: {argv[1]}: access denied (the credentials lack {lacking})"


def test_a_broken_off_read_goes_on_from_where_it_stopped(bucket: Path, s3: Any) -> None:
    """The connection under the body dropped mid-object: a ranged GET of the same ETag takes over."""
    from diag.capture import remote
    from diag.capture.location import parse_url

    remote._client.cache_clear()  # this process's environment is the test's now
    url = f"s3://{BUCKET}/date=2026-11-27/pod-b.pcapng"
    expected = (bucket / "date=2026-11-27" / "pod-b.pcapng").read_bytes()
    with remote.open_object(parse_url(url)) as body:
        head = body.read(1000)
        body._body.close()  # as a reset connection would leave it
        rest = body.read()
    assert head + rest == expected


def test_an_object_replaced_while_read_stops_in_one_line(bucket: Path, s3: Any) -> None:
    from diag.capture import remote
    from diag.capture.location import S3Object

    remote._client.cache_clear()
    key = "date=2026-11-27/pod-b.pcapng"
    with remote.open_object(S3Object(BUCKET, key)) as body:
        body.read(1000)
        body._body.close()
        s3.put_object(Bucket=BUCKET, Key=key, Body=(CAPTURES / "client.pcapng").read_bytes())
        with pytest.raises(OSError, match=r"^the object was replaced while it was read$"):
            body.read()


@contextlib.contextmanager
def _requests_to_moto() -> Iterator[list[str]]:
    """The request lines moto's server logs (one per HTTP request it answers) while the block runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("werkzeug")
    handler, level, propagate = Collect(logging.INFO), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not onto pytest's captured log
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _gets_of(lines: list[str], key: str) -> list[str]:
    path = urllib.parse.quote(f"/{BUCKET}/{key}")
    return [line for line in lines if f'"GET {path} ' in line or f'"GET {path}?' in line]


def test_the_gzip_check_reads_an_object_once_and_keeps_only_its_first_bytes(bucket: Path, s3: Any) -> None:
    """The reader looks at two bytes to tell gzip from a capture and puts them back in front (its wrapper for
    streams that cannot seek): one GET, nothing of the object kept but those two bytes."""
    from diag.capture import remote
    from diag.capture.location import S3Object
    from diag.capture.source import _Prefixed, file_size, open_capture

    remote._client.cache_clear()
    key = "one/natgw.pcapng.gz"
    with _requests_to_moto() as lines:
        stream, compressed = open_capture(S3Object(BUCKET, key))
        raw = stream.fileobj.raw  # type: ignore[attr-defined]  # GzipFile -> BufferedReader -> _Prefixed
        assert compressed and isinstance(raw, _Prefixed) and isinstance(raw.stream, remote.S3Body)
        assert raw._prefix == b"\x1f\x8b" and not raw.stream.seekable()
        with stream:
            assert stream.read() == (CAPTURES / "natgw.pcapng").read_bytes()
    assert len(_gets_of(lines, key)) == 1, lines
    key = "one/client.pcapng"
    with _requests_to_moto() as lines:
        stream, compressed = open_capture(S3Object(BUCKET, key))
        with stream:  # a plain capture: the object's size still sizes the read's estimates
            assert not compressed and file_size(stream) == (CAPTURES / "client.pcapng").stat().st_size
            assert stream.read() == (CAPTURES / "client.pcapng").read_bytes()
    assert len(_gets_of(lines, key)) == 1, lines


def test_a_fleet_prefix_is_listed_in_one_request(s3: Any, tmp_path: Path) -> None:
    """Three points under one prefix: one ListObjectsV2, not one more per point (the points and files are
    the local directory's)."""
    for point in ("client", "node-b", "pod-b"):
        (tmp_path / "three" / point).mkdir(parents=True)
        shutil.copy(CAPTURES / f"{point}.pcapng", tmp_path / "three" / point / f"{point}.pcapng")
        _upload(s3, tmp_path / "three" / point / f"{point}.pcapng", tmp_path)
    local = _report("fleet", str(tmp_path / "three"))
    with _requests_to_moto() as lines:
        remote = _report("fleet", f"s3://{BUCKET}/three/")
    assert [line for line in lines if "list-type=2" in line] == [lines[0]], lines
    assert _as_local(remote, tmp_path) == local


def test_a_fleet_listing_follows_every_page(s3: Any) -> None:
    """More keys under the prefix than one page holds (1,000): the point after them is still found."""
    from diag.capture import remote

    remote._client.cache_clear()
    for number in range(1000):
        s3.put_object(Bucket=BUCKET, Key=f"big/a-notes/{number:04}.txt", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="big/zz/pod.pcapng", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="big/zz/deeper/other.pcapng", Body=b"")  # below a point: not its file
    with _requests_to_moto() as lines:
        points = remote.list_points(f"s3://{BUCKET}/big")
    assert {name: [str(file) for file in files] for name, files in points.items()} == {
        "zz": [f"s3://{BUCKET}/big/zz/pod.pcapng"]
    }
    assert len([line for line in lines if "list-type=2" in line]) == 2, lines


def test_a_key_with_odd_characters_is_its_url_in_the_report(s3: Any, tmp_path: Path) -> None:
    """Spaces, '+', '%', '&', '=', '#' and non-ASCII in a key: the URL as given names the capture in the JSON
    and in the text, and the report is the local file's."""
    relative = "odd keys/n\u00e4me +1%20&x=y#.pcapng"
    (tmp_path / "odd keys").mkdir()
    shutil.copy(CAPTURES / "pod-b.pcapng", tmp_path / relative)
    url = _upload(s3, tmp_path / relative, tmp_path)
    assert url == f"s3://{BUCKET}/{relative}"
    remote = _report("pcap", url)
    assert json.loads(remote)["captures"][0]["path"] == url
    assert json.loads(remote)["captures"][0]["name"] == "n\u00e4me +1%20&x=y#"
    assert _as_local(remote, tmp_path) == _report("pcap", str(tmp_path / relative))
    text = _diag("analyze", "pcap", "-q", url)
    assert text.returncode == 0, text.stderr
    assert f"CAPTURE n\u00e4me +1%20&x=y#  ({url}, 11 packets" in text.stdout


def test_two_objects_of_one_name_are_named_by_their_urls(bucket: Path) -> None:
    """The refusal names both objects by their URLs (not as a path would fold them)."""
    first, second = f"s3://{BUCKET}/one/client.pcapng", f"s3://{BUCKET}/date=2026-11-27/client.pcapng"
    assert _one_line_error(_diag("analyze", "pcap", first, second)) == (
        f"diag: two captures are named 'client' ({first} and {second}); name them with NAME=PATH (the same NAME "
        "given again adds a file to that point)"
    )
