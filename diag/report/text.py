"""The text report: what an on-call engineer reads first, in plain text that also reads well in a log.

Order: the verdict (cause, what happened, where the symptom was generated,
the evidence, what was ruled out, what would fix it), then the other findings
grouped by cause and service, one line a group, the most significant first
and at most ``DEFAULT_GROUP_LINES`` of them (``all_findings`` lists every
finding instead), then per capture the problem flows (resets, unanswered
SYNs, one-sided flows, SYN retransmissions) and a count of the healthy ones.
A busy capture with thousands of findings thus still reads in one screen. Colour is optional ANSI on top of the same
text, so a terminal and a log file show the same words.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from diag.capture.info import CaptureInfo
from diag.report import Cause, Finding, PacketRef, Report
from diag.report.flowdigest import CaptureFlows
from diag.report.flowkinds import PROBLEM_ORDER, RESET, UNANSWERED, healthy_summaries
from diag.report.flowkinds import problem_kind as problem_kind  # where callers long imported it from
from diag.report.significance import Group

DEFAULT_PROBLEM_LINES: Final = 20
DEFAULT_GROUP_LINES: Final = 10
WIDTH: Final = 100  # prose is wrapped to this; flow lines are kept whole so they can be grepped


@dataclass(frozen=True)
class _Style:
    color: bool

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def bad(self, text: str) -> str:
        return self._wrap("1;31", text)

    def warn(self, text: str) -> str:
        return self._wrap("33", text)

    def good(self, text: str) -> str:
        return self._wrap("32", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def format_ts(seconds: float) -> str:
    """A capture timestamp as UTC with microseconds: ``2025-11-27 15:34:15.195866 UTC``."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _flow_line(flow: Mapping[Hashable, Any]) -> str:
    parts = [f"{flow['proto']} {flow['orig']} -> {flow['resp']}"]
    if flow["vlan"] >= 0:
        parts.append(f"vlan {flow['vlan']}")
    parts.append(f"{flow['history'] or '-'} {flow['conn_state']}")
    parts.append(f"pkts {flow['orig_pkts']}/{flow['resp_pkts']}")
    details = []
    rsts = flow["rsts"]
    if rsts:
        shown = ", ".join(f"frame {r['index'] + 1} from {r['from']}" for r in rsts[:4])
        more = f" (+{len(rsts) - 4})" if len(rsts) > 4 else ""
        details.append(f"RST {shown}{more}")
    if flow["syn_retransmits"]:
        details.append(f"{flow['syn_retransmits']} SYN retransmissions")
    if flow["retransmits"]:
        details.append(f"{flow['retransmits']} retransmissions")
    details.append(f"first frame {flow['first_index'] + 1} at {format_ts(flow['first_ts'])}")
    return "  ".join(parts) + "  " + "; ".join(details)


