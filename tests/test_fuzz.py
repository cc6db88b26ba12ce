"""Damaged captures through the whole command: exit 0 with a report, or exit 2 with one line; never a traceback.

A fixed-seed sample of tcpdump's public test captures is damaged three ways:
editcap's byte errors inside packets (-E), a cut at a random offset, and a
gzip-compressed copy with bytes overwritten or its tail cut. Each file is read
by ``diag analyze pcap --json -`` in its own process, with its address space
capped and a timeout, as a user would run it.
"""

from __future__ import annotations

import gzip
import json
import random
import resource
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import PROJECT, require_tools
from test_corpus import corpus_captures

DIAG = PROJECT / ".venv" / "bin" / "diag"
SEED = 13
FILES_PER_KIND = 12
LARGEST_INPUT = 2 << 20  # keeps the run near a minute: startup, not size, dominates below this
ADDRESS_SPACE_CAP = 4 << 30
WARNING = "diag: warning: "

pytestmark = pytest.mark.slow


def _editcap_errors(source: Path, target: Path, rng: random.Random) -> Path | None:
    """None when editcap cannot read the file itself (link types it does not know, the corpus's broken files)."""
    done = subprocess.run(["editcap", "-E", "0.02", "--seed", str(rng.randrange(1 << 31)), str(source), str(target)],
                          capture_output=True)
    return target if done.returncode == 0 else None


def _cut(source: Path, target: Path, rng: random.Random) -> Path | None:
    data = source.read_bytes()
    target.write_bytes(data[: rng.randrange(len(data))])
    return target


def _damaged_gzip(source: Path, target: Path, rng: random.Random) -> Path | None:
    packed = bytearray(gzip.compress(source.read_bytes()))
    if rng.random() < 0.5:
        del packed[rng.randrange(10, len(packed)) :]  # past the gzip header: a stream that ends early
    else:
        for _ in range(rng.randint(1, 8)):
            packed[rng.randrange(10, len(packed))] = rng.randrange(256)
    target.write_bytes(bytes(packed))
    return target


DAMAGES = {"editcap": _editcap_errors, "cut": _cut, "gzip": _damaged_gzip}


@pytest.fixture(scope="module")
def damaged(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require_tools("editcap")
    rng = random.Random(SEED)
    captures = [path for path in corpus_captures(corpus) if 64 < path.stat().st_size <= LARGEST_INPUT]
    folder = tmp_path_factory.mktemp("fuzz")
    files = []
    for kind, damage in DAMAGES.items():
        made: list[Path] = []
        for source in rng.sample(captures, len(captures)):  # a shuffled copy, drawn from until enough are made
            suffix = ".gz" if kind == "gzip" else source.suffix
            target = damage(source, folder / f"{kind}-{source.stem}{suffix}", rng)
            if target is not None:
                made.append(target)
            if len(made) == FILES_PER_KIND:
                break
        files.extend(made)
    return files


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def _analyze(path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    result = subprocess.run(
        [str(DIAG), "analyze", "pcap", "-q", "--max-memory", "1G", "--json", "-", str(path)],
        capture_output=True, text=True, timeout=120, preexec_fn=_cap_address_space,
    )
    return path, result


def _problems(path: Path, result: subprocess.CompletedProcess[str]) -> list[str]:
    """What is wrong with one run, if anything: the documented outcomes are a report or one line."""
    lines = result.stderr.splitlines()
    errors = [line for line in lines if not line.startswith(WARNING)]
    if "Traceback" in result.stderr:
        return [f"{path.name}: traceback:\n{result.stderr}"]
    if result.returncode == 0:
        try:
            json.loads(result.stdout)
        except ValueError as error:
            return [f"{path.name}: exit 0 but not JSON on stdout ({error})"]
        return [f"{path.name}: exit 0 with stderr {errors}"] if errors else []
    if result.returncode == 2:
        if len(errors) != 1 or not errors[0].startswith("diag: ") or str(path) not in errors[0]:
            return [f"{path.name}: exit 2 without one line naming the file: {errors}"]
        return []
    return [f"{path.name}: exit {result.returncode}: {result.stderr[-2000:]}"]


def test_damaged_corpus_captures_give_a_report_or_one_line(damaged: list[Path]) -> None:
    assert len(damaged) == FILES_PER_KIND * len(DAMAGES)
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: the machine is shared
        outcomes = list(pool.map(_analyze, damaged))
    problems = [problem for path, result in outcomes for problem in _problems(path, result)]
    assert not problems, "\n".join(problems)
    # The damage must reach the reader, or this test checks nothing: some files fail, some are read with warnings.
    assert any(result.returncode == 2 for _, result in outcomes)
    assert any(result.returncode == 0 and WARNING in result.stderr for _, result in outcomes)
