"""The ladder diagram: capture points side by side, time flowing down, one arrow per hop.

Each physical packet is one row: an arrow from the point where it was first
seen to the next point that saw it, and so on, so a NAT or a wrong turn shows
up as an arrow that ends somewhere unexpected. Rows follow the reference clock
but are evenly spaced (real gaps are written on the left), because the packets
of one exchange are microseconds apart and a second of silence would otherwise
fill the page.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from diag.errors import DiagError
from diag.plot import style
from diag.plot.condense import CollapsedCycles, LadderItem, condense
from diag.plot.flowview import FlowSelector, FlowView, PacketTrip, flow_view, host_of
from diag.report import Cause, Finding, Report

# Flows longer than this are condensed unless the caller says otherwise.
CONDENSE_ABOVE = 50

ROW = 1.0  # vertical space of one packet row, in data units
FINDING_ROW = 1.5  # a finding's packet also carries its real origin and, for a reset, its claimed sender
GAP_ROW = 0.6  # extra space where the flow went quiet
COLLAPSED_ROW = 1.2
QUIET_GAP_S = 0.25  # a pause longer than this gets extra space and a separator
ARROW_TOP = 0.42  # where a row's first arrow starts, below its label
STUB = 0.42  # length of the arrow for a packet seen at one point only, in lanes
INCH_PER_ROW = 0.36
NAME_INCHES = 0.25  # lane name above its address lines
DETAIL_LINE_INCHES = 0.14
INCH_PER_LANE = 1.6
EMPTY_LANE_ROOM = 0.7  # distance to a lane that saw nothing, in lanes
MIN_LANE_INCHES_FOR_ADDRESSES = 1.35


@dataclass(frozen=True)
class _Placed:
    item: LadderItem
    y: float  # top of the row
    height: float


def ladder(
    report: Report, flow: FlowSelector = None, *, ax: Axes | None = None, condensed: bool | None = None
) -> Figure:
    """Draw one connection's ladder diagram and return its figure.

    ``flow`` picks the connection (a Finding, a PacketRef, a position in
    ``report.flows``, an ``"addr:port"`` endpoint; default: the verdict's).
    ``condensed`` collapses repeated cycles; by default only flows of more than
    50 packets are condensed. With ``ax`` the ladder is drawn into an existing
    axes (a panel of a bigger figure) instead of a new figure.
    """
    view = flow_view(report, flow)
    if condensed is None:
        condensed = len(view.trips) > CONDENSE_ABOVE
    items: list[LadderItem] = condense(view.trips) if condensed else list(view.trips)
    placed, total = _place_rows(items)

    own_figure = ax is None
    if ax is None:
        width = max(9.0, 1.4 + INCH_PER_LANE * (_span(view) + 1.0))
        height = 2.9 + INCH_PER_ROW * max(total, 4.0)
        figure = Figure(figsize=(width, height), dpi=100)
        top_inches, bottom_inches = 1.25 + _header_inches(view, with_addresses=True), 1.0
        ax = figure.add_axes((1.0 / width, bottom_inches / height, 1 - 1.25 / width,
                              1 - (top_inches + bottom_inches) / height))
        _draw_title(figure, view)
    else:
        figure_or_none = ax.get_figure(root=True)
        assert isinstance(figure_or_none, Figure)
        figure = figure_or_none
    # In a narrow panel there is no room for the addresses under each lane name: names only.
    lane_room = ax.get_position().width * figure.get_figwidth() / (_span(view) + 1.2)
    with_addresses = lane_room >= MIN_LANE_INCHES_FOR_ADDRESSES
    if not own_figure:
        ax.set_title(_verdict_line(view.finding), fontsize=style.HEADER_SIZE, loc="left",
                     pad=(_header_inches(view, with_addresses) + 0.15) * 72)

    _draw_lanes(ax, view, total, with_addresses)
    for entry in placed:
        if isinstance(entry.item, CollapsedCycles):
            _draw_collapsed(ax, view, entry)
        else:
            _draw_trip(ax, view, entry.item, entry)
    _draw_time_axis(ax, view, placed)
    if own_figure:
        _draw_legend(figure, ax)
    return figure


def ladder_to_file(report: Report, path: str | os.PathLike[str], flow: FlowSelector = None) -> None:
    """Write the ladder diagram to ``path``; PNG or SVG by the file's suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise DiagError(f"{target}: a ladder diagram is written as .png or .svg, not {suffix or 'no suffix'}")
    figure = ladder(report, flow)
    try:
        figure.savefig(target, format=suffix[1:], dpi=100)
    except OSError as error:
        raise DiagError(f"{target}: cannot write the ladder diagram ({error.strerror or error})") from error


def lane_positions(view: FlowView) -> dict[str, float]:
    """x of each lane: a point that saw nothing gets half the room of one that saw packets."""
    positions: dict[str, float] = {}
    x = 0.0
    previous_seen: bool | None = None
    for lane in view.lanes:
        seen = lane in view.seen
        if previous_seen is not None:
            x += 1.0 if (seen and previous_seen) else EMPTY_LANE_ROOM
        positions[lane] = x
        previous_seen = seen
    return positions


def _span(view: FlowView) -> float:
    """x of the rightmost lane."""
    return max(lane_positions(view).values(), default=0.0)


def _place_rows(items: list[LadderItem]) -> tuple[list[_Placed], float]:
    placed = []
    y = 0.0
    previous_start: float | None = None
    for item in items:
        if isinstance(item, CollapsedCycles):
            placed.append(_Placed(item, y, COLLAPSED_ROW))
            y += COLLAPSED_ROW
            previous_start = None
            continue
        if previous_start is not None and item.start - previous_start > QUIET_GAP_S:
            y += GAP_ROW
        height = FINDING_ROW if item.finding is not None else ROW
        placed.append(_Placed(item, y, height))
        y += height
        previous_start = item.start
    return placed, y


def _verdict_line(finding: Finding | None) -> str:
    if finding is None:
        return "Verdict: healthy (no resets or lost replies found)"
    return f"Verdict: {finding.cause} ({finding.confidence:.0%} confident)"


def _draw_title(figure: Figure, view: FlowView) -> None:
    width_inches = figure.get_figwidth()
    figure.text(0.15 / width_inches, 0.995, _verdict_line(view.finding), fontsize=style.TITLE_SIZE,
                fontweight="bold", va="top", ha="left", gid="title",
                color=style.RST_COLOUR if view.finding is not None else "black")
    lines = []
    if view.finding is not None and view.finding.summary:
        lines += textwrap.wrap(view.finding.summary, width=int(width_inches * 11))[:3]
    clock = f" · times on the {view.clock_reference} clock" if view.clock_reference else ""
    count = f"{len(view.trips)} packet" + ("" if len(view.trips) == 1 else "s")
    lines.append(f"connection {view.client} → {view.server} ({view.proto}), {count}{clock}")
    top_offset = 0.38 / figure.get_figheight()
    figure.text(0.15 / width_inches, 0.995 - top_offset, "\n".join(lines), fontsize=style.HEADER_SIZE - 0.5,
                va="top", ha="left", color="#333333", gid="subtitle")


def _draw_legend(figure: Figure, ax: Axes) -> None:
    """A legend of what this picture actually shows (no RST entry on a healthy flow)."""
    drawn_gids = {artist.get_gid() or "" for artist in ax.get_children()}
    arrows = [patch for patch in ax.patches if isinstance(patch, FancyArrowPatch)]
    colours = {_rgb(patch.get_edgecolor()) for patch in arrows}
    handles = [
        Line2D([], [], color=colour, lw=1.8, label=label)
        for colour, label in (
            (style.SYN_COLOUR, "SYN"), (style.SYNACK_COLOUR, "SYN-ACK"), (style.DATA_COLOUR, "ACK / data"),
            (style.FIN_COLOUR, "FIN"), (style.RST_COLOUR, "RST"), (style.OTHER_COLOUR, "UDP / other"),
        )
        if _rgb(colour) in colours
    ]
    if any(patch.get_linestyle() == style.DASHED for patch in arrows):
        handles.append(Line2D([], [], color="black", lw=1.8, ls=style.DASHED, label="retransmission"))
    handles.append(Line2D([], [], color="black", marker="o", ls="", markersize=5, label="seen at this point"))
    if "origin-marker" in drawn_gids:
        handles.append(Line2D([], [], color=style.ORIGIN_COLOUR, marker="*", ls="", markersize=13,
                              label="where it really came from"))
    if "vanished-marker" in drawn_gids:
        handles.append(Line2D([], [], color=style.ORIGIN_COLOUR, marker="X", ls="", markersize=9,
                              label="where it vanished"))
    if any(gid.startswith("lane-empty:") for gid in drawn_gids):
        handles.append(Line2D([], [], color=style.EMPTY_LANE_COLOUR, lw=1.5, ls=":",
                              label="capture point that saw nothing"))
    bottom = 0.22 / figure.get_figheight()
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=style.SMALL_SIZE,
                  frameon=False, bbox_to_anchor=(0.5, bottom))
    if "claimed-source" in drawn_gids:
        figure.text(0.5, 0.08 / figure.get_figheight(), "crossed out: the sender a reset claims to come from, "
                    "when another box really made it", ha="center", va="bottom", fontsize=style.SMALL_SIZE,
                    color=style.RST_COLOUR, gid="legend-crossed-out")