def _wrapped(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [first]


def _bullets(items: Iterable[str]) -> list[str]:
    return [line for item in items for line in _wrapped(item, "    - ", "      ")]


# Each capture point's files in time order (``CaptureInfo.files``), by the point's name.
PointFiles = Mapping[str, Sequence[str]]


def packet_place(ref: PacketRef, files: PointFiles) -> str:
    """``pod frame 254``, and the file it is in when the point was read from several (a ring buffer):
    the frame counts within that file, so without its name a reader of five ring files cannot find it."""
    place = f"{ref.capture} frame {ref.frame}"
    name = ref.file_in(files.get(ref.capture, ()))
    return place if name is None else f"{place} of {name}"


def _finding_lines(finding: Finding, style: _Style, *, headline: bool, files: PointFiles) -> list[str]:
    lines: list[str] = []
    cause = style.bad(finding.cause) if finding.cause is not Cause.HEALTHY else style.good(finding.cause)
    title = "VERDICT" if headline else "FINDING"
    lines.append(f"{style.bold(title)}: {cause}  (confidence {finding.confidence:.2f})")
    if finding.summary:
        lines += _wrapped(finding.summary, "  ", "  ")
    lines.append(f"  connection   {finding.proto} {finding.client} -> {finding.server}")
    if finding.packet is not None:
        ref = finding.packet
        lines.append(f"  symptom      {packet_place(ref, files)} at {format_ts(ref.ts)}")
    if finding.claimed_src:
        lines.append(f"  claimed from {finding.claimed_src}")
    lines.append(f"  generated at {finding.origin or 'not established from these captures'}")
    if finding.evidence:
        lines.append("  evidence:")
        lines += _bullets(finding.evidence)
    if finding.ruled_out:
        lines.append("  ruled out:")
        lines += _bullets(f"{r.cause}: {r.why}" for r in finding.ruled_out)
    if finding.fixes:
        lines.append("  fixes:")
        lines += _bullets(finding.fixes)
    return lines


def render_finding(finding: Finding, *, color: bool = False) -> str:
    """One finding as the report shows it (cause, connection, symptom, evidence, ruled out, fixes)."""
    return "\n".join(_finding_lines(finding, _Style(color), headline=False, files={})) + "\n"


def _verdict_section(report: Report, style: _Style, all_findings: bool, group_limit: int) -> list[str]:
    if not report.findings:
        kinds: Mapping[str, int]
        if report.flow_digest is not None:
            counted: Counter[str] = Counter()
            for capture in report.flow_digest.captures.values():
                counted.update(capture.problems)
            kinds = counted
        else:
            kinds = Counter(kind for kind in report.flow_kinds.tolist() if kind is not None)
        if not kinds:
            return [f"{style.bold('VERDICT')}: {style.good(Cause.HEALTHY)}  no resets or lost replies found"]
        seen = ", ".join(f"{kinds[kind]} {kind}" for kind in PROBLEM_ORDER if kind in kinds)
        return [f"{style.bold('VERDICT')}: {style.warn('not diagnosed')}  problem flows seen ({seen}); see below"]
    findings, ranking = report.findings, report.ranking
    top = ranking.top
    assert top is not None
    files = report.capture_files()  # the JSON's too: the first point of a name
    lines = _finding_lines(findings[top], style, headline=True, files=files)
    why = ranking.why_first(top)
    if why:
        lines += _wrapped(why, "  ranked       ", "               ")
    others = len(findings) - 1
    if not others:
        return lines
    lines.append("")
    if all_findings:
        lines.append(style.bold(f"OTHER FINDINGS ({others}, most significant first)"))
        for index in ranking.order:
            if index != top:
                finding = findings[index]
                lines.append(
                    f"  {finding.cause:<17} {finding.proto} {finding.client} -> {finding.server}  "
                    f"at {_where(finding, files)}  {finding.summary}"
                )
        return lines
    groups = _other_groups(ranking.groups, top)
    plural = "s" if len(groups) != 1 else ""
    lines.append(style.bold(f"OTHER FINDINGS ({others})") + f"  in {len(groups)} group{plural} of cause and service")
    for group in groups[:group_limit]:
        lines.append(_group_line(group, findings[group.members[0]], files))
    hidden = groups[group_limit:]
    if hidden:
        causes: Counter[str] = Counter()
        for group in hidden:
            causes[group.cause] += group.count
        listed = ", ".join(f"{count} {cause}" for cause, count in causes.most_common())
        lines.append(style.dim(f"  ... and {len(hidden)} more groups ({listed}); --all lists every finding"))
    return lines


def _where(finding: Finding, files: PointFiles) -> str:
    return packet_place(finding.packet, files) if finding.packet else "-"


def _other_groups(groups: list[Group], verdict: int) -> list[Group]:
    """The groups without the verdict itself (it is shown in full above); a group left empty goes."""
    others = []
    for group in groups:
        if verdict in group.members:
            rest = tuple(i for i in group.members if i != verdict)
            if not rest:
                continue
            group = Group(group.cause, group.proto, group.server, len(rest), group.confidence, rest)
        others.append(group)
    return others


def _group_line(group: Group, example: Finding, files: PointFiles) -> str:
    """One group: how many, cause, service, best confidence, and its most significant member as the example."""
    return (
        f"  {group.count:>6} x {group.cause:<17} {group.proto} {group.server:<21} "
        f"(confidence up to {group.confidence:.2f})  "
        f"e.g. {example.client} at {_where(example, files)}: {example.summary}"
    )


def _capture_header(info: CaptureInfo, n_flows: int, style: _Style) -> str:
    header = f"CAPTURE {info.name}  ({info.path}, {info.packets} packets, {info.link_type or 'unknown link'}"
    header += f", {n_flows} flows"
    if info.skipped:
        header += f", {info.skipped} records skipped"
    return style.bold(header + ")")


def _shown_positions(
    rows: np.ndarray, kinds: np.ndarray, show_all: bool, limit: int
) -> tuple[dict[str, int], dict[str, np.ndarray], np.ndarray]:
    """One capture's rows (positions ``rows``, of problem kinds ``kinds``) as its section lists them: how many
    of each problem kind, the rows listed of each (at most ``limit``, unless ``show_all``), and the healthy rows."""
    is_problem = kinds != None  # noqa: E711 (element-wise against None)
    problem_rows = rows[is_problem]
    problem_kind = kinds[is_problem]
    by_kind = {kind: problem_rows[problem_kind == kind] for kind in PROBLEM_ORDER}
    counts = {kind: len(group) for kind, group in by_kind.items() if len(group)}
    if not show_all:
        by_kind = {kind: group[:limit] for kind, group in by_kind.items()}
    return counts, by_kind, rows[~is_problem]


def _capture_section(
    info: CaptureInfo,
    counts: CaptureFlows,
    shown: Mapping[str, np.ndarray],
    healthy_rows: np.ndarray | None,
    records: Mapping[int, Mapping[Hashable, Any]],
    style: _Style,
) -> list[str]:
    """One capture's problem flows and healthy summary: ``counts`` says how many flows of each kind it has and
    its healthy line, ``shown`` which rows it lists of each kind (positions, the keys of ``records``, the rows
    as dicts); with ``healthy_rows``, every healthy row is listed too."""
    lines = [_capture_header(info, counts.flows, style)]
    if counts.flows == 0:
        lines.append("  no TCP or UDP flows")
        return lines
    for kind in PROBLEM_ORDER:
        count = counts.problems.get(kind, 0)
        if count == 0:
            continue
        label = style.bad(kind.upper()) if kind in (RESET, UNANSWERED) else style.warn(kind.upper())
        lines.append(f"  {label} ({count})")
        group = shown.get(kind, np.zeros(0, dtype=np.int64)).tolist()
        lines += [f"    {_flow_line(records[row])}" for row in group]
        if len(group) < count:
            lines.append(style.dim(f"    ... and {count - len(group)} more (--flows all lists every flow)"))
    lines.append(f"  {style.good(counts.healthy)}")
    if healthy_rows is not None:
        lines += [f"    {_flow_line(records[row])}" for row in healthy_rows.tolist()]
    return lines


def _capture_sections(report: Report, style: _Style, show_all: bool, limit: int) -> list[list[str]]:
    """Every capture's section, in the report's order of captures.

    The rows every section lists are taken from the flow table at once, and the healthy rows only counted
    (``healthy_summaries``): a copy of each point's whole table, then of each kind's rows of it, cost more
    than the rest of a 4-point report.
    """
    table = report.flows
    # Every row's problem kind, and each capture's rows by position, with the capture column numbered once.
    kinds = report.flow_kinds
    codes: np.ndarray = np.zeros(0, dtype=np.int64)
    code_of: dict[str, int] = {}
    if not table.empty:
        codes, names = pd.factorize(table["capture"])
        code_of = {str(name): code for code, name in enumerate(names.tolist())}
    all_rows = np.arange(len(table))
    captures = []
    for info in report.captures:
        code = code_of.get(info.name)
        rows = np.zeros(0, dtype=np.int64) if code is None else np.flatnonzero(codes == code)
        captures.append(all_rows if len(rows) == len(table) else rows)
    shown = [_shown_positions(rows, kinds[rows], show_all, limit) for rows in captures]
    # A capture the flow digest counts takes its numbers from there (its rows here are only those shown): only
    # the others' healthy rows are counted.
    digested = report.flow_digest.captures if report.flow_digest is not None else {}
    counted = [place for place, info in enumerate(report.captures) if info.name not in digested]
    healthy = healthy_summaries(table, [shown[place][2] for place in counted]) if counted else []
    line_of = dict(zip(counted, healthy, strict=True))
    counts = [
        digested[info.name] if info.name in digested else CaptureFlows(len(rows), problems, line_of[place])
        for place, (info, rows, (problems, _, _)) in enumerate(zip(report.captures, captures, shown, strict=True))
    ]
    listed = [group for _, by_kind, _ in shown for group in by_kind.values()]
    if show_all:
        listed += [healthy_rows for _, _, healthy_rows in shown]
    wanted = np.unique(np.concatenate(listed)) if listed else np.zeros(0, dtype=np.int64)
    records = dict(zip(wanted.tolist(), table.iloc[wanted].to_dict(orient="records"), strict=True))
    return [
        _capture_section(info, count, by_kind, healthy_rows if show_all else None, records, style)
        for info, count, (_, by_kind, healthy_rows) in zip(report.captures, counts, shown, strict=True)
    ]


def _clock_lines(report: Report) -> list[str]:
    if not report.clock_offsets:
        return []
    lines = [f"CLOCKS relative to {report.clock_reference}:"]
    for name, offset in report.clock_offsets.items():
        lines.append(f"  {name:<12} {offset.offset_s:+.6f} s  (± {offset.uncertainty_s:.6f} s)")
    return lines


def render_text(
    report: Report,
    *,
    color: bool = False,
    flows: str = "problems",
    limit: int = DEFAULT_PROBLEM_LINES,
    all_findings: bool = False,
    group_limit: int = DEFAULT_GROUP_LINES,
) -> str:
    """The report as text: verdict first, the other findings by group, then per capture its problem flows.

    ``flows="all"`` lists every flow instead of at most ``limit`` per problem
    kind; ``all_findings`` lists every finding instead of at most
    ``group_limit`` groups.
    """
    if report.flow_digest is not None and flows == "all":
        raise ValueError("this report holds only the flow rows its summary shows, not every flow")
    style = _Style(color)
    lines = _verdict_section(report, style, all_findings, group_limit)
    clock = _clock_lines(report)
    if clock:
        lines += ["", *clock]
    for section in _capture_sections(report, style, flows == "all", limit):
        lines += ["", *section]
    if report.warnings:
        lines.append("")
        lines.append(style.warn(f"WARNINGS ({len(report.warnings)})"))
        lines += [f"  {w}" for w in _first(report.warnings, 20)]
        if len(report.warnings) > 20:
            lines.append(f"  ... and {len(report.warnings) - 20} more")
    return "\n".join(lines) + "\n"


def _first(items: Iterable[str], n: int) -> list[str]:
    return [item for _, item in zip(range(n), items, strict=False)]
