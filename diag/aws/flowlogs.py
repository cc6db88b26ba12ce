"""VPC flow log records (versions 2 to 5) and the NAT gateway's forged reset in them.

A record summarises one direction of one flow on one network interface over an
aggregation interval (1 or 10 minutes). ``tcp-flags`` is the OR of every
segment's flags in that interval, so a record with 18 means "SYN and ACK were
seen", not "one SYN-ACK"; the checks below test bits, never equality, except
where the exact value is the point.

The pattern: a node's interface sends a SYN-ACK toward a client (egress, SYN
and ACK bits), and the same interface receives a RST for that 4-tuple from the
client's address although the client never acknowledged anything (no ACK bit
in that direction). The client was never reached: something on the return path
answered for it. When the NAT gateway's own interface logged the SYN-ACK, that
something is the NAT gateway.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from diag.capture.proto import ACK, FIN, PSH, RST, SYN, TCP
from diag.errors import DiagError

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient

# The default format (version 2), in order.
DEFAULT_FORMAT: tuple[str, ...] = (
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "action", "log-status",
)  # fmt: skip

# Every field of versions 2 to 5 (and the ECS fields of later versions, read and ignored).
KNOWN_FIELDS = frozenset(
    {
        *DEFAULT_FORMAT,
        "vpc-id", "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr",
        "region", "az-id", "sublocation-type", "sublocation-id", "pkt-src-aws-service", "pkt-dst-aws-service",
        "flow-direction", "traffic-path",
        "ecs-cluster-arn", "ecs-cluster-name", "ecs-container-instance-arn", "ecs-container-instance-id",
        "ecs-container-id", "ecs-second-container-id", "ecs-service-name", "ecs-task-definition-arn",
        "ecs-task-arn", "ecs-task-id", "reject-reason",
    }
)  # fmt: skip


class FlowRecord(NamedTuple):
    """One flow log record; -1 for absent integers and '' for absent strings, as in the packet table.

    A named tuple rather than a dataclass: a flow log has millions of these, and tuples build fastest.
    """

    line: int  # 1-based line in the file, or event number in a log group
    version: int
    interface_id: str
    srcaddr: str
    dstaddr: str
    srcport: int
    dstport: int
    protocol: int
    packets: int
    start: int
    end: int
    action: str
    log_status: str
    tcp_flags: int
    flow_direction: str  # 'ingress', 'egress' or '' (versions before 5)
    pkt_srcaddr: str
    pkt_dstaddr: str
    instance_id: str
    subnet_id: str
    traffic_path: int

    @property
    def source(self) -> str:
        """The packet's own source (pkt-srcaddr where logged: it sees through the NAT gateway's ENI)."""
        return self.pkt_srcaddr or self.srcaddr

    @property
    def destination(self) -> str:
        return self.pkt_dstaddr or self.dstaddr


@dataclass
class FlowLog:
    """What parsing produced: the records, the lines that could not be read, and why."""

    records: list[FlowRecord] = field(default_factory=list)
    bad_lines: int = 0
    skipped: int = 0  # NODATA/SKIPDATA records: no traffic facts in them
    warnings: list[str] = field(default_factory=list)
    fields: tuple[str, ...] = DEFAULT_FORMAT

    def has(self, name: str) -> bool:
        return name in self.fields


def parse_format(text: str) -> tuple[str, ...]:
    """A custom format as AWS shows it (``${version} ${srcaddr} ...``) or as a header line."""
    names = tuple(token.strip().removeprefix("${").removesuffix("}") for token in text.split())
    if not names:
        raise DiagError("flow log format is empty")
    unknown = [n for n in names if n not in KNOWN_FIELDS]
    if unknown:
        raise DiagError(f"flow log format: unknown field {unknown[0]!r}")
    for needed in ("srcaddr", "dstaddr", "srcport", "dstport", "protocol"):
        if needed not in names:
            raise DiagError(f"flow log format lacks {needed!r}; cannot match flows")
    return names


def _is_header(tokens: list[str]) -> bool:
    return bool(tokens) and all(t.removeprefix("${").removesuffix("}") in KNOWN_FIELDS for t in tokens)


def parse_lines(lines: Iterable[str], fmt: tuple[str, ...] | None = None) -> FlowLog:
    """Records from flow log lines; a header line (as in S3 files) sets the format, else ``fmt`` or version 2."""
    log = FlowLog(fields=fmt or DEFAULT_FORMAT)
    reader = _RecordReader(log.fields)
    first_bad = ""
    for number, raw in enumerate(lines, start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if fmt is None and not tokens[0].isdigit() and _is_header(tokens):
            log.fields = parse_format(raw)
            reader = _RecordReader(log.fields)
            continue
        record = reader.read(number, tokens)
        if record is None:
            log.bad_lines += 1
            first_bad = first_bad or f"line {number}: {raw.strip()[:80]!r}"
        elif record.log_status in ("NODATA", "SKIPDATA"):
            log.skipped += 1
        else:
            log.records.append(record)
    if log.bad_lines:
        log.warnings.append(
            f"{log.bad_lines} flow log line(s) did not match the format of {len(log.fields)} fields "
            f"and were skipped (first: {first_bad})"
        )
    if log.records and "tcp-flags" not in log.fields:
        log.warnings.append(
            "the flow log format has no tcp-flags field (version 3 or later): resets cannot be seen in it"
        )
    return log


# FlowRecord attribute -> flow log field name, in FlowRecord's order after ``line``.
_INT_ATTRIBUTES = {
    "version": "version", "srcport": "srcport", "dstport": "dstport", "protocol": "protocol",
    "packets": "packets", "start": "start", "end": "end", "tcp_flags": "tcp-flags", "traffic_path": "traffic-path",
}  # fmt: skip
_TEXT_ATTRIBUTES = {
    "interface_id": "interface-id", "srcaddr": "srcaddr", "dstaddr": "dstaddr", "action": "action",
    "log_status": "log-status", "flow_direction": "flow-direction", "pkt_srcaddr": "pkt-srcaddr",
    "pkt_dstaddr": "pkt-dstaddr", "instance_id": "instance-id", "subnet_id": "subnet-id",
}  # fmt: skip


class _RecordReader:
    """Turns one line's tokens into a FlowRecord; the field positions are worked out once per format."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.width = len(fields)
        position = {name: index for index, name in enumerate(fields)}
        # For each FlowRecord attribute after ``line``: is it an integer, and where is it in the line (-1: absent).
        names = {**_INT_ATTRIBUTES, **_TEXT_ATTRIBUTES}
        self.plan = [
            (attribute in _INT_ATTRIBUTES, position.get(names[attribute], -1)) for attribute in FlowRecord._fields[1:]
        ]

    def read(self, number: int, tokens: list[str]) -> FlowRecord | None:
        if len(tokens) != self.width:
            return None
        values: list[int | str] = [number]
        try:
            for is_int, index in self.plan:
                token = tokens[index] if index >= 0 else "-"
                if is_int:
                    values.append(-1 if token == "-" else int(token))
                else:
                    values.append("" if token == "-" else token)
        except ValueError:
            return None
        return FlowRecord(*values)  # type: ignore[arg-type]


