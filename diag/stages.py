"""The stages of an analysis, and how every way of running one ends: ``report_of``.

An analysis reads its captures, builds the flow table, correlates the same
packets across capture points and diagnoses (``STAGES``); a ``ProgressHook``
is told as each starts. However the packets were read (all at once by
``diag.analysis``, in passes over captures larger than the memory budget by
``diag.passes``, on a cluster's workers by ``diag.taskgraph``), the stacked
packet table and its flow table become a ``Report`` the same way, here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import pandas as pd

from diag.capture.info import CaptureInfo
from diag.correlate import Correlation, correlate
from diag.diagnose import diagnose
from diag.diagnose.connections import PacketLinks
from diag.gcpause import collector_paused
from diag.report import Finding, Report

# Called as hook(stage, detail) when a stage of the analysis starts: "read"
# once per capture (detail: its name, path and size), then "flows",
# "correlate" and "diagnose" (detail: how much there is to do). The context it
# returns is held while the stage runs, so a command line can show a spinner
# or a progress line; the analysis itself never writes to a terminal.
ProgressHook = Callable[[str, str], AbstractContextManager[object]]
STAGES = ("read", "flows", "correlate", "diagnose")
# Findings from the stacked packet table and its correlation (``diagnose``'s, or one that spreads the work).
Diagnoser = Callable[[pd.DataFrame, Correlation], Sequence[Finding]]


def in_stage(progress: ProgressHook | None, stage: str, detail: str) -> AbstractContextManager[object]:
    """The context to hold while ``stage`` runs: the hook's, or nothing without a hook."""
    return progress(stage, detail) if progress else nullcontext()


class Correlating(Protocol):
    """A correlation already under way (``diag.analysis`` runs one beside the flow table)."""

    def for_diagnosis(self) -> Correlation:
        """The correlation as soon as what the diagnosis reads of it is known."""
        ...

    def result(self) -> Correlation:
        """The whole correlation, its match, path and NAT tables too."""
        ...


def report_of(
    packets: pd.DataFrame,
    flows: pd.DataFrame,
    infos: Sequence[CaptureInfo],
    progress: ProgressHook | None = None,
    diagnoser: Diagnoser | None = None,
    packets_read: int | None = None,
    correlating: Correlating | None = None,
    links: PacketLinks | None = None,
) -> Report:
    """Correlate and diagnose the stacked packet table of every point, with its flow table, into the ``Report``.

    ``diag.taskgraph`` (run by ``diag.cluster``) calls it with the candidate packets of each point only
    (``diag.reduction``), the flow tables built where the points were read, and a ``diagnoser`` that
    diagnoses connection partitions on the workers (``diag.partitions``); the result is the same as on every
    packet in one process.
    ``diag.passes`` calls it with the candidates it kept of ``packets_read`` packets. ``correlating``: the
    correlation of ``packets``, already started (``diag.analysis.analyze`` runs it beside the flow table),
    waited for here; ``links``: ``diag.diagnose.connections.packet_links(packets)``, made meanwhile (for
    ``diagnose`` only).
    """
    kept = f"{len(packets):,}" if packets_read is None else f"{len(packets):,} of {packets_read:,}"
    with in_stage(progress, "correlate", f"{kept} packets at {len(infos)} point(s)"):
        correlation = correlate(packets) if correlating is None else correlating.for_diagnosis()
    with in_stage(progress, "diagnose", f"{len(flows):,} flows"), collector_paused():
        findings = (
            diagnose(packets, flows, correlation, links=links) if diagnoser is None else diagnoser(packets, correlation)
        )
        if correlating is not None:
            correlation = correlating.result()  # its tables, built beside the diagnosis
    return Report(
        captures=list(infos),
        packets=packets,
        flows=flows,
        findings=findings,
        matches=correlation.matches,
        clock_reference=correlation.reference,
        clock_offsets=dict(correlation.offsets),
        warnings=[f"{info.path}: {message}" for info in infos for message in info.warnings],
    )
