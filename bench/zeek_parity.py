"""How close diag's flow table is to Zeek's conn.log on the same capture.

    .venv/bin/python bench/zeek_parity.py conn.log capture.pcap [--tolerance 0.01] [--top 10] [--json]

Run ``zeek -C -r capture.pcap`` (``-C``: diag does not check checksums either), then this with the
conn.log it wrote. diag's flow table is built as ``diag flows`` builds it (ICMP included). Flows are
joined by protocol, the two endpoints (either way round) and the start time within ``--tolerance``
seconds, never by uid (diag's uids are its own); each Zeek connection takes the nearest unjoined diag
flow. Against Zeek's connections, it prints the share found with the same conn_state, the share found
with the same history letter for letter, the connections each side has that the other has not, and the
most frequent differences. A flow joined the other way round (diag's originator is Zeek's responder)
counts as found but counts as different in conn_state and history.

Reads Zeek's TSV logs (the ``#fields`` header) and its JSON logs (one object per line,
``LogAscii::use_json``). Protocols diag has no flows for (Zeek's ``unknown_transport``) are left out of
both shares and counted apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("tcp", "udp", "icmp")
UNSET = "-"


@dataclass(frozen=True)
class Conn:
    """One connection, from either side: the fields the comparison reads."""

    proto: str
    orig: tuple[str, int]
    resp: tuple[str, int]
    ts: float
    conn_state: str
    history: str
    ref: str  # Zeek's uid, or diag's "capture#flow_id"

    @property
    def pair(self) -> tuple[str, tuple[tuple[str, int], ...]]:
        """The protocol and both endpoints, in an order that does not depend on who originated."""
        return self.proto, tuple(sorted((self.orig, self.resp)))


@dataclass
class Parity:
    zeek: int = 0  # Zeek's connections compared (tcp, udp, icmp)
    joined: int = 0
    reversed: int = 0  # joined with originator and responder the other way round
    same_state: int = 0
    same_history: int = 0
    zeek_only: list[Conn] = field(default_factory=list)
    diag_only: list[Conn] = field(default_factory=list)
    other_protocols: int = 0
    state_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    history_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (kind, Zeek, diag) -> uids

    def share(self, count: int) -> float:
        return 100.0 * count / self.zeek if self.zeek else 100.0


def _port(text: str) -> int:
    return int(text) if text not in (UNSET, "") else -1


def read_conn_log(path: Path) -> list[dict[str, Any]]:
    """Zeek's conn.log records as dicts by field name, from the TSV or the JSON-lines form."""
    text = path.read_text(encoding="utf-8", errors="replace")
    first = text.lstrip()[:1]
    if first == "{":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    fields: list[str] | None = None
    separator = "\t"
    records = []
    for line in text.splitlines():
        if line.startswith("#separator"):
            separator = line.split(" ", 1)[1].encode().decode("unicode_escape")
        elif line.startswith("#fields"):
            fields = line.split(separator)[1:]
        elif line.startswith("#") or not line:
            continue
        else:
            if fields is None:
                raise ValueError("no #fields line before the first record")
            records.append(dict(zip(fields, line.split(separator), strict=True)))
    return records


def zeek_conns(records: list[dict[str, Any]]) -> tuple[list[Conn], int]:
    """(Zeek's tcp/udp/icmp connections, how many records had another protocol)."""
    conns, others = [], 0
    for record in records:
        proto = str(record["proto"])
        if proto not in PROTOCOLS:
            others += 1
            continue
        history = str(record.get("history", UNSET))
        conns.append(
            Conn(
                proto=proto,
                orig=(str(record["id.orig_h"]), _port(str(record["id.orig_p"]))),
                resp=(str(record["id.resp_h"]), _port(str(record["id.resp_p"]))),
                ts=float(record["ts"]),
                conn_state=str(record.get("conn_state", UNSET)),
                history="" if history in (UNSET, "None") else history,
                ref=str(record.get("uid", "?")),
            )
        )
    return conns, others


def diag_conns(capture: Path) -> list[Conn]:
    """diag's flow table of the capture, as ``diag flows`` builds it."""
    from diag.capture import read_capture
    from diag.flows import build_flows

    flows = build_flows(read_capture(capture), icmp=True)
    columns = ("proto", "orig_h", "orig_p", "resp_h", "resp_p", "first_ts", "conn_state", "history", "capture",
               "flow_id")
    return [
        Conn(proto=str(proto), orig=(str(orig_h), int(orig_p)), resp=(str(resp_h), int(resp_p)), ts=float(ts),
             conn_state=str(state), history=str(history), ref=f"{point}#{flow}")
        for proto, orig_h, orig_p, resp_h, resp_p, ts, state, history, point, flow in zip(
            *(flows[name].tolist() for name in columns), strict=True
        )
    ]


