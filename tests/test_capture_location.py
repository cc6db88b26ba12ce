"""Where a capture is: ``s3://`` URLs become ``S3Object`` values, never paths (which fold ``//``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diag.capture.location import S3Object, location_of, parse_url
from diag.capture.points import parse_capture_args, point_stem
from diag.errors import DiagError


def test_an_object_is_its_url_and_answers_as_a_path_would() -> None:
    target = parse_url("s3://incident/date=2026-12-04/node a/pod.pcap.gz")
    assert target == S3Object("incident", "date=2026-12-04/node a/pod.pcap.gz")
    assert str(target) == "s3://incident/date=2026-12-04/node a/pod.pcap.gz"
    assert (target.name, target.suffix) == ("pod.pcap.gz", ".gz")
    assert target.parent == "s3://incident/date=2026-12-04/node a/"
    assert S3Object("b", "top.pcap").parent == "s3://b/"
    assert point_stem(parse_url("s3://b/ring/pod.pcap07")) == "pod"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://b", "s3://b: an S3 capture is s3://BUCKET/KEY, one object (a prefix of many: diag analyze fleet)"),
        ("s3://b/prefix/", "s3://b/prefix/: an S3 capture is s3://BUCKET/KEY, one object"),
        ("s3:///key.pcap", "s3:///key.pcap: an S3 capture is s3://BUCKET/KEY, one object"),
        ("s3://b/a//k.pcap", "s3://b/a//k.pcap: S3 keys with empty, '.' or '..' segments are not supported"),
        ("s3://b/a/./k.pcap", "s3://b/a/./k.pcap: S3 keys with empty"),
        ("s3://b/a/../k.pcap", "s3://b/a/../k.pcap: S3 keys with empty"),
    ],
)
def test_a_url_that_is_no_object_or_a_path_would_change_is_refused(url: str, message: str) -> None:
    with pytest.raises(DiagError) as refused:
        location_of(url)
    assert str(refused.value).startswith(message)


def test_what_the_api_takes_becomes_a_location() -> None:
    assert location_of("captures/a//b.pcap") == Path("captures/a/b.pcap")  # a path: folding is harmless
    assert location_of(Path("s3://b/k.pcap")) == S3Object("b", "k.pcap")  # pathlib's folding of a URL, as before
    assert location_of(S3Object("b", "k.pcap")) == S3Object("b", "k.pcap")
    pairs = parse_capture_args(["s3://b/x=1/pod.pcap", "gw=s3://b/gw.pcap.gz", Path("s3://b/node.pcap")])
    assert pairs == [("pod", S3Object("b", "x=1/pod.pcap")), ("gw", S3Object("b", "gw.pcap.gz")),
                     ("node", S3Object("b", "node.pcap"))]  # fmt: skip
    assert parse_capture_args({"pod": ["s3://b/r/pod.pcap0", S3Object("b", "r/pod.pcap1")]}) == [
        ("pod", S3Object("b", "r/pod.pcap0")), ("pod", S3Object("b", "r/pod.pcap1"))
    ]  # fmt: skip


def test_rotated_objects_under_one_prefix_are_one_point_and_under_two_are_refused() -> None:
    assert [name for name, _ in parse_capture_args(["s3://b/r/pod.pcap0", "s3://b/r/pod.pcap1"])] == ["pod", "pod"]
    with pytest.raises(DiagError, match=r"two captures are named 'pod' \(s3://b/r/pod.pcap0 and s3://b/s/pod.pcap1\)"):
        parse_capture_args(["s3://b/r/pod.pcap0", "s3://b/s/pod.pcap1"])
