"""The report: what diag found, as Python objects and as ``diag.report/1`` JSON.

The JSON contract is described in the project design notes; the dataclasses
here mirror it one to one so that notebooks and scripts get the same facts as
the ``--json`` output.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import pandas as pd

SCHEMA = "diag.report/1"

Cause = Literal[
    "asymmetric-return",
    "port-closed",
    "peer-reset",
    "idle-timeout",
    "injected-reset",
    "tuple-reuse",
    "policy-reject",
    "silent-drop",
    "healthy",
    "unknown",
]

CAUSES: tuple[str, ...] = get_args(Cause)

# Causes whose RST is made by a box in someone else's name: the claimed sender is not the real one.
FORGED_RESET_CAUSES = frozenset({"asymmetric-return", "idle-timeout", "injected-reset", "policy-reject"})


def endpoint_text(addr: str, port: int) -> str:
    """'addr:port' as reports write endpoints, IPv6 in brackets; just 'addr' when there is no port (-1)."""
    if port < 0:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True)
class CaptureInfo:
    """One capture file that went into the report."""

    name: str
    path: str
    packets: int
    link_type: str
    skipped: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PacketRef:
    """Where a symptom was first seen: capture name, 0-based index in that file, timestamp."""

    capture: str
    index: int
    ts: float


@dataclass(frozen=True)
class RuledOut:
    cause: str
    why: str


@dataclass(frozen=True)
class Finding:
    """One symptom (a RST, an unanswered SYN or datagram) and the verdict on its cause."""

    cause: str
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

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "confidence": round(self.confidence, 3),
            "proto": self.proto,
            "flow": {"client": self.client, "server": self.server},
            "packet": asdict(self.packet) if self.packet else None,
            "claimed_src": self.claimed_src,
            "origin": self.origin,
            "summary": self.summary,
            "evidence": list(self.evidence),
            "ruled_out": [asdict(r) for r in self.ruled_out],
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True)
class ClockOffset:
    """What to add to a capture's timestamps to put it on the reference clock."""

    offset_s: float
    uncertainty_s: float


@dataclass
class Report:
    """Everything one analysis produced.

    ``packets``, ``flows`` and ``matches`` are DataFrames for drilling down in
    Python; only ``flows`` (as records) goes into the JSON document.
    """

    captures: list[CaptureInfo]
    packets: pd.DataFrame
    flows: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)
    matches: pd.DataFrame | None = None
    clock_reference: str | None = None
    clock_offsets: dict[str, ClockOffset] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Finding | None:
        """The most confident finding, or None when every flow was healthy."""
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: f.confidence)

    def verdict_json(self) -> dict[str, Any]:
        top = self.verdict
        if top is None:
            return {"cause": "healthy", "confidence": 1.0, "summary": "no resets or lost replies found"}
        return {"cause": top.cause, "confidence": round(top.confidence, 3), "summary": top.summary}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "verdict": self.verdict_json(),
            "findings": [f.to_json() for f in self.findings],
            "captures": [
                {"name": c.name, "path": c.path, "packets": c.packets, "link_type": c.link_type, "skipped": c.skipped}
                for c in self.captures
            ],
            "flows": flows_to_json(self.flows),
            "clock": {
                "reference": self.clock_reference,
                "offsets": {name: asdict(o) for name, o in self.clock_offsets.items()},
            },
            "warnings": list(self.warnings),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)


def _plain(value: Any) -> Any:
    """numpy scalars and NaN into JSON-safe Python values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def flows_to_json(flows: pd.DataFrame) -> list[dict[str, Any]]:
    """Flow rows as JSON objects; list-valued cells (``rsts``) pass through, an untagged ``vlan`` (-1) is null."""
    if flows is None or flows.empty:
        return []
    records = []
    for row in flows.to_dict(orient="records"):
        record = {str(key): (value if isinstance(value, list | dict) else _plain(value)) for key, value in row.items()}
        if record.get("vlan") == -1:
            record["vlan"] = None
        records.append(record)
    return records
