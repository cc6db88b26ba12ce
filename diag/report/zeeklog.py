"""The flow table as Zeek's conn.log, in the TSV layout of Zeek's ASCII log writer.

A file has a header of ``#`` lines, one line per connection, and a ``#close``
line:

    #separator \\x09                the field separator, escaped (the only line that uses a space)
    #set_separator  ,               the rest use the separator (a tab) between key and value
    #empty_field    (empty)         what an empty string or empty set is written as
    #unset_field    -               what a field with no value is written as
    #path   conn
    #open   2026-12-04-18-40-00     local wall-clock time the file was opened
    #fields ts  uid ...             the field names, in Zeek's conn.log order
    #types  time    string ...      their Zeek types
    ...
    #close  2026-12-04-18-40-01

How our flow columns map onto Zeek's fields (``conn_fields``): the 5-tuple,
``proto``, ``history``, ``conn_state`` and the packet counts are ours, and
mean what Zeek's do. ``ts`` is ``first_ts``; ``duration`` is ``last_ts -
first_ts`` (Zeek stops the clock at the last packet that carried new stream
data, so a trailing ACK can make ours longer). As in Zeek, ``duration``,
``orig_bytes`` and ``resp_bytes`` are unset when the duration is 0 (a flow of
one packet). Fields we do not compute are unset (``-``), never guessed:
``service`` (no protocol analyzers), ``local_orig``/``local_resp`` (no
local networks configured, which is what Zeek writes then too).
``missed_bytes`` is the flow table's count of content-gap bytes (0 when none,
as Zeek writes it), ``orig_ip_bytes``/``resp_ip_bytes`` are the flow table's IP-level counts, and
``tunnel_parents`` the uids of the tunnels a flow came through
(``diag.flows.carriers``), unset for a flow that was not tunnelled, as Zeek
leaves it.

``uid`` is deterministic, unlike Zeek's random one: ``C`` and the base-62
digits of the first 96 bits of a BLAKE2b digest of the capture point, the
protocol, both endpoints, the VLAN, the index of the flow's first packet in
its file and its first timestamp. The same capture gives the same uids on
every run, and the same connection seen at two points gets two uids (as two
Zeek runs would).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Final

import pandas as pd

from diag.flows.carriers import base62

SEPARATOR: Final = "\t"
SET_SEPARATOR: Final = ","
EMPTY_FIELD: Final = "(empty)"
UNSET_FIELD: Final = "-"

# Zeek's conn.log fields and their types, in the order Zeek writes them.
CONN_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
    ("service", "string"),
    ("duration", "interval"),
    ("orig_bytes", "count"),
    ("resp_bytes", "count"),
    ("conn_state", "string"),
    ("local_orig", "bool"),
    ("local_resp", "bool"),
    ("missed_bytes", "count"),
    ("history", "string"),
    ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"),
    ("resp_pkts", "count"),
    ("resp_ip_bytes", "count"),
    ("tunnel_parents", "set[string]"),
)

# Zeek writes the time of #open and #close like this, in local time.
HEADER_TIME_FORMAT: Final = "%Y-%m-%d-%H-%M-%S"


def escape_byte(char: str) -> str:
    """One character as Zeek escapes it: ``\\x`` and two lower-case hex digits."""
    return f"\\x{ord(char):02x}"


# Characters Zeek's writer escapes: the separator and anything not printable ASCII.
_NEEDS_ESCAPE: Final = re.compile(r"[^\x20-\x7e]")


def escape_text(text: str) -> str:
    """A string field as Zeek writes it: separators and non-printable characters escaped, empty as ``(empty)``.

    A value that would read as one of the markers (``-``, ``(empty)``) gets its
    first character escaped, so an unset field and a string ``-`` stay apart.
    """
    if not text:
        return EMPTY_FIELD
    out = _NEEDS_ESCAPE.sub(lambda match: escape_byte(match.group()), text)
    if text in (UNSET_FIELD, EMPTY_FIELD):
        out = escape_byte(text[0]) + out[1:]
    return out


def format_time(seconds: float) -> str:
    """``time`` and ``interval`` fields: fixed 6 decimals, trailing zeros kept (as Zeek renders them)."""
    return f"{seconds:.6f}"


def conn_uid(capture: str, proto: str, orig: str, resp: str, vlan: int, first_index: int, first_ts: float) -> str:
    """A Zeek-looking connection uid (``C`` and up to 17 base-62 digits) derived from the flow, not random."""
    key = f"{capture}\x00{proto}\x00{orig}\x00{resp}\x00{vlan}\x00{first_index}\x00{first_ts!r}"
    digest = hashlib.blake2b(key.encode(), digest_size=12).digest()
    return "C" + base62(int.from_bytes(digest, "big"))


def _values(flows: pd.DataFrame, column: str) -> list[Any]:
    return flows[column].tolist()


def _texts(flows: pd.DataFrame, column: str) -> list[str]:
    return [escape_text(str(value)) for value in _values(flows, column)]


def _counts(flows: pd.DataFrame, column: str) -> list[str]:
    return [str(int(value)) for value in _values(flows, column)]


def _uid_sets(flows: pd.DataFrame, column: str) -> list[str]:
    """A ``set[string]`` column held as uids joined by ``,`` (the set separator): unset when it is empty."""
    if column not in flows.columns:
        return [UNSET_FIELD] * len(flows)
    return [
        SET_SEPARATOR.join(escape_text(uid) for uid in str(uids).split(",")) if uids else UNSET_FIELD
        for uids in _values(flows, column)
    ]


def _where(present: list[bool], rendered: list[str]) -> list[str]:
    return [text if keep else UNSET_FIELD for text, keep in zip(rendered, present, strict=True)]


def conn_uids(flows: pd.DataFrame) -> list[str]:
    keys = ("capture", "proto", "orig", "resp", "vlan", "first_index", "first_ts")
    return [
        conn_uid(str(c), str(p), str(o), str(r), int(v), int(i), float(t))
        for c, p, o, r, v, i, t in zip(*(_values(flows, key) for key in keys), strict=True)
    ]


def conn_columns(flows: pd.DataFrame) -> list[list[str]]:
    """The flow table rendered as the text of each ``CONN_FIELDS`` field, column by column, in field order."""
    first = flows["first_ts"].to_numpy(dtype="float64")
    durations = (flows["last_ts"].to_numpy(dtype="float64") - first).tolist()
    # As in Zeek's conn.zeek: duration and byte counts only when the connection lasted.
    lasted = [duration > 0 for duration in durations]
    unset = [UNSET_FIELD] * len(flows)
    histories = [str(history) for history in _values(flows, "history")]
    return [
        [format_time(ts) for ts in first.tolist()],  # ts
        conn_uids(flows),  # uid
        _texts(flows, "orig_h"),
        _counts(flows, "orig_p"),
        _texts(flows, "resp_h"),
        _counts(flows, "resp_p"),
        _texts(flows, "proto"),
        unset,  # service: no protocol analyzers
        _where(lasted, [format_time(duration) for duration in durations]),
        _where(lasted, _counts(flows, "orig_bytes")),
        _where(lasted, _counts(flows, "resp_bytes")),
        _texts(flows, "conn_state"),
        unset,  # local_orig: no local networks configured
        unset,  # local_resp
        _counts(flows, "missed_bytes") if "missed_bytes" in flows.columns else unset,  # 0 without a gap, as Zeek
        [escape_text(history) if history else UNSET_FIELD for history in histories],  # empty: unset, as Zeek
        _counts(flows, "orig_pkts"),
        _counts(flows, "orig_ip_bytes") if "orig_ip_bytes" in flows.columns else unset,
        _counts(flows, "resp_pkts"),
        _counts(flows, "resp_ip_bytes") if "resp_ip_bytes" in flows.columns else unset,
        _uid_sets(flows, "tunnel_parents"),
    ]


def header_lines(opened: datetime, path: str = "conn") -> list[str]:
    """The header lines before the first record (without newlines)."""
    return [
        "#separator " + escape_byte(SEPARATOR),
        f"#set_separator{SEPARATOR}{SET_SEPARATOR}",
        f"#empty_field{SEPARATOR}{EMPTY_FIELD}",
        f"#unset_field{SEPARATOR}{UNSET_FIELD}",
        f"#path{SEPARATOR}{path}",
        f"#open{SEPARATOR}{opened.strftime(HEADER_TIME_FORMAT)}",
        "#fields" + SEPARATOR + SEPARATOR.join(name for name, _ in CONN_FIELDS),
        "#types" + SEPARATOR + SEPARATOR.join(zeek_type for _, zeek_type in CONN_FIELDS),
    ]


def close_line(closed: datetime) -> str:
    return f"#close{SEPARATOR}{closed.strftime(HEADER_TIME_FORMAT)}"


def conn_log_lines(flows: pd.DataFrame) -> list[str]:
    """The record lines of a flow table, in its row order."""
    return [SEPARATOR.join(fields) for fields in zip(*conn_columns(flows), strict=True)]


def conn_log(flows: pd.DataFrame, opened: datetime, closed: datetime) -> str:
    """A whole conn.log for one capture point's flows, every line ending in a newline."""
    lines = [*header_lines(opened), *conn_log_lines(flows), close_line(closed)]
    return "\n".join(lines) + "\n"
