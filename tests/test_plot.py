"""The ladder diagram and timeline, checked on their matplotlib artists (not pixels).

``incident_report`` builds the incident's report by hand, directly as the
packet table of ``diag.capture.columns`` with a known correlation, so these
tests pin down what the picture does with known input, independent of the
reader and the matcher. ``test_plot_pipeline.py`` draws what the real reader,
correlation and diagnosis make of captured files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch
from matplotlib.text import Text

import diag.plot
from diag.capture.columns import PACKET_COLUMNS
from diag.capture.info import CaptureInfo
from diag.correlate.clock import ClockOffset
from diag.diagnose.causes import spec_of
from diag.errors import DiagError
from diag.plot import style
from diag.report import Cause, Finding, PacketRef, Report, RuledOut

CLIENT = "203.0.113.10"
NLB = "198.51.100.10"
NODE_A = "198.18.1.10"
POD = "198.18.102.10"
CPORT = 38622
CLIENT_ISN = 1_000_000
SYN, RST, ACK = 0x02, 0x04, 0x10
NODE_B_SKEW_S = 2.5  # node-b's clock runs 2.5 s ahead; the report's offset corrects it
POINTS = ("client", "node-a", "node-b", "pod", "natgw", "vpc-router")


def _packet(capture: str, ts: float, src: str, sport: int, dst: str, dport: int, flags: int, seq: int, ack: int,
            ttl: int = 64) -> dict[str, Any]:
    row: dict[str, Any] = {name: (-1 if dtype.startswith("int") else "") for name, (dtype, _) in PACKET_COLUMNS.items()}
    row.update(
        capture=capture, ts_ns=round(ts * 1e9), iface="eth0", direction="", link_type=1, ip_version=4,
        src=src, dst=dst, proto=6, sport=sport, dport=dport, ttl=ttl, ip_id=0, frag_offset=0, more_fragments=False,
        ip_len=60, cap_len=74, wire_len=74, truncated=False, tcp_flags=flags, seq=seq, ack=ack, win=64240, mss=1460,
        wscale=7, sack_perm=True, payload_len=0, payload_digest=0,
    )
    return row


def incident_report(attempts: int = 4, base: float = 1_764_257_655.0) -> Report:
    """The client's SYN every second reaches the pod; each SYN-ACK goes to natgw, whose RST reaches the pod."""
    rows: list[dict[str, Any]] = []
    matches: list[dict[str, Any]] = []

    def seen(match_id: int, hop: int, **packet: Any) -> None:
        matches.append({"row": len(rows), "capture": packet["capture"], "match_id": match_id, "hop": hop})
        rows.append(_packet(**packet))

    match_id = 0
    for attempt in range(attempts):
        t = base + attempt * 1.0
        skew = NODE_B_SKEW_S
        syn = {"flags": SYN, "seq": CLIENT_ISN, "ack": 0}
        seen(match_id, 0, capture="client", ts=t, src=CLIENT, sport=CPORT, dst=NLB, dport=80, **syn)
        seen(match_id, 1, capture="node-a", ts=t + 0.0004, src=CLIENT, sport=CPORT, dst=NODE_A, dport=30080, **syn)
        seen(match_id, 2, capture="node-a", ts=t + 0.0005, src=CLIENT, sport=CPORT, dst=POD, dport=80, **syn)
        seen(match_id, 3, capture="node-b", ts=t + 0.0007 + skew, src=CLIENT, sport=CPORT, dst=POD, dport=80, **syn)
        seen(match_id, 4, capture="pod", ts=t + 0.0008, src=CLIENT, sport=CPORT, dst=POD, dport=80, **syn)
        match_id += 1
        synack = {"flags": SYN | ACK, "seq": 5_000_000 + attempt * 1_100_000, "ack": CLIENT_ISN + 1}
        seen(match_id, 0, capture="pod", ts=t + 0.0009, src=POD, sport=80, dst=CLIENT, dport=CPORT, **synack)
        seen(match_id, 1, capture="node-b", ts=t + 0.0010 + skew, src=POD, sport=80, dst=CLIENT, dport=CPORT,
             **synack)
        seen(match_id, 2, capture="natgw", ts=t + 0.0012, src=POD, sport=80, dst=CLIENT, dport=CPORT, **synack)
        match_id += 1
        rst = {"flags": RST, "seq": CLIENT_ISN + 1, "ack": 0}
        seen(match_id, 0, capture="natgw", ts=t + 0.0013, src=CLIENT, sport=CPORT, dst=POD, dport=80, ttl=64, **rst)
        seen(match_id, 1, capture="node-b", ts=t + 0.0015 + skew, src=CLIENT, sport=CPORT, dst=POD, dport=80,
             ttl=63, **rst)
        seen(match_id, 2, capture="pod", ts=t + 0.0016, src=CLIENT, sport=CPORT, dst=POD, dport=80, ttl=63, **rst)
        match_id += 1

    packets = pd.DataFrame(rows, columns=list(PACKET_COLUMNS))
    packets["index"] = packets.groupby("capture").cumcount()
    for column in ("capture", "src", "dst", "iface", "direction"):
        packets[column] = packets[column].astype("category")
    first_rst_at_pod = packets[(packets["capture"] == "pod") & (packets["tcp_flags"] == RST)].iloc[0]
    finding = Finding(
        cause="asymmetric-return", confidence=0.95, proto="tcp", client=f"{CLIENT}:{CPORT}", server=f"{NLB}:80",
        packet=PacketRef("pod", int(first_rst_at_pod["index"]), float(first_rst_at_pod["ts_ns"]) / 1e9),
        claimed_src=CLIENT, origin="natgw",
        summary="The pod's SYN-ACK left node-b by its default route to the NAT gateway, which has no state for "
                "the connection and answered with a RST that claims to come from the client.",
        evidence=("the client's capture has no RST",),
        ruled_out=(RuledOut("peer-reset", "the client never sent a RST"),),
        fixes=("SNAT on node-a (loses the client address)",),
        severity=spec_of(Cause.ASYMMETRIC_RETURN).severity, forged=True,
    )
    flows = pd.DataFrame([
        {"capture": "client", "proto": "tcp", "orig": f"{CLIENT}:{CPORT}", "resp": f"{NLB}:80",
         "syn_retransmits": attempts - 1, "rsts": []},
        {"capture": "pod", "proto": "tcp", "orig": f"{CLIENT}:{CPORT}", "resp": f"{POD}:80",
         "syn_retransmits": attempts - 1, "rsts": [{"index": 2, "from": "orig"}]},
    ])
    captures = [CaptureInfo(name, f"{name}.pcap", int((packets["capture"] == name).sum()), "EN10MB") for name in POINTS]
    return Report(
        captures=captures, packets=packets, flows=flows, findings=[finding], matches=pd.DataFrame(matches),
        clock_reference="client",
        clock_offsets={"node-b": ClockOffset(-NODE_B_SKEW_S, 0.0002), "pod": ClockOffset(0.0, 0.0001)},
    )