def _rgb(colour: object) -> tuple[float, ...]:
    return tuple(round(channel, 3) for channel in to_rgba(colour)[:3])  # type: ignore[arg-type]


def _draw_lanes(ax: Axes, view: FlowView, total: float, with_addresses: bool) -> None:
    ax.set_xlim(-0.6, _span(view) + 0.6)
    ax.set_ylim(total + 0.3, -0.3)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.spines["left"].set_color("#cccccc")
    header_transform = ax.get_xaxis_transform()
    detail_inches = _header_inches(view, with_addresses) - NAME_INCHES
    name_size = style.HEADER_SIZE + 1 if with_addresses else style.HEADER_SIZE - 1
    for number, (lane, x) in enumerate(lane_positions(view).items()):
        seen = lane in view.seen
        # Without addresses the names are all that is left, staggered so that neighbours do not collide.
        name_inches = detail_inches + (0.0 if with_addresses or number % 2 == 0 else DETAIL_LINE_INCHES + 0.04)
        ax.axvline(x, color=style.LANE_COLOUR if seen else style.EMPTY_LANE_COLOUR,
                   lw=2.2 if seen else 1.5, ls="-" if seen else ":", zorder=1, gid=f"lane:{lane}")
        ax.text(x, 1.0 + _axes_fraction(ax, name_inches), lane, transform=header_transform, ha="center", va="bottom",
                fontsize=name_size, fontweight="bold",
                color="black" if seen else style.EMPTY_LANE_COLOUR, gid=f"lane-header:{lane}")
        detail = ("\n".join(_lane_detail(view, lane)) if with_addresses else "") if seen else "saw nothing"
        ax.text(x, 1.0 + _axes_fraction(ax, 0.08), detail, transform=header_transform, ha="center", va="bottom",
                fontsize=style.SMALL_SIZE - 0.5 if seen else style.SMALL_SIZE,
                style="normal" if seen else "italic",
                color="#444444" if seen else style.EMPTY_LANE_COLOUR, gid=f"lane-detail:{lane}")
        if not seen:
            ax.text(x, total / 2, "saw nothing", rotation=90, ha="center", va="center", fontsize=style.LABEL_SIZE,
                    color=style.EMPTY_LANE_COLOUR, style="italic", gid=f"lane-empty:{lane}", zorder=2,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 2})


