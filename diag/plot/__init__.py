"""Pictures of a report: ladder diagrams across capture points and per-point timelines.

Figures are built with matplotlib's object API (no pyplot, no display), so
they work the same in a script, a test, a server and a notebook.
"""

from diag.plot.flowview import FlowView, PacketTrip, flow_view
from diag.plot.ladder import ladder, ladder_to_file
from diag.plot.timeline import timeline

__all__ = ["FlowView", "PacketTrip", "flow_view", "ladder", "ladder_to_file", "timeline"]