# --- reading a figure back -----------------------------------------------------------------------------


def texts(figure: Figure) -> list[Text]:
    return [artist for artist in figure.findobj(Text) if artist.get_text()]


def text_by_gid(figure: Figure, gid: str) -> Text:
    found = [t for t in texts(figure) if t.get_gid() == gid]
    assert len(found) == 1, f"expected one text {gid!r}, found {len(found)}"
    return found[0]


def lane_order(figure: Figure) -> list[str]:
    headers = [t for t in texts(figure) if (t.get_gid() or "").startswith("lane-header:")]
    return [t.get_text() for t in sorted(headers, key=lambda t: t.get_position()[0])]


def arrows(figure: Figure) -> list[FancyArrowPatch]:
    return [patch for patch in figure.findobj(FancyArrowPatch) if (patch.get_gid() or "").startswith("trip:")]


def arrow_label(figure: Figure, arrow: FancyArrowPatch) -> str:
    return text_by_gid(figure, f"{arrow.get_gid()}:label").get_text()


def same_colour(a: Any, b: Any) -> bool:
    from matplotlib.colors import to_rgba

    return to_rgba(a) == pytest.approx(to_rgba(b))


# --- the ladder on the incident ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> Report:
    return incident_report()


@pytest.fixture(scope="module")
def figure(report: Report) -> Figure:
    return diag.plot.ladder(report)


