"""diag: reproduce, capture and diagnose the network failures behind mysterious TCP resets."""

from diag.capture import read_capture
from diag.errors import CaptureError, DiagError, LabError

__all__ = ["CaptureError", "DiagError", "LabError", "read_capture"]
__version__ = "0.1.0"