def compare(zeek: list[Conn], ours: list[Conn], tolerance: float, other_protocols: int = 0) -> Parity:
    """Join each Zeek connection with the nearest unjoined diag flow of the same pair within ``tolerance`` s."""
    parity = Parity(zeek=len(zeek), other_protocols=other_protocols)
    waiting: dict[Any, list[Conn]] = {}
    for conn in sorted(ours, key=lambda c: c.ts):
        waiting.setdefault(conn.pair, []).append(conn)
    for theirs in sorted(zeek, key=lambda c: c.ts):
        candidates = waiting.get(theirs.pair, [])
        best = min(candidates, key=lambda c: abs(c.ts - theirs.ts), default=None)
        if best is None or abs(best.ts - theirs.ts) > tolerance:
            parity.zeek_only.append(theirs)
            continue
        candidates.remove(best)
        parity.joined += 1
        same_way = (best.orig, best.resp) == (theirs.orig, theirs.resp)
        parity.reversed += not same_way
        state = (theirs.conn_state, best.conn_state if same_way else f"{best.conn_state} (reversed)")
        history = (theirs.history, best.history if same_way else f"{best.history} (reversed)")
        if state[0] == state[1]:
            parity.same_state += 1
        else:
            parity.state_pairs[state] += 1
            parity.examples.setdefault(("state", *state), f"{theirs.ref} = {best.ref}")
        if history[0] == history[1]:
            parity.same_history += 1
        else:
            parity.history_pairs[history] += 1
            parity.examples.setdefault(("history", *history), f"{theirs.ref} = {best.ref}")
    parity.diag_only = [conn for left in waiting.values() for conn in left]
    return parity


def report(parity: Parity, top: int) -> str:
    lines = [
        f"Zeek connections compared: {parity.zeek} (tcp, udp, icmp; {parity.other_protocols} of other protocols "
        "left out)",
        f"found in diag's flow table: {parity.joined} ({parity.share(parity.joined):.2f} %), "
        f"{parity.reversed} of them with the roles the other way round",
        f"same conn_state: {parity.same_state} ({parity.share(parity.same_state):.2f} %)",
        f"same history, letter for letter: {parity.same_history} ({parity.share(parity.same_history):.2f} %)",
        f"only in Zeek's conn.log: {len(parity.zeek_only)}; only in diag's flow table: {len(parity.diag_only)}",
    ]
    for title, pairs, kind in (("conn_state", parity.state_pairs, "state"), ("history", parity.history_pairs,
                                                                              "history")):
        if pairs:
            lines += ["", f"top {title} differences (Zeek -> diag, count, e.g. Zeek uid = diag capture#flow_id):"]
            for (theirs, ours), count in pairs.most_common(top):
                example = parity.examples[(kind, theirs, ours)]
                lines.append(f"  {theirs or '(none)'} -> {ours or '(none)'}  {count}  e.g. {example}")
    for title, conns in (("only in Zeek", parity.zeek_only), ("only in diag", parity.diag_only)):
        if conns:
            lines += ["", f"{title}, by protocol and conn_state:"]
            for (proto, state), count in Counter((c.proto, c.conn_state) for c in conns).most_common(top):
                lines.append(f"  {proto} {state}  {count}")
    return "\n".join(lines) + "\n"


def as_json(parity: Parity, top: int) -> dict[str, Any]:
    return {
        "zeek": parity.zeek,
        "joined": parity.joined,
        "reversed": parity.reversed,
        "same_conn_state": parity.same_state,
        "same_history": parity.same_history,
        "same_conn_state_pct": round(parity.share(parity.same_state), 4),
        "same_history_pct": round(parity.share(parity.same_history), 4),
        "zeek_only": [c.ref for c in parity.zeek_only],
        "diag_only": [c.ref for c in parity.diag_only],
        "other_protocols": parity.other_protocols,
        "conn_state_differences": [[z, d, n] for (z, d), n in parity.state_pairs.most_common(top)],
        "history_differences": [[z, d, n] for (z, d), n in parity.history_pairs.most_common(top)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("conn_log", type=Path, help="Zeek's conn.log of the capture (TSV or JSON lines)")
    parser.add_argument("capture", type=Path, help="the capture Zeek read")
    parser.add_argument("--tolerance", type=float, default=0.01, help="start times this close (s) may join")
    parser.add_argument("--top", type=int, default=10, help="differences listed per kind")
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object")
    args = parser.parse_args(argv)
    for path in (args.conn_log, args.capture):
        if not path.is_file():
            print(f"zeek_parity: {path}: no such file", file=sys.stderr)
            return 2
    try:
        zeek, others = zeek_conns(read_conn_log(args.conn_log))
    except (ValueError, KeyError) as error:
        print(f"zeek_parity: {args.conn_log}: not a Zeek conn.log ({error})", file=sys.stderr)
        return 2
    from diag.errors import DiagError

    try:
        ours = diag_conns(args.capture)
    except DiagError as error:
        print(f"zeek_parity: {error}", file=sys.stderr)
        return 2
    parity = compare(zeek, ours, args.tolerance, others)
    sys.stdout.write(json.dumps(as_json(parity, args.top)) + "\n" if args.json else report(parity, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
