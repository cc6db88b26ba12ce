"""What the container readers (pcap, pcapng) hand to the packet decoder.

A container reader walks the file's records and describes the packets of one
buffer as numpy arrays (where each packet's bytes start, how many were
captured, when, on which interface); it knows nothing of Ethernet or IP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from diag.capture.bytesview import ByteView, IntArray


class CaptureWarning(UserWarning):
    """Part of a capture was skipped (damaged record, unsupported link type, cut-off file)."""


# Direction codes, as in the ``direction`` column's categories.
DIR_UNKNOWN = 0
DIR_IN = 1
DIR_OUT = 2


@dataclass
class Interface:
    """One capture interface: pcap has one, pcapng one per Interface Description Block."""

    link_type: int
    name: str
    tsresol: int = 6  # pcapng if_tsresol byte: 10^-n seconds, or 2^-n with the high bit set
    ts_offset_s: int = 0  # pcapng if_tsoffset, seconds added to every timestamp


@dataclass
class RecordBatch:
    """The packets found in one buffer of the file, in file order."""

    view: ByteView
    data_off: IntArray  # where each packet's bytes start in ``view``
    cap_len: IntArray
    wire_len: IntArray
    ts_ns: IntArray
    iface: IntArray  # index into ``Diagnostics.interfaces``
    direction: IntArray  # DIR_* from pcapng epb_flags, DIR_UNKNOWN otherwise
    index: IntArray  # 0-based record number in the file

    def __len__(self) -> int:
        return len(self.data_off)


@dataclass
class Diagnostics:
    """What a read found besides packets: interfaces, skipped parts, warnings for the user."""

    path: str
    interfaces: list[Interface] = field(default_factory=list)
    skipped: int = 0
    messages: list[str] = field(default_factory=list)
    # False: recorded only. Python's warning filters are one set for the whole process, so a read on a
    # thread of its own (diag.capture.sidebyside) cannot silence its warnings with catch_warnings.
    raise_warnings: bool = True

    def warn(self, message: str, skipped: int = 0) -> None:
        """Record one skipped or damaged part: counted, kept for the report, raised as a warning."""
        self.skipped += skipped
        self.messages.append(message)
        if self.raise_warnings:
            warnings.warn(f"{self.path}: {message}", CaptureWarning, stacklevel=3)
