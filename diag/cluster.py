"""Reading captures on a Dask cluster (``--cluster local[:N] | tcp://HOST:PORT``, ``DIAG_CLUSTER``).

Reading and dissecting is most of an analysis's time and it is per file, so
it is what goes to the workers: one task per file runs
``diag.analysis.read_file`` and sends back the packet table and its
``CaptureInfo`` (pickled pandas). The client then puts each point's files in
time order, correlates and diagnoses exactly as the single-process path
does, with the same code. Tasks are submitted and gathered in the order of
the (name, path) pairs, so the report does not depend on how many workers
there are or which one finished first.

Files are read where they are: each worker opens the path itself, so every
worker must see the captures at the same absolute path (a shared file
system, or a ``LocalCluster`` on this machine). Standard input and pipes
cannot be shared that way and are refused.

When a worker dies mid-task, the scheduler gives the task to another worker
(``distributed.scheduler.allowed-failures`` times); a file that keeps killing
workers ends in one line naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from diag.analysis import CaptureReader, ProgressHook, assemble_points, read_file
from diag.capture.source import is_file_quietly
from diag.errors import DiagError

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from diag.capture.info import CaptureInfo

ENVIRONMENT = "DIAG_CLUSTER"
# How long to wait for a scheduler before giving up (the contract: one line within 10 s).
CONNECT_TIMEOUT_S = 3
ADDRESS = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")
LOCAL = re.compile(r"^local(?::(?P<workers>\d+))?$")


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: a LocalCluster of ``workers`` processes (None: one per CPU), or a scheduler's address."""

    address: str | None = None
    workers: int | None = None

    def __str__(self) -> str:
        if self.address:
            return self.address
        return f"local:{self.workers}" if self.workers else "local"


def parse_cluster(text: str) -> ClusterSpec:
    """``local``, ``local:N`` or ``tcp://HOST:PORT``; anything else is a ``DiagError`` naming the value."""
    local = LOCAL.match(text)
    if local:
        workers = int(local["workers"]) if local["workers"] else None
        if workers is not None and not 1 <= workers <= 256:
            raise DiagError(f"--cluster {text}: the number of local workers must be 1 to 256")
        return ClusterSpec(workers=workers)
    address = ADDRESS.match(text)
    if address and 1 <= int(address["port"]) <= 65535:
        return ClusterSpec(address=text)
    raise DiagError(f"--cluster {text!r}: expected local, local:N or tcp://HOST:PORT")


def cluster_from(option: str | None) -> ClusterSpec | None:
    """The cluster the command line asks for: ``--cluster``, else ``$DIAG_CLUSTER``, else none (one process)."""
    text = option if option is not None else os.environ.get(ENVIRONMENT, "")
    return parse_cluster(text.strip()) if text.strip() else None


def check_shareable(pairs: Sequence[tuple[str, Path]]) -> None:
    """Refuse inputs a worker cannot open by path (standard input, pipes), before a cluster is started."""
    for _name, path in pairs:
        if str(path) == "-" or not is_file_quietly(path):
            if str(path) != "-" and not os.path.lexists(path):
                raise DiagError(f"{path}: no such capture file")
            raise DiagError(f"{path}: --cluster reads regular files where they are; read pipes without --cluster")


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Client]:
    """A client of the cluster ``spec`` names; a LocalCluster started here is torn down on the way out."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DiagError("--cluster needs dask.distributed: pip install 'diag[cluster]'") from None
    # Dask logs every retry and shutdown step at INFO/WARNING; the command's own lines are what the user reads.
    for logger in ("distributed", "tornado"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    if spec.address is None:
        workers = spec.workers or os.cpu_count() or 1
        # Loopback only (the scheduler's HTTP endpoint too, on a free port): a local cluster is never reachable
        # from the network, and two of them on one machine do not fight over 8787.
        with LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        ) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(spec.address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise DiagError(f"--cluster {spec.address}: cannot reach the scheduler ({_reason(error)})") from None
    with client:
        yield client


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def read_on(client: Client) -> CaptureReader:
    """A ``reader`` for ``diag.analysis.analyze`` that reads every file on ``client``'s workers."""

    def read(
        pairs: Sequence[tuple[str, Path]], progress: ProgressHook | None
    ) -> tuple[list[pd.DataFrame], list[CaptureInfo]]:
        workers = len(client.scheduler_info().get("workers", {}))
        stage = progress("read", f"{len(pairs)} files on {workers} Dask workers") if progress else None
        with stage or contextlib.nullcontext():
            files = read_files(client, pairs)
        return assemble_points([name for name, _ in pairs], files)

    return read


def read_files(client: Client, pairs: Sequence[tuple[str, Path]]) -> list[tuple[pd.DataFrame, CaptureInfo]]:
    """Every file read on a worker, in the order of ``pairs`` (whatever order the workers finish in)."""
    from distributed import KilledWorker

    # Workers open absolute paths (their working directory is not ours); the report keeps the path as given.
    futures = [
        client.submit(read_file, name, path.absolute(), key=f"diag-read-{position}-{uuid.uuid4().hex}", pure=False)
        for position, (name, path) in enumerate(pairs)
    ]
    files = []
    try:
        for (_name, path), future in zip(pairs, futures, strict=True):
            try:
                table, info = future.result()
            except KilledWorker:
                raise DiagError(f"{path}: every worker that read this file died; read it without --cluster") from None
            files.append((table, replace(info, path=str(path), files=(str(path),))))
    finally:
        client.cancel(futures)
    return files


@contextlib.contextmanager
def cluster_reader(spec: ClusterSpec | None, pairs: Sequence[tuple[str, Path]]) -> Iterator[CaptureReader | None]:
    """The reader ``analyze`` should use for ``spec`` (None: read in this process), connected for the block."""
    if spec is None:
        yield None
        return
    check_shareable(pairs)
    with connect(spec) as client:
        yield read_on(client)
