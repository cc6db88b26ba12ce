"""read_capture on tcpdump's public test captures: hundreds of real, odd and deliberately broken files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import require_tools
from reader_reference import compare_with_tshark, tshark_packets

from diag.capture import CaptureWarning, read_capture
from diag.capture.columns import PACKET_COLUMNS
from diag.errors import CaptureError

# Files chosen for what they exercise, on top of an even sample of the rest.
ALWAYS_COMPARED = (
    "802.1ad_QinQ.pcap",
    "QinQpacket.pcap",
    "icmpv6-rfc7112.pcap",
    "kday4.pcap",
    "afs.pcap",
    "ipv6-routing-header.pcap",
    "ipv6-bad-version.pcap",
    "tcp_header_heapoverflow.pcap",
    "bigtcp-ipv4.pcap",
    "bigtcp-ipv6-hbh.pcap",
    "lldp_mudurl.pcap",
    "icmp-cksum-oobr-3.pcapng",
    "mptcp.pcap",
    "isis_sr.pcapng",
    "LINKTYPE_IPV4_invalid.pcap",
)
SAMPLE_SIZE = 60

# Where diag and tshark differ on purpose, per file: field -> why.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    "timestamp_invalid_micro.pcap": {"ts_ns": "sub-second field >= 1 s: diag adds it as it stands, tshark does not"},
    "timestamp_invalid_nano.pcap": {"ts_ns": "sub-second field >= 1 s: diag adds it as it stands, tshark does not"},
    "rx_serviceid_oobr.pcap": {"ts_ns": "seconds >= 2^31: the pcap field is unsigned, tshark reads it signed"},
}


def corpus_captures(corpus: Path) -> list[Path]:
    folder = corpus / "tcpdump" / "tests"
    if not folder.is_dir():
        pytest.skip(f"tcpdump test captures not found in {folder}")
    return sorted(path for path in folder.iterdir() if path.suffix in (".pcap", ".pcapng"))


@pytest.fixture(scope="module")
def corpus_tables(corpus: Path) -> dict[str, pd.DataFrame | CaptureError]:
    """Every corpus capture read once: its table, or the CaptureError it raised."""
    results: dict[str, pd.DataFrame | CaptureError] = {}
    for path in corpus_captures(corpus):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptureWarning)
            try:
                results[path.name] = read_capture(path)
            except CaptureError as error:
                results[path.name] = error
    return results


def test_every_corpus_capture_reads_or_raises_capture_error(
    corpus: Path, corpus_tables: dict[str, pd.DataFrame | CaptureError]
) -> None:
    # The fixture itself would have raised on any other exception; check the results are sane.
    paths = corpus_captures(corpus)
    assert len(corpus_tables) == len(paths) > 500
    tables = [table for table in corpus_tables.values() if isinstance(table, pd.DataFrame)]
    assert sum(len(table) for table in tables) > 5_000
    for name, table in corpus_tables.items():
        if isinstance(table, CaptureError):
            assert name in str(table) and "\n" not in str(table)
            continue
        assert list(table.columns) == list(PACKET_COLUMNS), name
        info = table.attrs["capture_info"]
        assert info.packets == len(table) and (info.skipped == 0 or info.warnings), name
    decoded = {name for name, table in corpus_tables.items() if isinstance(table, pd.DataFrame) and len(table)}
    assert len(decoded) > 400  # the Ethernet, SLL, raw and loopback files


def compared_files(corpus_tables: dict[str, pd.DataFrame | CaptureError]) -> list[str]:
    decoded = sorted(
        name for name, table in corpus_tables.items() if isinstance(table, pd.DataFrame) and len(table) > 0
    )
    step = max(1, len(decoded) // SAMPLE_SIZE)
    chosen = set(decoded[::step]) | {name for name in ALWAYS_COMPARED if name in decoded}
    return sorted(chosen)


def test_corpus_fields_agree_with_tshark(corpus: Path, corpus_tables: dict[str, pd.DataFrame | CaptureError]) -> None:
    require_tools("tshark")
    folder = corpus / "tcpdump" / "tests"
    names = compared_files(corpus_tables)
    assert len(names) >= SAMPLE_SIZE
    report = []
    packets_compared = 0
    for name in names:
        table = corpus_tables[name]
        assert isinstance(table, pd.DataFrame)
        ignore = frozenset(KNOWN_DIFFERENCES.get(name, {}))
        problems = compare_with_tshark(table, tshark_packets(folder / name), ignore)
        packets_compared += len(table)
        if problems:
            report.append(f"{name}: {len(problems)} disagreement(s), first: " + "; ".join(problems[:3]))
    assert not report, f"{len(report)} of {len(names)} corpus files disagree with tshark:\n" + "\n".join(report)
    assert packets_compared > 1000
