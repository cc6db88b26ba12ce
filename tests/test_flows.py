"""The flow table on crafted packets: Zeek's history letters and conn_state, counts, RSTs, keys.

Each conn_state case is worked by hand from Zeek's conn.log documentation and
its TCP endpoint state machine: a SYN-ACK puts both ends in ESTABLISHED, a
FIN moves its sender to CLOSED, a RST to RESET, and conn_state is read off the
two final states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT
from packets import make_packets

from diag import read_capture
from diag.flows import FLOW_COLUMNS, build_flows, flow_ids

CLIENT = {"src": "203.0.113.10", "dst": "198.18.102.10", "sport": 38622, "dport": 80}
SERVER = {"src": "198.18.102.10", "dst": "203.0.113.10", "sport": 80, "dport": 38622}
C_ISN, S_ISN = 1000, 5000


def c(flags: str, **fields: Any) -> dict[str, Any]:
    return {**CLIENT, "flags": flags, **fields}


def s(flags: str, **fields: Any) -> dict[str, Any]:
    return {**SERVER, "flags": flags, **fields}


HANDSHAKE = [
    c("S", seq=C_ISN),
    s("SA", seq=S_ISN, ack=C_ISN + 1),
    c("A", seq=C_ISN + 1, ack=S_ISN + 1),
]


def one_flow(rows: list[dict[str, Any]]) -> pd.Series:
    flows = build_flows(make_packets(rows))
    assert len(flows) == 1, flows
    return flows.iloc[0]


# Each case: packets, expected history, expected conn_state (from Zeek's documentation).
CONN_STATE_CASES = {
    # S0: connection attempt seen, no reply.
    "S0": ([c("S", seq=C_ISN)], "S", "S0"),
    # REJ: connection attempt rejected (RST-ACK answering the SYN).
    "REJ": ([c("S", seq=C_ISN), s("RA", seq=0, ack=C_ISN + 1)], "Sr", "REJ"),
    # S1: established, not terminated.
    "S1": (HANDSHAKE, "ShA", "S1"),
    # SF: normal establishment and termination.
    "SF": (
        [
            *HANDSHAKE,
            c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=10),
            s("A", seq=S_ISN + 1, ack=C_ISN + 11),
            s("PA", seq=S_ISN + 1, ack=C_ISN + 11, payload_len=20),
            c("A", seq=C_ISN + 11, ack=S_ISN + 21),
            c("FA", seq=C_ISN + 11, ack=S_ISN + 21),
            s("FA", seq=S_ISN + 21, ack=C_ISN + 12),
            c("A", seq=C_ISN + 12, ack=S_ISN + 22),
        ],
        "ShADadFf",
        "SF",
    ),
    # S2: established, close attempt by the originator, no reply.
    "S2": ([*HANDSHAKE, c("FA", seq=C_ISN + 1, ack=S_ISN + 1)], "ShAF", "S2"),
    # S3: established, close attempt by the responder, no reply.
    "S3": ([*HANDSHAKE, s("FA", seq=S_ISN + 1, ack=C_ISN + 1)], "ShAf", "S3"),
    # RSTO: established, originator aborted.
    "RSTO": ([*HANDSHAKE, c("R", seq=C_ISN + 1)], "ShAR", "RSTO"),
    # RSTR: established, responder aborted.
    "RSTR": ([*HANDSHAKE, s("RA", seq=S_ISN + 1, ack=C_ISN + 1)], "ShAr", "RSTR"),
    # RSTOS0: originator sent a SYN followed by a RST, no SYN-ACK seen.
    "RSTOS0": ([c("S", seq=C_ISN), c("R", seq=C_ISN + 1)], "SR", "RSTOS0"),
    # RSTRH: responder sent a SYN-ACK followed by a RST, no SYN seen (roles flipped: '^').
    "RSTRH": ([s("SA", seq=S_ISN, ack=C_ISN + 1), s("R", seq=S_ISN + 1)], "^hr", "RSTRH"),
    # SH: originator sent a SYN followed by a FIN, no SYN-ACK.
    "SH": ([c("S", seq=C_ISN), c("F", seq=C_ISN + 1)], "SF", "SH"),
    # SHR: responder sent a SYN-ACK followed by a FIN, no SYN seen.
    "SHR": ([s("SA", seq=S_ISN, ack=C_ISN + 1), s("FA", seq=S_ISN + 1, ack=C_ISN + 1)], "^hf", "SHR"),
    # OTH: no SYN, midstream traffic.
    "OTH": (
        [
            c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=5),
            s("PA", seq=S_ISN + 1, ack=C_ISN + 6, payload_len=7),
        ],
        "Dd",
        "OTH",
    ),
}


@pytest.mark.parametrize("case", sorted(CONN_STATE_CASES))
def test_conn_state_and_history_follow_zeek(case: str) -> None:
    rows, history, conn_state = CONN_STATE_CASES[case]
    flow = one_flow(rows)
    assert (flow.history, flow.conn_state) == (history, conn_state)


def test_every_zeek_tcp_conn_state_is_covered() -> None:
    zeek_states = {"S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"}
    assert {state for _, _, state in CONN_STATE_CASES.values()} == zeek_states


def test_sf_counts_payload_bytes_and_packets_per_direction() -> None:
    flow = one_flow(CONN_STATE_CASES["SF"][0])
    assert (flow.orig_pkts, flow.resp_pkts) == (6, 4)
    assert (flow.orig_bytes, flow.resp_bytes) == (10, 20)
    assert flow.orig == "203.0.113.10:38622" and flow.resp == "198.18.102.10:80"
    assert (flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p) == ("203.0.113.10", 38622, "198.18.102.10", 80)


def test_incident_seen_at_the_pod_is_one_flow_per_attempt_linked_and_counting_retries() -> None:
    # SYN, SYN-ACK, then a RST "from the client" (forged by the NAT gateway), every second.
    rows = []
    for attempt in range(4):
        rows += [
            c("S", seq=C_ISN, t=attempt),
            s("SA", seq=S_ISN, ack=C_ISN + 1, t=attempt + 0.001),
            c("R", seq=C_ISN + 1, t=attempt + 0.002),
        ]
    flows = build_flows(make_packets(rows))
    # Zeek: a SYN after the RST (the connection is closed) opens a new connection, even with the same ISN.
    # A SYN-ACK establishes both ends in Zeek's state machine, so each originator RST gives RSTO (RSTOS0
    # would need no SYN-ACK at all).
    assert list(flows.history) == ["ShR"] * 4
    assert list(flows.conn_state) == ["RSTO"] * 4
    # Each later flow names the one before it, and its SYN repeats the previous flow's: a retransmission.
    assert list(flows.prev_flow) == [-1, 0, 1, 2]
    assert list(flows.syn_retransmits) == [0, 1, 1, 1]
    assert list(flows.orig_pkts) == [2] * 4 and list(flows.resp_pkts) == [1] * 4
    assert [flow for flow in flows.rsts] == [[{"index": i, "from": "orig"}] for i in (2, 5, 8, 11)]
    assert flows.first_ts.iloc[0] == pytest.approx(make_packets(rows).ts_ns.iloc[0] / 1e9)
    assert flows.last_ts.iloc[-1] - flows.first_ts.iloc[0] == pytest.approx(3.002)
    assert list(flow_ids(make_packets(rows))) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_a_new_server_isn_after_a_reset_counts_no_phantom_bytes() -> None:
    # The server forgets the attempt at each RST and answers the retransmitted SYN with a new ISN, far
    # from the old one: nothing was sent, so nothing may be counted (not the distance between two ISNs).
    isns = [5000, 2_000_000_000, 3_500_000_000]
    rows = []
    for attempt, server_isn in enumerate(isns):
        rows += [
            c("S", seq=C_ISN, t=attempt),
            s("SA", seq=server_isn, ack=C_ISN + 1, t=attempt + 0.001),
            c("R", seq=C_ISN + 1, t=attempt + 0.002),
        ]
    flows = build_flows(make_packets(rows))
    assert list(zip(flows.history, flows.orig_bytes, flows.resp_bytes, strict=True)) == [("ShR", 0, 0)] * 3
    # Inside one connection a SYN-ACK with a new ISN (the first SYN-ACK lost on its way) starts counting anew.
    rows = [
        c("S", seq=C_ISN, t=0),
        s("SA", seq=5000, ack=C_ISN + 1, t=0.001),
        s("SA", seq=3_500_000_000, ack=C_ISN + 1, t=1.001),
        c("A", seq=C_ISN + 1, ack=3_500_000_001, t=1.002),
        s("PA", seq=3_500_000_001, ack=C_ISN + 1, payload_len=300, t=1.003),
        c("A", seq=C_ISN + 1, ack=3_500_000_301, t=1.004),
    ]
    flow = one_flow(rows)
    assert (flow.history, flow.orig_bytes, flow.resp_bytes) == ("ShhAd", 0, 300)


def test_client_side_of_the_incident_is_s0_with_retransmissions() -> None:
    flow = one_flow([c("S", seq=C_ISN, t=t) for t in (0, 1, 2, 3)])
    assert (flow.history, flow.conn_state, flow.syn_retransmits, flow.resp_pkts) == ("S", "S0", 3, 0)


def test_rst_attribution_uses_file_indexes_and_direction() -> None:
    rows = [*HANDSHAKE, s("RA", seq=S_ISN + 1, ack=C_ISN + 1, index=17), c("R", seq=C_ISN + 1, index=18)]
    flow = one_flow(rows)
    assert flow.rsts == [{"index": 17, "from": "resp"}, {"index": 18, "from": "orig"}]
    assert flow.history == "ShArR"


def test_retransmitted_segment_is_counted_and_logged_as_t() -> None:
    data = c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=100)
    flow = one_flow([*HANDSHAKE, data, data, s("A", seq=S_ISN + 1, ack=C_ISN + 101)])
    assert flow.history == "ShADTa"
    assert flow.retransmits == 1
    assert flow.orig_bytes == 100  # counted once, as Zeek does


def test_repeated_letters_are_logged_at_1_10_100_occurrences() -> None:
    data = c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=10)
    flow = one_flow([*HANDSHAKE, data] + [data] * 10)
    assert flow.retransmits == 10
    assert flow.history == "ShADTT"


def test_zero_window_from_responder_is_w() -> None:
    rows = [
        *HANDSHAKE,
        c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=10),
        s("A", seq=S_ISN + 1, ack=C_ISN + 11, win=0),
    ]
    assert one_flow(rows).history == "ShADaw"


def test_new_isn_on_the_same_tuple_starts_a_new_flow() -> None:
    rows = [*HANDSHAKE, c("R", seq=C_ISN + 1), c("S", seq=C_ISN + 70000), s("SA", seq=9, ack=C_ISN + 70001)]
    flows = build_flows(make_packets(rows))
    assert list(flows.history) == ["ShAR", "Sh"]
    assert list(flows.conn_state) == ["RSTO", "S1"]
    assert list(flows.prev_flow) == [-1, 0]
    assert list(flow_ids(make_packets(rows))) == [0, 0, 0, 0, 1, 1]


def test_a_new_isn_before_any_close_also_starts_a_new_flow() -> None:
    # Zeek's IsReuse: a SYN whose ISN is not the connection's is a new connection, closed or not.
    rows = [c("S", seq=C_ISN), c("S", seq=C_ISN), c("S", seq=C_ISN + 99)]
    flows = build_flows(make_packets(rows))
    assert list(flows.history) == ["S", "S"]
    assert list(flows.syn_retransmits) == [1, 0]


def test_a_syn_after_a_fin_close_starts_a_new_flow_even_with_the_same_isn() -> None:
    closed = [*HANDSHAKE, c("FA", seq=C_ISN + 1, ack=S_ISN + 1), s("FA", seq=S_ISN + 1, ack=C_ISN + 2)]
    flows = build_flows(make_packets([*closed, c("S", seq=C_ISN, t=5)]))
    assert list(flows.history) == ["ShAFf", "S"]
    assert list(flows.conn_state) == ["SF", "S0"]
    assert list(flows.syn_retransmits) == [0, 1]


def test_a_syn_answering_a_syn_ack_seen_first_flips_the_roles_in_place() -> None:
    # The SYN-ACK from a port that is no likely server port arrives before its SYN (two interfaces'
    # timestamps crossed): Zeek keeps one connection and flips the roles when the SYN arrives.
    server = {**SERVER, "sport": 9000}
    client = {**CLIENT, "dport": 9000}
    rows = [
        {**server, "flags": "SA", "seq": S_ISN, "ack": C_ISN + 1},
        {**client, "flags": "S", "seq": C_ISN},
        {**client, "flags": "A", "seq": C_ISN + 1, "ack": S_ISN + 1},
    ]
    flow = one_flow(rows)
    assert (flow.history, flow.conn_state, flow.orig_p, flow.resp_p) == ("Hs^A", "S1", 38622, 9000)


def test_vlans_and_captures_separate_flows() -> None:
    rows = [
        c("S", seq=C_ISN, vlan=10),
        c("S", seq=C_ISN, vlan=20),
        c("S", seq=C_ISN, vlan=10, capture="node-a"),
    ]
    flows = build_flows(make_packets(rows))
    assert list(zip(flows.capture, flows.vlan, strict=True)) == [("test", 10), ("test", 20), ("node-a", 10)]
    assert list(flows.syn_retransmits) == [0, 0, 0]


def test_udp_request_and_reply() -> None:
    query = {"proto": "udp", "src": "192.0.2.5", "dst": "198.51.100.53", "sport": 5353, "dport": 53}
    reply = {"proto": "udp", "src": "198.51.100.53", "dst": "192.0.2.5", "sport": 53, "dport": 5353}
    answered = build_flows(make_packets([{**query, "payload_len": 30}, {**reply, "payload_len": 90}]))
    row = answered.iloc[0]
    assert (row.proto, row.history, row.conn_state, row.orig_bytes, row.resp_bytes) == ("udp", "Dd", "SF", 30, 90)
    lost = build_flows(make_packets([{**query, "payload_len": 30}] * 3)).iloc[0]
    assert (lost.history, lost.conn_state, lost.orig_pkts, lost.orig_bytes) == ("D", "S0", 3, 90)


def test_ipv6_endpoints_are_bracketed() -> None:
    rows = [
        {"src": "2001:db8::1", "dst": "2001:db8::2", "sport": 50000, "dport": 443, "flags": "S", "seq": 1},
        {"src": "2001:db8::2", "dst": "2001:db8::1", "sport": 443, "dport": 50000, "flags": "SA", "seq": 7, "ack": 2},
    ]
    flow = one_flow(rows)
    assert (flow.orig, flow.resp) == ("[2001:db8::1]:50000", "[2001:db8::2]:443")
    assert flow.orig_h == "2001:db8::1"


def test_icmp_arp_and_fragments_are_not_flows() -> None:
    rows = [
        c("S", seq=C_ISN),
        {"proto": "icmp", "src": "198.18.0.1", "dst": "203.0.113.10", "icmp_type": 3, "icmp_code": 3},
        {},  # not IP at all
        {"proto": "udp", "src": "192.0.2.5", "dst": "198.51.100.53", "frag_offset": 1480},
    ]
    ids = flow_ids(make_packets(rows))
    assert ids.dtype == np.int64
    assert list(ids) == [0, -1, -1, -1]
    assert len(build_flows(make_packets(rows))) == 1


def test_no_flows_gives_an_empty_table_with_the_columns() -> None:
    flows = build_flows(make_packets([{"proto": "icmp", "src": "192.0.2.1", "dst": "192.0.2.2"}]))
    assert flows.empty and tuple(flows.columns) == tuple(FLOW_COLUMNS)


def test_many_flows_keep_first_appearance_order_and_counts() -> None:
    rows = []
    for port in range(100):
        rows.append({**CLIENT, "sport": 40000 + port, "flags": "S", "seq": port})
    for port in reversed(range(100)):
        rows.append({**SERVER, "dport": 40000 + port, "flags": "RA", "seq": 0, "ack": port + 1})
    flows = build_flows(make_packets(rows))
    assert list(flows.orig_p) == [40000 + port for port in range(100)]
    assert set(flows.conn_state) == {"REJ"}
    assert (flows.orig_pkts == 1).all() and (flows.resp_pkts == 1).all()


def test_flow_ids_of_thousands_of_tuples_match_a_plain_grouping() -> None:
    # More distinct 5-tuples than the flow-key table starts with, so it has to grow
    # several times; ids must still be the first-appearance numbering of the
    # unordered endpoint pair (plus the transport), as pandas computes it here.
    rng = np.random.default_rng(7)
    n = 12_000
    host = rng.integers(0, 3000, n)
    port = 1024 + rng.integers(0, 4, n)
    towards_server = rng.random(n) < 0.5
    proto = np.where(rng.random(n) < 0.3, "udp", "tcp")
    rows = []
    for h, p, out, pr in zip(host.tolist(), port.tolist(), towards_server.tolist(), proto.tolist(), strict=True):
        client = {"addr": f"10.{h // 250}.{h % 250}.1", "port": p}
        server = {"addr": "198.51.100.7", "port": 443}
        src, dst = (client, server) if out else (server, client)
        row = {"src": src["addr"], "dst": dst["addr"], "sport": src["port"], "dport": dst["port"], "proto": pr}
        rows.append({**row, "flags": "A"} if pr == "tcp" else row)
    ids = flow_ids(make_packets(rows))
    pair = [
        (pr, *sorted([(r["src"], r["sport"]), (r["dst"], r["dport"])]))
        for r, pr in zip(rows, proto.tolist(), strict=True)
    ]
    expected = pd.factorize(pd.Series([repr(key) for key in pair]), sort=False)[0]
    assert len(set(pair)) > 5_000
    assert ids.tolist() == expected.tolist()


def test_syn_fin_rst_letters_repeat_only_with_a_new_sequence_number() -> None:
    same_synack = [c("S", seq=C_ISN), s("SA", seq=S_ISN, ack=C_ISN + 1), s("SA", seq=S_ISN, ack=C_ISN + 1)]
    assert one_flow(same_synack).history == "Sh"
    new_synack = [c("S", seq=C_ISN), s("SA", seq=S_ISN, ack=C_ISN + 1), s("SA", seq=S_ISN + 9, ack=C_ISN + 1)]
    assert one_flow(new_synack).history == "Shh"
    fin_again = [*HANDSHAKE, c("FA", seq=C_ISN + 1, ack=S_ISN + 1), c("FA", seq=C_ISN + 1, ack=S_ISN + 1)]
    assert one_flow(fin_again).history == "ShAF"
    two_rsts = [*HANDSHAKE, c("R", seq=C_ISN + 1), c("R", seq=C_ISN + 5000)]
    assert one_flow(two_rsts).history == "ShARR"


def test_multi_flag_packets_are_q_and_i() -> None:
    assert one_flow([c("SF", seq=C_ISN)]).history == "Q"
    # The FIN closed the connection: the SYN-RST after it is another one, as Zeek splits it.
    assert list(build_flows(make_packets([c("SF", seq=C_ISN), c("SR", seq=C_ISN)])).history) == ["Q", "Q"]
    assert one_flow([*HANDSHAKE, s("FR", seq=S_ISN + 1)]).history == "ShAi"


def test_bare_ack_before_the_syn_ack_keeps_the_responder_inactive() -> None:
    # Zeek: "some eccentric TCPs ack an initial SYN before sending the SYN-ACK".
    rows = [c("S", seq=C_ISN), s("A", seq=S_ISN, ack=C_ISN + 1), s("SA", seq=S_ISN, ack=C_ISN + 1)]
    flow = one_flow(rows)
    assert (flow.history, flow.conn_state) == ("Sah", "S1")


def test_partial_connection_bytes_come_from_sequence_numbers() -> None:
    # Midstream: no SYN, so Zeek starts each side one before its first sequence number.
    rows = [
        c("PA", seq=7000, ack=9000, payload_len=100),
        c("PA", seq=7100, ack=9000, payload_len=100),
        s("A", seq=9000, ack=7200),
    ]
    flow = one_flow(rows)
    assert (flow.orig_bytes, flow.resp_bytes, flow.conn_state) == (200, 0, "OTH")


# --------------------------------------------------------------------------- forwarded copies


def forwarded(
    row: dict[str, Any], t: float, ip_id: int, ways: tuple[str, ...] = ("eth-in", "eth-out")
) -> list[dict[str, Any]]:
    """One packet as a box captured on two interfaces sees it: in, then out 10 µs later with the TTL one lower."""
    return [
        {**row, "iface": iface, "t": t + 0.00001 * k, "ip_id": ip_id, "ttl": 64 - k} for k, iface in enumerate(ways)
    ]


def test_forwarded_syns_count_once_at_a_router() -> None:
    # The client's SYN and two retransmissions, each seen on both interfaces of the router.
    rows = [copy for attempt in range(3) for copy in forwarded(c("S", seq=C_ISN), attempt, 61898 + attempt)]
    flow = one_flow(rows)
    assert (flow.history, flow.conn_state, flow.syn_retransmits, flow.orig_pkts) == ("S", "S0", 2, 3)
    assert flow.first_index == 0


def test_incident_through_a_two_interface_node_reads_like_the_pod() -> None:
    # Per attempt: SYN in and on to the pod, SYN-ACK back (a new ISN each time),
    # the NAT gateway's RST in and on to the pod (IP ID 0 every time).
    rows: list[dict[str, Any]] = []
    toward_pod, toward_router = ("eth-router", "eth-pod"), ("eth-pod", "eth-router")
    for attempt in range(3):
        rows += forwarded(c("S", seq=C_ISN), attempt, 100 + attempt, toward_pod)
        rows += forwarded(s("SA", seq=S_ISN + attempt * 7777, ack=C_ISN + 1), attempt + 0.001, 0, toward_router)
        rows += forwarded(c("R", seq=C_ISN + 1), attempt + 0.002, 0, toward_pod)
    at_node = build_flows(make_packets(rows))
    at_pod = build_flows(make_packets([row for row in rows if row["iface"] == "eth-pod"]))
    columns = ["history", "conn_state", "syn_retransmits", "orig_pkts", "resp_pkts", "prev_flow"]
    assert at_node[columns].values.tolist() == at_pod[columns].values.tolist()
    assert at_node.history.tolist() == ["ShR"] * 3 and at_node.syn_retransmits.tolist() == [0, 1, 1]
    # Each RST once, under the index of its first copy (in on eth-router).
    assert at_node.rsts.tolist() == [[{"index": 6 * attempt + 4, "from": "orig"}] for attempt in range(3)]


def test_forwarded_data_counts_its_bytes_once_and_is_no_retransmission() -> None:
    rows = [*HANDSHAKE]
    rows += forwarded(c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=100), 1.0, 42)
    rows += forwarded(s("A", seq=S_ISN + 1, ack=C_ISN + 101), 1.001, 43, ("eth-out", "eth-in"))
    flow = one_flow(rows)
    assert (flow.history, flow.retransmits, flow.orig_bytes, flow.orig_pkts, flow.resp_pkts) == ("ShADa", 0, 100, 3, 2)


def test_a_repeat_on_the_same_interface_is_still_a_retransmission() -> None:
    data = c("PA", seq=C_ISN + 1, ack=S_ISN + 1, payload_len=100, ip_id=42, iface="eth-in")
    # The capture has a second interface: the copy rule is in play, and must leave this repeat alone.
    other_iface = s("A", seq=S_ISN + 1, ack=C_ISN + 101, iface="eth-out")
    flow = one_flow([*HANDSHAKE, data, data, other_iface])  # the repeat 1 ms later, inside the copy window
    assert (flow.history, flow.retransmits, flow.orig_pkts) == ("ShADTa", 1, 4)


def test_a_retransmission_a_second_later_on_the_other_interface_is_counted() -> None:
    # Same SYN, same IP ID (as some stacks send), one second apart on the two interfaces.
    rows = [c("S", seq=C_ISN, iface="eth-in", ip_id=0, t=0.0), c("S", seq=C_ISN, iface="eth-out", ip_id=0, t=1.0)]
    flow = one_flow(rows)
    assert (flow.syn_retransmits, flow.orig_pkts) == (1, 2)


def test_a_nat_box_keeps_the_flows_before_and_after_the_rewrite() -> None:
    # node-a: the SYN in for the NodePort, out again DNATed to the pod, both on one capture.
    before = {**CLIENT, "dst": "198.18.10.10", "dport": 30080}
    rows = [
        {**before, "flags": "S", "seq": C_ISN, "iface": "eth-in", "ip_id": 7, "t": 0.0},
        {**CLIENT, "flags": "S", "seq": C_ISN, "iface": "eth-out", "ip_id": 7, "t": 0.00001, "ttl": 63},
    ]
    flows = build_flows(make_packets(rows))
    assert list(flows.resp) == ["198.18.10.10:30080", "198.18.102.10:80"]
    assert list(flows.orig_pkts) == [1, 1]


def test_copies_keep_their_flow_id() -> None:
    rows = forwarded(c("S", seq=C_ISN), 0.0, 1) + forwarded(s("SA", seq=S_ISN, ack=C_ISN + 1), 0.001, 2)
    assert list(flow_ids(make_packets(rows))) == [0, 0, 0, 0]


# --------------------------------------------------------------------------- the lab's reference captures

INCIDENT_POINTS = ("client", "internet", "nlb", "vpc-router", "node-a", "node-b", "pod-b", "natgw")


@pytest.fixture(scope="module")
def incident_flows() -> dict[str, pd.DataFrame]:
    paths = {point: PROJECT / "captures" / f"{point}.pcapng" for point in INCIDENT_POINTS}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        pytest.skip(f"reference captures missing: {', '.join(missing)}")
    return {point: build_flows(read_capture(path)) for point, path in paths.items()}


def test_every_point_counts_the_clients_own_syn_retransmissions(incident_flows: dict[str, pd.DataFrame]) -> None:
    assert len(incident_flows["client"]) == 1
    client: Any = next(incident_flows["client"].itertuples())
    assert client.syn_retransmits >= 1
    for point, flows in incident_flows.items():
        seen_from_client = flows[flows.orig == client.orig]
        assert not seen_from_client.empty, point
        # Every point passes each SYN once (the NAT gateway never sees one); where the RSTs split the
        # attempts into flows, each later flow's SYN counts as a retransmission of the one before.
        expected = 0 if point == "natgw" else client.syn_retransmits
        for _resp, flows_to_one_server in seen_from_client.groupby("resp"):
            assert flows_to_one_server.syn_retransmits.sum() == expected, (point, flows_to_one_server)


def test_router_histories_match_the_single_interface_points(incident_flows: dict[str, pd.DataFrame]) -> None:
    def flows_to(point: str, resp: str) -> pd.DataFrame:
        table = incident_flows[point]
        return table[table.resp == resp].reset_index(drop=True)

    nlb_listener, pod = "198.51.100.10:80", "198.18.102.10:80"
    # internet forwards between the client and the NLB: it reads like the client.
    client, internet = flows_to("client", nlb_listener), flows_to("internet", nlb_listener)
    assert internet[["history", "orig_pkts", "resp_pkts"]].values.tolist() == [["S", client.orig_pkts[0], 0]]
    # vpc-router and node-b forward the pod's flows: they read like the pod.
    at_pod = flows_to("pod-b", pod)
    columns = ["history", "conn_state", "orig_pkts", "resp_pkts", "syn_retransmits"]
    for point in ("node-b", "vpc-router"):
        at_point = flows_to(point, pod)
        assert at_point[columns].values.tolist() == at_pod[columns].values.tolist(), point
        assert (at_point.prev_flow >= 0).tolist() == (at_pod.prev_flow >= 0).tolist(), point
        assert at_point.rsts.map(len).tolist() == at_pod.rsts.map(len).tolist(), point


def test_text_columns_gathered_from_distinct_texts_are_what_pandas_makes_of_them() -> None:
    """The flow table's text columns are built from each distinct text once; the column is pandas' own."""
    from diag.flows.table import _text_column

    rng = np.random.default_rng(7)
    texts = np.array(["tcp", "udp", "icmp", "10.0.0.1:80", "[2001:db8::1]:443", ""], dtype=object)
    values = texts[rng.integers(0, len(texts), 500)]
    expected = pd.DataFrame({"text": values})
    pd.testing.assert_frame_equal(pd.DataFrame({"text": _text_column(values)}), expected)
    codes = rng.integers(0, len(texts), 500)
    gathered = pd.DataFrame({"text": _text_column(texts, codes)})
    pd.testing.assert_frame_equal(gathered, pd.DataFrame({"text": texts[codes]}))
    with_missing = np.array(["a", None, "b", "a"], dtype=object)
    pd.testing.assert_frame_equal(
        pd.DataFrame({"text": _text_column(with_missing)}), pd.DataFrame({"text": with_missing})
    )


def _lookup_captures() -> list[Path]:
    """The shipped captures (the nodes' hold forwarded copies) and the corpus's tunnelled ones, when present."""
    from conftest import CORPUS
    from test_tunnels import CORPUS_TUNNELS

    shipped = sorted((PROJECT / "captures").glob("*.pcapng"))
    corpus = [CORPUS / "tcpdump" / "tests" / name for name in CORPUS_TUNNELS]
    return shipped + [path for path in corpus if path.exists()]


def test_looking_up_some_rows_flows_gives_what_the_flow_of_every_row_gives() -> None:
    """``flows_of`` (a capture's few tunnel rows, looked up one by one) against ``row_flows`` read at the same
    rows, for every row of captures with forwarded copies, tunnels opened and not, and rows of no flow."""
    from diag.flows.carriers import tunnel_rows
    from diag.flows.keys import FlowKeys
    from diag.flows.table import _LOOKED_UP_ROWS, _summarise

    looked_up = copies = tunnelled = 0
    for path in _lookup_captures():
        packets = read_capture(path)
        keys = FlowKeys(packets)
        if keys.n_tuples == 0:
            continue
        walked = _summarise(packets, keys)
        every = walked.row_flows()
        rows = np.arange(len(packets))
        for start in range(0, len(rows), _LOOKED_UP_ROWS):
            chunk = rows[start : start + _LOOKED_UP_ROWS]
            assert walked.flows_of(chunk).tolist() == every[chunk].tolist(), path.name
        reversed_rows = rows[::-1][:_LOOKED_UP_ROWS]
        assert walked.flows_of(reversed_rows).tolist() == every[reversed_rows].tolist(), path.name
        looked_up += len(rows)
        copies += int(((walked.origin >= 0) & (walked.tuple_id >= 0)).sum())
        tunnelled += int(tunnel_rows(packets).sum())
    assert looked_up > 100 and copies > 0 and tunnelled > 0, (looked_up, copies, tunnelled)


def test_texts_made_by_arrow_are_the_column_pandas_makes_of_the_same_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint texts and histories are made by arrow, not a Python string each: every endpoint is its host
    and port as ``endpoint_text`` writes them (IPv6 in brackets), the column has pandas' own dtype for text,
    and a pandas keeping its strings itself (the other branch) gets the same values. (The histories are held
    to Zeek's by test_zeek_parity.)"""
    import diag.flows.table as table
    from diag.capture.addresses import endpoint_text
    from diag.capture.points import concat_packets

    packets = concat_packets([read_capture(path) for path in sorted((PROJECT / "captures").glob("*.pcapng"))])
    rows = [
        {"src": "2001:db8::1", "dst": "2001:db8::2", "sport": 50000, "dport": 443, "flags": "S", "seq": 1},
        {"src": "2001:db8::2", "dst": "2001:db8::1", "sport": 443, "dport": 50000, "flags": "SA", "seq": 7, "ack": 2},
    ]
    packets = concat_packets([packets, make_packets(rows)])
    arrow_made = build_flows(packets)
    assert len(arrow_made) > 10 and arrow_made["orig"].str.startswith("[").any()
    for side in ("orig", "resp"):
        hosts, ports = arrow_made[f"{side}_h"].tolist(), arrow_made[f"{side}_p"].tolist()
        assert arrow_made[side].tolist() == [endpoint_text(h, p) for h, p in zip(hosts, ports, strict=True)]
    assert arrow_made["history"].dtype == pd.Series(np.array(["SF"], dtype=object)).dtype
    monkeypatch.setattr(table, "_STRING", pd.StringDtype("python", na_value=np.nan))
    converted = build_flows(packets)
    for name in ("orig", "resp", "history"):
        assert arrow_made[name].tolist() == converted[name].tolist()
