"""A normal (non-editable) install works away from the source tree.

The wheel is built from this checkout and installed into a fresh virtual
environment in a temporary directory; every command then runs from another
directory, so nothing can be found through the checkout. The wheel is
installed without its dependencies and the fresh environment borrows them
from the running one (a ``.pth`` line), which keeps the test offline and
quick; only the project's own files come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import PROJECT

pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fresh environment's bin directory, with the wheel installed in it."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: setuptools reuses a build/ folder in the tree it builds, which can hold
    # modules that no longer exist in the source.
    source = root / "source"
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "data", "out", "diag-out", "__pycache__", "*.egg-info", ".*_cache"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)], root)
    assert built.returncode == 0, built.stderr
    wheels = list((root / "dist").glob("diag-*.whl"))
    assert len(wheels) == 1, wheels

    env_dir = root / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    env_python = env_dir / "bin" / "python"
    site = run([str(env_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root)
    (Path(site.stdout.strip()) / "borrowed-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = run(
        [sys.executable, "-m", "pip", "--python", str(env_python), "install", "--no-deps", "-q", str(wheels[0])], root
    )
    assert install.returncode == 0, install.stderr
    return env_dir / "bin"


def test_the_package_comes_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    probe = run(
        [str(installed / "python"), "-c",
         "import diag, diag.datafiles as d; print(diag.__file__); print(d.shipped_lab_dir()); "
         "print(d.shipped_captures_dir())"],
        tmp_path,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    env_root = installed.parent.resolve()
    for line in probe.stdout.split():
        assert Path(line).resolve().is_relative_to(env_root), f"{line} is not inside the installed environment"


def test_every_module_of_the_source_is_in_the_wheel(installed: Path, tmp_path: Path) -> None:
    # pyproject.toml lists the subpackages one by one: one left out would be missing from every install.
    source = sorted(str(path.relative_to(PROJECT)) for path in (PROJECT / "diag").rglob("*.py"))
    listing = run(
        [str(installed / "python"), "-c",
         "import pathlib, diag; root = pathlib.Path(diag.__file__).parent; "
         "print('\\n'.join(sorted('diag/' + str(p.relative_to(root)) for p in root.rglob('*.py'))))"],
        tmp_path,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == source


def test_every_scenario_is_listed(installed: Path, tmp_path: Path) -> None:
    result = run([str(installed / "diag"), "run-scenario", "--list"], tmp_path)
    assert result.returncode == 0, result.stderr
    for scenario in sorted((PROJECT / "lab" / "scenarios").glob("*.toml")):
        assert f"  {scenario.stem} " in result.stdout, f"{scenario.stem} missing from --list"
    for topology in (PROJECT / "lab" / "topologies").glob("fix-*.toml"):
        assert f"  {topology.stem.removeprefix('fix-')} " in result.stdout


def test_lab_dry_run_prints_the_build_script(installed: Path, tmp_path: Path) -> None:
    result = run([str(installed / "diag"), "lab", "up", "--dry-run", "incident"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/sh")
    assert "netns add diag-LAB-client" in result.stdout
    script = tmp_path / "up.sh"
    script.write_text(result.stdout)
    assert run(["sh", "-n", str(script)], tmp_path).returncode == 0


def test_a_user_lab_folder_is_searched_first(installed: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mylab" / "topologies"
    mine.mkdir(parents=True)
    text = (PROJECT / "lab" / "topologies" / "incident.toml").read_text()
    (mine / "my-incident.toml").write_text(text)
    listed = run([str(installed / "diag"), "lab", "up", "--dry-run", "--lab-path", str(tmp_path / "mylab"),
                  "my-incident"], tmp_path)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    unknown = run([str(installed / "diag"), "lab", "up", "--dry-run", "my-incident"], tmp_path)
    assert unknown.returncode == 2 and "my-incident" in unknown.stderr


def test_analyze_a_shipped_capture(installed: Path, tmp_path: Path) -> None:
    where = run([str(installed / "python"), "-c", "import diag.datafiles as d; print(d.shipped_captures_dir())"],
                tmp_path)  # fmt: skip
    captures = sorted(Path(where.stdout.strip()).glob("*.pcapng"))
    assert len(captures) >= 2
    result = run([str(installed / "diag"), "analyze", "pcap", *map(str, captures), "--json", "-"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "diag.report/1"
    assert {c["name"] for c in report["captures"]} == {c.stem for c in captures}
    assert report["verdict"]["cause"] == "asymmetric-return"
