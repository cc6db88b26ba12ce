"""read_capture on tcpdump's public test captures: hundreds of real, odd and deliberately broken files."""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime
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
    **{
        f"bigtcp-ipv{outer}-{tunnel}-ipv{inner}.pcap": {
            "tunnel": "UDP length 0 (BIG TCP): tshark leaves the payload undecoded, tcpdump and diag open the tunnel"
        }
        for outer in (4, 6)
        for tunnel in ("vxlan", "geneve")
        for inner in (4, 6)
    },
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


# tcpdump's own verbose decodes (`.out` files, run with -n and -tttt in UTC by tcpdump's
# test driver), as a second independent reference for the outer IP header.
IPV4_LINE = re.compile(
    r"^\s*(?P<number>\d+)\s+(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) IP "
    r"\(tos 0x[0-9a-f]+(?:, [A-Z]+(?:\(\d\))?)?, ttl (?P<ttl>\d+), id (?P<id>\d+), offset (?P<offset>\d+), "
    r"flags \[[^\]]*\], proto [^(]*\((?P<proto>\d+)\), length (?P<length>\d+)"
)
IPV6_LINE = re.compile(
    r"^\s*(?P<number>\d+)\s+(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) IP6 \((?:class 0x[0-9a-f]+, )?"
    r"(?:flowlabel 0x[0-9a-f]+, )?hlim (?P<hlim>\d+), next-header [^(]*\((?P<next>\d+)\), "
    r"payload length (?P<plen>\d+)\)"
)


def tcpdump_verbose_tests(folder: Path) -> list[tuple[str, str]]:
    """(capture, expected output) of the TESTLIST entries run with -v."""
    entries = []
    for line in (folder / "TESTLIST").read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 4 and not line.startswith("#") and "-v" in fields[3:] and fields[1].endswith(".pcap"):
            entries.append((fields[1], fields[2]))
    return entries


def _micros(text: str) -> int:
    stamp = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    return int(stamp.timestamp()) * 1_000_000 + stamp.microsecond


def test_outer_ip_headers_agree_with_tcpdump_verbose_output(
    corpus: Path, corpus_tables: dict[str, pd.DataFrame | CaptureError]
) -> None:
    folder = corpus / "tcpdump" / "tests"
    problems: list[str] = []
    checked = 0
    for capture, expected in tcpdump_verbose_tests(folder):
        table = corpus_tables.get(capture)
        output = folder / expected
        if not isinstance(table, pd.DataFrame) or len(table) == 0 or not output.exists():
            continue
        rows = table.set_index("index")
        for line in output.read_text(errors="replace").splitlines():
            match = IPV4_LINE.match(line) or IPV6_LINE.match(line)
            if match is None:
                continue
            index = int(match["number"]) - 1
            if index not in rows.index:
                continue
            row = rows.loc[index]
            fields = match.groupdict()
            if row.ip_version == 0 and row.truncated:
                continue  # tcpdump prints what it has of a cut-off header; diag decodes whole headers only
            if row.outer_src != "":
                continue  # a tunnel diag opened: the row is the carried packet (tests/test_tunnels.py checks it)
            if fields.get("plen") == "0":
                continue  # a jumbogram: its length is not in this header
            if "ttl" in fields and fields["ttl"] is not None:
                seen = (row.ip_version, row.ttl, row.ip_id, row.frag_offset, row.proto, row.ip_len)
                wanted = (4, int(fields["ttl"]), int(fields["id"]), int(fields["offset"]), int(fields["proto"]),
                          int(fields["length"]))  # fmt: skip
            else:
                seen = (row.ip_version, row.ttl, row.ip_len)
                wanted = (6, int(fields["hlim"]), 40 + int(fields["plen"]))
            if row.ts_ns // 1000 != _micros(fields["time"]):
                problems.append(f"{capture} packet {index}: ts_ns {row.ts_ns}, tcpdump {fields['time']}")
            if seen != wanted:
                problems.append(f"{capture} packet {index}: read_capture {seen}, tcpdump {wanted}")
            checked += 1
    assert checked > 300, f"only {checked} packets could be compared with tcpdump's output"
    assert not problems, f"{len(problems)} disagreements with tcpdump -v output:\n" + "\n".join(problems[:30])
