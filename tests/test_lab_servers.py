"""The pod servers' behaviours, seen from a client over a real link: normal, no listener, abort, slow."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import pytest
from conftest import require_root

from diag.lab import Lab, parse_topology
from diag.lab.probe import tcp_probe, udp_probe

pytestmark = pytest.mark.lab

# A client wired straight to four pods, one per behaviour.
BEHAVIOURS = {"normal": "192.0.2.10", "no-listener": "192.0.2.26", "abort": "192.0.2.42", "slow": "192.0.2.58"}
TOPOLOGY = "\n".join(
    ['name = "pod-behaviours"', '[[nodes]]', 'name = "client"', 'role = "client"']
    + [f'[[nodes]]\nname = "pod-{index}"\nrole = "pod"\nport = 8080\nbehaviour = "{behaviour}"\ndelay = 0.6'
       for index, behaviour in enumerate(BEHAVIOURS)]
    + [f'[[links]]\nendpoints = {{ client = "192.0.2.{16 * index + 1}/28", pod-{index} = "{address}/28" }}'
       for index, address in enumerate(BEHAVIOURS.values())]
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    with Lab(parse_topology(TOPOLOGY)) as built:
        yield built


def probe(lab: Lab, behaviour: str, proto: str, payload: bytes = b"whoami\n") -> tuple[str, str, float]:
    function = tcp_probe if proto == "tcp" else udp_probe
    began = time.monotonic()
    result = lab.call("client", functools.partial(function, BEHAVIOURS[behaviour], 8080, 2.0, payload))
    return result.outcome, result.reply, time.monotonic() - began


def test_normal_answers_whoami_and_echoes(lab: Lab) -> None:
    outcome, reply, _ = probe(lab, "normal", "tcp")
    assert outcome == "connected" and reply.startswith("pod=pod-0 proto=tcp peer=192.0.2.1:")
    assert probe(lab, "normal", "tcp", b"hello\n")[1] == "hello"
    outcome, reply, _ = probe(lab, "normal", "udp", b"whoami")
    assert outcome == "answered" and reply.startswith("pod=pod-0 proto=udp peer=192.0.2.1:")


def test_no_listener_resets_and_refuses(lab: Lab) -> None:
    assert probe(lab, "no-listener", "tcp")[0] == "reset"
    assert probe(lab, "no-listener", "udp")[0] == "refused"


def test_abort_resets_an_established_connection(lab: Lab) -> None:
    assert probe(lab, "abort", "tcp")[0] == "reset"


def test_slow_answers_after_its_delay(lab: Lab) -> None:
    outcome, reply, seconds = probe(lab, "slow", "tcp")
    assert outcome == "connected" and reply.startswith("pod=pod-3")
    assert seconds >= 0.6
