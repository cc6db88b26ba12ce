"""Promises kept under hostile input (issue 13), each checked on the real thing.

Streams are real pipes and FIFOs, the unprivileged user is a real one
(setpriv to nobody), I/O errors come from the kernel, and the lab cases build
and kill real namespaces and processes.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT, require_root, require_tools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DIAG = PROJECT / ".venv" / "bin" / "diag"
SAMPLE = PROJECT / "captures" / "pod-b.pcapng"
NOBODY = 65534


def run_diag(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DIAG), *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def one_line_failure(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed the documented way: status 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def report_without_paths(text: str) -> dict[str, Any]:
    """A JSON report with the capture file paths left out: a stream has no path of its own."""
    document: dict[str, Any] = json.loads(text)
    for capture in document["captures"]:
        capture.pop("path")
    return document


@pytest.fixture(scope="module")
def plain_report() -> dict[str, Any]:
    result = run_diag("analyze", "pcap", "--json", "-", f"pod={SAMPLE}")
    assert result.returncode == 0, result.stderr
    document = report_without_paths(result.stdout)
    assert document["captures"][0]["packets"] > 0
    return document


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A directory every user can read (pytest's own temporary directories are private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="diag-hostile-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


# --- streams ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["pcapng", "gzip"])
def test_dash_reads_standard_input_from_a_pipe(plain_report: dict[str, Any], compressed: bool) -> None:
    data = SAMPLE.read_bytes()
    data = gzip.compress(data) if compressed else data
    # communicate() writes through a real pipe: nothing on the reading side can seek.
    process = subprocess.Popen([str(DIAG), "analyze", "pcap", "--json", "-", "pod=-"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    out, err = process.communicate(data, timeout=300)
    assert process.returncode == 0, err.decode()
    assert report_without_paths(out.decode()) == plain_report


def test_dash_alone_is_named_stdin() -> None:
    process = subprocess.run([str(DIAG), "analyze", "pcap", "--json", "-", "-"], input=SAMPLE.read_bytes(),
                             capture_output=True, timeout=300)
    assert process.returncode == 0, process.stderr.decode()
    assert [c["name"] for c in json.loads(process.stdout)["captures"]] == ["stdin"]


@pytest.mark.parametrize("command", [["analyze", "pcap"], ["flows", "--format", "csv"]], ids=["analyze", "flows"])
def test_empty_standard_input_is_said_to_be_standard_input(command: list[str]) -> None:
    """Nothing piped in (a tcpdump that failed upstream) is told as such, not as an empty file named '-'."""
    result = subprocess.run([str(DIAG), *command, "-"], input="", capture_output=True, text=True, timeout=300)
    line = one_line_failure(result, "-: standard input is empty")
    assert "file" not in line


def _feed_fifo(fifo: Path, data: bytes, chunk: int = 4096) -> threading.Thread:
    def write() -> None:
        with open(fifo, "wb") as sink:  # blocks until diag opens the FIFO for reading
            for start in range(0, len(data), chunk):
                sink.write(data[start : start + chunk])
                sink.flush()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("compressed", [False, True], ids=["pcapng", "gzip"])
def test_a_fifo_is_read_as_a_stream(tmp_path: Path, plain_report: dict[str, Any], compressed: bool) -> None:
    fifo = tmp_path / "pod.fifo"
    os.mkfifo(fifo)
    data = SAMPLE.read_bytes()
    writer = _feed_fifo(fifo, gzip.compress(data) if compressed else data)
    result = run_diag("analyze", "pcap", "--json", "-", f"pod={fifo}")
    writer.join(10)
    assert result.returncode == 0, result.stderr
    assert report_without_paths(result.stdout) == plain_report


def test_dev_stdin_and_process_substitution(tmp_path: Path, plain_report: dict[str, Any]) -> None:
    pcap = tmp_path / "pod.pcap.gz"
    pcap.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    script = f'cat "{pcap}" | "{DIAG}" analyze pcap --json - pod=/dev/stdin > a.json && ' \
             f'"{DIAG}" analyze pcap --json - pod=<(zcat "{pcap}") > b.json'
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert report_without_paths((tmp_path / "a.json").read_text()) == plain_report
    assert report_without_paths((tmp_path / "b.json").read_text()) == plain_report


def test_tcpdump_writing_to_a_pipe_gives_the_report_of_its_file(tmp_path: Path) -> None:
    """``tcpdump -w - | diag analyze pcap -`` in a throwaway namespace, against the same bytes saved by tee."""
    require_root()
    require_tools("tcpdump", "unshare", "ip")
    script = f"""
        set -e
        ip link set lo up
        tcpdump -i lo -n -U --immediate-mode -c 12 -w - 2>/dev/null | tee live.pcap |
            "{DIAG}" analyze pcap --json - live=- > stream.json 2> stream.err &
        pipeline=$!
        # Connection attempts to a closed port (SYN, RST) until tcpdump has its packets and the pipeline ends.
        for attempt in $(seq 1 200); do
            kill -0 $pipeline 2>/dev/null || break
            (exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null || true
        done
        wait $pipeline
    """
    result = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr + (tmp_path / "stream.err").read_text()
    from_file = run_diag("analyze", "pcap", "--json", "-", f"live={tmp_path / 'live.pcap'}")
    assert from_file.returncode == 0, from_file.stderr
    streamed = report_without_paths((tmp_path / "stream.json").read_text())
    assert streamed["captures"][0]["packets"] == 12
    assert streamed == report_without_paths(from_file.stdout)


# --- input failures: one line, status 2 ----------------------------------------------------------------


def _as_nobody(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """diag run by the unprivileged user nobody (no writable home: the compiled code goes to /var/tmp)."""
    require_root()
    require_tools("setpriv")
    environment = {key: value for key, value in os.environ.items() if key != "XDG_CACHE_HOME"}
    environment["HOME"] = "/nonexistent"
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(DIAG), *map(str, args)],
        capture_output=True, text=True, timeout=300, env=environment, cwd="/",
    )


def test_capture_in_a_directory_nobody_may_search(shared_dir: Path) -> None:
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o700)
    capture = locked / "pod.pcapng"
    shutil.copy(SAMPLE, capture)
    line = one_line_failure(_as_nobody("analyze", "pcap", capture), str(capture), "permission denied")
    assert line.startswith("diag: ")
    one_line_failure(_as_nobody("analyze", "pcap", f"pod={capture}"), str(capture), "permission denied")
    flows_out = shared_dir / "flows"
    flows_out.mkdir(mode=0o777)
    flows_out.chmod(0o777)
    one_line_failure(_as_nobody("flows", capture, "--format", "csv", "-o", flows_out), str(capture),
                     "permission denied")
    # A directory as a capture point that nobody may list, and a glob in it.
    one_line_failure(_as_nobody("analyze", "pcap", f"pod={locked}"), str(locked), "cannot list")
    one_line_failure(_as_nobody("analyze", "pcap", f"pod={locked}/*.pcapng"), "no file matches")
    # NAME=PATH where the whole item might be a path in that directory: still one line.
    one_line_failure(_as_nobody("analyze", "pcap", f"{locked}/x=y"), "no such file")


def test_unreadable_capture_file(shared_dir: Path) -> None:
    capture = shared_dir / "private.pcapng"
    shutil.copy(SAMPLE, capture)
    capture.chmod(0o600)
    one_line_failure(_as_nobody("analyze", "pcap", capture), str(capture), "permission denied")


def test_an_io_error_from_the_kernel() -> None:
    # Reading /proc/self/mem at offset 0 (never mapped) fails with EIO on every Linux.
    one_line_failure(run_diag("analyze", "pcap", "/proc/self/mem"), "/proc/self/mem", "Input/output error")


def test_an_io_error_in_the_middle_of_a_stream() -> None:
    """Standard input is a TCP socket whose peer resets it once diag has read the first packets (ECONNRESET)."""
    import fcntl
    import socket
    import termios

    data = SAMPLE.read_bytes()
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    with sender, receiver:
        process = subprocess.Popen([str(DIAG), "analyze", "pcap", "-"], stdin=receiver.fileno(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sender.sendall(data[: len(data) // 2])

        def unread() -> int:  # bytes in the receive queue that diag has not read yet
            return struct.unpack("i", fcntl.ioctl(receiver.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

        assert _wait_for(lambda: unread() == 0)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends a RST
        sender.close()
        out, err = process.communicate(timeout=300)
    one_line_failure(subprocess.CompletedProcess(process.args, process.returncode, out, err),
                     "-: cannot read past byte", "Connection reset by peer")


SHRINK = """
import os, sys
from pathlib import Path
from diag.capture.records import Diagnostics
from diag.capture.source import Feed, open_capture
path = Path(sys.argv[1])
stream, _ = open_capture(path)
feed = Feed(stream, Diagnostics(str(path)), chunk_size=1 << 20)
assert feed._map is not None  # the mapped path, where a shorter file means SIGBUS
feed.next_buffer(b"")
feed._wait_ahead()  # the read-ahead of the next window is done, as it is once a window is decoded
os.truncate(path, 4096)
feed.next_buffer(b"")
"""


def test_a_mapped_capture_cut_short_while_read_is_one_line_not_sigbus(tmp_path: Path) -> None:
    """A ring buffer rewritten under the reader: the next window is refused instead of killing the process."""
    path = tmp_path / "ring.pcap"
    record = struct.pack("<IIII", 1, 0, 100, 100) + bytes(100)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + record * 40000)
    result = subprocess.run([str(PROJECT / ".venv" / "bin" / "python"), "-c", SHRINK, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr)  # an exception, not a signal
    assert "CaptureError" in result.stderr and "shrank from 4640024 to 4096 bytes" in result.stderr


def test_directory_and_dangling_symlink(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_failure(run_diag("analyze", "pcap", empty), str(empty), "directory")
    link = tmp_path / "gone.pcap"
    link.symlink_to(tmp_path / "nowhere.pcap")
    one_line_failure(run_diag("analyze", "pcap", link), str(link), "no such file")


def test_a_capture_that_disappears_before_it_is_read(tmp_path: Path) -> None:
    """The second capture exists when diag starts and is deleted while diag reads the first (a FIFO)."""
    fifo = tmp_path / "first.fifo"
    os.mkfifo(fifo)
    second = tmp_path / "second.pcapng"
    shutil.copy(SAMPLE, second)
    data = SAMPLE.read_bytes()

    def write() -> None:
        with open(fifo, "wb") as sink:  # diag has opened the FIFO: it is past every up-front check
            second.unlink()
            sink.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    result = run_diag("analyze", "pcap", f"first={fifo}", f"second={second}")
    writer.join(10)
    one_line_failure(result, str(second), "no such file")


# --- pcapng oddities --------------------------------------------------------------------------------


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def test_simple_packet_block_of_12_bytes_is_skipped_with_a_warning(tmp_path: Path) -> None:
    section = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    interface = _block(1, struct.pack("<HHI", 1, 0, 0))
    frame = bytes.fromhex("ffffffffffff020000000001" "0800") + bytes(46)
    too_short = struct.pack("<III", 3, 12, 12)  # an SPB with no room for its original length
    good = _block(3, struct.pack("<I", len(frame)) + frame)
    path = tmp_path / "spb.pcapng"
    path.write_bytes(section + interface + too_short + good)
    result = run_diag("analyze", "pcap", "--json", "-", path)
    assert result.returncode == 0, result.stderr
    (capture,) = json.loads(result.stdout)["captures"]
    assert capture["packets"] == 1 and capture["skipped"] == 1
    assert "shorter than their type's fixed fields" in result.stderr
    require_tools("tshark")  # the reference agrees that the block is broken
    tshark = subprocess.run(["tshark", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert "less than the minimum SPB size" in tshark.stderr + tshark.stdout


# --- compiled code for users without a home --------------------------------------------------------


def test_compiled_code_is_cached_per_user_under_var_tmp(shared_dir: Path) -> None:
    capture = shared_dir / "pod.pcapng"
    shutil.copy(SAMPLE, capture)
    before = set(Path(tempfile.gettempdir()).glob("diag-compiled-*"))
    first = _as_nobody("analyze", "pcap", capture)
    assert first.returncode == 0, first.stderr
    cache = Path("/var/tmp") / f"diag-{NOBODY}"
    status = cache.lstat()
    assert stat.S_ISDIR(status.st_mode) and status.st_uid == NOBODY and stat.S_IMODE(status.st_mode) == 0o700
    files = {path: path.stat().st_mtime_ns for path in cache.rglob("*.nbi")}
    assert files, "no compiled code was cached"
    second = _as_nobody("analyze", "pcap", capture)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    # Reused, not recompiled: the index files are untouched and no per-run directory appeared.
    assert {path: path.stat().st_mtime_ns for path in cache.rglob("*.nbi")} == files
    assert set(Path(tempfile.gettempdir()).glob("diag-compiled-*")) == before


# --- topologies and scenarios: names, addresses, numbers, nesting ------------------------------------

TEMPLATE = """\
name = {topology}
[[nodes]]
name = {client}
role = "client"
routes = {{ default = {nlb} }}
[[nodes]]
name = {nlb}
role = "nlb"
listener = {{ protocol = "TCP", port = 80, address = {listener} }}
target_group = {{ port = 30080, targets = [{node}] }}
[[nodes]]
name = {node}
role = "k8s-node"
sysctls = {{ {sysctl_key} = {sysctl_value} }}
[[nodes.services]]
name = {service}
node_port = 30080
protocols = ["tcp"]
endpoints = [{pod}]
[[nodes]]
name = {pod}
role = "pod"
delay = {delay}
routes = {{ default = {node} }}
[[links]]
endpoints = {{ {client} = {client_address}, {nlb} = {nlb_address} }}
interfaces = {{ {client} = {interface} }}
[[links]]
endpoints = {{ {nlb} = "198.18.0.10/24", {node} = "198.18.0.1/24" }}
[[links]]
endpoints = {{ {node} = "198.19.0.1/24", {pod} = {pod_address} }}
"""

DEFAULTS = {
    "topology": "hostile", "client": "client", "nlb": "nlb", "node": "node-a", "pod": "pod-a",
    "service": "default/web", "interface": "eth0", "sysctl_key": "net.ipv4.ip_forward", "sysctl_value": "1",
    "listener": "203.0.113.1", "client_address": "203.0.113.10/24", "nlb_address": "203.0.113.1/24",
    "pod_address": "198.19.0.10/24",
}


def toml_string(value: str) -> str:
    """A TOML basic string holding ``value`` exactly (JSON's escapes are TOML's)."""
    return json.dumps(value)


def topology_text(delay: str = "2.0", **strings: str) -> str:
    values = {key: toml_string(strings.get(key, default)) for key, default in DEFAULTS.items()}
    return TEMPLATE.format(delay=delay, **values)


def test_the_template_is_a_valid_topology() -> None:
    from diag.lab.plan import build_plan
    from diag.lab.topology import parse_topology

    topology = parse_topology(topology_text())
    assert topology.node_names == ("client", "nlb", "node-a", "pod-a")
    assert build_plan(topology, "t1").namespaces


REFUSED = [
    ({"client": "client\n"}, "nodes[0].name"),
    ({"topology": "nl\n"}, "name"),
    ({"interface": "rootleak\n"}, "interfaces"),
    ({"service": 'default/web"\n-A INPUT -j DROP\n#'}, "services[0].name"),
    ({"service": "web"}, "services[0].name"),
    ({"sysctl_key": "net.ipv4.ip_forward\n"}, "sysctls"),
    ({"sysctl_value": "1\n0"}, "sysctls"),
    ({"client_address": "8.8.8.8/24"}, "outside the lab's ranges"),
    ({"client_address": "127.0.0.2/8"}, "outside the lab's ranges"),
    ({"client_address": "224.0.0.5/24"}, "outside the lab's ranges"),
    ({"client_address": "198.18.0.5/24", "nlb_address": "198.18.0.10/24"}, "198.18.0.10 is already the address"),
    ({"pod_address": "198.19.0.255/24"}, "broadcast"),
    ({"listener": "8.8.8.8"}, "listener.address"),
]


@pytest.mark.parametrize(("strings", "named"), REFUSED, ids=[next(iter(s)) + str(i) for i, (s, _) in
                                                             enumerate(REFUSED)])
def test_hostile_strings_and_addresses_are_refused(strings: dict[str, str], named: str) -> None:
    from diag.errors import LabError
    from diag.lab.topology import parse_topology

    with pytest.raises(LabError) as refused:
        parse_topology(topology_text(**strings))
    message = str(refused.value)
    assert named in message and "\n" not in message and "\r" not in message


@pytest.mark.parametrize("delay", ["nan", "inf", "-inf", "+nan", "1e300"])
def test_delays_must_be_finite_and_bounded(delay: str) -> None:
    from diag.errors import LabError
    from diag.lab.topology import parse_topology

    with pytest.raises(LabError, match="delay"):
        parse_topology(topology_text(delay=delay))


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("name = " + "[" * 3000 + "]" * 3000 + "\n")
    moderately = tmp_path / "moderate.toml"
    moderately.write_text(topology_text().replace('sysctls = {', 'extra = ' + "[" * 40 + "]" * 40 + '\nsysctls = {'))
    one_line_failure(run_diag("lab", "up", "--dry-run", deep), str(deep), "nested more than")
    one_line_failure(run_diag("lab", "up", "--dry-run", moderately), str(moderately), "nested more than")
    scenario = tmp_path / "deep-scenario.toml"
    scenario.write_text("description = " + "[" * 3000 + "]" * 3000 + "\n")
    one_line_failure(run_diag("run-scenario", scenario), str(scenario), "nested more than")


@pytest.mark.parametrize(("line", "key"), [
    ("timeout = nan", "timeout"), ("timeout = inf", "timeout"), ("seconds = nan", "seconds"),
])
def test_scenario_numbers_must_be_finite(tmp_path: Path, line: str, key: str) -> None:
    from diag.errors import DiagError
    from diag.scenario.spec import load_scenario

    path = tmp_path / "numbers.toml"
    path.write_text(f'description = "x"\ntopology = "incident"\n[[step]]\nkind = "sleep"\n{line}\n')
    with pytest.raises(DiagError, match=key):
        load_scenario(str(path))


def _host_state() -> tuple[str, str, list[str]]:
    from diag.lab import state

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return namespaces, links, sorted(os.listdir(state.STATE_DIR)) if state.STATE_DIR.is_dir() else []


def _assert_nothing_new(before: tuple[str, str, list[str]], name: str) -> None:
    """Root links exactly as before; no namespace or record of lab ``name`` (other labs may come and go)."""
    namespaces, links, records = _host_state()
    assert links == before[1]
    assert not [line for line in namespaces.splitlines() if line.startswith(f"diag-{name}")]
    assert not [record for record in set(records) - set(before[2]) if record.startswith(name)]


@pytest.mark.parametrize("strings", [{"client": "client\n"}, {"interface": "rootleak\n"},
                                     {"service": 'default/web"\n-A INPUT -j DROP\n#'}],
                         ids=["node", "interface", "service"])
def test_a_refused_topology_leaves_nothing_behind(tmp_path: Path, strings: dict[str, str]) -> None:
    require_root()
    path = tmp_path / "hostile.toml"
    path.write_text(topology_text(**strings))
    before = _host_state()
    one_line_failure(run_diag("lab", "up", path, "--name", "hostile"), str(path))
    _assert_nothing_new(before, "hostile")


def test_a_lab_name_with_a_newline_is_refused_before_anything_exists() -> None:
    require_root()
    before = _host_state()
    line = one_line_failure(run_diag("lab", "up", "incident", "--name", "nl\n"), "lab name")
    assert "'nl\\n'" in line
    _assert_nothing_new(before, "nl")


_hostile_text = st.one_of(
    st.text(max_size=24),
    st.text(alphabet=st.sampled_from("az09-_./\n\r\t \"'\\$;#\x00é"), max_size=24),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(sorted(set(DEFAULTS) - {"listener", "client_address", "nlb_address", "pod_address"})),
       suffix=st.sampled_from(["", "\n", "\r", " ", "\t", "\x00", "x"]), value=_hostile_text,
       use_value=st.booleans())
def test_topology_loader_under_hostile_strings(field: str, suffix: str, value: str, use_value: bool) -> None:
    """Any string in any name field: refused in one line, or a topology whose every name fits its grammar."""
    from diag.errors import LabError
    from diag.lab import grammar
    from diag.lab.plan import build_plan
    from diag.lab.topology import K8sNodeConfig, parse_topology

    hostile = (value if use_value else DEFAULTS[field]) + suffix
    try:
        topology = parse_topology(topology_text(**{field: hostile}))
    except LabError as error:
        assert "\n" not in str(error) and "\r" not in str(error) and "\x00" not in str(error)
        return
    assert grammar.matches(grammar.TOPOLOGY_NAME, topology.name)
    for node in topology.nodes:
        assert grammar.matches(grammar.NODE_NAME, node.name)
        assert all(grammar.matches(grammar.INTERFACE_NAME, name) for name in topology.interfaces(node.name))
        assert all(grammar.matches(grammar.SYSCTL_KEY, key) and grammar.matches(grammar.SYSCTL_VALUE, value)
                   for key, value in node.sysctls.items())
        if isinstance(node.config, K8sNodeConfig):
            assert all(grammar.matches(grammar.SERVICE_NAME, svc.name) for svc in node.config.services)
    plan = build_plan(topology, "t1")
    lines = plan.setup_batch + [line for ns in plan.namespaces for line in ns.ip_batch]
    assert all(not set(line) & set("\n\r\x00\"'") for line in lines)
    assert len(plan.setup_batch) == len(topology.nodes) + len(topology.links)


# --- nothing outlives a killed run ----------------------------------------------------------------------

LINGERING_SCENARIO = """\
description = "a client that keeps retrying while the run sleeps: something to kill"
topology = "incident"
conntrack = ["natgw"]

[[step]]
kind = "tcp"
name = "client keeps trying"
background = true
syn_retries = 6
timeout = 60

[[step]]
kind = "sleep"
seconds = 60
timeout = 90
"""


def _commands(pids: set[int]) -> dict[int, str]:
    """The command name of each pid still running (a zombie counts as gone)."""
    from diag.lab.lifetime import process_start

    names = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if process_start(pid) is not None:
            names[pid] = name
    return names


def _wait_for(condition: Any, attempts: int = 200) -> bool:
    """Poll ``condition`` (a bounded wait for a state, not a measurement of time)."""
    import time

    for _ in range(attempts):
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.mark.lab
def test_kill_9_of_run_scenario_leaves_no_process_and_a_marked_leftover(tmp_path: Path) -> None:
    require_root()
    require_tools("tcpdump", "conntrack", "ip")
    from diag.lab.netns import pids_in

    namespaces_before, links_before, _ = _host_state()
    scenario = tmp_path / "linger.toml"
    scenario.write_text(LINGERING_SCENARIO)
    run = subprocess.Popen([str(DIAG), "run-scenario", str(scenario), "--out", str(tmp_path / "out")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lab = ""
    try:
        assert run.stderr is not None
        for line in run.stderr:  # progress lines: the lab's name, then the moment captures listen
            if " as " in line and "lab up" in line:
                lab = line.split(" as ")[1].split(",")[0].strip()
            if "captures listening" in line:
                break
        assert lab, "run-scenario never reported its lab"
        namespaces = [f"diag-{lab}-{node}" for node in
                      ("client", "internet", "nlb", "vpc-router", "natgw", "node-a", "node-b", "pod-a", "pod-b")]
        # Everything the run starts is up: tcpdumps, conntrack, both pod servers and the client.
        client_ns = [f"diag-{lab}-client"]
        assert _wait_for(lambda: any(name.startswith("python") for name in _commands(set(pids_in(client_ns))).values()))
        started = set(pids_in(namespaces))
        commands = sorted(_commands(started).values())
        assert commands.count("tcpdump") == 18 and "conntrack" in commands
        assert sum(name.startswith("python") for name in commands) >= 3, commands  # two servers, one client
        run.kill()  # SIGKILL: no handler, no finally, no teardown
        run.wait(30)
        assert _wait_for(lambda: not _commands(started)), _commands(started)
        assert pids_in(namespaces) == {}
        listing = run_diag("lab", "ls").stdout
        assert any(line.startswith(lab) and "leftover: its run was killed" in line for line in listing.splitlines())
        # The next run offers to clean it; here `lab up --clean-leftovers` of a small lab does it.
        topology = tmp_path / "small.toml"
        topology.write_text(topology_text())
        small = "h" + lab
        cleaned = run_diag("lab", "up", "--clean-leftovers", topology, "--name", small)
        assert cleaned.returncode == 0, cleaned.stderr
        assert lab in cleaned.stderr and "leftover" in cleaned.stderr
        # A lab left up on purpose is no leftover, although the process that built it has exited.
        listing = run_diag("lab", "ls").stdout.splitlines()
        assert any(line.startswith(small + " ") and line.endswith("up") for line in listing), listing
        assert not any(line.startswith(lab + " ") for line in listing)
        assert run_diag("lab", "down", small).returncode == 0
        lab = ""
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
        if lab:
            run_diag("lab", "down", lab)
    namespaces_after, links_after, _ = _host_state()
    assert namespaces_after == namespaces_before or not set(namespaces_after.split()) & set(namespaces)
    assert links_after == links_before


# --- outputs: checked first, atomic, never through a link, never over a file without --force --------------


@pytest.fixture
def unopened_fifo(tmp_path: Path) -> Path:
    """A capture nobody writes: a command that opened it would wait forever, so a quick refusal proves
    the output was checked before any input was read."""
    fifo = tmp_path / "never.fifo"
    os.mkfifo(fifo)
    return fifo


def test_existing_outputs_are_refused_before_any_work(tmp_path: Path, unopened_fifo: Path) -> None:
    existing = tmp_path / "report.json"
    existing.write_text("precious\n")
    one_line_failure(run_diag("analyze", "pcap", "--json", existing, unopened_fifo), "--json", "already exists")
    picture = tmp_path / "ladder.png"
    picture.write_bytes(b"precious")
    one_line_failure(run_diag("analyze", "pcap", "--plot", picture, unopened_fifo), "--plot", "already exists")
    one_line_failure(run_diag("analyze", "pcap", "--plot", tmp_path / "ladder.pdf", unopened_fifo), ".png or .svg")
    one_line_failure(run_diag("analyze", "pcap", "--json", tmp_path / "no" / "r.json", unopened_fifo),
                     "no such directory")
    assert existing.read_text() == "precious\n" and picture.read_bytes() == b"precious"


def test_outputs_never_follow_a_symlink(tmp_path: Path, unopened_fifo: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for option, name in (("--json", "r.json"), ("--plot", "l.png")):
        link = tmp_path / name
        link.symlink_to(victim)
        for force in ([], ["--force"]):
            one_line_failure(run_diag("analyze", "pcap", option, link, *force, unopened_fifo), "symbolic link")
        dangling = tmp_path / f"dangling-{name}"
        dangling.symlink_to(tmp_path / f"nowhere-{name}")
        one_line_failure(run_diag("analyze", "pcap", option, dangling, unopened_fifo), "symbolic link")
        assert not (tmp_path / f"nowhere-{name}").exists()
    assert victim.read_text() == "precious\n"


def test_force_replaces_outputs_atomically(tmp_path: Path, plain_report: dict[str, Any]) -> None:
    report, picture = tmp_path / "report.json", tmp_path / "ladder.png"
    report.write_text("old\n")
    picture.write_bytes(b"old")
    # A hard link to the old files: a write in place would change what it shows, a rename does not.
    keep_report, keep_picture = tmp_path / "old.json", tmp_path / "old.png"
    os.link(report, keep_report)
    os.link(picture, keep_picture)
    result = run_diag("analyze", "pcap", "--json", report, "--plot", picture, "--force", f"pod={SAMPLE}")
    assert result.returncode == 0, result.stderr
    assert report_without_paths(report.read_text()) == plain_report
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert keep_report.read_text() == "old\n" and keep_picture.read_bytes() == b"old"
    assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ladder.png", "old.json", "old.png", "report.json"]


def test_devices_and_pipes_are_written_straight_into(tmp_path: Path, plain_report: dict[str, Any]) -> None:
    # /dev/null, /dev/stdout and a named pipe exist already, but nothing there can be replaced: no --force.
    assert run_diag("analyze", "pcap", "--json", "/dev/null", f"pod={SAMPLE}").returncode == 0
    to_stdout = run_diag("analyze", "pcap", "--json", "/dev/stdout", f"pod={SAMPLE}")
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert '"schema": "diag.report/1"' in to_stdout.stdout
    pipe = tmp_path / "report.fifo"
    os.mkfifo(pipe)
    reader = subprocess.Popen(["cat", str(pipe)], stdout=subprocess.PIPE, text=True)
    result = run_diag("analyze", "pcap", "--json", pipe, f"pod={SAMPLE}")
    received, _ = reader.communicate(timeout=60)
    assert result.returncode == 0, result.stderr
    assert report_without_paths(received) == plain_report
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.fifo"]  # no temporary left beside it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_run_scenario_outputs_are_checked_before_the_lab(tmp_path: Path) -> None:
    require_root()
    before = _host_state()
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "run.json").write_text('{"tool": "diag run-scenario"}\n')
    one_line_failure(run_diag("run-scenario", "--out", previous), "--out", "--force")
    link = tmp_path / "link"
    link.symlink_to(previous)
    one_line_failure(run_diag("run-scenario", "--out", link, "--force"), "symbolic link")
    existing = tmp_path / "report.json"
    existing.write_text("precious\n")
    one_line_failure(run_diag("run-scenario", "--json", existing, "--out", tmp_path / "new"), "already exists")
    assert existing.read_text() == "precious\n" and not (tmp_path / "new").exists()
    assert (previous / "run.json").exists()
    # Each refusal was the only line on stderr: not even the scenario's first progress line, let alone a lab.
    assert _host_state()[1] == before[1]


# --- Memory: a budget that stops a bomb with one line, before the system runs out of memory ---

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
# The child's address space is capped too, so that a budget that failed to hold
# would end in the child's own MemoryError, never in the test machine's OOM killer.
ADDRESS_SPACE_CAP = 4 << 30


def _run_capped(tmp_path: Path, *args: str | Path) -> tuple[int, str, int]:
    """diag run with its address space capped: (exit status, stderr, peak RSS in bytes of that one child)."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))

    errors = tmp_path / "stderr"
    with open(errors, "wb") as stderr:
        child = subprocess.Popen([str(DIAG), *map(str, args)], stdout=subprocess.DEVNULL, stderr=stderr,
                                 preexec_fn=cap)
        # wait4, not RUSAGE_CHILDREN: the peak of this child alone, not of every child so far.
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, errors.read_text(), usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def interpreter_rss(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of an analysis of a small real capture: what Python, numpy, pandas and numba take anyway."""
    status, stderr, peak = _run_capped(tmp_path_factory.mktemp("baseline"), "analyze", "pcap", "-q", SAMPLE)
    assert status == 0, stderr
    return peak


def _gzip_bomb(path: Path, expanded_mib: int) -> None:
    """``expanded_mib`` MiB of empty pcap records, as gzip members of 1 MiB each (deflate's ~1000:1 at best)."""
    member = gzip.compress(struct.pack("<IIII", 1, 0, 0, 0) * 65536, compresslevel=9)
    with open(path, "wb") as out:
        out.write(gzip.compress(PCAP_HEADER))
        for _ in range(expanded_mib):
            out.write(member)


BUDGET = 256 << 20


def test_a_gzip_bomb_stops_at_the_budget_with_one_line(tmp_path: Path, interpreter_rss: int) -> None:
    bomb = tmp_path / "bomb.pcap.gz"
    _gzip_bomb(bomb, 1024)  # 1 GiB of 16-byte records: 64M packets, some 25 GB of tables
    assert bomb.stat().st_size < 3 << 20
    status, stderr, peak = _run_capped(tmp_path, "analyze", "pcap", "-q", "--max-memory", "256M", bomb)
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert str(bomb) in lines[0] and "256 MiB" in lines[0] and "--max-memory" in lines[0]
    assert peak < BUDGET + interpreter_rss, (peak, interpreter_rss)


@pytest.mark.parametrize("command", [("analyze", "pcap", "-q"), ("flows", "--format", "json")])
def test_a_sparse_gigabyte_of_empty_records_is_refused_before_it_is_read(
    tmp_path: Path, interpreter_rss: int, command: tuple[str, ...]
) -> None:
    sparse = tmp_path / "sparse.pcap"
    sparse.write_bytes(PCAP_HEADER)
    subprocess.run(["truncate", "-s", "1G", str(sparse)], check=True)
    status, stderr, peak = _run_capped(tmp_path, *command, "--max-memory", "256M", sparse)
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert str(sparse) in lines[0] and "256 MiB" in lines[0]
    assert peak < BUDGET + interpreter_rss, (peak, interpreter_rss)


def test_a_capture_within_the_budget_is_analyzed_as_without_one() -> None:
    plain = run_diag("analyze", "pcap", "--json", "-", SAMPLE)
    budgeted = run_diag("analyze", "pcap", "--json", "-", "--max-memory", "1.5GiB", SAMPLE)
    assert plain.returncode == budgeted.returncode == 0, budgeted.stderr
    assert json.loads(plain.stdout) == json.loads(budgeted.stdout)


@pytest.mark.parametrize("value", ["lots", "2X", "-1G", "0", "1e9", "G"])
def test_a_bad_max_memory_is_one_line(value: str) -> None:
    one_line_failure(run_diag("analyze", "pcap", f"--max-memory={value}", SAMPLE), "--max-memory", repr(value))


def test_sizes_are_read_as_documented() -> None:
    from diag.memory import available_memory, parse_size

    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("300000000") == 300_000_000
    assert available_memory("MemTotal: 8000 kB\nMemAvailable:    4000 kB\n", "max\n") == 4000 * 1024
    assert available_memory("MemAvailable:    4000 kB\n", "1048576\n") == 1 << 20
    assert available_memory("", None) is None


def test_the_cgroup_limit_is_found_on_v2_and_on_v1_memory_controllers(tmp_path: Path) -> None:
    """The default budget is half the cgroup's limit when lower than the memory available: cgroup v2's
    ``memory.max``, or v1's ``memory.limit_in_bytes`` where the memory controller is mounted as v1 (hosts
    with both, where /proc/self/cgroup's first line is another controller's)."""
    from diag.memory import cgroup_limit_files

    v2 = cgroup_limit_files("0::/user.slice/job\n", tmp_path)
    assert v2 == [tmp_path / "user.slice/job/memory.max", tmp_path / "unified/user.slice/job/memory.max"]
    hybrid = "9:name=systemd:/\n4:cpu,memory:/jobs/one\n1:cpu:/\n0::/\n"
    assert cgroup_limit_files(hybrid, tmp_path) == [
        tmp_path / "memory/jobs/one/memory.limit_in_bytes",
        tmp_path / "memory/memory.limit_in_bytes",
        tmp_path / "memory.max",
        tmp_path / "unified/memory.max",
    ]
    assert cgroup_limit_files("", tmp_path) == [] and cgroup_limit_files("garbage\n", tmp_path) == []


# --- The report JSON stays proportionate: flow rows capped, problems first ---

def _tcp_record(index: int, src: int, dst: int, sport: int, dport: int, flags: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0 if flags == 0x02 else 2001, 0x50, flags, 1000, 0, 0)
    packet = eth + ip + tcp
    header = struct.pack("<IIII", 1_700_000_000 + index // 100_000, index % 100_000 * 10, len(packet), len(packet))
    return header + packet


def _many_flows_capture(path: Path, healthy: int, reset: int) -> None:
    """``healthy`` handshakes (SYN, SYN-ACK, ACK), then ``reset`` connections refused with a RST, last in the file."""
    client, server = 0xC0000201, 0xC6336402  # 192.0.2.1, 198.51.100.2
    records = [PCAP_HEADER]
    index = 0
    for flow in range(healthy + reset):
        sport, dport = 1024 + flow % 60000, 80 + flow // 60000
        steps = [(client, server, sport, dport, 0x02)]
        if flow < healthy:
            steps += [(server, client, dport, sport, 0x12), (client, server, sport, dport, 0x10)]
        else:
            steps += [(server, client, dport, sport, 0x14)]
        for src, dst, a, b, flags in steps:
            records.append(_tcp_record(index, src, dst, a, b, flags))
            index += 1
    path.write_bytes(b"".join(records))


def test_json_flows_are_capped_problems_first_and_all_with_flows_all(tmp_path: Path) -> None:
    from diag.report.flowcap import FLOW_LIMIT

    capture = tmp_path / "many.pcap"
    _many_flows_capture(capture, healthy=FLOW_LIMIT + 200, reset=5)
    capped = run_diag("analyze", "pcap", "-q", "--json", "-", capture)
    assert capped.returncode == 0, capped.stderr
    document = json.loads(capped.stdout)
    assert len(document["flows"]) == FLOW_LIMIT
    assert document["flows_truncated"] == 205
    assert sum(1 for flow in document["flows"] if flow["rsts"]) == 5  # the last five rows of the table, kept
    every = run_diag("analyze", "pcap", "-q", "--flows", "all", "--json", "-", capture)
    assert every.returncode == 0, every.stderr
    full = json.loads(every.stdout)
    assert len(full["flows"]) == FLOW_LIMIT + 205 and full["flows_truncated"] == 0
    kept = {(flow["orig"], flow["resp"]) for flow in document["flows"]}
    assert kept <= {(flow["orig"], flow["resp"]) for flow in full["flows"]}
    assert full["findings"] == document["findings"]  # the cap touches the flow rows, nothing else


def test_plot_as_a_user_without_a_home_warns_nothing_and_reuses_one_config_dir(shared_dir: Path) -> None:
    capture = shared_dir / "plot.pcapng"
    shutil.copy(SAMPLE, capture)
    capture.chmod(0o644)
    pictures = shared_dir / "plots"
    pictures.mkdir()
    os.chown(pictures, NOBODY, NOBODY)
    before = set(Path(tempfile.gettempdir()).glob("matplotlib-*"))
    for run in range(2):
        picture = pictures / f"ladder-{run}.svg"
        result = _as_nobody("analyze", "pcap", "-q", "--plot", picture, capture)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # matplotlib's 'created a temporary cache directory' warning is gone
        assert picture.read_text().lstrip().startswith("<?xml")
    config = Path("/var/tmp") / f"diag-{NOBODY}" / "matplotlib"
    status = config.lstat()
    assert stat.S_ISDIR(status.st_mode) and status.st_uid == NOBODY and stat.S_IMODE(status.st_mode) == 0o700
    # No per-run directory left behind by matplotlib's fallback.
    assert set(Path(tempfile.gettempdir()).glob("matplotlib-*")) == before
