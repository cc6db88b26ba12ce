"""The lab leaves the host as it found it: root namespace untouched, everything removed on every exit path.

Other labs (other people's tests) may be up on this host at the same time:
these tests only ever remove labs they created, under names they chose.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PROJECT, require_root, require_tools

from diag.errors import LabError
from diag.lab import Lab, lab_down, lab_down_all, lab_up, list_labs, load_topology, parse_topology
from diag.lab import state as lab_state
from diag.lab.netns import existing_namespaces, pids_in

pytestmark = pytest.mark.lab

ROOT_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/default/rp_filter",
    "net/ipv6/conf/all/disable_ipv6",
    "net/ipv6/conf/default/disable_ipv6",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_udp_timeout",
    "net/netfilter/nf_conntrack_udp_timeout_stream",
)
COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def unique_name() -> str:
    return "t" + secrets.token_hex(4)


def namespaces_of(name: str) -> list[str]:
    return [ns for ns in existing_namespaces() if ns.startswith(f"diag-{name}-")]


def all_gone(pids: list[int], within: float = 2.0) -> bool:
    """True once none of the processes runs any more (a zombie awaiting its reaper counts as gone)."""
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + within
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def root_snapshot() -> dict[str, str]:
    """What the root namespace looks like, without counters and timers that move by themselves."""
    def output(*command: str) -> str:
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    snapshot = {
        "links": output("ip", "-br", "link"),
        "addresses": output("ip", "-br", "address"),
        "routes": output("ip", "route", "show", "table", "all"),
        "rules": output("ip", "rule"),
        "iptables": COUNTERS.sub("", output("iptables-save")),
        "nft": COUNTERS.sub("", output("nft", "list", "ruleset")),
    }
    snapshot["iptables"] = "\n".join(line for line in snapshot["iptables"].splitlines() if not line.startswith("#"))
    for key in ROOT_SYSCTLS:
        path = Path("/proc/sys") / key
        snapshot[key] = path.read_text() if path.exists() else "(absent)"
    return snapshot


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    require_root()
    require_tools("ip", "iptables-restore", "iptables-save", "nft")


def test_root_namespace_is_never_touched() -> None:
    before = root_snapshot()
    with Lab(load_topology("incident")) as lab:
        during = root_snapshot()
        assert lab.run("client", ["ip", "-br", "address"]).stdout  # the lab really is up
    after = root_snapshot()
    for key in before:
        assert during[key] == before[key], f"building the lab changed the root namespace's {key}"
        assert after[key] == before[key], f"tearing the lab down changed the root namespace's {key}"


def test_teardown_on_exception_and_on_a_failed_build() -> None:
    name = unique_name()
    with pytest.raises(RuntimeError), Lab(load_topology("incident"), name=name):
        assert len(namespaces_of(name)) == 9
        raise RuntimeError("boom")
    assert namespaces_of(name) == []
    assert name not in lab_state.recorded_names()
    # A build that fails half-way (a sysctl this kernel does not have) leaves nothing either.
    text = load_topology("incident").source.replace('role = "natgw"', 'role = "natgw"\nsysctls = { "net.nope" = 1 }')
    with pytest.raises(LabError, match=r"no sysctl net\.nope"), Lab(parse_topology(text), name=name):
        pass
    assert namespaces_of(name) == []
    assert name not in lab_state.recorded_names()


HOLDER = """
import sys, time
from diag.lab import Lab, load_topology
with Lab(load_topology("incident"), name=sys.argv[1]) as lab:
    print("up", flush=True)
    time.sleep(60)