def read_file(path: Path, fmt: tuple[str, ...] | None = None) -> FlowLog:
    """A flow log file as delivered to S3 (plain or .gz, header line first) or any text dump of records."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as compressed:
                return parse_lines(compressed, fmt)
        with path.open(encoding="utf-8", errors="replace") as handle:
            return parse_lines(handle, fmt)
    except FileNotFoundError as error:
        raise DiagError(f"flow log file {str(path)!r} not found") from error
    except (OSError, EOFError) as error:
        raise DiagError(f"cannot read flow log file {str(path)!r}: {error}") from error


def read_log_group(
    logs: CloudWatchLogsClient, group: str, start_ms: int, end_ms: int, fmt: tuple[str, ...] | None = None
) -> FlowLog:
    """Records delivered to a CloudWatch Logs group (one record per event, no header)."""
    paginator = logs.get_paginator("filter_log_events")
    messages = (
        event.get("message", "")
        for page in paginator.paginate(logGroupName=group, startTime=start_ms, endTime=end_ms)
        for event in page.get("events", [])
    )
    return parse_lines(messages, fmt)


@dataclass(frozen=True)
class ForgedReset:
    """A SYN-ACK sent toward a client and a RST 'from' that client that cannot be the client's."""

    client: str
    client_port: int
    server: str
    server_port: int
    interface_id: str
    instance_id: str
    synack: FlowRecord
    reset: FlowRecord
    nat_interface: str  # the NAT gateway ENI that logged the SYN-ACK, '' if none did
    confidence: float
    reason: str


