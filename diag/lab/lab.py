"""A running lab: build a topology's namespaces, work inside them, tear them down.

``with Lab(topology) as lab:`` builds on entry and always tears down on exit,
also on Ctrl-C and SIGTERM (handlers are installed while the lab is up).
``lab_up``/``Lab.attach``/``lab_down`` do the same across processes for the
command line, through the record each lab keeps under /run.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from diag.errors import LabError
from diag.lab import grammar, netns, state
from diag.lab.inspect import node_state
from diag.lab.lifetime import LIFELINE_VARIABLE, is_running, lifeline, start, tied
from diag.lab.plan import NETNS_PREFIX, NamespacePlan, Plan, build_plan, netns_name
from diag.lab.topology import Topology, parse_topology

T = TypeVar("T")
SERVERS_SCRIPT = Path(__file__).resolve().with_name("servers.py")
READY_TIMEOUT = 15.0
REQUIRED_TOOLS = ("ip", "iptables-restore")


def preflight() -> None:
    """Fail early, in one line, when this machine cannot build a lab."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root to create network namespaces (run it with sudo)")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (./quickstart installs them)")
    if not Path("/proc/self/ns/net").exists():
        raise LabError("kernel feature missing: network namespaces (CONFIG_NET_NS)")
    conntrack = Path("/proc/sys/net/netfilter/nf_conntrack_max")
    if not conntrack.exists() and shutil.which("modprobe"):
        # Loading a module changes no namespace's configuration; it is the one host-wide step allowed.
        subprocess.run(["modprobe", "nf_conntrack"], capture_output=True, timeout=30)
    if not conntrack.exists():
        raise LabError("kernel feature missing: netfilter connection tracking (nf_conntrack)")


def _new_name() -> str:
    taken = set(state.recorded_names()) | {lab_id for lab_id, _ in _namespaces_by_lab()}
    for _ in range(100):
        name = secrets.token_hex(2)
        if name not in taken:
            return name
    raise LabError("could not pick a free lab name")


def _namespaces_by_lab() -> list[tuple[str, str]]:
    """(lab id, namespace) for every namespace on the host that carries the lab prefix."""
    found = []
    for name in netns.existing_namespaces():
        if name.startswith(NETNS_PREFIX):
            lab_id = name[len(NETNS_PREFIX):].split("-", 1)[0]
            found.append((lab_id, name))
    return found


