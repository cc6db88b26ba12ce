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
local networks configured, which is what Zeek writes then too),
``missed_bytes`` (no stream reassembly, so content gaps are not measured),
``orig_ip_bytes``/``resp_ip_bytes`` (the flow table has no IP-level byte
counts) and ``tunnel_parents`` (the flow table names no carrier flow; Zeek
also leaves it unset for a connection that was not tunnelled).

``uid`` is deterministic, unlike Zeek's random one: ``C`` and the base-62
digits of the first 96 bits of a BLAKE2b digest of the capture point, the
protocol, both endpoints, the VLAN, the index of the flow's first packet in
its file and its first timestamp. The same capture gives the same uids on
every run, and the same connection seen at two points gets two uids (as two
Zeek runs would).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import pandas as pd

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

# A field value before rendering: None is unset; a tuple is a set's elements.
FieldValue = str | int | float | bool | tuple[str, ...] | None

# Zeek writes the time of #open and #close like this, in local time.
HEADER_TIME_FORMAT: Final = "%Y-%m-%d-%H-%M-%S"

_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def escape_byte(char: str) -> str:
    """One character as Zeek escapes it: ``\\x`` and two lower-case hex digits."""
    return f"\\x{ord(char):02x}"


def escape_text(text: str, separators: Sequence[str] = (SEPARATOR,)) -> str:
    """Escape the separators and non-printable characters the way Zeek's writer does.

    A value that would read as one of the reserved words (``-``, ``(empty)``)
    gets its first character escaped, so an unset field and a string ``-``
    stay apart.
    """
    out = "".join(
        escape_byte(char) if char in separators or not char.isprintable() or ord(char) > 0x7E else char for char in text
    )
    if text in (UNSET_FIELD, EMPTY_FIELD):
        out = escape_byte(text[0]) + out[1:]
    return out


def format_time(seconds: float) -> str:
    """``time`` and ``interval`` fields: fixed 6 decimals, trailing zeros kept (as Zeek renders them)."""
    return f"{seconds:.6f}"


def format_value(value: FieldValue, zeek_type: str) -> str:
    """One field as text: unset ``-``, empty string or set ``(empty)``, booleans ``T``/``F``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNSET_FIELD
    if zeek_type in ("time", "interval") and isinstance(value, int | float):
        return format_time(float(value))
    if zeek_type == "bool":
        return "T" if value else "F"
    if isinstance(value, tuple):
        if not value:
            return EMPTY_FIELD
        return SET_SEPARATOR.join(escape_text(item, (SEPARATOR, SET_SEPARATOR)) for item in sorted(value))
    if isinstance(value, bool | int):
        return str(int(value))
    text = str(value)
    return escape_text(text) if text else EMPTY_FIELD


def base62(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 62)
        digits = _BASE62[digit] + digits
        if number == 0:
            return digits


def conn_uid(capture: str, proto: str, orig: str, resp: str, vlan: int, first_index: int, first_ts: float) -> str:
    """A Zeek-looking connection uid (``C`` and up to 17 base-62 digits) derived from the flow, not random."""
    key = f"{capture}\x00{proto}\x00{orig}\x00{resp}\x00{vlan}\x00{first_index}\x00{first_ts!r}"
    digest = hashlib.blake2b(key.encode(), digest_size=12).digest()
    return "C" + base62(int.from_bytes(digest, "big"))


def conn_fields(flow: Mapping[str, Any]) -> tuple[FieldValue, ...]:
    """One flow-table row (as a dict) as the values of ``CONN_FIELDS``, in order (None: unset)."""
    first_ts = float(flow["first_ts"])
    duration = float(flow["last_ts"]) - first_ts
    lasted = duration > 0
    history = str(flow["history"])
    return (
        first_ts,
        conn_uid(
            str(flow["capture"]),
            str(flow["proto"]),
            str(flow["orig"]),
            str(flow["resp"]),
            int(flow["vlan"]),
            int(flow["first_index"]),
            first_ts,
        ),
        str(flow["orig_h"]),
        int(flow["orig_p"]),
        str(flow["resp_h"]),
        int(flow["resp_p"]),
        str(flow["proto"]),
        None,  # service
        duration if lasted else None,
        int(flow["orig_bytes"]) if lasted else None,
        int(flow["resp_bytes"]) if lasted else None,
        str(flow["conn_state"]),
        None,  # local_orig
        None,  # local_resp
        None,  # missed_bytes
        history or None,  # Zeek leaves an empty history unset
        int(flow["orig_pkts"]),
        None,  # orig_ip_bytes
        int(flow["resp_pkts"]),
        None,  # resp_ip_bytes
        None,  # tunnel_parents
    )


def format_line(values: Sequence[FieldValue]) -> str:
    """One log line (without its newline) from the values of ``CONN_FIELDS``."""
    return SEPARATOR.join(
        format_value(value, zeek_type) for value, (_name, zeek_type) in zip(values, CONN_FIELDS, strict=True)
    )


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


def conn_log_lines(flows: pd.DataFrame) -> Iterable[str]:
    """The record lines of a flow table, in its row order."""
    for flow in flows.to_dict(orient="records"):
        yield format_line(conn_fields({str(key): value for key, value in flow.items()}))


def conn_log(flows: pd.DataFrame, opened: datetime, closed: datetime) -> str:
    """A whole conn.log for one capture point's flows, every line ending in a newline."""
    lines = [*header_lines(opened), *conn_log_lines(flows), close_line(closed)]
    return "\n".join(lines) + "\n"
