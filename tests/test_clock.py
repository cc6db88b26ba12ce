"""Clock offsets between capture points, from matched packets."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import synthetic
from conftest import require_tools
from packets import make_packets

from diag.analysis import analyze
from diag.correlate import correlate
from diag.correlate.clock import (
    ONE_WAY_UNCERTAINTY_S,
    ClockOffset,
    _equal_ttl_directions,
    chain_offsets,
    estimate_offsets,
    pair_directions,
    pair_offset,
)


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


def _reference_pair_directions(
    match: np.ndarray, capture: np.ndarray, ts_ns: np.ndarray, ttl: np.ndarray, endpoints: Any, n_captures: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The plain numpy ``pair_directions`` (one wide array per column, boolean masks per pair), kept to check
    the compiled one against; every entry matched."""
    if len(match) == 0:
        return
    n_match = int(match.max()) + 1
    present = np.zeros((n_captures, n_match), dtype=bool)
    wide_ts = np.zeros((n_captures, n_match), dtype=np.int64)
    wide_ttl = np.zeros((n_captures, n_match), dtype=np.int64)
    wide_entry = np.zeros((n_captures, n_match), dtype=np.int64)
    present[capture, match] = True
    wide_ts[capture, match] = ts_ns
    wide_ttl[capture, match] = ttl
    wide_entry[capture, match] = np.arange(len(match))
    for a in range(n_captures):
        for b in range(a + 1, n_captures):
            both = present[a] & present[b]
            if not both.any():
                continue
            d = wide_ts[b, both] - wide_ts[a, both]
            direction = np.sign(wide_ttl[a, both] - wide_ttl[b, both]).astype(np.int8)
            equal = direction == 0
            if equal.any():
                direction[equal] = _equal_ttl_directions(d[equal], endpoints(wide_entry[a, both][equal]))
            yield a, b, d, direction


def _reference_offsets(
    match: np.ndarray, capture: np.ndarray, ts_ns: np.ndarray, ttl: np.ndarray, endpoints: Any, n_captures: int
) -> tuple[dict[int, ClockOffset], dict[int, str]]:
    """``estimate_offsets`` from every pair's packets (the reference above), without the compiled bounds."""
    edges: dict[int, list[tuple[int, float, float, str]]] = {c: [] for c in range(n_captures)}
    for a, b, d, direction in _reference_pair_directions(match, capture, ts_ns, ttl, endpoints, n_captures):
        if not (direction != 0).any():
            direction[:] = 1 if float(np.median(d)) >= 0 else -1
        estimate = pair_offset(d, direction > 0, direction < 0)
        if estimate is not None:
            theta, uncertainty, note = estimate
            edges[a].append((b, theta, uncertainty, note))
            edges[b].append((a, -theta, uncertainty, note))
    return chain_offsets(edges, 0)


def _random_sightings(seed: int, n_captures: int) -> tuple[np.ndarray, ...]:
    """Matched packets over ``n_captures`` points with random clocks and unmatched entries (match -1) in
    between, which the functions must leave out. By the seed: TTLs all equal (the flows' two directions
    must tell, or nothing does), from a small range (some equal at two points, some not) or going down
    hop by hop (none equal); flows in both directions or in one only."""
    rng = np.random.default_rng(seed)
    ttls, both_ways = seed % 3, seed % 5 != 0
    skew = rng.integers(-(10**9), 10**9, n_captures)
    match, capture, ts, ttl, ends = [], [], [], [], []
    for m in range(int(rng.integers(1, 400))):
        path = rng.permutation(n_captures)[: int(rng.integers(1, n_captures + 1))]
        reply = both_ways and bool(rng.integers(0, 2))
        flow = int(rng.integers(0, 3))
        start = int(rng.integers(0, 10**9))
        for hop, point in enumerate(path[::-1] if reply else path):
            match.append(m)
            capture.append(point)
            ts.append(start + hop * int(rng.integers(1_000, 5_000_000)) + skew[point])
            ttl.append(64 if ttls == 0 else int(rng.integers(62, 65)) if ttls == 1 else 64 - hop)
            ends.append((2, 80, 1, 40000 + flow) if reply else (1, 40000 + flow, 2, 80))
    lone = rng.random(len(match)) < 0.1
    return (
        np.where(lone, -1, match).astype(np.int64), np.array(capture, dtype=np.int64),
        np.array(ts, dtype=np.int64), np.array(ttl, dtype=np.int64), np.array(ends, dtype=np.int64),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_compiled_pair_passes_agree_with_the_plain_numpy_ones(seed: int) -> None:
    n_captures = 2 + seed % 4
    match, capture, ts, ttl, ends = _random_sightings(seed, n_captures)
    kept = np.flatnonzero(match >= 0)

    def endpoints(entries: np.ndarray) -> np.ndarray:
        return np.asarray(ends[entries])

    def kept_endpoints(entries: np.ndarray) -> np.ndarray:
        return endpoints(kept[entries])

    plain = (match[kept], capture[kept], ts[kept], ttl[kept], kept_endpoints, n_captures)
    expected = list(_reference_pair_directions(*plain))
    got = list(pair_directions(match, capture, ts, ttl, endpoints, n_captures))
    assert [(a, b) for a, b, _, _ in got] == [(a, b) for a, b, _, _ in expected]
    for (_, _, d, direction), (_, _, want_d, want_direction) in zip(got, expected, strict=True):
        assert np.array_equal(d, want_d)
        assert direction.dtype == want_direction.dtype and np.array_equal(direction, want_direction)
    assert estimate_offsets(match, capture, ts, ttl, endpoints, n_captures, 0) == _reference_offsets(*plain)