"""


def start_holder(name: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, name], cwd=PROJECT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.strip() == "up", holder.stderr.read() if holder.stderr else ""
    return holder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_teardown_when_the_holding_process_is_signalled(signum: int) -> None:
    name = unique_name()
    holder = start_holder(name)
    servers = list(pids_in(namespaces_of(name)))
    assert len(namespaces_of(name)) == 9 and len(servers) == 2
    holder.send_signal(signum)
    holder.wait(timeout=10)
    assert namespaces_of(name) == []
    assert name not in lab_state.recorded_names()
    assert all_gone(servers)


def test_down_removes_what_a_killed_run_left() -> None:
    name = unique_name()
    holder = start_holder(name)
    servers = list(pids_in(namespaces_of(name)))
    holder.kill()
    holder.wait(timeout=10)
    # SIGKILL: no handler ran, so the namespaces are still there; the pod servers watched
    # their owner and went with it, and the lab is listed as the leftover of a killed run.
    assert len(namespaces_of(name)) == 9
    assert servers and all_gone(servers, within=10.0)
    info = next(info for info in list_labs() if info.name == name)
    assert info.topology == "incident" and not info.owner_alive and info.owner_gone and info.leftover
    # `diag lab down --all` walks the same list; here it is narrowed to this test's own lab.
    assert lab_down_all(lambda lab: lab.name == name) == [name]
    assert namespaces_of(name) == []
    assert name not in lab_state.recorded_names()
    assert all_gone(servers)


def test_down_without_a_record_uses_the_namespaces() -> None:
    """Namespaces whose record is gone (say /run was cleaned) are still found by their prefix."""
    name = unique_name()
    lab_up(load_topology("incident"), name=name)
    lab_state.remove(name)
    info = next(info for info in list_labs() if info.name == name)
    assert info.leftover and info.namespaces == 9
    lab_down(name)
    assert namespaces_of(name) == []


def test_cli_up_exec_show_down_across_processes() -> None:
    name = unique_name()
    cli = "import sys, diag.cli as cli; cli.COMMANDS = ('lab',); sys.exit(cli.main(sys.argv[1:]))"

    def diag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", cli, "lab", *args], cwd=PROJECT, capture_output=True,
                              text=True, timeout=60)

    try:
        up = diag("up", "incident", "--name", name)
        assert up.returncode == 0, up.stderr
        assert f"lab {name} up" in up.stdout
        listed = diag("ls")
        assert re.search(rf"^{name}\s+incident\s+9\s", listed.stdout, re.MULTILINE), listed.stdout
        # The pod servers outlive `lab up`: the pod answers its own address from the client's side.
        exec_ = diag("exec", "--lab", name, "client", "--", "ip", "-br", "address", "show", "eth-internet")
        assert exec_.returncode == 0 and "203.0.113.10/24" in exec_.stdout
        shown = diag("show", "--lab", name, "natgw")
        assert shown.returncode == 0
        assert "192.0.2.10/24" in shown.stdout and "NATGW-NO-STATE" in shown.stdout
        assert diag("up", "incident", "--name", name).stderr.startswith(f"diag: a lab named '{name}' is already up")
        assert diag("show", "--lab", name, "nobody").stderr.startswith("diag: topology incident: no node named")
        down = diag("down", name)
        assert down.returncode == 0 and namespaces_of(name) == []
        assert diag("down", name).returncode == 2
    finally:
        if namespaces_of(name):
            lab_down(name)


def test_not_root_is_one_clear_line() -> None:
    # Import everything first: the interpreter's own files may not be readable by nobody.
    # Finding the shipped topologies loads importlib's resource readers on first use: do that first too.
    script = ("import os, sys, diag.cli as cli, diag.commands.lab, diag.lab, diag.lab.inspect, tomllib; "
              "import diag.datafiles; diag.datafiles.shipped_lab_dir(); "
              "cli.COMMANDS = ('lab',); parser = cli.build_parser(); "
              "cli.build_parser = lambda *_command: parser; os.setgid(65534); os.setuid(65534); "
              "sys.exit(cli.main(['lab', 'up', 'incident']))")
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "HOME": "/tmp"})
    assert result.returncode == 2
    assert result.stderr == "diag: the lab needs root to create network namespaces (run it with sudo)\n"


def test_two_labs_at_once() -> None:
    with Lab(load_topology("incident")) as first, Lab(load_topology("fix-ip-targets")) as second:
        assert first.name != second.name
        assert first.address("pod-b") == second.address("pod-b")  # same addresses, separate namespaces
        for lab, expected in ((first, "timeout"), (second, "connected")):
            result = lab.run("client", [sys.executable, "-I", "-c", (
                "import socket\n"
                "try:\n"
                "    socket.create_connection(('198.51.100.10', 80), timeout=1.5); print('connected')\n"
                "except TimeoutError:\n"
                "    print('timeout')\n")], timeout=10)
            assert result.stdout.strip() == expected
        second_namespaces = namespaces_of(second.name)
        first.down()
        assert namespaces_of(first.name) == [] and namespaces_of(second.name) == second_namespaces
        assert second.run("client", ["ip", "-br", "address"]).returncode == 0


def test_no_ipv6_or_dns_chatter() -> None:
    """Nothing but the traffic we send crosses a lab link: no router solicitations, MLD or DNS."""
    require_tools("tcpdump")
    with Lab(load_topology("fix-snat")) as lab:
        dump = lab.popen("internet", ["tcpdump", "-n", "-U", "-l", "-i", "eth-client", "-c", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert dump.stderr is not None
        while "listening on" not in (line := dump.stderr.readline()):
            assert line, "tcpdump did not start"
        # No interface has an IPv6 address, not even link-local: nothing to send router solicitations or MLD from.
        for node in lab.topology.node_names:
            assert lab.run(node, ["ip", "-6", "address", "show"]).stdout.strip() == "", node
        # A resolver lookup inside the lab must not reach the wire either.
        lab.run("client", [sys.executable, "-I", "-c",
                           "import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\nexcept OSError:\n    pass"],
                timeout=15, check=False)
        lab.run("client", [sys.executable, "-I", "-c",
                           "import socket; socket.create_connection(('198.51.100.10', 80), timeout=2).close()"])
        time.sleep(1.0)
        dump.send_signal(signal.SIGINT)
        lines, _ = dump.communicate(timeout=5)
    assert lines.strip(), "the connection itself was captured"
    for line in filter(None, lines.splitlines()):
        assert " IP6 " not in line and "ICMP6" not in line, line
        assert ".53:" not in line and ".53 " not in line, line
        assert re.search(r"IP (203\.0\.113\.10|198\.51\.100\.10)\.\d+ > ", line) or " ARP," in line, line


def test_lab_records_are_json_other_processes_can_read() -> None:
    with Lab(load_topology("incident")) as lab:
        record = json.loads(lab_state.record_path(lab.name).read_text())
        assert record["namespaces"]["natgw"] == f"diag-{lab.name}-natgw"
        assert sorted(record["pids"]) == sorted(pids_in(namespaces_of(lab.name)))
        attached = Lab.attach(lab.name)
        assert attached.topology.name == "incident"
        assert attached.netns("pod-b") == lab.netns("pod-b")
