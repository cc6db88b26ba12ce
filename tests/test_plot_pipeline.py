"""The ladder on what the real reader, correlation and diagnosis make of capture files, checked against tshark.

``test_plot.py`` pins the drawing down on a hand-built report; here the input
is pcap files (the synthetic scenarios written with scapy, and the incident
captured in a real lab), and the counts in the picture are compared with what
tshark finds in the same files.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import synthetic
from conftest import PROJECT, require_tools
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch
from matplotlib.text import Text

import diag.plot
from diag.analysis import analyze
from diag.plot import style
from diag.report import Report


def tshark_count(path: Path, display_filter: str) -> int:
    """Packets of ``path`` matching a Wireshark display filter, as tshark counts them."""
    result = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e",
                             "frame.number"], capture_output=True, text=True, check=True)
    return len(result.stdout.split())


def trips_drawn(figure: Figure, **style_wanted: object) -> set[str]:
    """gids of the packets (trips) with at least one arrow of the wanted style (``colour``, ``linestyle``)."""
    from matplotlib.colors import to_rgba

    found = set()
    for patch in figure.findobj(FancyArrowPatch):
        gid = patch.get_gid() or ""
        if not gid.startswith("trip:"):
            continue
        if "colour" in style_wanted and to_rgba(patch.get_edgecolor()) != pytest.approx(
            to_rgba(style_wanted["colour"])  # type: ignore[arg-type]
        ):
            continue
        if "linestyle" in style_wanted and patch.get_linestyle() != style_wanted["linestyle"]:
            continue
        found.add(gid)
    return found


def text(figure: Figure, gid: str) -> Text | None:
    return next((t for t in figure.findobj(Text) if t.get_gid() == gid), None)


def lanes(figure: Figure) -> list[str]:
    headers = [t for t in figure.findobj(Text) if (t.get_gid() or "").startswith("lane-header:")]
    return [t.get_text() for t in sorted(headers, key=lambda t: t.get_position()[0])]


def analyze_quietly(captures: dict[str, Path]) -> Report:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(captures)


def write_scenario(name: str, directory: Path) -> dict[str, Path]:
    arguments = synthetic.SCENARIOS[name]().write_pcaps(directory)
    return {point: Path(path) for point, _, path in (argument.partition("=") for argument in arguments)}


# --- the incident, synthetic captures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def incident_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_scenario("incident", tmp_path_factory.mktemp("incident"))


@pytest.fixture(scope="module")
def incident(incident_files: dict[str, Path]) -> tuple[Report, Figure]:
    report = analyze_quietly(incident_files)
    return report, diag.plot.ladder(report)


def test_lanes_follow_the_request_path(incident: tuple[Report, Figure]) -> None:
    report, figure = incident
    # The SYN's path as the correlation found it, with the reply-only NAT gateway at the VPC edge.
    first_syn = diag.plot.flow_view(report).trips[0]
    assert first_syn.flag_name == "SYN"
    assert first_syn.lanes == ("client", "nlb", "node-a", "node-b", "pod")
    assert lanes(figure) == ["client", "natgw", "nlb", "node-a", "node-b", "pod"]


def test_red_arrows_are_the_resets_tshark_sees(incident: tuple[Report, Figure],
                                               incident_files: dict[str, Path]) -> None:
    require_tools("tshark")
    _, figure = incident
    red = trips_drawn(figure, colour=style.RST_COLOUR)
    # Every RST reaches the pod once (it records, does not forward); the NAT gateway sent each of them.
    assert len(red) == tshark_count(incident_files["pod"], "tcp.flags.reset == 1") == 4
    assert tshark_count(incident_files["natgw"], "tcp.flags.reset == 1") == 4
    assert tshark_count(incident_files["client"], "tcp.flags.reset == 1") == 0


def test_reset_origin_and_claimed_source_come_from_the_diagnosis(incident: tuple[Report, Figure]) -> None:
    report, figure = incident
    verdict = report.verdict
    assert verdict is not None and verdict.origin == "natgw"
    origin = text(figure, "origin")
    assert origin is not None and "natgw" in origin.get_text()
    claimed = text(figure, "claimed-source")
    assert claimed is not None and verdict.claimed_src is not None
    assert verdict.claimed_src in claimed.get_text() and "(client)" in claimed.get_text()
    assert any(isinstance(effect, style.StrikeThrough) for effect in claimed.get_path_effects())
    title = text(figure, "title")
    assert title is not None and "asymmetric-return" in title.get_text()


def test_dashed_arrows_are_the_retransmissions_tshark_sees(incident: tuple[Report, Figure],
                                                           incident_files: dict[str, Path]) -> None:
    require_tools("tshark")
    report, figure = incident
    dashed = trips_drawn(figure, linestyle="--")
    at_client = tshark_count(incident_files["client"], "tcp.analysis.retransmission")
    flows = report.flows
    assert len(dashed) == at_client == int(flows.loc[flows["capture"] == "client", "syn_retransmits"].iloc[0]) == 3


# --- other causes ----------------------------------------------------------------------------------------


def test_healthy_flow_has_no_marks_and_greys_the_natgw(tmp_path: Path) -> None:
    require_tools("tshark")
    files = write_scenario("healthy", tmp_path)
    report = analyze_quietly(files)
    # This connection of the scenario ends with an ordinary RST after the FINs: red, but no finding to mark.
    figure = diag.plot.ladder(report, "203.0.113.10:41001")
    resets_at_client = tshark_count(files["client"], "tcp.flags.reset == 1 && tcp.port == 41001")
    assert len(trips_drawn(figure, colour=style.RST_COLOUR)) == resets_at_client == 1
    assert text(figure, "origin") is None and text(figure, "claimed-source") is None
    detail = text(figure, "lane-detail:natgw")
    assert detail is not None and detail.get_text() == "saw nothing"
    title = text(figure, "title")
    assert title is not None and "healthy" in title.get_text()


def test_genuine_server_reset_is_not_crossed_out(tmp_path: Path) -> None:
    report = analyze_quietly(write_scenario("port-closed", tmp_path))
    figure = diag.plot.ladder(report)
    assert report.verdict is not None and report.verdict.cause == "port-closed"
    assert trips_drawn(figure, colour=style.RST_COLOUR)
    assert text(figure, "claimed-source") is None  # the pod really sent it
    origin = text(figure, "origin")
    assert origin is not None and "pod" in origin.get_text()


@pytest.mark.parametrize("name", sorted(synthetic.SCENARIOS))
def test_every_scenario_draws_with_its_verdict(name: str, tmp_path: Path) -> None:
    report = analyze_quietly(write_scenario(name, tmp_path))
    figure = diag.plot.ladder(report)
    cause = report.verdict_json()["cause"]
    title = text(figure, "title")
    assert title is not None and cause in title.get_text()
    timeline = diag.plot.timeline(report)
    assert timeline.axes[0].get_lines()


# --- the command line ------------------------------------------------------------------------------------


def run_diag(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diag.cli", *arguments], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120)


def test_analyze_pcap_plot(incident_files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "ladder.svg"
    result = run_diag("analyze", "pcap", "--plot", str(target), *(f"{n}={p}" for n, p in incident_files.items()))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes().startswith(b"<?xml") and "asymmetric-return" in target.read_text()


def test_analyze_pcap_plot_refuses_other_formats(incident_files: dict[str, Path], tmp_path: Path) -> None:
    result = run_diag("analyze", "pcap", "--plot", str(tmp_path / "ladder.pdf"),
                      *(f"{n}={p}" for n, p in incident_files.items()))
    assert result.returncode == 2
    assert result.stderr.startswith("diag: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ladder.pdf").exists()


# --- the incident in a real lab --------------------------------------------------------------------------


@pytest.mark.lab
def test_ladder_of_the_incident_captured_in_the_lab(run_of: Callable[[str], Any]) -> None:
    require_tools("tshark")
    run = run_of("incident")  # the session's one real run of diag run-scenario incident
    assert (run.out / "ladder.png").read_bytes().startswith(b"\x89PNG")  # drawn by the runner
    paths = {capture["point"]: run.out / capture["file"] for capture in run.record["captures"]}
    report = analyze_quietly(paths)
    figure = diag.plot.ladder(report)
    pod = next(name for name in paths if name.startswith("pod") and tshark_count(paths[name], "tcp") > 0)

    assert lanes(figure)[0] == "client"
    assert len(trips_drawn(figure, colour=style.RST_COLOUR)) == tshark_count(paths[pod], "tcp.flags.reset == 1") > 0
    assert len(trips_drawn(figure, linestyle="--")) == tshark_count(paths["client"], "tcp.analysis.retransmission")
    origin = text(figure, "origin")
    assert origin is not None and "natgw" in origin.get_text()
    claimed = text(figure, "claimed-source")
    assert claimed is not None and "(client)" in claimed.get_text()
    empty = [t.get_gid() for t in figure.findobj(Text) if (t.get_gid() or "").startswith("lane-empty:")]
    # The lab's other pod takes no part in this connection: its lane is there, marked empty.
    assert empty and all(gid.removeprefix("lane-empty:") in paths for gid in empty)


# --- captures nobody on this project made ----------------------------------------------------------------


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))


def test_corpus_captures_draw_or_refuse_cleanly(corpus: Path) -> None:
    # Every tenth file of tcpdump's test captures (link types, IPv6, tunnels, damaged files): whatever the
    # analysis makes of it is drawn, unless it holds no IP packet at all.
    from diag.errors import DiagError

    drawn = 0
    for path in corpus_files(corpus)[::10]:
        try:
            report = analyze_quietly({"capture": path})
        except DiagError:
            continue
        try:
            figure = diag.plot.ladder(report)
            diag.plot.timeline(report)
        except DiagError as error:
            assert str(error).startswith("nothing to draw"), f"{path.name}: {error}"
            continue
        assert lanes(figure) == ["capture"], path
        drawn += 1
    assert drawn >= 30


@pytest.mark.parametrize("name", ["tcp_rst_data.pcap", "tcp_rst_diag_payload.pcap", "mptcp-tcprst.pcap"])
def test_real_resets_are_red(corpus: Path, name: str) -> None:
    require_tools("tshark")
    path = next(corpus.rglob(name))
    report = analyze_quietly({"capture": path})
    view = diag.plot.flow_view(report)
    port = view.client.rpartition(":")[2]
    red = trips_drawn(diag.plot.ladder(report), colour=style.RST_COLOUR)
    assert len(red) == tshark_count(path, f"tcp.flags.reset == 1 && tcp.port == {port}") > 0
