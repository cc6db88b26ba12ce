"""Build packet tables by hand, for unit tests of everything downstream of the reader.

``make_packets`` takes one dict per packet, naming only the columns a test
cares about, and fills every other column of ``diag.capture.columns`` with
the contract's "absent" value (-1, '', False), so crafted tables look exactly
like what ``read_capture`` returns.

Shorthands, because most tests talk TCP:
- ``flags="SA"`` (letters F S R P A U E C) instead of ``tcp_flags``;
- ``t`` in seconds instead of ``ts_ns``;
- ``proto`` defaults to TCP when ``flags``/``seq`` is given, or may be
  ``"tcp"``/``"udp"``/``"icmp"``;
- ``payload_len`` defaults to 0 for TCP/UDP packets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from diag.capture.columns import PACKET_COLUMNS

_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
_ABSENT_BY_DTYPE = {"category": "", "bool": False, "uint64": 0}

BASE_TS_NS = 1_764_257_655_000_000_000  # 2025-11-27, a plausible capture date


def tcp_flags(letters: str) -> int:
    """``"SA"`` -> 0x12."""
    return sum(_FLAG_BITS[letter] for letter in letters)


def _default(column: str, dtype: str) -> Any:
    if column in ("frag_offset",):
        return 0
    return _ABSENT_BY_DTYPE.get(dtype, -1)


def _normalise(position: int, row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    if "flags" in row:
        row["tcp_flags"] = tcp_flags(row.pop("flags"))
    if "t" in row:
        row["ts_ns"] = BASE_TS_NS + round(row.pop("t") * 1e9)
    proto = row.get("proto")
    if isinstance(proto, str):
        row["proto"] = _PROTO_NUMBERS[proto]
    elif proto is None and ("tcp_flags" in row or "seq" in row):
        row["proto"] = 6
    if row.get("proto") == 6:
        row.setdefault("tcp_flags", 0x10)
        row.setdefault("seq", 1000)
        row.setdefault("ack", 0)
        row.setdefault("win", 64240)
    if row.get("proto") in (6, 17):
        row.setdefault("payload_len", 0)
    src = row.get("src", "")
    row.setdefault("ip_version", 6 if ":" in str(src) else (4 if src else 0))
    row.setdefault("ttl", 64 if src else -1)
    row.setdefault("index", position)
    row.setdefault("ts_ns", BASE_TS_NS + position * 1_000_000)
    row.setdefault("capture", "test")
    unknown = set(row) - set(PACKET_COLUMNS)
    if unknown:
        raise KeyError(f"not packet columns: {sorted(unknown)}")
    return row


def make_packets(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A packet table with exactly the reader's columns and dtypes."""
    normalised = [_normalise(position, row) for position, row in enumerate(rows)]
    data: dict[str, Any] = {}
    for column, (dtype, _meaning) in PACKET_COLUMNS.items():
        default = _default(column, dtype)
        values = [row.get(column, default) for row in normalised]
        if dtype == "category":
            data[column] = pd.Categorical([str(v) for v in values])
        else:
            data[column] = np.asarray(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(PACKET_COLUMNS))
