"""Check by hand that a change to the diagnosis's speed left its findings alone.

Save the findings of ``diag analyze pcap`` on a fixed set of analyses before
the change, then compare after it:

    .venv/bin/python bench/findings_equal.py save /tmp/before
    ... change the code ...
    .venv/bin/python bench/findings_equal.py compare /tmp/before

When others change the diagnosis at the same time, save from a copy of the
tree with only the files under test put back as they were (``--source DIR``:
the directory holding that copy's ``diag`` package).

The analyses: the reference captures all together, each alone, a few subsets,
the two smaller scenarios, and every generated capture in bench/data/ (a
profile's points together when ``gen_busy.py --points`` wrote several).
Compared: the JSON report's ``verdict`` and ``findings``, member by member.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
DATA = ROOT / "bench" / "data"
DIAG = ROOT / ".venv" / "bin" / "diag"

SUBSETS = (
    ("client", "pod-b"),
    ("client", "node-b", "pod-b"),
    ("pod-b", "natgw"),
    ("node-a", "node-b"),
    ("client", "nlb", "vpc-router", "natgw"),
)


def analyses(data_dirs: list[Path]) -> dict[str, list[str]]:
    """Name -> the ``NAME=PATH`` arguments of one analysis."""
    incident = sorted(CAPTURES.glob("*.pcapng"))
    cases = {"incident-all": [f"{p.stem}={p}" for p in incident]}
    cases |= {f"incident-{p.stem}": [f"{p.stem}={p}"] for p in incident}
    for subset in SUBSETS:
        cases["incident-" + "+".join(subset)] = [f"{n}={CAPTURES / (n + '.pcapng')}" for n in subset]
    for scenario in ("fix-snat", "udp-asymmetric"):
        files = sorted((CAPTURES / scenario).glob("*.pcapng"))
        cases[scenario] = [f"{p.stem}={p}" for p in files]
    points: dict[str, list[Path]] = {}
    for path in sorted(p for d in data_dirs for p in d.glob("*.pcap")):
        stem, sep, point = path.stem.rpartition("-p")
        if sep and point.isdigit():
            points.setdefault(stem + "-points", []).append(path)
        else:
            cases[path.stem] = [str(path)]
    cases |= {name: [f"{p.stem}={p}" for p in paths] for name, paths in points.items()}
    return cases


def findings(arguments: list[str], source: Path | None) -> dict[str, object]:
    command = [str(DIAG)]
    env = None
    if source is not None:  # another copy of the package, e.g. the code before a change, on the same inputs
        command = [sys.executable, "-c", "import sys; from diag.cli import main; sys.exit(main())"]
        env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(
        [*command, "analyze", "pcap", "--json", "-", *arguments],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=source,  # ``python -c`` puts the working directory first on the path, before PYTHONPATH
    )
    if done.returncode != 0:
        raise SystemExit(f"diag analyze pcap {' '.join(arguments)} failed: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    return {"verdict": report["verdict"], "findings": report["findings"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--only", action="append", help="only the analyses with these names")
    parser.add_argument("--source", type=Path, help="run the diag package found in this directory instead")
    parser.add_argument("--data", type=Path, action="append", help="generated captures (default bench/data/)")
    args = parser.parse_args(argv)
    args.directory.mkdir(parents=True, exist_ok=True)
    differ = 0
    for name, arguments in analyses(args.data or [DATA]).items():
        if args.only and name not in args.only:
            continue
        saved = args.directory / f"{name}.json"
        result = findings(arguments, args.source)
        if args.action == "save":
            saved.write_text(json.dumps(result, indent=1, sort_keys=True))
            print(f"{name}: {len(result['findings'])} findings saved")  # type: ignore[arg-type]
            continue
        if not saved.exists():
            print(f"{name}: nothing saved to compare with")
            continue
        before = json.loads(saved.read_text())
        if before == json.loads(json.dumps(result)):
            print(f"{name}: equal ({len(before['findings'])} findings)")
            continue
        differ += 1
        old, new = before["findings"], result["findings"]
        print(f"{name}: DIFFERENT ({len(old)} findings before, {len(new)} after)")  # type: ignore[arg-type]
        for i, (a, b) in enumerate(zip(old, new, strict=False)):  # type: ignore[call-overload]
            if a != b:
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                print(f"  first difference at finding {i}: {', '.join(keys)}")
                break
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
