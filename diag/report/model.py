"""The report's values: findings, their causes and the Report that holds one analysis.

These are the types the diagnosis produces and the renderers (``text``,
``jsondoc``, the plots) consume. They mirror the ``diag.report/1`` JSON
contract one to one, so notebooks and scripts get the same facts as the
``--json`` output.
"""

from __future__ import annotations

from collections.abc import MutableSequence, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson
import pandas as pd

from diag.capture.info import CaptureInfo
from diag.correlate.clock import ClockOffset
from diag.gcpause import collector_paused
from diag.report.facts import Fact, note, render_all
from diag.report.flowcap import FLOW_LIMIT, cap_flows, flows_to_json
from diag.report.flowkinds import problem_kinds
from diag.report.significance import Group, Ranking, Severity

if TYPE_CHECKING:
    from diag.report.flowdigest import FlowDigest

# The name and version of the JSON document's contract (``Report.to_json``).
SCHEMA = "diag.report/1"


class FlowStore(Protocol):
    """Every flow row of an analysis, kept on disk when the table did not fit in memory (``diag.spilled``)."""

    def load(self) -> pd.DataFrame:
        """The whole flow table, read back (for the outputs that show every flow)."""
        ...

    def close(self) -> None:
        """Remove the files."""
        ...


class Cause(StrEnum):
    """The cause vocabulary; each member's value is the string the JSON and the text report carry.

    The names only. Everything else about a cause (what it means, its rules,
    its severity class, whether its RST is forged, its fixes, what rules it
    out) is declared once, in its module of the registry under
    ``diag.diagnose.causes``. The names stay here, in the layer below the
    diagnosis, because the type checker needs the members statically and
    everything that handles findings (this module, the renderings, the plots)
    names the type; adding a cause adds its member here besides its module.
    """

    ASYMMETRIC_RETURN = "asymmetric-return"
    PORT_CLOSED = "port-closed"
    PEER_RESET = "peer-reset"
    IDLE_TIMEOUT = "idle-timeout"
    INJECTED_RESET = "injected-reset"
    TUPLE_REUSE = "tuple-reuse"
    POLICY_REJECT = "policy-reject"
    SILENT_DROP = "silent-drop"
    HEALTHY = "healthy"
    UNKNOWN = "unknown"


CAUSES: tuple[str, ...] = tuple(cause.value for cause in Cause)


@dataclass(frozen=True)
class PacketRef:
    """Where a symptom was first seen: capture name, 0-based index in its file, timestamp, which file.

    ``file`` is the position in the point's ``CaptureInfo.files`` (0 for a
    point read from one file); the index counts within that file.
    """

    capture: str
    index: int
    ts: float
    file: int = 0

    @property
    def frame(self) -> int:
        """Wireshark's frame.number: 1-based, what a reader types into its filter bar."""
        return self.index + 1

    def file_in(self, files: Sequence[str]) -> str | None:
        """The name of the file the packet is in, of its point's files (``CaptureInfo.files``), when there are
        several (a ring buffer): the index counts within that file. None for a point of one file."""
        return files[self.file] if len(files) > 1 and 0 <= self.file < len(files) else None

    def to_json(self, files: tuple[str, ...] = ()) -> dict[str, Any]:
        """``file`` is named only when the point has several files (``files``, its CaptureInfo.files)."""
        name = self.file_in(files)
        return {"capture": self.capture, "index": self.index, "frame": self.frame, "file": name, "ts": self.ts}


class CauseEntry(Protocol):
    """What a finding takes from its cause's entry in the registry (``diag.diagnose.causes.spec.CauseSpec``,
    above this layer, is one): the cause, its class in the ranking and whether its RST is forged."""

    @property
    def cause(self) -> Cause: ...

    @property
    def severity(self) -> Severity: ...

    @property
    def forged(self) -> bool: ...


@dataclass(frozen=True)
class RuledOut:
    cause: Cause
    why: str


