"""The flow table on crafted packets: Zeek's history letters and conn_state, counts, RSTs, keys.

Each conn_state case is worked by hand from Zeek's conn.log documentation and
its TCP endpoint state machine: a SYN-ACK puts both ends in ESTABLISHED, a
FIN moves its sender to CLOSED, a RST to RESET, and conn_state is read off the
two final states.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from packets import make_packets

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


def test_incident_seen_at_the_pod_is_one_flow_with_syn_retransmissions() -> None:
    # SYN, SYN-ACK, then a RST "from the client" (forged by the NAT gateway), every second.
    rows = []
    for attempt in range(4):
        rows += [
            c("S", seq=C_ISN, t=attempt),
            s("SA", seq=S_ISN, ack=C_ISN + 1, t=attempt + 0.001),
            c("R", seq=C_ISN + 1, t=attempt + 0.002),
        ]
    flow = one_flow(rows)
    # A SYN-ACK establishes both ends in Zeek's state machine, so the
    # originator's RST gives RSTO (RSTOS0 would need no SYN-ACK at all).
    assert (flow.history, flow.conn_state) == ("ShR", "RSTO")
    assert flow.syn_retransmits == 3
    assert (flow.orig_pkts, flow.resp_pkts) == (8, 4)
    assert flow.rsts == [{"index": i, "from": "orig"} for i in (2, 5, 8, 11)]
    assert flow.first_ts == pytest.approx(make_packets(rows).ts_ns.iloc[0] / 1e9)
    assert flow.last_ts - flow.first_ts == pytest.approx(3.002)


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
    assert list(flow_ids(make_packets(rows))) == [0, 0, 0, 0, 1, 1]


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
    assert flows.empty and tuple(flows.columns) == FLOW_COLUMNS


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
    assert one_flow([c("SF", seq=C_ISN), c("SR", seq=C_ISN)]).history == "Q"
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
