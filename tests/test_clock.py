"""Clock offsets between capture points, from matched packets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import synthetic
from conftest import require_tools
from packets import make_packets

from diag.analysis import analyze
from diag.correlate import correlate
from diag.correlate.clock import ONE_WAY_UNCERTAINTY_S, pair_offset


def test_both_directions_give_the_middle_of_the_interval() -> None:
    # B's clock is 2 s behind; A→B takes 3 ms, B→A 5 ms (offset θ = o_B − o_A = +2 s).
    theta = 2.0
    forward = np.array([0.003 - theta, 0.004 - theta]) * 1e9  # ts_B − ts_A
    backward = np.array([-0.005 - theta]) * 1e9
    d = np.concatenate([forward, backward]).astype(np.int64)
    a_first = np.array([True, True, False])
    estimate = pair_offset(d, a_first, ~a_first)
    assert estimate is not None
    middle, half, note = estimate
    # Bounds: θ > 2 − 0.003 and θ < 2 + 0.005.
    assert middle == pytest.approx(2.001, abs=1e-9)
    assert half == pytest.approx(0.004, abs=1e-9)
    assert note == "both directions"


def test_one_direction_is_the_minimum_delay_estimate() -> None:
    d = (np.array([0.010, 0.012]) * 1e9).astype(np.int64)
    estimate = pair_offset(d, np.array([True, True]), np.array([False, False]))
    assert estimate is not None
    theta, uncertainty, note = estimate
    assert theta == pytest.approx(-0.010)
    assert uncertainty == ONE_WAY_UNCERTAINTY_S
    assert "minimum-delay" in note


def test_no_usable_packets_give_no_estimate() -> None:
    assert pair_offset(np.zeros(0, dtype=np.int64), np.zeros(0, bool), np.zeros(0, bool)) is None


@pytest.mark.parametrize("name", ["incident", "healthy", "udp-asymmetric", "tuple-reuse"])
def test_shifting_a_capture_by_seconds_moves_its_offset_by_as_much(name: str) -> None:
    scenario = synthetic.SCENARIOS[name]()
    plain = correlate(scenario.packets())
    shifts = synthetic.shifted(scenario.points)
    moved = correlate(scenario.packets(shifts=shifts))
    assert plain.reference == moved.reference == "client"
    reference_shift = shifts["client"]
    for point, offset in plain.offsets.items():
        expected = offset.offset_s - (shifts[point] - reference_shift) / 1e9
        assert moved.offsets[point].offset_s == pytest.approx(expected, abs=1e-6)
        assert moved.offsets[point].uncertainty_s == pytest.approx(offset.uncertainty_s, abs=1e-6)


def test_offsets_land_within_their_uncertainty_of_the_truth() -> None:
    scenario = synthetic.healthy(background=False)
    corr = correlate(scenario.packets())
    for point, offset in corr.offsets.items():
        truth = -(scenario.clock_skew_ns[point] - scenario.clock_skew_ns["client"]) / 1e9
        assert abs(offset.offset_s - truth) <= offset.uncertainty_s + 1e-9, point


def test_traffic_both_ways_beats_one_way() -> None:
    corr = correlate(synthetic.healthy(background=False).packets(["client", "pod"]))
    assert corr.clock_notes["pod"] == "both directions"
    assert corr.offsets["pod"].uncertainty_s < ONE_WAY_UNCERTAINTY_S
    one_way = correlate(synthetic.incident().packets(["client", "pod"]))
    assert "minimum-delay" in one_way.clock_notes["pod"]


def test_equal_ttls_are_ordered_by_pairing_a_flows_two_directions() -> None:
    # Two captures on the same link (no TTL change); B's clock 3 s ahead; 1 ms each way.
    rows = []
    for k in range(3):
        t = k * 0.1
        request = dict(src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=80, flags="PA", seq=100 + k, ack=7,
                       payload_len=10, payload_digest=1000 + k, ip_id=k)  # fmt: skip
        reply = dict(src="10.0.0.2", dst="10.0.0.1", sport=80, dport=40000, flags="A", seq=7, ack=110 + k,
                     ip_id=50 + k)  # fmt: skip
        rows += [
            {**request, "capture": "a", "t": t},
            {**request, "capture": "b", "t": t + 0.001 + 3.0},
            {**reply, "capture": "b", "t": t + 0.002 + 3.0},
            {**reply, "capture": "a", "t": t + 0.003},
        ]
    corr = correlate(make_packets(rows))
    assert corr.reference == "a"
    assert corr.offsets["b"].offset_s == pytest.approx(-3.0, abs=1e-6)
    assert corr.offsets["b"].uncertainty_s == pytest.approx(0.001, abs=1e-6)


def test_editcap_shifted_file_gives_the_same_verdict_and_the_shift_in_its_offset(tmp_path: Path) -> None:
    require_tools("editcap")
    scenario = synthetic.incident()
    arguments = scenario.write_pcaps(tmp_path, ["client", "node-b", "pod"])
    before = analyze(arguments)
    pod_path = tmp_path / "pod.pcap"
    shifted = tmp_path / "pod-shifted.pcap"
    subprocess.run(["editcap", "-t", "3.5", str(pod_path), str(shifted)], check=True, capture_output=True)
    after = analyze([arguments[0], arguments[1], f"pod={shifted}"])
    assert [f.cause for f in after.findings] == [f.cause for f in before.findings] == ["asymmetric-return"]
    assert after.clock_offsets["pod"].offset_s == pytest.approx(before.clock_offsets["pod"].offset_s - 3.5, abs=1e-6)