def _lane_detail(view: FlowView, lane: str) -> list[str]:
    """The connection's addresses as this point saw them, client side first (two views at most: NAT)."""
    lines = []
    for endpoints in view.endpoints.get(lane, [])[:2]:
        client_side, _, server_side = endpoints.partition(" ⇄ ")
        lines += [client_side, f"⇄ {server_side}"]
    return lines


def _header_inches(view: FlowView, with_addresses: bool) -> float:
    """Height of the lane headers: the name, then the address lines (or one line for "saw nothing")."""
    if not with_addresses:
        return 2 * NAME_INCHES + 0.1 + DETAIL_LINE_INCHES
    lines = max((len(_lane_detail(view, lane)) for lane in view.lanes), default=1)
    return NAME_INCHES + 0.1 + DETAIL_LINE_INCHES * max(lines, 1)


def _axes_fraction(ax: Axes, inches: float) -> float:
    """A vertical distance in inches as a fraction of the axes' height (lane headers sit above the axes)."""
    figure = ax.get_figure(root=True)
    assert isinstance(figure, Figure)
    return inches / (ax.get_position().height * figure.get_figheight())


def _draw_trip(ax: Axes, view: FlowView, trip: PacketTrip, placed: _Placed) -> None:
    x_of = lane_positions(view)
    colour = style.flag_colour(trip.flags)
    line_style = style.DASHED if trip.retransmission else style.SOLID
    gid = f"trip:{view.trips.index(trip)}"
    band = 0.4 if len(trip.sightings) > 1 else 0.0
    ys = [placed.y + ARROW_TOP + band * k / max(len(trip.sightings) - 1, 1) for k in range(len(trip.sightings))]
    xs = [float(x_of[s.lane]) for s in trip.sightings]

    if len(trip.sightings) == 1:
        direction = 1.0 if trip.forward else -1.0
        lane_x = xs[0]
        came_from = [x_of[lane] for lane in view.seen if (x_of[lane] - lane_x) * direction < 0]
        if came_from:  # it arrived here from the side the others are on
            start, end = lane_x - direction * STUB, lane_x
        else:  # it left from here and was seen nowhere else
            start, end = lane_x, lane_x + direction * STUB
        segments = [((start, ys[0]), (end, ys[0]))]
    else:
        segments = [((xs[k], ys[k]), (xs[k + 1], ys[k + 1])) for k in range(len(xs) - 1)]

    for (x0, y0), (x1, y1) in segments:
        arrow = FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=13, color=colour,
                                linestyle=line_style, linewidth=1.7, shrinkA=3, shrinkB=3, zorder=3)
        arrow.set_gid(gid)
        ax.add_patch(arrow)
    ax.plot(xs, ys, "o", color=colour, markersize=4, zorder=4, gid=f"{gid}:seen")

    (x0, y0), (x1, y1) = segments[0]
    label = trip.label + ("  (retransmitted)" if trip.retransmission else "")
    ax.text((x0 + x1) / 2, min(y0, y1) - 0.06, label, ha="center", va="bottom", fontsize=style.LABEL_SIZE,
            color=colour, gid=f"{gid}:label", zorder=5,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})
    if trip.finding is not None:
        _mark_finding(ax, view, trip, trip.finding, segments)


