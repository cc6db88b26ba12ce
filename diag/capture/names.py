"""Which file names are captures: what a directory, a fleet's point or an S3 prefix is made of.

Below both the local listing (``points``) and the S3 one (``remote``), so neither imports the other for it.
"""

from __future__ import annotations

import re
from pathlib import Path

# dumpcap / Wireshark ring buffers: NAME_<5-digit file number>_<YYYYmmddHHMMSS>.pcapng
DUMPCAP_RING = re.compile(r"^(?P<base>.+)_\d{5}_\d{14}(?P<suffix>\.(?:pcapng|pcap)(?:\.gz)?)?$", re.IGNORECASE)
# pod.pcap, pod.pcapng.gz, and tcpdump -C's rotations of them (pod.pcap1, pod.pcap07)
CAPTURE_NAME = re.compile(r"\.(?:pcapng|pcap|cap|dmp)\d*(?:\.gz)?$", re.IGNORECASE)


def looks_like_capture(path: Path) -> bool:
    """A capture by its name (hidden files never: editors' and sync tools' leftovers)."""
    return not path.name.startswith(".") and bool(CAPTURE_NAME.search(path.name) or DUMPCAP_RING.match(path.name))
