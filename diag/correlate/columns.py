"""The correlation's tables, declared once: column name -> meaning.

``correlate`` produces exactly these columns in this order; the diagnosis, the
plots and users' notebooks read them by these names.
"""

from __future__ import annotations

from typing import Final

import pandas as pd

# One row per sighting of a matched packet (a packet followed across points).
MATCH_COLUMNS: Final[dict[str, str]] = {
    "row": "the packet table's row label of this sighting",
    "capture": "capture point where it was seen",
    "match_id": "one id per packet followed across points",
    "hop": "this point's place on the packet's path, 0 = first",
    "duplicate": "an extra copy inside the same capture (a router's second interface, -i any)",
    "ts_ref_ns": "timestamp on the reference capture's clock, ns",
    "ttl": "TTL or hop limit on arrival at this point",
    "src": "source address as seen at this point",
    "dst": "destination address as seen at this point",
    "sport": "source port as seen here, -1 when none",
    "dport": "destination port as seen here, -1 when none",
    "prev_capture": "the point before this one on the path, '' at the first",
    "nat": "the rewrite against the previous point ('dst 198.51.100.10:80→198.18.1.10:30080'), '' when none",
    "position": "the packet table's row position (0-based) of this sighting",
    "sighting": "sighting id: copies of one packet at one point share it",
}

# One row per matched packet: the points it passed, in order.
PATH_COLUMNS: Final[dict[str, str]] = {
    "match_id": "the packet (as in the matches table)",
    "points": "tuple of capture points in path order",
    "n_points": "how many points saw it",
    "first_capture": "first point on its path",
    "last_capture": "last point on its path",
    "first_ts_ns": "when the first point saw it, reference clock",
    "last_ts_ns": "when the last point saw it, reference clock",
}

# One row per distinct translation seen between two consecutive points.
NAT_COLUMNS: Final[dict[str, str]] = {
    "from_capture": "the point before the rewrite",
    "to_capture": "the point after it",
    "proto": "IP protocol number",
    "side": "'src' or 'dst': which endpoint was rewritten",
    "before": "endpoint before ('addr:port')",
    "after": "endpoint after",
    "packets": "how many packets showed this rewrite",
}


def empty_table(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(columns=list(columns))