def _mark_finding(
    ax: Axes, view: FlowView, trip: PacketTrip, finding: Finding,
    segments: list[tuple[tuple[float, float], tuple[float, float]]],
) -> None:
    """Where the finding's packet really came from (a star on that lane), and for a reset the sender it
    claims, crossed out; for a packet that vanished, a cross where it was last seen."""
    x_of = lane_positions(view)
    (x0, y0), (x1, y1) = segments[0]
    travel = 1.0 if x1 >= x0 else -1.0
    first_x, first_y = float(x_of[trip.sightings[0].lane]), y0
    origin = finding.origin
    if origin in x_of:
        origin_x = float(x_of[origin])
        lanes = trip.lanes
        starts_there = lanes[0] == origin
        # Where the packet passed the origin: the star goes on that point of its path.
        star_y = segments[0][0][1] if starts_there else _y_at_lane(segments, lanes, origin, first_y)
        ax.plot([origin_x], [star_y], marker="*", markersize=17, color=style.ORIGIN_COLOUR, ls="",
                zorder=6, gid="origin-marker")
        what = f"RST made here, by {origin}" if trip.is_rst else f"{finding.cause} at {origin}"
        side = _roomy_side(view, origin_x, -travel)
        # Beside the star where the packet starts (no arrow there); below the path where it passes through.
        text_y = star_y + (0.38 if starts_there else 0.5)
        ax.text(origin_x + 0.12 * side, text_y, what, ha="left" if side > 0 else "right",
                va="center", fontsize=style.LABEL_SIZE, fontweight="bold", color=style.ORIGIN_COLOUR, gid="origin",
                zorder=6, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})
    elif origin:
        side = _roomy_side(view, first_x, -travel)
        ax.text(first_x + 0.12 * side, first_y + 0.8, f"really from: {origin}", ha="left" if side > 0 else "right",
                va="center", fontsize=style.LABEL_SIZE, fontweight="bold", color=style.ORIGIN_COLOUR, gid="origin",
                zorder=6, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})
    elif finding.cause is Cause.SILENT_DROP:
        (_, _), (last_x, last_y) = segments[-1]
        ax.plot([last_x + 0.22 * travel], [last_y], marker="X", markersize=11, color=style.ORIGIN_COLOUR, ls="",
                zorder=6, gid="vanished-marker")
        ax.text(last_x + 0.34 * travel, last_y, f"nothing after {trip.sightings[-1].lane}", va="center",
                ha="left" if travel > 0 else "right", fontsize=style.LABEL_SIZE, fontweight="bold",
                color=style.ORIGIN_COLOUR, gid="origin", zorder=6,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})

    claimed = finding.claimed_src
    if not trip.is_rst or not claimed or not _is_forged(view, finding):
        return
    owner = _owner_of(view, claimed)
    claimed_text = f"{claimed} ({owner})" if owner and owner != claimed else claimed
    ax.text((x0 + x1) / 2, max(y0, y1) + 0.05, f"from {claimed_text}", ha="center", va="top",
            fontsize=style.LABEL_SIZE, color=style.RST_COLOUR, gid="claimed-source", zorder=5,
            path_effects=[style.StrikeThrough()],
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})


