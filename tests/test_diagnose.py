"""The diagnosis: the right cause for every scenario, from every meaningful subset of points."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import synthetic
from packets import make_packets

from diag.analysis import analyze
from diag.correlate import correlate
from diag.diagnose import diagnose
from diag.report import Finding

CASES = [
    pytest.param(name, subset, id=f"{name}:{'+'.join(subset)}")
    for name, build in synthetic.SCENARIOS.items()
    for subset in build().subsets
]


def verdicts(findings: list[Finding]) -> list[str]:
    return [f.cause for f in findings]


def expected(name: str) -> list[str]:
    cause = synthetic.SCENARIOS[name]().expected
    return [] if cause == "healthy" else [cause]


@pytest.mark.parametrize(("name", "subset"), CASES)
def test_every_scenario_from_every_subset(name: str, subset: tuple[str, ...]) -> None:
    packets = synthetic.SCENARIOS[name]().packets(subset)
    assert verdicts(diagnose(packets, None, correlate(packets))) == expected(name)


@pytest.mark.parametrize("name", list(synthetic.SCENARIOS))
def test_clocks_shifted_by_seconds_give_the_same_verdict(name: str) -> None:
    scenario = synthetic.SCENARIOS[name]()
    for seed in (1, 2):
        packets = scenario.packets(shifts=synthetic.shifted(scenario.points, seed))
        assert verdicts(diagnose(packets)) == expected(name)


@pytest.mark.parametrize("cooked", [False, True], ids=["ethernet", "linux-sll2"])
@pytest.mark.parametrize("name", ["incident", "healthy", "port-closed", "idle-timeout", "udp-asymmetric"])
def test_pcap_files_through_the_reader_give_the_same_verdict(name: str, cooked: bool, tmp_path: Path) -> None:
    scenario = synthetic.SCENARIOS[name]()
    report = analyze(scenario.write_pcaps(tmp_path, cooked=cooked))
    assert verdicts(report.findings) == expected(name)
    document = json.loads(report.dumps())
    assert document["verdict"]["cause"] == (expected(name) or ["healthy"])[0]
    if cooked:
        assert set(report.packets["direction"].astype(str)) <= {"in", "out"}


def test_unrelated_healthy_traffic_next_to_the_incident_adds_nothing() -> None:
    incident = synthetic.incident().packets()
    healthy = synthetic.healthy().packets()
    healthy["ts_ns"] += 10_000_000_000
    packets = pd.concat([incident, healthy], ignore_index=True)
    packets["capture"] = packets["capture"].astype("category")
    findings = diagnose(packets)
    assert verdicts(findings) == ["asymmetric-return"]
    assert findings[0].client == f"{synthetic.CLIENT}:38622"


# --- the incident's finding, in detail ----------------------------------------------------------------


@pytest.fixture(scope="module")
def incident_all() -> Finding:
    (finding,) = diagnose(synthetic.incident().packets())
    return finding


def test_incident_names_the_nat_gateway_and_the_flow_as_the_client_sent_it(incident_all: Finding) -> None:
    assert incident_all.origin == "natgw"
    assert incident_all.client == f"{synthetic.CLIENT}:38622"
    assert incident_all.server == f"{synthetic.VIP}:80"
    assert incident_all.claimed_src == synthetic.CLIENT
    assert incident_all.packet is not None and incident_all.packet.capture == "natgw"
    assert incident_all.confidence >= 0.9


def test_incident_evidence_is_concrete(incident_all: Finding) -> None:
    text = "\n".join(incident_all.evidence)
    assert "4 RSTs like it" in text  # one finding, occurrences counted
    assert "TTL 63" in text and "TTL 60" in text  # RST vs the client's SYNs at the pod
    assert "never shows this RST" in text
    assert "same SYN (ISN 1000000) again after the RST" in text
    assert "natgw saw the reply but never the request" in text


def test_incident_rules_out_a_challenge_ack_and_a_genuine_client_reset(incident_all: Finding) -> None:
    ruled = {r.cause: r.why for r in incident_all.ruled_out}
    assert "challenge ACK" in ruled["tuple-reuse"]
    assert "genuine client reset" in ruled["peer-reset"]
    assert {"port-closed", "policy-reject", "idle-timeout", "injected-reset"} <= set(ruled)


def test_incident_fixes_carry_their_trade_offs(incident_all: Finding) -> None:
    fixes = "\n".join(incident_all.fixes)
    assert "impossible on TCP_UDP and UDP target groups" in fixes
    assert "SNAT" in fixes and "instead of the client's" in fixes
    assert "externalTrafficPolicy: Local" in fixes and "endpoint" in fixes
    assert "CONNMARK" in fixes and "kube-proxy and the CNI" in fixes


def test_incident_without_the_nat_gateway_capture_places_it_by_ttl() -> None:
    (finding,) = diagnose(synthetic.incident().packets(["client", "node-b", "pod"]))
    assert finding.origin == "1 hop beyond node-b, on the route node-b forwarded the SYN-ACK by"


def test_incident_from_the_pod_alone_says_what_it_could_not_establish() -> None:
    (finding,) = diagnose(synthetic.incident().packets(["pod"]))
    assert finding.cause == "asymmetric-return"
    assert 0.6 <= finding.confidence < 0.9
    assert any(line.startswith("not established: no capture on the client") for line in finding.evidence)


def test_incident_from_the_client_alone_cannot_separate_drop_from_asymmetric_return() -> None:
    (finding,) = diagnose(synthetic.incident().packets(["client"]))
    assert finding.cause == "silent-drop"
    assert finding.confidence <= 0.45
    text = "\n".join(finding.evidence)
    assert "asymmetric return" in text and "capture on the server (pod)" in text


# --- single signals on crafted packets -----------------------------------------------------------------

CLIENT, SERVER = "203.0.113.10", "198.18.102.10"


def syn(t: float, ttl: int = 60, capture: str = "pod", seq: int = 1000, ip_id: int = 1) -> dict[str, object]:
    return dict(capture=capture, t=t, src=CLIENT, dst=SERVER, sport=40000, dport=80, flags="S", seq=seq, ack=0,
                ttl=ttl, ip_id=ip_id)  # fmt: skip


def from_server(t: float, flags: str, seq: int, ack: int, capture: str = "pod", payload: int = 0) -> dict[str, object]:
    return dict(capture=capture, t=t, src=SERVER, dst=CLIENT, sport=80, dport=40000, flags=flags, seq=seq, ack=ack,
                ttl=64, ip_id=0, payload_len=payload, payload_digest=payload)  # fmt: skip


def from_client(t: float, flags: str, seq: int, ack: int, ttl: int = 60, payload: int = 0) -> dict[str, object]:
    return dict(capture="pod", t=t, src=CLIENT, dst=SERVER, sport=40000, dport=80, flags=flags, seq=seq, ack=ack,
                ttl=ttl, ip_id=5, payload_len=payload, payload_digest=payload + 1)  # fmt: skip


def test_ttl_alone_tells_a_forged_client_rst_from_a_real_one() -> None:
    handshake = [syn(0.0), from_server(0.001, "SA", 5000, 1001)]
    forged = make_packets([*handshake, from_client(0.002, "R", 1001, 0, ttl=63), syn(1.0, ip_id=2)])
    (finding,) = diagnose(forged)
    assert finding.cause == "asymmetric-return"
    assert any("TTL 63" in line and "TTL 60" in line for line in finding.evidence)
    real = make_packets([*handshake, from_client(0.002, "R", 1001, 0, ttl=60)])
    assert verdicts(diagnose(real)) == ["unknown"]  # a client that really resets its own handshake


def test_rst_after_the_senders_fin_is_a_normal_close() -> None:
    rows = [
        syn(0.0),
        from_server(0.001, "SA", 5000, 1001),
        from_client(0.002, "A", 1001, 5001),
        from_client(0.003, "PA", 1001, 5001, payload=10),
        from_server(0.004, "PA", 5001, 1011, payload=20),
        from_client(0.005, "FA", 1011, 5021),
        from_client(0.006, "RA", 1012, 5021),
    ]
    assert diagnose(make_packets(rows)) == []


def test_rst_without_fin_on_an_established_connection_is_a_peer_reset() -> None:
    rows = [
        syn(0.0),
        from_server(0.001, "SA", 5000, 1001),
        from_client(0.002, "A", 1001, 5001),
        from_client(0.003, "PA", 1001, 5001, payload=10),
        from_server(0.004, "RA", 5001, 1011),
    ]
    (finding,) = diagnose(make_packets(rows))
    assert finding.cause == "peer-reset"
    assert finding.origin == "pod"  # made there: TTL 64, not forwarded


def test_challenge_ack_then_client_rst_is_tuple_reuse() -> None:
    rows = [
        syn(0.0, seq=90000),
        from_server(0.001, "A", 5000, 1234),  # acknowledges an old connection, not ISN + 1
        from_client(0.002, "R", 1234, 0),
        syn(1.0, seq=90000, ip_id=2),
        from_server(1.001, "SA", 777, 90001),
    ]
    (finding,) = diagnose(make_packets(rows))
    assert finding.cause == "tuple-reuse"
    assert any("challenge ACK" in line for line in finding.evidence)


def test_a_single_syn_at_the_very_end_of_a_capture_is_not_a_symptom() -> None:
    assert diagnose(make_packets([syn(0.0)])) == []
    retried = make_packets([syn(0.0, capture="client", ttl=64), syn(1.0, capture="client", ttl=64, ip_id=2)])
    (finding,) = diagnose(retried)
    assert finding.cause == "silent-drop"


def test_a_lone_unanswered_datagram_is_not_a_symptom_but_repeated_ones_are() -> None:
    def query(t: float, digest: int) -> dict[str, object]:
        return dict(capture="client", t=t, src=CLIENT, dst="198.51.100.10", sport=5353, dport=53, proto="udp",
                    payload_len=30, payload_digest=digest, ttl=64, ip_id=digest)  # fmt: skip

    assert diagnose(make_packets([query(0.0, 1)])) == []
    assert diagnose(make_packets([query(0.0, 1), query(1.0, 2)])) == []  # two different datagrams
    retried = [query(0.0, 1), query(1.0, 1)]
    retried[1]["ip_id"] = 2
    assert verdicts(diagnose(make_packets(retried))) == ["silent-drop"]


def test_multicast_and_broadcast_datagrams_are_never_requests() -> None:
    rows = [
        dict(capture="client", t=k * 1.0, src="10.0.0.20", dst=dst, sport=520, dport=520, proto="udp",
             payload_len=24, payload_digest=7, ttl=1, ip_id=k)
        for dst in ("224.0.0.9", "10.0.0.255")
        for k in range(3)
    ]  # fmt: skip
    assert diagnose(make_packets(rows)) == []


def test_a_capture_of_one_direction_only_is_not_an_unanswered_syn() -> None:
    rows = [
        syn(0.0),
        from_client(0.002, "A", 1001, 5001),
        from_client(0.003, "PA", 1001, 5001, payload=10),
        from_client(2.0, "FA", 1011, 5021),
    ]
    assert diagnose(make_packets(rows)) == []


def test_a_one_way_udp_stream_is_not_a_lost_reply() -> None:
    stream = [
        dict(capture="client", t=k * 0.02, src=CLIENT, dst="198.51.100.10", sport=5004, dport=5004, proto="udp",
             payload_len=160, payload_digest=k + 1, ttl=64, ip_id=k)
        for k in range(50)
    ]  # fmt: skip
    assert diagnose(make_packets(stream)) == []


def test_an_injected_reset_seen_only_at_the_pod_is_the_clients_bare_rst_with_a_caveat() -> None:
    (finding,) = diagnose(synthetic.injected_reset().packets(["pod"]))
    assert finding.cause == "peer-reset"
    assert finding.confidence <= 0.55
    assert any("bare RST (no ACK)" in line and "capture at the client" in line for line in finding.evidence)


def test_conventional_vantage_names_order_the_path_when_no_order_is_given() -> None:
    from diag.diagnose.context import usual_path_rank

    assert usual_path_rank("pod-b") == usual_path_rank("pod")
    rank = [usual_path_rank(n) for n in ("client", "nlb", "vpc-router", "node-a", "node-b", "pod-a")]
    assert rank == sorted(rank)  # type: ignore[type-var]
    assert usual_path_rank("natgw") is None


def test_hop_counts_from_common_initial_ttls() -> None:
    from diag.diagnose.signals import hops, initial_ttl

    assert [initial_ttl(t) for t in (1, 32, 33, 64, 65, 128, 129, 255)] == [32, 32, 64, 64, 128, 128, 255, 255]
    assert [hops(t) for t in (64, 63, 60, 128, 120, 250)] == [0, 1, 4, 0, 8, 5]


def test_a_point_that_forwards_a_packet_did_not_make_it() -> None:
    from diag.diagnose.connections import build_connections
    from diag.diagnose.signals import distinct_packets, generated_at

    reset = dict(src=CLIENT, dst=SERVER, sport=40000, dport=80, flags="R", seq=1001, ack=0, ip_id=0)
    made_here = make_packets([{**reset, "capture": "natgw", "ttl": 64, "t": 0.0}])
    forwarded = make_packets([{**reset, "capture": "node-b", "ttl": 64, "t": 0.0},
                              {**reset, "capture": "node-b", "ttl": 63, "t": 0.00001}])  # fmt: skip
    received = make_packets([{**reset, "capture": "pod", "ttl": 64, "t": 0.0, "direction": "in"}])
    for packets, expected_maker in ((made_here, "natgw"), (forwarded, None), (received, None)):
        (conn,) = build_connections(packets, correlate(packets))
        (rst,) = distinct_packets(conn)
        assert generated_at(rst) == expected_maker


def test_an_order_hint_places_points_whose_names_say_nothing() -> None:
    scenario = synthetic.policy_reject()
    names = {"client": "site-1", "node-a": "box-7", "pod": "box-9"}
    packets = scenario.packets(["client", "node-a", "pod"])
    packets["capture"] = packets["capture"].cat.rename_categories(lambda c: names.get(str(c), str(c)))
    without_hint = diagnose(packets[packets["capture"] != "box-7"].reset_index(drop=True))
    assert verdicts(without_hint) == ["port-closed"]  # nothing says box-9 lies beyond the client
    with_hint = diagnose(packets[packets["capture"] != "box-7"].reset_index(drop=True), order_hint=["site-1", "box-9"])
    assert verdicts(with_hint) == ["policy-reject"]
    assert any("box-9" in line and "never saw the SYN" in line for line in with_hint[0].evidence)


def test_a_reply_that_leaves_by_another_path_and_vanishes_is_asymmetric_return() -> None:
    packets = synthetic.incident().packets()
    quiet = packets[(packets["tcp_flags"] & 0x04) == 0].reset_index(drop=True)  # a gateway that drops, no RST
    (finding,) = diagnose(quiet)
    assert finding.cause == "asymmetric-return"
    assert any("natgw saw the reply but never the request" in line for line in finding.evidence)
    # Without the gateway's capture nothing shows where the SYN-ACK went: it vanished after node-b.
    (finding,) = diagnose(quiet[quiet["capture"] != "natgw"].reset_index(drop=True))
    assert finding.cause == "silent-drop"
    assert "after node-b" in finding.summary
