"""Check by hand that a change to ``correlate``'s speed left its result alone, and time it.

Save every field of the ``Correlation`` (row arrays, offsets, notes, and the
matches, paths and NAT tables) on the same analyses as ``findings_equal.py``
with one version of the code, then compare with another:

    .venv/bin/python bench/correlation_equal.py save /tmp/corr --source OLD_COPY
    .venv/bin/python bench/correlation_equal.py compare /tmp/corr

``--source`` is a directory holding another copy of the ``diag`` package
(e.g. ``git archive HEAD diag | tar -x -C OLD_COPY``). Tables are compared
with ``pandas.testing.assert_frame_equal`` (dtypes and categories included),
arrays exactly. Each line also gives the CPU time of ``correlate`` alone.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ARRAYS = ("row_match", "row_sighting", "ts_ref_ns", "row_hop")
TABLES = ("matches", "paths", "nat_map")


def fields(correlation: Any) -> dict[str, Any]:
    return {
        "reference": correlation.reference,
        "offsets": dict(correlation.offsets),
        "clock_notes": dict(correlation.clock_notes),
        **{name: getattr(correlation, name) for name in ARRAYS + TABLES},
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    import numpy as np
    import pandas as pd

    found = []
    for name in ("reference", "offsets", "clock_notes"):
        if before[name] != after[name]:
            found.append(name)
    for name in ARRAYS:
        a, b = before[name], after[name]
        if a.dtype != b.dtype or not np.array_equal(a, b):
            found.append(name)
    for name in TABLES:
        try:
            pd.testing.assert_frame_equal(before[name], after[name])
        except AssertionError as error:
            found.append(f"{name}: {str(error).splitlines()[0]}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--only", action="append", help="only the analyses with these names")
    parser.add_argument("--source", type=Path, help="import the diag package found in this directory instead")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.source.resolve() if args.source else BENCH.parent))
    sys.path.insert(1, str(BENCH))
    from findings_equal import DATA, analyses

    from diag.analysis import concat_packets, parse_capture_args, read_captures
    from diag.correlate import correlate

    args.directory.mkdir(parents=True, exist_ok=True)
    differ = 0
    for name, arguments in analyses([DATA]).items():
        if args.only and name not in args.only:
            continue
        tables, _ = read_captures(parse_capture_args(arguments))
        packets = concat_packets(tables)
        del tables
        start = time.process_time()
        result = fields(correlate(packets))
        spent = time.process_time() - start
        saved = args.directory / f"{name}.pickle"
        if args.action == "save":
            saved.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            print(f"{name}: saved ({len(result['matches']):,} match rows), correlate {spent:.2f} CPU s", flush=True)
            continue
        if not saved.exists():
            print(f"{name}: nothing saved to compare with")
            continue
        found = differences(pickle.loads(saved.read_bytes()), result)
        differ += bool(found)
        verdict = "DIFFERENT: " + "; ".join(found) if found else "equal"
        print(f"{name}: {verdict} ({len(result['matches']):,} match rows), correlate {spent:.2f} CPU s", flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