def _y_at_lane(
    segments: list[tuple[tuple[float, float], tuple[float, float]]], lanes: tuple[str, ...], lane: str, default: float
) -> float:
    """The y at which a trip's arrows reach ``lane`` (``default`` when the trip never reaches it)."""
    if lane not in lanes:
        return default
    position = lanes.index(lane)
    return segments[0][0][1] if position == 0 else segments[min(position, len(segments)) - 1][1][1]


def _roomy_side(view: FlowView, x: float, preferred: float) -> float:
    """+1 (right) or -1 (left): ``preferred`` unless a label there would run off the picture."""
    room = (_span(view) + 0.6 - x) if preferred > 0 else (x + 0.6)
    return preferred if room >= 1.6 else -preferred


def _is_forged(view: FlowView, finding: Finding) -> bool:
    """The RST names a sender that did not make it."""
    if finding.origin is None:
        return finding.forged
    owner = _owner_of(view, finding.claimed_src or "")
    if owner is not None:
        return owner != finding.origin
    return finding.forged


def _owner_of(view: FlowView, address: str) -> str | None:
    """The capture point where packets from ``address`` (other than resets) start their trip."""
    for trip in view.trips:
        if trip.is_rst:
            continue
        first = trip.sightings[0]
        if host_of(first.src) == address:
            return first.lane
    return None


def _draw_collapsed(ax: Axes, view: FlowView, placed: _Placed) -> None:
    assert isinstance(placed.item, CollapsedCycles)
    middle = placed.y + placed.height / 2
    ax.text(_span(view) / 2, middle, "⋮  " + placed.item.description + "  ⋮", ha="center",
            va="center", fontsize=style.LABEL_SIZE + 0.5, style="italic", color="#333333", gid="collapsed", zorder=5,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "#f1f3f4", "edgecolor": "#9e9e9e"})


def _draw_time_axis(ax: Axes, view: FlowView, placed: list[_Placed]) -> None:
    ticks, labels = [], []
    previous: _Placed | None = None
    for entry in placed:
        if isinstance(entry.item, PacketTrip):
            ticks.append(entry.y + ARROW_TOP)
            labels.append(f"+{entry.item.start - view.t0:.4f} s")
            if previous is not None and entry.y - (previous.y + previous.height) > 0.01:
                gap_y = (previous.y + previous.height + entry.y) / 2 + 0.1
                ax.axhline(gap_y, color="#dddddd", lw=0.8, ls=(0, (4, 4)), zorder=0)
        previous = entry
    ax.set_yticks(ticks, labels, fontsize=style.SMALL_SIZE)
    ax.tick_params(axis="y", length=0, pad=4, colors="#555555")
