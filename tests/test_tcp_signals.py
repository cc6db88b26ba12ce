"""The TCP cause rules over signal columns: every connection claimed by exactly one cause, each cause's shape found.

The column rules (each cause module's ``tcp_rule`` over ``TcpSignals``)
decide every TCP connection of the diagnosis at once. On the reference
captures (each point alone, all together), on every crafted scenario from
every subset of its points and on generated busy traffic seen at one and at
two points, each connection must be claimed by one rule exactly, and each
cause's scenario must be claimed by that cause's rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic

from diag.analysis import concat_packets, parse_capture_args, read_captures
from diag.correlate import correlate
from diag.diagnose.causes import REGISTRY
from diag.diagnose.connections import build_connections
from diag.diagnose.context import Context
from diag.diagnose.signals import hops
from diag.diagnose.tcp_signals import TcpSignals, build_packets, compute_signals, hops_of
from diag.report import Cause

PROJECT = Path(__file__).resolve().parent.parent
CAPTURES = PROJECT / "captures"


def _signals(packets: pd.DataFrame) -> TcpSignals:
    corr = correlate(packets)
    connections = build_connections(packets, corr, suspects_only=True)
    return compute_signals(build_packets(connections[0].table, connections), connections, Context.build(packets, corr))


def _read(arguments: list[str]) -> pd.DataFrame:
    tables, _ = read_captures(parse_capture_args(arguments), None)
    return concat_packets(tables)


def _claims(signals: TcpSignals) -> dict[Cause, np.ndarray]:
    return {cause: spec.tcp_rule(signals) & signals.tcp for cause, spec in REGISTRY.items() if spec.tcp_rule}


def _claimed_once(signals: TcpSignals) -> dict[Cause, int]:
    claims = _claims(signals)
    times = np.sum([mask.astype(int) for mask in claims.values()], axis=0)
    assert (times == signals.tcp.astype(int)).all(), "every TCP connection is claimed by exactly one rule"
    return {cause: int(mask.sum()) for cause, mask in claims.items()}


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


def test_every_cause_with_tcp_findings_declares_a_tcp_rule() -> None:
    assert {cause for cause, spec in REGISTRY.items() if spec.tcp_rule is None} == set()


def test_the_reference_captures_are_claimed_once() -> None:
    points = sorted(CAPTURES.glob("*.pcapng"))
    for arguments in [[f"{p.stem}={p}" for p in points], *[[f"{p.stem}={p}"] for p in points]]:
        claims = _claimed_once(_signals(_read(arguments)))
        assert claims[Cause.ASYMMETRIC_RETURN] == 1 or len(arguments) == 1, (arguments, claims)


TCP_SCENARIOS = [name for name, build in synthetic.SCENARIOS.items() if not name.startswith("udp")]


@pytest.mark.parametrize("name", TCP_SCENARIOS)
def test_each_scenario_is_claimed_by_its_causes_rule(name: str) -> None:
    scenario = synthetic.SCENARIOS[name]()
    for subset in (*scenario.subsets, *((point,) for point in scenario.points)):
        packets = synthetic.SCENARIOS[name]().packets(subset)
        if not build_connections(packets, correlate(packets), suspects_only=True):
            continue  # nothing suspect seen from these points
        claims = _claimed_once(_signals(packets))
        if subset == tuple(scenario.points) and scenario.expected != "healthy":
            assert claims[Cause(scenario.expected)] >= 1, (subset, claims)


def test_busy_traffic_is_claimed_once(busy: list[Path]) -> None:
    for arguments in ([str(busy[0])], [f"p{i}={path}" for i, path in enumerate(busy)]):
        claims = _claimed_once(_signals(_read(arguments)))
        assert claims[Cause.PEER_RESET] and claims[Cause.PORT_CLOSED] and claims[Cause.SILENT_DROP], claims