def test_one_lane_per_capture_point_in_path_order(figure: Figure) -> None:
    # The request's path fixes client, node-a, node-b, pod; the NAT gateway (reply only) sits at the
    # VPC edge next to the client side; the point that saw nothing keeps its conventional place.
    assert lane_order(figure) == ["client", "natgw", "vpc-router", "node-a", "node-b", "pod"]


def test_one_arrow_per_hop_of_each_packet(report: Report, figure: Figure) -> None:
    view = diag.plot.flow_view(report)
    assert len(view.trips) == 12  # 4 attempts x (SYN, SYN-ACK, RST)
    expected_hops = sum(len(trip.sightings) - 1 for trip in view.trips)
    assert len(arrows(figure)) == expected_hops
    # node-a saw each SYN on both interfaces (before and after its DNAT): one sighting, one lane.
    assert [trip.lanes for trip in view.trips[:3]] == [
        ("client", "node-a", "node-b", "pod"), ("pod", "node-b", "natgw"), ("natgw", "node-b", "pod"),
    ]


def test_resets_are_red_and_nothing_else_is(figure: Figure) -> None:
    drawn = arrows(figure)
    resets = [a for a in drawn if arrow_label(figure, a).startswith("RST")]
    others = [a for a in drawn if not arrow_label(figure, a).startswith("RST")]
    assert resets and others
    assert all(same_colour(a.get_edgecolor(), style.RST_COLOUR) for a in resets)
    assert not any(same_colour(a.get_edgecolor(), style.RST_COLOUR) for a in others)


def test_reset_marked_with_its_real_origin(figure: Figure) -> None:
    origin = text_by_gid(figure, "origin")
    assert "natgw" in origin.get_text()
    assert same_colour(origin.get_color(), style.RST_COLOUR)
    star = [line for line in figure.axes[0].get_lines() if line.get_gid() == "origin-marker"]
    assert len(star) == 1
    natgw_lane = next(line for line in figure.axes[0].get_lines() if line.get_gid() == "lane:natgw")
    assert star[0].get_xdata()[0] == natgw_lane.get_xdata()[0]


def test_claimed_source_crossed_out(figure: Figure) -> None:
    claimed = text_by_gid(figure, "claimed-source")
    assert CLIENT in claimed.get_text() and "client" in claimed.get_text()
    assert any(isinstance(effect, style.StrikeThrough) for effect in claimed.get_path_effects())


def test_genuine_reset_is_not_crossed_out(report: Report) -> None:
    # The same packets, judged a genuine client reset: the client is then the real origin, nothing to cross out.
    peer = spec_of(Cause.PEER_RESET)
    genuine = [dataclasses.replace(report.findings[0], cause=peer.cause, origin="client", severity=peer.severity,
                                   forged=peer.forged)]
    figure = diag.plot.ladder(dataclasses.replace(report, findings=genuine))
    assert not [t for t in texts(figure) if t.get_gid() == "claimed-source"]
    assert "client" in text_by_gid(figure, "origin").get_text()


def test_dashed_arrows_are_the_retransmissions(report: Report, figure: Figure) -> None:
    dashed = {a.get_gid() for a in arrows(figure) if a.get_linestyle() == "--"}
    client_flow = report.flows[report.flows["capture"] == "client"].iloc[0]
    assert len(dashed) == client_flow["syn_retransmits"] == 3
    assert all("retransmitted" in text_by_gid(figure, f"{gid}:label").get_text() for gid in dashed)


def test_point_that_saw_nothing_is_greyed(figure: Figure) -> None:
    assert text_by_gid(figure, "lane-detail:vpc-router").get_text() == "saw nothing"
    lane = next(line for line in figure.axes[0].get_lines() if line.get_gid() == "lane:vpc-router")
    assert same_colour(lane.get_color(), style.EMPTY_LANE_COLOUR)
    seen = next(line for line in figure.axes[0].get_lines() if line.get_gid() == "lane:pod")
    assert not same_colour(seen.get_color(), style.EMPTY_LANE_COLOUR)


def test_headers_show_the_addresses_each_point_saw(figure: Figure) -> None:
    node_a = text_by_gid(figure, "lane-detail:node-a").get_text()
    assert f"{NODE_A}:30080" in node_a and f"{POD}:80" in node_a  # before and after node-a's DNAT
    assert f"{NLB}:80" in text_by_gid(figure, "lane-detail:client").get_text()


