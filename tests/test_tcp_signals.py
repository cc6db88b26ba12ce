"""The TCP cause rules over signal columns give the same findings as the per-connection rules.

The column rules (each cause module's ``tcp_rule`` over ``TcpSignals``)
decide most connections of a busy capture at once; ``diag.diagnose.tcp``
judges each connection on its own and is the reference. Both run on the
reference captures (each point alone, all together) and on generated busy
traffic seen at one and at two points; the findings must be the same, and
the column rules must have judged connections of every kind they cover.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diag.diagnose.engine as engine
from diag.analysis import concat_packets, parse_capture_args, read_captures
from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.diagnose.causes import REGISTRY
from diag.diagnose.connections import build_connections
from diag.diagnose.context import Context
from diag.diagnose.signals import hops
from diag.diagnose.tcp_signals import build_packets, compute_signals, hops_of
from diag.report import Cause, Finding

PROJECT = Path(__file__).resolve().parent.parent
CAPTURES = PROJECT / "captures"


def _findings(arguments: list[str], monkeypatch: pytest.MonkeyPatch, by_columns: bool) -> list[Finding]:
    tables, _ = read_captures(parse_capture_args(arguments), None)
    packets = concat_packets(tables)
    with monkeypatch.context() as patch:
        if not by_columns:
            patch.setattr(
                engine, "judge_by_columns", lambda connections, s, ctx: (np.zeros(len(connections), bool), {})
            )
        return diagnose(packets, None, correlate(packets))


def _claims(arguments: list[str]) -> dict[Cause, int]:
    tables, _ = read_captures(parse_capture_args(arguments), None)
    packets = concat_packets(tables)
    corr = correlate(packets)
    connections = build_connections(packets, corr, suspects_only=True)
    signals = compute_signals(
        build_packets(connections[0].table, connections), connections, Context.build(packets, corr)
    )
    return {cause: int(spec.tcp_rule(signals).sum()) for cause, spec in REGISTRY.items() if spec.tcp_rule is not None}


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Generated busy traffic (aborted, refused and unanswered connections) written as two capture points."""
    out = tmp_path_factory.mktemp("busy")
    subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gen_busy.py"), "--profile", "busy", "--packets", "30000",
         "--flows", "1500", "--points", "2", "--seed", "5", "--out-dir", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return sorted(out.glob("busy-p*.pcap"))


def test_hops_on_a_column_agree_with_hops() -> None:
    ttls = np.arange(0, 256)
    assert hops_of(ttls).tolist() == [hops(int(t)) for t in ttls]


def test_the_reference_captures_give_the_same_findings_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    points = sorted(CAPTURES.glob("*.pcapng"))
    cases = [[f"{p.stem}={p}" for p in points], *[[f"{p.stem}={p}"] for p in points]]
    for arguments in cases:
        reference = _findings(arguments, monkeypatch, by_columns=False)
        assert reference, arguments
        assert _findings(arguments, monkeypatch, by_columns=True) == reference, arguments


def test_busy_traffic_gives_the_same_findings_both_ways(busy: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    for arguments in ([str(busy[0])], [f"p{i}={path}" for i, path in enumerate(busy)]):
        reference = _findings(arguments, monkeypatch, by_columns=False)
        causes = {finding.cause for finding in reference}
        assert {Cause.PEER_RESET, Cause.PORT_CLOSED, Cause.SILENT_DROP} <= causes, arguments
        assert _findings(arguments, monkeypatch, by_columns=True) == reference, arguments
        # The column rules judged those connections themselves, not the per-connection fallback.
        claims = _claims(arguments)
        assert claims[Cause.PEER_RESET] and claims[Cause.PORT_CLOSED] and claims[Cause.SILENT_DROP], claims
        assert sum(claims.values()) >= len(reference)
