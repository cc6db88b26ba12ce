"""Benchmark: parse VPC flow log records and look for forged resets in them.

Generates a version 5 flow log of N records (default one million) in memory:
mostly healthy connections (both directions on a node interface), with one
flow in a thousand showing the incident's pattern (SYN-ACK out, RST "from the
client" in, the NAT gateway's interface seeing the SYN-ACK). Times parsing and
detection separately and checks the detector finds exactly the planted flows.

    .venv/bin/python bench/bench_aws_flowlogs.py
    .venv/bin/python bench/bench_aws_flowlogs.py --records 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diag.aws.flowlogs import find_forged_resets, parse_lines

HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action "
    "log-status tcp-flags pkt-srcaddr pkt-dstaddr flow-direction"
)
FORGED_EVERY = 1000  # one flow in this many is the incident


def records(count: int) -> Iterator[str]:
    yield HEADER
    flows = count // 2
    for flow in range(flows):
        node = f"198.18.{2 + flow % 50}.10"
        eni = f"eni-{flow % 50:017x}"
        client = f"203.0.{(flow // 250) % 256}.{flow % 250 + 1}"
        port = 1024 + flow % 60000
        start = 1764257600 + flow // 1000
        out = f"5 123456789012 {eni} {node} {client} 30080 {port} 6"
        back = f"5 123456789012 {eni} {client} {node} {port} 30080 6"
        when = f"{start} {start + 60} ACCEPT OK"
        if flow % FORGED_EVERY == 0:
            yield f"{out} 3 180 {when} 18 {node} {client} egress"
            yield f"{back} 4 220 {when} 6 {client} {node} ingress"
        else:
            yield f"{out} 9 4200 {when} 27 {node} {client} egress"
            yield f"{back} 8 900 {when} 27 {client} {node} ingress"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    lines = list(records(args.records))
    # CPU time of this process: the figure that does not depend on what else the machine runs.
    began = time.process_time()
    log = parse_lines(lines)
    parsed = time.process_time()
    forged = find_forged_resets(log.records)
    detected = time.process_time()
    expected = len(range(0, args.records // 2, FORGED_EVERY))
    count = len(log.records)
    print(f"records            {count:>12,}")
    print(f"parse (CPU)        {parsed - began:>10.2f} s   {count / (parsed - began):>12,.0f} records/s")
    print(f"detect (CPU)       {detected - parsed:>10.2f} s   {count / (detected - parsed):>12,.0f} records/s")
    print(f"forged resets      {len(forged):>12,} (planted {expected:,})")
    return 0 if len(forged) == expected and log.bad_lines == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
