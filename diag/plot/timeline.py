"""The timeline: one row per capture point, a mark per packet of one connection, on the reference clock.

Where the ladder shows the order of events, the timeline shows real time: the
one-second rhythm of SYN retransmissions, and which points saw which packets.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from diag.plot import style
from diag.plot.flowview import FlowSelector, flow_view
from diag.report import Cause, Report

# Marker per kind of packet, so the picture reads in grey scale too.
_MARKERS = {"SYN": ">", "SYN-ACK": "<", "RST": "X", "RST-ACK": "X"}


def timeline(report: Report, flow: FlowSelector = None) -> Figure:
    """One connection's packets at each capture point over time (seconds from its first packet)."""
    view = flow_view(report, flow)
    lanes = view.lanes
    height = 1.9 + 0.45 * len(lanes)
    figure = Figure(figsize=(10, height), dpi=100)
    ax = figure.add_axes((0.14, 1.1 / height, 0.84, 1 - 1.65 / height))
    row_of = {lane: row for row, lane in enumerate(lanes)}

    for trip in view.trips:
        # Packets of one exchange are microseconds apart: a small vertical shift per kind keeps them apart.
        shift = 0.22 if trip.is_rst else (-0.22 if trip.forward else 0.0)
        for sighting in trip.sightings:
            ax.plot(sighting.t - view.t0, row_of[sighting.lane] + shift, ls="",
                    marker=_MARKERS.get(trip.flag_name, "o"), markersize=8, color=style.flag_colour(trip.flags),
                    markerfacecolor="none" if trip.retransmission else style.flag_colour(trip.flags),
                    gid=f"packet:{sighting.lane}")

    ax.set_yticks(np.arange(len(lanes)), [lane if lane in view.seen else f"{lane}\n(saw nothing)" for lane in lanes],
                  fontsize=style.HEADER_SIZE)
    for label, lane in zip(ax.get_yticklabels(), lanes, strict=True):
        label.set_color("black" if lane in view.seen else style.EMPTY_LANE_COLOUR)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlabel(f"seconds since the connection's first packet{_clock_note(view.clock_reference)}",
                  fontsize=style.HEADER_SIZE)
    ax.grid(axis="x", color="#e0e0e0")
    ax.set_axisbelow(True)
    verdict = Cause.HEALTHY if view.finding is None else view.finding.cause
    figure.suptitle(f"Timeline of {view.client} → {view.server} ({view.proto}): {verdict}",
                    fontsize=style.TITLE_SIZE - 1, x=0.02, y=1 - 0.12 / height, ha="left", va="top")
    handles = [
        Line2D([], [], ls="", marker=">", color=style.SYN_COLOUR, label="SYN"),
        Line2D([], [], ls="", marker="<", color=style.SYNACK_COLOUR, label="SYN-ACK"),
        Line2D([], [], ls="", marker="X", color=style.RST_COLOUR, label="RST"),
        Line2D([], [], ls="", marker="o", color=style.DATA_COLOUR, label="other"),
        Line2D([], [], ls="", marker="o", color="black", markerfacecolor="none", label="retransmission"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=style.SMALL_SIZE, frameon=False,
                  bbox_to_anchor=(0.56, 0.05 / height))
    return figure


def _clock_note(reference: str | None) -> str:
    return f" (on the {reference} clock)" if reference else ""