def test_title_carries_the_verdict(figure: Figure) -> None:
    assert "asymmetric-return" in text_by_gid(figure, "title").get_text()
    assert f"{CLIENT}:{CPORT}" in text_by_gid(figure, "subtitle").get_text()


def test_labels_use_relative_sequence_numbers(figure: Figure) -> None:
    labels = [arrow_label(figure, a) for a in arrows(figure)]
    assert "SYN seq=0" in labels
    assert "SYN-ACK seq=0 ack=1" in labels  # each SYN-ACK counted from its own ISN
    assert "RST seq=1" in labels  # the NAT gateway's reset carries the SYN-ACK's ack as its seq


def test_clock_offsets_put_every_hop_in_order(report: Report) -> None:
    # node-b's clock is 2.5 s ahead in the raw timestamps; after correction each packet's hops follow each other.
    for trip in diag.plot.flow_view(report).trips:
        times = [s.t for s in trip.sightings]
        assert times == sorted(times)
        assert times[-1] - times[0] < 0.01


def test_condensed_mode_collapses_repeated_cycles() -> None:
    report = incident_report(attempts=6)
    full = diag.plot.ladder(report, condensed=False)
    short = diag.plot.ladder(report, condensed=True)
    collapsed = text_by_gid(short, "collapsed").get_text()
    assert "×4" in collapsed and "SYN → SYN-ACK → RST" in collapsed
    assert len({a.get_gid() for a in arrows(short)}) == 6  # first and last cycle
    assert len({a.get_gid() for a in arrows(full)}) == 18
    assert short.get_figheight() < full.get_figheight()


def test_long_flows_condense_by_default() -> None:
    assert not [t for t in texts(diag.plot.ladder(incident_report(attempts=16))) if t.get_gid() == "collapsed"]
    long_flow = diag.plot.ladder(incident_report(attempts=17))  # 51 packets: more than a page can hold
    assert "×15" in text_by_gid(long_flow, "collapsed").get_text()


def test_select_flow_by_endpoint_packet_and_flow_row(report: Report) -> None:
    by_default = diag.plot.flow_view(report)
    for selector in (f"{CLIENT}:{CPORT}", f"{POD}:80", PacketRef("client", 0, 0.0), 0, 1, report.findings[0]):
        view = diag.plot.flow_view(report, selector)
        assert [trip.lanes for trip in view.trips] == [trip.lanes for trip in by_default.trips], selector


def test_bad_selection_is_a_diag_error(report: Report) -> None:
    with pytest.raises(DiagError, match="no packet"):
        diag.plot.flow_view(report, "192.0.2.99:1")
    with pytest.raises(DiagError, match="does not exist"):
        diag.plot.flow_view(report, 7)
    with pytest.raises(DiagError, match="not in the report"):
        diag.plot.flow_view(report, PacketRef("pod", 999, 0.0))
    empty = Report(captures=[], packets=report.packets.iloc[0:0], flows=pd.DataFrame())
    with pytest.raises(DiagError, match="no packets"):
        diag.plot.ladder(empty)


def test_draws_into_a_given_axes(report: Report) -> None:
    figure = Figure(figsize=(14, 10))
    left, right = figure.subplots(1, 2)
    assert diag.plot.ladder(report, ax=right) is figure
    assert arrows(figure) and not left.patches
    # A 6-inch panel has no room for addresses under six lane names: names only, empty lanes still marked.
    assert lane_order(figure) == ["client", "natgw", "vpc-router", "node-a", "node-b", "pod"]
    assert not [t for t in texts(figure) if t.get_gid() == "lane-detail:pod"]
    assert text_by_gid(figure, "lane-detail:vpc-router").get_text() == "saw nothing"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_ladder_to_file(report: Report, tmp_path: Path, suffix: str, magic: bytes) -> None:
    target = tmp_path / f"ladder{suffix}"
    diag.plot.ladder_to_file(report, target)
    assert target.read_bytes().startswith(magic)
    if suffix == ".svg":
        assert "asymmetric-return" in target.read_text()


def test_ladder_to_file_refuses_other_formats(report: Report, tmp_path: Path) -> None:
    with pytest.raises(DiagError, match=r"\.png or \.svg"):
        diag.plot.ladder_to_file(report, tmp_path / "ladder.pdf")
    with pytest.raises(DiagError, match="cannot write"):
        diag.plot.ladder_to_file(report, tmp_path / "missing-dir" / "ladder.png")


