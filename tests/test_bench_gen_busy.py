"""bench/gen_busy.py: a --packets its connections cannot fit in is said before the capture is written.

``--packets`` only sizes the response segments, so with the busy profile's 60,000 connections a small
``--packets`` still wrote over half a million packets, and said so only in the count at the end.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT

from diag.capture import read_capture

GENERATOR = PROJECT / "bench" / "gen_busy.py"


def _generate(out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--profile", "busy", "--seed", "3", "--out-dir", str(out), *options],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip


def test_too_few_packets_for_the_connections_is_said_with_the_count_written(tmp_path: Path) -> None:
    done = _generate(tmp_path / "over", "--packets", "1000", "--flows", "2000")
    said = re.fullmatch(
        r"gen_busy: --packets 1,000 is too few for busy's 2,000 connections: writing about ([\d,]+) packets "
        r"instead \(for 1,000, give fewer connections with --flows, e.g. --flows ([\d,]+)\)\n",
        done.stderr,
    )
    assert said, done.stderr
    written = len(read_capture(tmp_path / "over" / "busy.pcap"))
    assert abs(written - int(said[1].replace(",", ""))) <= written // 50  # the count it announced, within 2%
    # The --flows it suggests fits: nothing said, and about the packets asked for.
    fitting = _generate(tmp_path / "fits", "--packets", "1000", "--flows", said[2].replace(",", ""))
    assert fitting.stderr == ""
    assert len(read_capture(tmp_path / "fits" / "busy.pcap")) < 1500
