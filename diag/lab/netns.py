"""Low-level namespace operations: enter, configure, find processes, delete.

Work inside a namespace runs in a short-lived thread that joins the namespace
with setns(2) and exits when done: the process itself (and every other
thread) stays in its own namespace, and anything the thread starts (a socket,
a child process) belongs to the lab's namespace. Configuring many namespaces
this way costs a thread each instead of an ``ip netns exec`` each.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from diag.errors import LabError

NETNS_DIR = Path("/run/netns")
RESOLVER_DIR = Path("/etc/netns")
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # set transmit checksum offload (the legacy "tx" switch of ethtool -K)
PARALLEL = 8

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> Path:
    return NETNS_DIR / netns


def existing_namespaces() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _enter(netns: str) -> None:
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise LabError(f"cannot enter namespace {netns}: {os.strerror(code)}")
    finally:
        os.close(fd)


def in_namespaces(jobs: Iterable[tuple[str, Callable[[], T]]], parallel: int = PARALLEL) -> list[T]:
    """Run each (namespace, function) in its own thread inside that namespace; results in order.

    The first error (in job order) is raised once every thread has finished.
    """
    jobs = list(jobs)
    results: list[T | None] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)
    slots = threading.BoundedSemaphore(parallel)

    def work(index: int, netns: str, function: Callable[[], T]) -> None:
        try:
            _enter(netns)
            results[index] = function()
        except BaseException as error:  # handed to the caller below
            errors[index] = error
        finally:
            slots.release()
            # The thread ends here, still inside the namespace: nothing else ever runs on it.

    threads = []
    for index, (netns, function) in enumerate(jobs):
        slots.acquire()
        thread = threading.Thread(target=work, args=(index, netns, function), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return [result for result in results]  # type: ignore[misc]


def write_sysctls(sysctls: dict[str, str]) -> None:
    """Write net.* sysctls of the calling thread's namespace through /proc/sys."""
    for key, value in sysctls.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            path.write_text(value)
        except FileNotFoundError:
            raise LabError(f"kernel feature missing: no sysctl {key} (is netfilter conntrack built in?)") from None
        except OSError as error:
            raise LabError(f"cannot set {key}={value}: {error.strerror}") from None


def run_tool(command: list[str], input_text: str, what: str) -> None:
    """Run a configuration tool (in the calling thread's namespace) and fail with its first error line."""
    try:
        result = subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LabError(f"{command[0]} not found: install it (./quickstart installs everything)") from None
    if result.returncode != 0:
        message = " ".join(line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip())
        raise LabError(f"{what}: {command[0]} failed: {message or '(no message)'}")


def disable_tx_checksum_offload(interface: str) -> None:
    """``ethtool -K IF tx off`` through the ioctl: veths then put real checksums in what tcpdump sees."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    request = struct.pack("16sP", interface.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
        except OSError as error:
            raise LabError(f"cannot turn off tx checksum offload on {interface}: {error.strerror}") from None


def write_resolver(netns: str) -> None:
    """An empty resolv.conf that ``ip netns exec`` mounts over /etc/resolv.conf: no name server, no DNS."""
    directory = RESOLVER_DIR / netns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text("# diag lab: no name server; everything in the lab is numeric\n")


def remove_resolver(netns: str) -> None:
    directory = RESOLVER_DIR / netns
    for entry in ("resolv.conf",):
        (directory / entry).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno != errno.ENOTEMPTY:
            raise


def namespace_inode(netns: str) -> int | None:
    try:
        return netns_path(netns).stat().st_ino
    except FileNotFoundError:
        return None


def pids_in(namespaces: Iterable[str]) -> dict[int, str]:
    """Every process whose network namespace is one of ``namespaces``: pid -> namespace."""
    inodes = {inode: netns for netns in namespaces if (inode := namespace_inode(netns)) is not None}
    found: dict[int, str] = {}
    if not inodes:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry.name}/ns/net").st_ino
        except OSError:
            continue
        if inode in inodes and int(entry.name) != os.getpid():
            found[int(entry.name)] = inodes[inode]
    return found


def kill_processes_in(namespaces: Iterable[str], grace: float = 0.5) -> None:
    """SIGTERM every process in the namespaces, then SIGKILL what is left after ``grace`` seconds."""
    namespaces = list(namespaces)
    pids = pids_in(namespaces)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = {pid: ns for pid, ns in pids.items() if _alive(pid)}
    for pid in pids_in(namespaces):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ip_batch(lines: list[str], what: str, netns: str | None = None) -> None:
    command = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    run_tool(command, "\n".join(lines) + "\n", what)


def delete_namespaces(namespaces: Iterable[str]) -> None:
    """Unmount and remove the namespaces in one ``ip`` call; their veths go with them."""
    namespaces = list(namespaces)
    present = [netns for netns in namespaces if netns_path(netns).exists()]
    if present:
        # -force: carry on past a namespace someone else removed meanwhile; what is left is checked below.
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns delete {ns}\n" for ns in present),
                       capture_output=True, text=True, timeout=60)
    for netns in namespaces:
        remove_resolver(netns)
    left = [netns for netns in present if netns_path(netns).exists()]
    if left:
        raise LabError(f"could not delete namespaces: {', '.join(left)}")
