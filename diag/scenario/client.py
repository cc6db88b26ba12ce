"""A kernel-socket client, run inside the client's namespace by a scenario step.

The point of using the kernel's own TCP here (and not scapy) is that its
behaviour is part of what a scenario shows: SYN retransmissions, the reaction
to a RST on a closed port, the RST it sends after a challenge ACK. The client
gives up after ``--syn-retries`` retransmitted SYNs (``TCP_SYNCNT``) so that an
unanswered connection ends in seconds, whatever the kernel's timer policy.

Usage::

    python -m diag.scenario.client tcp ADDR PORT [--script ACTIONS] [--syn-retries N] [--bind-port P]
    python -m diag.scenario.client udp ADDR PORT [--send TEXT] [--count N] [--reply-timeout S]

``--script`` is a comma-separated list of ``send:TEXT``, ``recv`` and
``sleep:SECONDS``. One JSON object describing the outcome goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any


def parse_script(text: str) -> list[tuple[str, str]]:
    """``"send:hi,recv,sleep:2"`` -> ``[("send", "hi"), ("recv", ""), ("sleep", "2")]``."""
    actions = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        verb, _, argument = item.partition(":")
        if verb not in ("send", "recv", "sleep"):
            raise ValueError(f"unknown action {verb!r} (send:TEXT, recv, sleep:SECONDS)")
        if verb == "sleep":
            float(argument)
        actions.append((verb, argument))
    return actions


def run_tcp(
    address: str, port: int, script: list[tuple[str, str]], syn_retries: int, bind_port: int, io_timeout: float
) -> dict[str, Any]:
    result: dict[str, Any] = {"proto": "tcp", "server": f"{address}:{port}", "events": []}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syn_retries)
    if bind_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", bind_port))
    started = time.monotonic()
    try:
        sock.connect((address, port))
    except ConnectionRefusedError:
        return result | {"outcome": "refused", "seconds": round(time.monotonic() - started, 3)}
    except (TimeoutError, OSError) as error:
        return result | {"outcome": "timeout", "error": str(error), "seconds": round(time.monotonic() - started, 3)}
    result["local"] = "{}:{}".format(*sock.getsockname())
    result["events"].append("connected")
    sock.settimeout(io_timeout)
    outcome = "ok"
    try:
        for verb, argument in script:
            if verb == "send":
                sock.sendall(argument.encode())
                result["events"].append(f"sent {len(argument)}")
            elif verb == "sleep":
                time.sleep(float(argument))
            else:
                data = sock.recv(65536)
                result["events"].append(f"received {len(data)}" if data else "closed by peer")
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = "no-reply"
    except OSError as error:
        outcome, result["error"] = "error", str(error)
    finally:
        sock.close()
    return result | {"outcome": outcome, "seconds": round(time.monotonic() - started, 3)}


def run_udp(address: str, port: int, payload: str, count: int, reply_timeout: float) -> dict[str, Any]:
    """Send datagrams from an unconnected socket so a reply from any source is seen (and reported)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(reply_timeout)
    replies: list[str] = []
    for number in range(count):
        sock.sendto(f"{payload} {number}".encode(), (address, port))
        try:
            _, source = sock.recvfrom(65536)
            replies.append("{}:{}".format(*source))
        except TimeoutError:
            replies.append("")
    sock.close()
    expected = f"{address}:{port}"
    if all(reply == expected for reply in replies):
        outcome = "ok"
    elif any(reply and reply != expected for reply in replies):
        outcome = "re-sourced"
    else:
        outcome = "no-reply"
    return {"proto": "udp", "server": expected, "outcome": outcome, "replies_from": replies}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diag.scenario.client", description=__doc__.splitlines()[0])
    parser.add_argument("proto", choices=("tcp", "udp"))
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("--script", default="send:hello,recv", help="TCP: send:TEXT, recv, sleep:SECONDS")
    parser.add_argument("--syn-retries", type=int, default=2, help="TCP_SYNCNT: SYN retransmissions before giving up")
    parser.add_argument("--bind-port", type=int, default=0, help="TCP: fixed source port")
    parser.add_argument("--io-timeout", type=float, default=3.0, help="TCP: seconds to wait for a reply")
    parser.add_argument("--send", default="ping", help="UDP: payload")
    parser.add_argument("--count", type=int, default=2, help="UDP: datagrams to send")
    parser.add_argument("--reply-timeout", type=float, default=1.0, help="UDP: seconds to wait for each reply")
    args = parser.parse_args(argv)
    if args.proto == "tcp":
        try:
            script = parse_script(args.script)
        except ValueError as error:
            parser.error(str(error))
        result = run_tcp(args.address, args.port, script, args.syn_retries, args.bind_port, args.io_timeout)
    else:
        result = run_udp(args.address, args.port, args.send, args.count, args.reply_timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
