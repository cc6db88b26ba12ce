"""diag: reproduce, capture and diagnose the network failures behind mysterious TCP resets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diag.errors import CaptureError, DiagError, LabError

if TYPE_CHECKING:
    from diag.analysis import analyze
    from diag.capture import read_capture

__all__ = ["CaptureError", "DiagError", "LabError", "analyze", "read_capture"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: they bring pandas and the compiled packet loops,
    # which commands such as ``diag --help`` or ``diag lab`` never need.
    if name == "analyze":
        from diag.analysis import analyze

        return analyze
    if name == "read_capture":
        from diag.capture import read_capture

        return read_capture
    raise AttributeError(f"module 'diag' has no attribute {name!r}")