def test_timeline_has_a_row_per_point_and_a_mark_per_sighting(report: Report) -> None:
    figure = diag.plot.timeline(report)
    ax = figure.axes[0]
    assert [t.get_text().split("\n")[0] for t in ax.get_yticklabels()] == lane_order(diag.plot.ladder(report))
    marks = [line for line in ax.get_lines() if (line.get_gid() or "").startswith("packet:")]
    assert len(marks) == sum(len(trip.sightings) for trip in diag.plot.flow_view(report).trips)
    assert "saw nothing" in [t.get_text() for t in ax.get_yticklabels()][2]


def test_a_point_passed_twice_appears_twice_in_the_path() -> None:
    # node-b forwards to node-a through the VPC router: the SYN passes the router twice. The correlation
    # gives all the router's copies one hop; the TTL (63, 62 then 61, 60) puts node-b between them even
    # though the router's clock is off by more than the transit time.
    t, router_skew = 1_764_257_655.0, 0.002
    syn: dict[str, Any] = {"src": CLIENT, "sport": CPORT, "dst": POD, "dport": 80, "flags": SYN, "seq": 1, "ack": 0}
    seen = [
        ("nlb", 0, t, 64), ("vpc-router", 1, t + 0.0001 + router_skew, 63),
        ("vpc-router", 1, t + 0.0002 + router_skew, 62), ("node-b", 2, t + 0.0003, 62),
        ("node-b", 2, t + 0.0004, 61), ("vpc-router", 1, t + 0.0005 + router_skew, 61),
        ("vpc-router", 1, t + 0.0006 + router_skew, 60), ("node-a", 3, t + 0.0007, 60),
    ]
    packets = pd.DataFrame([_packet(capture, ts, ttl=ttl, **syn) for capture, _, ts, ttl in seen],
                           columns=list(PACKET_COLUMNS))
    packets["index"] = packets.groupby("capture").cumcount()
    matches = pd.DataFrame({"row": range(len(seen)), "match_id": 0, "hop": [hop for _, hop, _, _ in seen]})
    report = Report(captures=[], packets=packets, flows=pd.DataFrame(), matches=matches)
    (trip,) = diag.plot.flow_view(report).trips
    assert trip.lanes == ("nlb", "vpc-router", "node-b", "vpc-router", "node-a")


def test_without_findings_the_first_troubled_connection_is_drawn() -> None:
    import synthetic

    from diag.analysis import concat_packets
    from diag.flows import build_flows

    healthy, dropped = synthetic.healthy().packets(), synthetic.silent_drop().packets()
    packets = concat_packets([healthy, dropped])
    flows = build_flows(packets)
    assert flows["conn_state"].iloc[0] == "SF"  # a healthy connection comes first in the table
    view = diag.plot.flow_view(Report(captures=[], packets=packets, flows=flows))
    assert view.client.endswith(":48000")  # the silent-drop scenario's client, whose SYNs got no answer
    assert {trip.flag_name for trip in view.trips} == {"SYN"}


def test_ipv6_connections_are_named_as_the_flow_table_names_them() -> None:
    client, server = "2001:db8::10", "2001:db8:1::80"
    rows = [
        _packet("client", 1_764_257_655.0, client, 40000, server, 443, SYN, 7, 0),
        _packet("client", 1_764_257_655.1, server, 443, client, 40000, SYN | ACK, 900, 8),
    ]
    packets = pd.DataFrame(rows, columns=list(PACKET_COLUMNS)).assign(ip_version=6, index=[0, 1])
    flows = pd.DataFrame([{"capture": "client", "proto": "tcp", "orig": f"[{client}]:40000",
                           "resp": f"[{server}]:443", "conn_state": "S1"}])
    view = diag.plot.flow_view(Report(captures=[], packets=packets, flows=flows), 0)
    assert (view.client, view.server) == (f"[{client}]:40000", f"[{server}]:443")
    assert [trip.label for trip in view.trips] == ["SYN seq=0", "SYN-ACK seq=0 ack=1"]
    assert diag.plot.flowview.host_of(view.client) == client
    assert diag.plot.flowview.host_of("192.0.2.1:80") == "192.0.2.1"
