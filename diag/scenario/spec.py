"""Scenarios as data: loading and validating ``lab/scenarios/<name>.toml``.

A scenario names a lab topology, optional setup applied inside nodes once the
lab is up (extra iptables rules, sysctls, commands), the traffic steps, the
capture points, and the expected outcome. The expected outcome is only for
tests, which check it against the real captures; it never feeds the verdict.

Every validation error names the file, the key and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.datafiles import find_lab_file, lab_file_names, shipped_lab_dir
from diag.errors import DiagError
from diag.lab import grammar
from diag.report import CAUSES

DEFAULT_SCENARIO = "incident"
MAX_SECONDS = 3600.0  # the longest step timeout or pod delay a scenario may ask for

# Step kinds and the options each accepts (besides the common ones).
STEP_OPTIONS: dict[str, frozenset[str]] = {
    # kernel TCP client: connect, then a script of send/recv/sleep
    "tcp": frozenset({"script", "syn_retries", "bind_port", "io_timeout", "expect"}),
    # kernel UDP client from an unconnected socket: who answers?
    "udp": frozenset({"send", "count", "reply_timeout", "expect"}),
    # scapy: a connection on a fixed source port that the client then forgets,
    # followed by a kernel SYN on the same 4-tuple (challenge ACK, then RST)
    "tuple-reuse": frozenset({"source_port", "expect"}),
    # scapy in an on-path node: spoof a RST to the client as soon as a request passes
    "inject-rst": frozenset({"interface", "port"}),
    # replay one conversation of a recorded capture against the live lab
    "replay": frozenset({"capture", "flow", "stream", "expect"}),
    "sleep": frozenset({"seconds"}),
}
COMMON_STEP_KEYS = frozenset({"kind", "node", "target", "timeout", "background", "name"})

# Packet kinds an expectation can count; expect.py maps each to the reader's
# columns and to a tshark display filter.
PACKET_KINDS = ("syn", "syn-ack", "rst", "ack", "data", "fin", "udp", "icmp-unreachable")
_COUNT = re.compile(r"^(==|>=|<=|>|<)?\s*(\d+|[a-z-]+)$")


@dataclass(frozen=True)
class Setup:
    """Changes applied inside one node after the lab is built and before capture starts."""

    node: str
    iptables: str = ""  # rules for ``iptables-restore --noflush``
    sysctls: Mapping[str, str] = field(default_factory=dict)
    run: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Step:
    """One traffic step; ``options`` holds the kind-specific keys of STEP_OPTIONS."""

    kind: str
    node: str
    target: str
    timeout: float
    background: bool = False
    name: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or f"{self.kind}@{self.node}"


@dataclass(frozen=True)
class CaptureSpec:
    """A capture point: its name (file stem), its node, its interfaces (None: every lab interface)."""

    point: str
    node: str
    interfaces: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PacketExpectation:
    """How many packets of one kind a capture point should show.

    ``count`` is a comparison with a number (``">=2"``, ``"0"``) or with the
    count of another kind at the same point (``"==syn"``); ``interfaces``, when
    set, is how many distinct interfaces the kind must appear on (a packet a
    box generated itself appears on one, a forwarded one on two).
    """

    at: str
    kind: str
    count: str
    interfaces: int | None = None
    src: str = ""  # a node name or address: only packets from there


@dataclass(frozen=True)
class PodOverride:
    """A pod server behaviour for this scenario (the topology's own otherwise)."""

    behaviour: str
    delay: float | None = None
    nodes: tuple[str, ...] = ()  # empty: every pod of the topology


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    topology: str
    path: Path
    steps: tuple[Step, ...]
    setup: tuple[Setup, ...] = ()
    captures: tuple[CaptureSpec, ...] | None = None  # None: every node, every lab interface
    conntrack: tuple[str, ...] = ()
    expect_cause: str = ""
    expect_packets: tuple[PacketExpectation, ...] = ()
    fix: str = ""  # set for the scenarios that run the incident on a fixed topology
    pods: PodOverride | None = None


class _Reader:
    """Typed access to one TOML table that reports problems as ``file: key: problem``."""

    def __init__(self, path: Path, table: Mapping[str, Any], where: str, allowed: frozenset[str]) -> None:
        self.path, self.table, self.where = path, table, where
        for key in table:
            if key not in allowed:
                self.fail(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def fail(self, key: str, problem: str) -> DiagError:
        raise DiagError(grammar.printable(f"{self.path}: {self.where}{key}: {problem}"))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, "missing")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.fail(key, "must be a number, not a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(key, f"must be {names}, not {type(value).__name__}")
        return value


def scenario_path(name_or_path: str) -> Path:
    """A scenario name (searched in the lab folders, see ``diag.datafiles``), or a path to a TOML file.

    An unknown name gives the path it would have in the shipped folder, so the error can show it.
    """
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return Path(name_or_path)
    found = find_lab_file("scenarios", name_or_path)
    return found if found is not None else shipped_lab_dir() / "scenarios" / f"{name_or_path}.toml"


def available_scenarios() -> list[str]:
    return lab_file_names("scenarios")


def load_scenario(name_or_path: str = DEFAULT_SCENARIO) -> Scenario:
    path = scenario_path(name_or_path)
    if not path.is_file():
        known = ", ".join(available_scenarios())
        raise DiagError(f"no scenario {name_or_path!r} ({path} does not exist); known: {known}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DiagError(f"{path}: cannot read: {error}") from None
    # Nesting depth and finite numbers everywhere, as for topologies (see diag.lab.grammar).
    return parse_scenario(grammar.load_toml(text, lambda problem: DiagError(f"{path}: {problem}")), path)


def parse_scenario(data: Mapping[str, Any], path: Path) -> Scenario:
    top = _Reader(path, data, "", frozenset(
        {"description", "topology", "fix", "pods", "setup", "step", "capture", "conntrack", "expect"}))
    steps = tuple(_parse_step(path, i, table) for i, table in enumerate(top.get("step", list, required=True)))
    if not steps:
        top.fail("step", "at least one step is needed")
    conntrack = top.get("conntrack", list, [])
    if not all(isinstance(node, str) for node in conntrack):
        top.fail("conntrack", "must be a list of node names")
    captures = top.get("capture", list)
    expect = _Reader(path, top.get("expect", dict, {}), "expect.", frozenset({"cause", "packets"}))
    cause = expect.get("cause", str, "")
    if cause and cause not in CAUSES:
        expect.fail("cause", f"{cause!r} is not a known cause ({', '.join(CAUSES)})")
    return Scenario(
        name=path.stem,
        description=top.get("description", str, required=True),
        topology=top.get("topology", str, required=True),
        path=path,
        steps=steps,
        setup=tuple(_parse_setup(path, i, t) for i, t in enumerate(top.get("setup", list, []))),
        captures=None if captures is None else tuple(_parse_capture(path, i, t) for i, t in enumerate(captures)),
        conntrack=tuple(conntrack),
        expect_cause=cause,
        expect_packets=tuple(
            _parse_expectation(path, i, t) for i, t in enumerate(expect.get("packets", list, []))
        ),
        fix=top.get("fix", str, ""),
        pods=_parse_pods(path, top.get("pods", dict)),
    )


POD_BEHAVIOURS = ("normal", "no-listener", "abort", "slow")


def _parse_pods(path: Path, table: Mapping[str, Any] | None) -> PodOverride | None:
    if table is None:
        return None
    reader = _Reader(path, table, "pods.", frozenset({"behaviour", "delay", "nodes"}))
    behaviour = reader.get("behaviour", str, required=True)
    if behaviour not in POD_BEHAVIOURS:
        reader.fail("behaviour", f"{behaviour!r} is not one of {', '.join(POD_BEHAVIOURS)}")
    delay = reader.get("delay", (int, float))
    if delay is not None and not 0 <= delay <= MAX_SECONDS:
        reader.fail("delay", f"must be a number of seconds from 0 to {MAX_SECONDS:g}")
    nodes = reader.get("nodes", list, [])
    if not all(isinstance(node, str) for node in nodes):
        reader.fail("nodes", "must be a list of pod node names")
    return PodOverride(behaviour, None if delay is None else float(delay), tuple(nodes))


def _table(path: Path, where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DiagError(f"{path}: {where}: must be a table, not {type(value).__name__}")
    return value


def _parse_step(path: Path, index: int, value: Any) -> Step:
    where = f"step[{index}]."
    table = _table(path, where.rstrip("."), value)
    kind = table.get("kind")
    if kind not in STEP_OPTIONS:
        raise DiagError(f"{path}: {where}kind: must be one of {', '.join(STEP_OPTIONS)}, not {kind!r}")
    reader = _Reader(path, table, where, COMMON_STEP_KEYS | STEP_OPTIONS[kind])
    timeout = float(reader.get("timeout", (int, float), 10.0))
    if not 0 < timeout <= MAX_SECONDS:
        reader.fail("timeout", f"must be positive and at most {MAX_SECONDS:g} s: every step has a time bound")
    options = {key: table[key] for key in STEP_OPTIONS[kind] if key in table}
    if kind == "tcp" and "script" in options:
        from diag.scenario.client import parse_script

        try:
            parse_script(str(options["script"]))
        except ValueError as error:
            reader.fail("script", str(error))
    if kind == "replay" and "capture" not in options:
        reader.fail("capture", "missing (the recorded capture to replay, relative to the scenario file)")
    return Step(
        kind=kind,
        node=reader.get("node", str, "client"),
        target=reader.get("target", str, "service"),
        timeout=timeout,
        background=reader.get("background", bool, kind == "inject-rst"),
        name=reader.get("name", str, ""),
        options=options,
    )


def _parse_setup(path: Path, index: int, value: Any) -> Setup:
    where = f"setup[{index}]."
    reader = _Reader(path, _table(path, where.rstrip("."), value), where,
                     frozenset({"node", "iptables", "sysctls", "run"}))
    sysctls = reader.get("sysctls", dict, {})
    for key, setting in sysctls.items():
        if not grammar.sysctl_value_ok(setting) or not grammar.matches(grammar.SYSCTL_KEY, key):
            reader.fail("sysctls", f"{key!r}: only net.* keys, with integer values or strings of letters, digits, "
                        "spaces and . _ : -")
    run = reader.get("run", list, [])
    if not all(isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) for argv in run):
        reader.fail("run", "must be a list of argv lists of strings")
    return Setup(
        node=reader.get("node", str, required=True),
        iptables=reader.get("iptables", str, ""),
        sysctls={key: str(setting) for key, setting in sysctls.items()},
        run=tuple(tuple(argv) for argv in run),
    )


def _parse_capture(path: Path, index: int, value: Any) -> CaptureSpec:
    where = f"capture[{index}]."
    reader = _Reader(path, _table(path, where.rstrip("."), value), where,
                     frozenset({"point", "node", "interfaces"}))
    node = reader.get("node", str, required=True)
    interfaces = reader.get("interfaces", list)
    if interfaces is not None and not (interfaces and all(isinstance(i, str) for i in interfaces)):
        reader.fail("interfaces", "must be a non-empty list of interface names")
    point = reader.get("point", str, node)
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", point):
        reader.fail("point", f"{point!r} cannot be a file name")
    return CaptureSpec(point=point, node=node, interfaces=None if interfaces is None else tuple(interfaces))


def _parse_expectation(path: Path, index: int, value: Any) -> PacketExpectation:
    where = f"expect.packets[{index}]."
    reader = _Reader(path, _table(path, where.rstrip("."), value), where,
                     frozenset({"at", "kind", "count", "interfaces", "src"}))
    kind = reader.get("kind", str, required=True)
    if kind not in PACKET_KINDS:
        reader.fail("kind", f"{kind!r} is not one of {', '.join(PACKET_KINDS)}")
    count = reader.get("count", (str, int), required=True)
    match = _COUNT.match(str(count).strip())
    if match is None or (not match.group(2).isdigit() and match.group(2) not in PACKET_KINDS):
        reader.fail("count", f"{count!r}: write a comparison such as '>=2', '0' or '==syn'")
    interfaces = reader.get("interfaces", int)
    return PacketExpectation(
        at=reader.get("at", str, required=True), kind=kind, count=str(count).strip(),
        interfaces=interfaces, src=reader.get("src", str, ""),
    )