def flags_text(flags: int) -> str:
    bits = ((SYN, "SYN"), (ACK, "ACK"), (RST, "RST"), (FIN, "FIN"), (PSH, "PSH"))
    names = [name for bit, name in bits if flags & bit]
    return f"{flags} ({', '.join(names) or 'none'})"


def find_forged_resets(records: Iterable[FlowRecord], nat_interfaces: Iterable[str] = ()) -> list[ForgedReset]:
    """Every SYN-ACK leaving a node whose answer was a RST the client cannot have sent."""
    nat_enis = set(nat_interfaces)
    tcp = [r for r in records if r.protocol == TCP and r.tcp_flags >= 0]
    resets: dict[tuple[str, int, str, int], list[FlowRecord]] = {}
    nat_saw: dict[tuple[str, int, str, int], str] = {}
    for r in tcp:
        key = (r.source, r.srcport, r.destination, r.dstport)
        if r.interface_id in nat_enis:
            if r.tcp_flags & SYN and r.tcp_flags & ACK:
                nat_saw.setdefault(key, r.interface_id)
        elif r.tcp_flags & RST and r.flow_direction in ("ingress", ""):
            resets.setdefault(key, []).append(r)
    found = []
    for synack in _synacks_leaving_nodes(tcp, nat_enis):
        reverse = (synack.destination, synack.dstport, synack.source, synack.srcport)
        for reset in resets.get(reverse, []):
            if reset.interface_id and synack.interface_id and reset.interface_id != synack.interface_id:
                continue
            forward = (synack.source, synack.srcport, synack.destination, synack.dstport)
            verdict = _judge(synack, reset, nat_saw.get(forward, ""))
            if verdict is None:
                continue
            confidence, reason, nat_eni = verdict
            found.append(
                ForgedReset(
                    client=synack.destination,
                    client_port=synack.dstport,
                    server=synack.source,
                    server_port=synack.srcport,
                    interface_id=synack.interface_id,
                    instance_id=synack.instance_id,
                    synack=synack,
                    reset=reset,
                    nat_interface=nat_eni,
                    confidence=confidence,
                    reason=reason,
                )
            )
            break
    return found


def _synacks_leaving_nodes(tcp: list[FlowRecord], nat_enis: set[str]) -> Iterator[FlowRecord]:
    for r in tcp:
        if r.interface_id in nat_enis or r.flow_direction not in ("egress", ""):
            continue
        if r.tcp_flags & SYN and r.tcp_flags & ACK:
            yield r


def _judge(synack: FlowRecord, reset: FlowRecord, nat_eni: str) -> tuple[float, str, str] | None:
    if nat_eni:
        return (
            0.95,
            f"the NAT gateway's interface {nat_eni} logged the SYN-ACK: the reply went out by the default route, "
            "and the RST came back instead of the client's ACK",
            nat_eni,
        )
    if not reset.tcp_flags & ACK:
        return (
            0.85,
            "the client's direction carried no ACK in the interval (it never completed the handshake), "
            "yet a RST arrived 'from' it: the SYN-ACK never reached the client",
            "",
        )
    data_or_close = PSH | FIN
    if synack.tcp_flags == SYN | ACK and not reset.tcp_flags & data_or_close:
        # RST+ACK answering a bare SYN-ACK: what a stateless box sends, but also what a client that gave up
        # would send, so the evidence is weaker.
        return (
            0.6,
            "the node only ever sent SYN-ACKs and the answer was a RST+ACK without data: the handshake was refused "
            "on the return path",
            "",
        )
    return None
