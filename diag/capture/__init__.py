"""Reading captures (pcap, pcapng, gzip) into the packet table of ``diag.capture.columns``."""

from diag.capture.reader import read_capture
from diag.capture.records import CaptureWarning

__all__ = ["CaptureWarning", "read_capture"]