@dataclass(frozen=True)
class Finding:
    """One symptom (a RST, an unanswered SYN or datagram) and the verdict on its cause.

    ``severity`` and ``forged`` are what the cause's registry entry declares
    (``CauseSpec.severity``, ``CauseSpec.forged``): the ranking, the plots and
    the live watch read them here, below the diagnosis, and never from a table
    of causes of their own. Neither is in the JSON document (its verdict and
    groups are where they show). The package makes every finding with
    ``Finding.of``, from the entry, so the cause, its class and its forged
    flag cannot disagree (tests/test_causes.py fails on a ``Finding(...)``
    written anywhere else).
    """

    cause: Cause
    confidence: float
    proto: str
    client: str  # "addr:port" as the client addressed the connection
    server: str
    packet: PacketRef | None
    claimed_src: str | None
    origin: str | None
    summary: str
    evidence: tuple[str, ...] = ()
    ruled_out: tuple[RuledOut, ...] = ()
    fixes: tuple[str, ...] = ()
    # The evidence as structured facts; ``evidence`` is their rendering. Give either: facts render to the
    # evidence, and evidence given alone (a finding made elsewhere, e.g. from AWS state) travels as notes.
    facts: tuple[Fact, ...] = ()
    severity: Severity = field(kw_only=True)  # the cause's class, the ranking's first key
    forged: bool = field(kw_only=True)  # the RST is made by a box in someone else's name

    def __post_init__(self) -> None:
        if self.facts and not self.evidence:
            object.__setattr__(self, "evidence", render_all(self.facts))
        elif self.evidence and not self.facts:
            object.__setattr__(self, "facts", tuple(note(line) for line in self.evidence))

    @classmethod
    def of(
        cls,
        entry: CauseEntry,
        *,
        confidence: float,
        proto: str,
        client: str,
        server: str,
        packet: PacketRef | None,
        claimed_src: str | None,
        origin: str | None,
        summary: str,
        evidence: tuple[str, ...] = (),
        ruled_out: tuple[RuledOut, ...] = (),
        fixes: tuple[str, ...] = (),
        facts: tuple[Fact, ...] = (),
    ) -> Finding:
        """A finding of ``entry``'s cause (its registry entry, ``diag.diagnose.causes.spec_of(cause)``), with the
        class and the forged flag the entry declares; the rest is the finding's own."""
        return cls(
            cause=entry.cause,
            confidence=confidence,
            proto=proto,
            client=client,
            server=server,
            packet=packet,
            claimed_src=claimed_src,
            origin=origin,
            summary=summary,
            evidence=evidence,
            ruled_out=ruled_out,
            fixes=fixes,
            facts=facts,
            severity=entry.severity,
            forged=entry.forged,
        )

    def to_json(self, files: tuple[str, ...] = ()) -> dict[str, Any]:
        """The finding's JSON object; ``files`` are its capture point's files, to name the packet's one."""
        return {
            "cause": str(self.cause),
            "confidence": round(self.confidence, 3),
            "proto": self.proto,
            "flow": {"client": self.client, "server": self.server},
            "packet": self.packet.to_json(files) if self.packet else None,
            "claimed_src": self.claimed_src,
            "origin": self.origin,
            "summary": self.summary,
            "evidence": list(self.evidence),
            "facts": [fact.to_json() for fact in self.facts],
            "ruled_out": [{"cause": str(r.cause), "why": r.why} for r in self.ruled_out],
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True)
class Report:
    """Everything one analysis produced, built in one go by ``diag.analysis.analyze``.

    ``packets``, ``flows`` and ``matches`` are DataFrames for drilling down in
    Python; only ``flows`` (as records) goes into the JSON document. A report
    made on a cluster holds no packets, and only the flow rows the text and
    the JSON show, with ``flow_digest`` counting the rest.
    """

    captures: list[CaptureInfo]
    packets: pd.DataFrame
    flows: pd.DataFrame
    # A tuple (a list given is made one), or an analysis in passes' findings kept on disk
    # (``diag.spilledfindings``): read-only either way, so the ranking made of them cannot go stale.
    findings: Sequence[Finding] = ()
    matches: pd.DataFrame | None = None
    clock_reference: str | None = None
    clock_offsets: dict[str, ClockOffset] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Set when ``flows`` holds only the rows the reports show, not every flow (``diag.report.flowdigest``).
    flow_digest: FlowDigest | None = None
    # An analysis in passes whose flow table did not fit in memory: the whole table, on disk (``diag.passes``).
    flow_store: FlowStore | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Findings that could change in place would leave the ranking, worked out once, describing others.
        if isinstance(self.findings, MutableSequence):
            object.__setattr__(self, "findings", tuple(self.findings))

    @cached_property
    def ranking(self) -> Ranking[Finding]:
        """The findings ranked (``diag.report.significance``), once per report: the verdict, the groups, the
        text's order and the JSON document all read it. ``findings`` cannot change once the report is made (a
        tuple, or the read-only findings on disk); a report of other findings is another report
        (``dataclasses.replace``), with its own ranking."""
        return Ranking(self.findings)

    @cached_property
    def flow_kinds(self) -> np.ndarray:
        """Each flow row's problem kind (``diag.report.flowkinds.problem_kinds``, None when it is healthy), once
        per report: the text's capture sections and the JSON's cap on flow rows both read it."""
        if self.flows.empty:
            return np.zeros(0, dtype=object)
        return np.array(problem_kinds(self.flows), dtype=object)

    @property
    def verdict(self) -> Finding | None:
        """The most significant finding, None when every flow was healthy."""
        return self.ranking.verdict

    @property
    def groups(self) -> list[Group]:
        """The findings grouped by cause and service, the verdict's group first."""
        return self.ranking.groups

    # The report's JSON form, as each value here makes its own: the ``diag.report/1`` document (described in
    # docs/analyze.md), written out by ``diag.report.jsondoc``.

    def verdict_json(self) -> dict[str, Any]:
        """The document's ``verdict``: the most significant finding's cause, or healthy."""
        verdict = self.verdict
        if verdict is None:
            return {"cause": str(Cause.HEALTHY), "confidence": 1.0, "summary": "no resets or lost replies found"}
        return {"cause": str(verdict.cause), "confidence": round(verdict.confidence, 3), "summary": verdict.summary}

    def to_json(self, flow_limit: int | None = FLOW_LIMIT) -> dict[str, Any]:
        """The ``diag.report/1`` document that ``--json`` writes: every finding, and ``groups`` counting them by
        cause and service.

        ``groups`` come most significant first; their ``examples`` are indices into ``findings``.
        ``flows`` holds at most ``flow_limit`` rows (None: all; see ``diag.report.flowcap``).
        """
        files = self.capture_files()
        return self.document(flow_limit, [finding_json(finding, files) for finding in self.findings])

    def dumps(self, flow_limit: int | None = FLOW_LIMIT) -> str:
        """``to_json``'s document as text, indented by two spaces."""
        # orjson: the standard library's encoder falls back to pure Python as soon as it indents, which cost
        # seconds on a busy capture's tens of thousands of flows; the document is the same, key order included.
        with collector_paused():  # tens of thousands of dicts, none in a cycle (see diag.gcpause)
            return orjson.dumps(self.to_json(flow_limit), option=orjson.OPT_INDENT_2).decode()

    def document(self, flow_limit: int | None, findings: list[Any]) -> dict[str, Any]:
        """``to_json``'s document with ``findings`` as its findings."""
        capped = flow_limit is not None and len(self.flows) > flow_limit
        flows, flows_left_out = cap_flows(self.flows, flow_limit, self.flow_kinds if capped else None)
        if self.flow_digest is not None:
            # Only the rows this cap shows came back from where the flow tables are (diag.report.flowdigest).
            if flow_limit != self.flow_digest.limit:
                cap = self.flow_digest.limit
                raise ValueError(f"this report holds the flow rows of a cap of {cap}, not every flow")
            flows_left_out = self.flow_digest.flows - len(flows)
        return {
            "schema": SCHEMA,
            "verdict": self.verdict_json(),
            "findings": findings,
            "groups": [group.to_json() for group in self.groups],
            "captures": [
                {"name": c.name, "path": c.path, "packets": c.packets, "link_type": c.link_type, "skipped": c.skipped}
                for c in self.captures
            ],
            "flows": flows_to_json(flows),
            "flows_truncated": flows_left_out,
            "clock": {
                "reference": self.clock_reference,
                "offsets": {name: asdict(o) for name, o in self.clock_offsets.items()},
            },
            "warnings": list(self.warnings),
        }

    def capture_files(self) -> dict[str, tuple[str, ...]]:
        """Each capture point's files (to name a finding's packet's file when its point has several)."""
        files: dict[str, tuple[str, ...]] = {}
        for capture in self.captures:
            files.setdefault(capture.name, capture.files)  # the first of a name, as a search in order finds
        return files


def finding_json(finding: Finding, files: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A finding's JSON, its packet's file named from its point's files (``Report.capture_files``)."""
    return finding.to_json(files.get(finding.packet.capture, ()) if finding.packet else ())
