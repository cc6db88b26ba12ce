"""Colours, line styles and fonts shared by the ladder and the timeline.

Kept in one place so both pictures tell the same story with the same visual
words: red is a reset, dashed is a retransmission, grey is "nothing here".
"""

from __future__ import annotations

from typing import Any, Final

from matplotlib.backend_bases import GraphicsContextBase, RendererBase
from matplotlib.path import Path as MplPath
from matplotlib.patheffects import AbstractPathEffect
from matplotlib.transforms import Affine2D, Transform

RST_COLOUR: Final = "#c62828"
SYN_COLOUR: Final = "#1565c0"
SYNACK_COLOUR: Final = "#2e7d32"
DATA_COLOUR: Final = "#37474f"
FIN_COLOUR: Final = "#6a1b9a"
OTHER_COLOUR: Final = "#455a64"
EMPTY_LANE_COLOUR: Final = "#b0b0b0"
LANE_COLOUR: Final = "#546e7a"
ORIGIN_COLOUR: Final = RST_COLOUR

SOLID: Final = "-"
DASHED: Final = "--"

TITLE_SIZE: Final = 13
HEADER_SIZE: Final = 11
LABEL_SIZE: Final = 9.5
SMALL_SIZE: Final = 8.5


def flag_colour(flags: int) -> str:
    """The colour a packet is drawn in, chosen by the TCP flags that matter to the story."""
    if flags < 0:
        return OTHER_COLOUR
    if flags & 0x04:
        return RST_COLOUR
    if flags & 0x02:
        return SYNACK_COLOUR if flags & 0x10 else SYN_COLOUR
    if flags & 0x01:
        return FIN_COLOUR
    return DATA_COLOUR


class StrikeThrough(AbstractPathEffect):
    """Draws the text, then a line through its middle: "this claim is false".

    Matplotlib has no strike-through text style; a path effect sees the whole
    string's outline at draw time, so the line always spans the text exactly,
    whatever the final layout, font size or output format.
    """

    def __init__(self, colour: str = RST_COLOUR, linewidth: float = 1.6) -> None:
        super().__init__()
        self.colour = colour
        self.linewidth = linewidth

    def draw_path(
        self,
        renderer: RendererBase,
        gc: GraphicsContextBase,
        tpath: MplPath,
        affine: Transform,
        rgbFace: Any = None,  # matplotlib's own parameter name
    ) -> None:
        renderer.draw_path(gc, tpath, affine, rgbFace)
        box = tpath.transformed(affine).get_extents()
        if box.width <= 0:
            return
        middle = (box.y0 + box.y1) / 2
        line = MplPath([(box.x0 - 1, middle), (box.x1 + 1, middle)])
        strike_gc = renderer.new_gc()
        strike_gc.copy_properties(gc)
        strike_gc.set_foreground(self.colour)
        strike_gc.set_linewidth(self.linewidth)
        renderer.draw_path(strike_gc, line, Affine2D())
        strike_gc.restore()