class Lab:
    """One topology built into namespaces named ``diag-<lab>-<node>``."""

    def __init__(self, topology: Topology, name: str | None = None) -> None:
        if name is not None and not grammar.matches(grammar.LAB_NAME, name):
            raise LabError(f"lab name {name!r}: use 1-12 lower-case letters and digits")
        self.topology = topology
        self.name = name or ""
        self._given_name = name
        self._processes: list[subprocess.Popen[Any]] = []
        self._pids: list[int] = []
        self._built = False
        self._previous_handlers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._lifeline: int | None = None  # write end of the pipe the pod servers watch (see diag.lab.lifetime)
        self._owner: tuple[int, int] | None = None  # an attached lab keeps its record's owner
        self._detached = False

    # -- life cycle ----------------------------------------------------------

    @classmethod
    def attach(cls, name: str) -> Lab:
        """A lab built by another process (``diag lab up``), to work in or tear down."""
        record = state.load(name)
        lab = cls(parse_topology(record.source, origin=f"lab {name}"), name=name)
        lab._pids = list(record.pids)
        lab._built = True
        lab._owner = (record.owner_pid, record.owner_start)
        lab._detached = record.detached
        return lab

    def up(self, detach: bool = False) -> Lab:
        """Build every namespace; on any failure tear down what was made and raise.

        ``detach`` starts the pod servers in their own session so they outlive this process,
        and records the lab as left up on purpose; otherwise the servers die with this
        process even when it is killed, and the lab is a leftover from then on.
        """
        preflight()
        self._claim_name()
        plan = build_plan(self.topology, self.name)
        self._built = True
        try:
            self._apply(plan)
            self._start_servers(plan, detach)
        except BaseException:
            self.down()
            raise
        # Only a finished build is detached: one killed half-way is a leftover like any other.
        self._detached = detach
        self._record()
        return self

    def _apply(self, plan: Plan) -> None:
        netns.ip_batch(plan.setup_batch, "creating namespaces and links")

        def configure(ns: NamespacePlan) -> Callable[[], None]:
            def job() -> None:  # runs inside ns.netns; the tools it starts inherit the namespace
                netns.write_sysctls(ns.sysctls)
                netns.ip_batch(ns.ip_batch, f"{ns.node}: addresses and routes", netns=ns.netns)
                if ns.bridge_batch:
                    netns.run_tool(["bridge", "-batch", "-"], "\n".join(ns.bridge_batch) + "\n",
                                   f"{ns.node}: overlay forwarding entries")
                if ns.iptables:
                    netns.run_tool(["iptables-restore"], ns.iptables, f"{ns.node}: rules")
                for interface in ns.interfaces + ns.devices:
                    netns.disable_tx_checksum_offload(interface)
            return job

        for ns in plan.namespaces:
            netns.write_resolver(ns.netns)
        netns.in_namespaces((ns.netns, configure(ns)) for ns in plan.namespaces)

    def _start_servers(self, plan: Plan, detach: bool) -> None:
        """One interpreter forks every pod's server into its pod's namespace; wait until all listen."""
        pods = [ns for ns in plan.namespaces if ns.server]
        if not pods:
            return
        logs = state.log_dir(self.name)
        logs.mkdir(parents=True, exist_ok=True)
        spec = logs / "servers.json"
        spec.write_text(json.dumps([{"name": ns.node, "netns": ns.netns, "args": ns.server} for ns in pods]))
        environment = {**os.environ, "DIAG_SERVERS_DETACH": "1" if detach else "0"}
        passed: tuple[int, ...] = ()
        if not detach:
            read_end, self._lifeline = lifeline()
            environment[LIFELINE_VARIABLE] = str(read_end)
            passed = (read_end,)
        try:
            with open(logs / "servers.log", "w") as log:
                launcher = subprocess.Popen([sys.executable, "-I", str(SERVERS_SCRIPT), "--spawn", str(spec)],
                                            stdout=subprocess.PIPE, stderr=log, env=environment,
                                            start_new_session=detach, pass_fds=passed)
        finally:
            for descriptor in passed:
                os.close(descriptor)  # the servers hold it now; this process keeps only the write end
        assert launcher.stdout is not None
        try:
            ready = _read_ready(launcher.stdout.fileno(), {ns.node for ns in pods}, logs / "servers.log")
        finally:
            launcher.stdout.close()
            launcher.wait()
        self._pids.extend(ready.values())

    def down(self) -> None:
        """Stop every process in the lab's namespaces and delete them. Safe to call twice."""
        with self._lock:
            if not self._built:
                return
            namespaces = [netns_name(self.name, node) for node in self.topology.node_names]
            for process in self._processes:
                if process.poll() is None:
                    process.terminate()
            for process in self._processes:
                try:
                    process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.stdout is not None:
                    process.stdout.close()
            if self._lifeline is not None:
                os.close(self._lifeline)  # the servers see end-of-file and exit by themselves too
                self._lifeline = None
            netns.kill_processes_in(namespaces)
            netns.delete_namespaces(namespaces)
            state.remove(self.name)
            self._built = False

    def __enter__(self) -> Lab:
        self._install_signal_handlers()
        try:
            self.up()
        except BaseException:
            self._restore_signal_handlers()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            self._ignore_signals_while_tearing_down()
            self.down()
        finally:
            self._restore_signal_handlers()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, _raise_for_signal)

    def _ignore_signals_while_tearing_down(self) -> None:
        for signum in self._previous_handlers:
            signal.signal(signum, signal.SIG_IGN)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _claim_name(self) -> None:
        """Take the lab's name by creating its record exclusively, so two processes never share a name.

        The record exists before any namespace: if this process dies half-way,
        `diag lab down` still finds what was made.
        """
        for _ in range(20):
            name = self._given_name or _new_name()
            taken = any(lab == name for lab, _ in _namespaces_by_lab())
            if not taken and state.create(self._make_record(name)):
                self.name = name
                return
            if self._given_name is not None:
                raise LabError(f"a lab named {name!r} is already up (diag lab down {name})")
        raise LabError("could not find a free lab name")

    def _make_record(self, name: str) -> state.LabRecord:
        record = state.LabRecord(
            name=name,
            topology=self.topology.name,
            source=self.topology.source,
            namespaces={node: netns_name(name, node) for node in self.topology.node_names},
            pids=list(self._pids),
            detached=self._detached,
        )
        if self._owner is not None:  # attached from another process: the owner stays who it was
            record.owner_pid, record.owner_start = self._owner
        return record

    def _record(self) -> None:
        state.save(self._make_record(self.name))

    # -- working inside ------------------------------------------------------

    def netns(self, node: str) -> str:
        self.topology.node(node)  # raises for an unknown node, listing the known ones
        return netns_name(self.name, node)

    def run(self, node: str, command: list[str], timeout: float = 5.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's namespace and wait for it (output captured as text)."""
        try:
            result = subprocess.run(tied(["ip", "netns", "exec", self.netns(node), *command]),
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{node}: {' '.join(command)}: no answer within {timeout:g} s") from None
        if check and result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise LabError(f"{node}: {' '.join(command)} exited {result.returncode}"
                           + (f": {message[-1]}" if message else ""))
        return result

    def popen(self, node: str, command: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process in the node's namespace; the lab stops it at teardown.

        It is killed too if this process dies without a teardown (SIGKILL): call from a
        thread that lives as long as the process, since the kernel ties it to that thread.
        """
        process = start(["ip", "netns", "exec", self.netns(node), *command], **popen_kwargs)
        self._processes.append(process)
        self._pids.append(process.pid)
        if self._built and self.name in state.recorded_names():
            self._record()
        return process

    def call(self, node: str, function: Callable[[], T]) -> T:
        """Run a Python function inside the node's namespace (in a thread of this process).

        Sockets it opens (raw ones too, e.g. scapy's) belong to the node, and
        the rest of the process stays where it was.
        """
        return netns.in_namespaces([(self.netns(node), function)])[0]

    def interfaces(self, node: str) -> list[str]:
        self.topology.node(node)
        return self.topology.interfaces(node)

    def address(self, node: str) -> str:
        return str(self.topology.address(node))

    def state(self, node: str) -> dict[str, Any]:
        """Addresses, routes, rules, iptables counters, conntrack entries and sysctls of a node."""
        return node_state(self.netns(node))


def _raise_for_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _read_ready(fd: int, pods: set[str], log: Path) -> dict[str, int]:
    """Collect ``ready <pod> <pid>`` lines from the servers until every pod reported (or one failed)."""
    deadline = time.monotonic() + READY_TIMEOUT
    ready: dict[str, int] = {}
    pending = b""
    while set(ready) != pods:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0.0))
        chunk = os.read(fd, 65536) if readable else b""
        if not chunk:
            missing = ", ".join(sorted(pods - set(ready)))
            detail = log.read_text().strip().splitlines() if log.exists() else []
            raise LabError(f"pod servers did not start ({missing})" + (f": {detail[-1]}" if detail else ""))
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            words = line.decode(errors="replace").split()
            if words[:1] == ["ready"] and len(words) == 3:
                ready[words[1]] = int(words[2])
            elif words[:1] == ["failed"]:
                raise LabError(f"pod servers: {' '.join(words[1:])}")
    return ready


def lab_up(topology: Topology, name: str | None = None) -> Lab:
    """Build a lab that stays up after this process exits (until ``lab_down``)."""
    return Lab(topology, name).up(detach=True)


def lab_down(name: str) -> None:
    """Tear down a lab by name: from its record, or from leftover namespaces if the record is gone."""
    if name in state.recorded_names():
        try:
            Lab.attach(name).down()
            return
        except LabError:
            pass  # unreadable record: fall back to what the namespaces say
    namespaces = [ns for lab_id, ns in _namespaces_by_lab() if lab_id == name]
    if not namespaces and name not in state.recorded_names():
        raise LabError(f"no lab named {name!r} (see `diag lab ls`)")
    netns.kill_processes_in(namespaces)
    netns.delete_namespaces(namespaces)
    state.remove(name)


@dataclass(frozen=True)
class LabInfo:
    name: str
    topology: str  # '' when the record is gone
    namespaces: int  # how many of its namespaces exist
    expected: int  # how many its record lists (0 without a record)
    created: float
    owner_alive: bool
    detached: bool = False  # left up on purpose (diag lab up, --keep-lab): its owner's exit is no sign

    @property
    def owner_gone(self) -> bool:
        """The process that built and used the lab died without tearing it down (a killed run)."""
        return self.expected > 0 and not self.detached and not self.owner_alive

    @property
    def leftover(self) -> bool:
        """Left by a process that died without tearing down (or broken half-way)."""
        return self.owner_gone or self.expected == 0 or self.namespaces != self.expected


def list_labs() -> list[LabInfo]:
    by_lab: dict[str, int] = {}
    for lab_id, _ in _namespaces_by_lab():
        by_lab[lab_id] = by_lab.get(lab_id, 0) + 1
    infos = []
    for name in sorted(set(by_lab) | set(state.recorded_names())):
        try:
            record: state.LabRecord | None = state.load(name)
        except LabError:
            record = None
        infos.append(LabInfo(
            name=name,
            topology=record.topology if record else "",
            namespaces=by_lab.get(name, 0),
            expected=len(record.namespaces) if record else 0,
            created=record.created if record else 0.0,
            owner_alive=record is not None and is_running(record.owner_pid, record.owner_start),
            detached=record is not None and record.detached,
        ))
    return infos


def clean_leftovers() -> list[str]:
    """Tear down the labs whose owner died without tearing them down; returns their names.

    Only labs with a record that names a dead owner: a lab being built right
    now by another process (record written, namespaces still coming) or one
    recorded elsewhere (another state directory) is never taken for a leftover.
    """
    return lab_down_all(lambda info: info.owner_gone)


def lab_down_all(select_lab: Callable[[LabInfo], bool] | None = None) -> list[str]:
    """Tear down every lab on this host (or those ``select_lab`` picks); returns their names."""
    removed = []
    for info in list_labs():
        if select_lab is None or select_lab(info):
            lab_down(info.name)
            removed.append(info.name)
    return removed

