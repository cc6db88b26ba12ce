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
from diag.diagnose import diagnose
from diag.diagnose.causes import REGISTRY
from diag.diagnose.connections import build_connections
from diag.diagnose.context import Context
from diag.diagnose.signals import hops
from diag.diagnose.tcp_packets import build_packets
from diag.diagnose.tcp_signals import TcpSignals, compute_signals, hops_of
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


def test_every_cause_declares_its_tcp_rule_and_the_writer_of_its_findings() -> None:
    """A TCP cause is one module: the rule that claims its connections and the function that writes them."""
    assert {cause for cause, spec in REGISTRY.items() if spec.tcp_rule is None or spec.tcp_finding is None} == set()


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


def _scenario_signals(name: str, points: tuple[str, ...], rst_ip_id: int | None = None) -> TcpSignals:
    packets = synthetic.SCENARIOS[name]().packets(points)
    if rst_ip_id is not None:
        flags = packets["tcp_flags"].to_numpy().astype(np.int64)
        packets.loc[(flags >= 0) & ((flags & 0x04) != 0), "ip_id"] = rst_ip_id
    return _signals(packets)


def test_a_rst_back_sooner_than_its_sender_could_answer_is_forged() -> None:
    """The injector one router from the client answers at once; the server is a 7 ms round trip away."""
    s = _scenario_signals("injected-reset", ("client",))
    (k,) = np.flatnonzero(s.rst >= 0)
    assert s.timing.too_soon[k] and s.forged[k]
    assert s.timing.delay_ns[k] * 2 < s.timing.rtt_ns[k]
    # The server's own RST, answering the client after a full round trip, is not.
    s = _scenario_signals("peer-reset", ("client",))
    assert not s.timing.too_soon.any()


def test_a_rst_whose_ip_id_breaks_its_senders_count_is_marked() -> None:
    # The server's data packets at the client carry IP IDs 0x7001, 0x7002: the next is 0x7003.
    in_line = _scenario_signals("peer-reset", ("client",), rst_ip_id=0x7003)
    out_of_line = _scenario_signals("peer-reset", ("client",), rst_ip_id=0x0001)
    (k,) = np.flatnonzero(in_line.rst >= 0)
    assert not in_line.ip_id.out_of_line[k]
    assert out_of_line.ip_id.out_of_line[k] and out_of_line.ip_id.rst_id[k] == 1
    # A sender whose IDs do not count up (the synthetic server's SYN-ACK carries 0, then its data) says nothing.
    assert not _scenario_signals("idle-timeout", ("client",)).ip_id.out_of_line.any()


def test_an_ip_id_out_of_line_supports_a_forged_rst_in_the_finding() -> None:
    """The server's RST given another device's TTL and IP ID: forged by its TTL, and its IP ID is said too."""
    packets = synthetic.SCENARIOS["peer-reset"]().packets(("client",))
    flags = packets["tcp_flags"].to_numpy().astype(np.int64)
    rst = (flags >= 0) & ((flags & 0x04) != 0)
    packets.loc[rst, "ip_id"], packets.loc[rst, "ttl"] = 1, 63
    (finding,) = diagnose(packets)
    assert finding.cause is Cause.INJECTED_RESET
    (fact,) = [fact for fact in finding.facts if fact.kind == "ip-id-out-of-line"]
    assert fact["rst_ip_id"] == 1 and fact["last_ip_id"] == 0x7002 and fact["side"] == "server"
    assert "IP ID (1) is out of line with the server's own packets" in " ".join(finding.evidence)


def test_the_mode_per_key_is_the_most_frequent_value_and_a_tie_the_one_seen_first() -> None:
    from diag.diagnose.tcp_signals import _mode

    rng = np.random.default_rng(12)
    for trial in range(200):
        n = int(rng.integers(1, 400))
        keys = rng.integers(0, max(1, n // int(rng.integers(1, 10))), n).astype(np.int64)
        values = rng.integers(-1, int(rng.integers(1, 5)), n).astype(np.int16 if trial % 2 else np.int64)
        order = rng.permutation(3 * n)[:n].astype(np.int64)  # distinct, as packet positions are
        expected: dict[int, int] = {}
        for key in sorted(set(keys.tolist())):
            rows = np.flatnonzero(keys == key)
            counts: dict[int, list[int]] = {}
            for row in rows:
                counts.setdefault(int(values[row]), []).append(int(order[row]))
            expected[key] = min(counts, key=lambda value: (-len(counts[value]), min(counts[value])))
        modes = _mode(keys, values, order)
        assert modes.index.tolist() == list(expected)
        assert modes.tolist() == list(expected.values())
    assert _mode(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)).empty
