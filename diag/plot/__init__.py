"""Pictures of a report: ladder diagrams across capture points and per-point timelines.

Figures are built with matplotlib's object API (no pyplot, no display), so
they work the same in a script, a test, a server and a notebook.
"""

import os
from pathlib import Path


def _matplotlib_config_dir() -> None:
    """Point matplotlib at a per-user directory when the user has no writable one of its own.

    Without a writable home (a service account, nobody) matplotlib warns on stderr
    and makes a new temporary cache directory on every run. It reads MPLCONFIGDIR
    once, when imported, so this runs before any matplotlib module is; a directory
    the user set or can write is left alone.
    """
    if os.environ.get("MPLCONFIGDIR"):
        return
    try:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        default = Path(base) / "matplotlib"
        default.mkdir(parents=True, exist_ok=True)
        if os.access(default, os.W_OK):
            return
    except (OSError, RuntimeError):  # RuntimeError: no home directory can be determined at all
        pass
    # The same per-user place as the compiled code's cache (owned by this user, mode 0700).
    from diag.compiled import SHARED_CACHE_ROOT, _private_directory

    shared = Path(SHARED_CACHE_ROOT) / f"diag-{os.getuid()}"
    if _private_directory(shared) and _private_directory(shared / "matplotlib"):
        os.environ["MPLCONFIGDIR"] = str(shared / "matplotlib")


_matplotlib_config_dir()

from diag.plot.flowview import FlowView, PacketTrip, flow_view  # noqa: E402 (after MPLCONFIGDIR is set)
from diag.plot.ladder import ladder, ladder_to_file  # noqa: E402
from diag.plot.timeline import timeline  # noqa: E402

__all__ = ["FlowView", "PacketTrip", "flow_view", "ladder", "ladder_to_file", "timeline"]
