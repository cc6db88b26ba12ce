"""diag: reproduce, capture and diagnose the network failures behind mysterious TCP resets."""

from diag.analysis import analyze
from diag.capture import read_capture
from diag.errors import CaptureError, DiagError, LabError

__all__ = ["CaptureError", "DiagError", "LabError", "analyze", "read_capture"]
__version__ = "0.1.0"
