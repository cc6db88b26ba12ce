"""Analyzing captures on a Dask cluster (``--cluster local[:N] | tcp://HOST:PORT``, ``DIAG_CLUSTER``).

Reading, dissecting and summarising is most of an analysis's time and most
of its memory, and correlation and diagnosis grow with the candidates, so
every stage runs on the workers: ``diag.taskgraph`` is the graph (a task
per file, per point, per hash or connection partition), and this module
runs it (``DaskRunner``: one partition per worker) and connects to the
cluster. The client receives counts, per pair of points a few numbers for
the clock, the findings and the flow rows the report shows; the report is
the one the single process gets from every packet, whatever the number of
workers. The outputs that read the tables themselves (``--export``,
``--plot``, ``--flow``, ``--flows all``) gather every point's candidates and
flow table instead (``analyze_on(whole_tables=True)``), which the client
correlates; their connection partitions are still diagnosed on the workers
(``diagnose_on``).

Files are read where they are: each worker opens the path itself, so every
worker must see the captures at the same absolute path (a shared file
system, or a ``LocalCluster`` on this machine). Standard input and pipes
cannot be shared that way and are refused.

When a worker dies mid-run, the scheduler gives its tasks to another worker
and computes again what the dead one held (``distributed.scheduler.allowed-failures``
times); a point whose files keep killing workers ends in one line naming them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diag.capture.location import Location, S3Object
from diag.capture.source import is_file_quietly
from diag.errors import DiagError

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client, Future

    from diag.capture.filter import Node as FilterNode
    from diag.correlate import Correlation
    from diag.report import Finding, Report
    from diag.stages import Diagnoser, ProgressHook
    from diag.taskgraph import PointCandidates

# The analysis itself (diag.taskgraph and what it imports) is loaded when a cluster is used: the command line
# parses --cluster and reaches the scheduler before it pays for it.

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


def parse_cluster(text: str, given_as: str = "--cluster") -> ClusterSpec:
    """``local``, ``local:N`` or ``tcp://HOST:PORT``; anything else is a ``DiagError`` naming the value and
    where it came from (``given_as``: the option, or ``$DIAG_CLUSTER`` when the option was not given)."""
    local = LOCAL.match(text)
    if local:
        workers = int(local["workers"]) if local["workers"] else None
        if workers is not None and not 1 <= workers <= 256:
            raise DiagError(f"{given_as} {text}: the number of local workers must be 1 to 256")
        return ClusterSpec(workers=workers)
    address = ADDRESS.match(text)
    if address and 1 <= int(address["port"]) <= 65535:
        return ClusterSpec(address=text)
    raise DiagError(f"{given_as} {text!r}: expected local, local:N or tcp://HOST:PORT")


def cluster_from(option: str | None) -> ClusterSpec | None:
    """The cluster the command line asks for: ``--cluster``, else ``$DIAG_CLUSTER``, else none (one process).

    A scheduler's address must answer a TCP connection within ``CONNECT_TIMEOUT_S`` (``DiagError`` otherwise),
    so an unreachable one is said in one line before any capture is read.
    """
    text = option if option is not None else os.environ.get(ENVIRONMENT, "")
    # Said as the user gave it: someone who typed no --cluster has to be told the variable set it.
    given_as = "--cluster" if option is not None else f"${ENVIRONMENT}"
    spec = parse_cluster(text.strip(), given_as) if text.strip() else None
    if spec is not None and spec.address is not None:
        try:
            _probe(spec.address)
        except OSError as error:
            raise DiagError(f"{given_as} {spec.address}: cannot reach the scheduler ({_reason(error)})") from None
    return spec


def check_shareable(pairs: Sequence[tuple[str, Location]]) -> None:
    """Refuse inputs a worker cannot open by path (standard input, pipes), before a cluster is started.

    An ``s3://`` object is opened by the worker that reads it, from the URL alone.
    """
    for _name, path in pairs:
        if isinstance(path, S3Object):
            continue
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
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.CRITICAL,  # a failed task is reported once, as one line, by the command
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        # A plain TCP connection first: refused or silent, it says so at once, where Dask's client retries until
        # its timeout and takes as long again to give up.
        _probe(spec.address)
        client = Client(spec.address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise DiagError(f"--cluster {spec.address}: cannot reach the scheduler ({_reason(error)})") from None
    with client:
        yield client


def _probe(address: str) -> None:
    """Open and close a TCP connection to ``tcp://HOST:PORT`` within ``CONNECT_TIMEOUT_S``; ``OSError`` if none."""
    match = ADDRESS.match(address)
    assert match is not None, address
    host = match["host"].strip("[]")
    with socket.create_connection((host, int(match["port"])), timeout=CONNECT_TIMEOUT_S):
        pass


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def analyze_on(
    client: Client,
    pairs: Sequence[tuple[str, Location]],
    progress: ProgressHook | None = None,
    packet_filter: str | FilterNode | None = None,
    whole_tables: bool = False,
) -> Report:
    """``diag.analysis.analyze`` with every stage on ``client``'s workers (``diag.taskgraph``).

    The report holds no packets and only the flow rows the text and the capped JSON show (``Report.flow_digest``
    counts the rest). ``whole_tables`` instead gathers every point's candidate packets and whole flow table to
    this process, which correlates them (the connections are still diagnosed on the workers): what ``--export``,
    ``--plot``, ``--flow`` and ``--flows all`` need, at the cost of the client's memory.
    """
    from diag.taskgraph import gather_candidates, report_of_candidates, run_analysis

    runner = DaskRunner(client)
    try:
        if whole_tables:
            return report_of_candidates(gather_candidates(runner, pairs, progress, packet_filter), progress,
                                        diagnose_on(client))  # fmt: skip
        return run_analysis(runner, pairs, progress, packet_filter)
    finally:
        runner.close()


def reduce_on(
    client: Client,
    pairs: Sequence[tuple[str, Location]],
    progress: ProgressHook | None = None,
    packet_filter: str | FilterNode | None = None,
) -> list[PointCandidates]:
    """Every point's candidates and whole flow table, computed on ``client``'s workers, in point order."""
    from diag.taskgraph import gather_candidates

    runner = DaskRunner(client)
    try:
        return gather_candidates(runner, pairs, progress, packet_filter)
    finally:
        runner.close()


class DaskRunner:
    """``diag.taskgraph.Runner`` on a Dask client: one partition per worker, each task keyed by its kind and run."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.run = uuid.uuid4().hex
        self.owner: dict[str, str] = {}  # task key -> what to name if it keeps killing workers
        self.futures: list[Future[Any]] = []
        # Fixed for the run: a worker that dies and comes back must not change how the shuffles are cut.
        self._partitions = max(1, len(client.scheduler_info().get("workers", {})))

    def partitions(self) -> int:
        return self._partitions

    def submit(self, function: Callable[..., Any], *args: Any, name: str, blame: str) -> Future[Any]:
        key = f"diag-{name}-{len(self.futures)}-{self.run}"
        self.owner[key] = blame
        future: Future[Any] = self.client.submit(function, *args, key=key, pure=False)
        self.futures.append(future)
        return future

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return _wait(self.client, handles, self.owner)

    def settle(self, handles: Sequence[Any]) -> None:
        _wait(self.client, handles, self.owner, fetch=False)

    def close(self) -> None:
        """Let go of every result the run left on the workers."""
        self.client.cancel(self.futures)


def diagnose_on(client: Client) -> Diagnoser:
    """A diagnoser that cuts the correlated candidates into one connection partition per worker
    (``diag.partitions``), diagnoses each on a worker and merges their findings in the single-process order."""
    from diag.partitions import cut_part, diagnose_part, merge_findings, partition_rows

    def diagnose(packets: pd.DataFrame, corr: Correlation) -> list[Finding]:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        run = uuid.uuid4().hex
        futures = []
        for number, rows in enumerate(partition_rows(packets, corr, workers)):
            part, part_corr = cut_part(packets, corr, rows)
            futures.append(
                client.submit(diagnose_part, part, part_corr, rows, key=f"diag-diagnose-{number}-{run}", pure=False)
            )
        owner = {str(future.key): "the diagnosis of a partition of connections" for future in futures}
        try:
            return merge_findings(_wait(client, futures, owner))
        finally:
            client.cancel(futures)

    return diagnose


def _wait(client: Client, futures: Sequence[Future[Any]], owner: dict[str, str], fetch: bool = True) -> list[Any]:
    """The futures' results in their order (``fetch``), or only their end, the results left on the workers;
    a task that kept killing workers is one line naming its files, any other failure its own error."""
    from distributed import KilledWorker, wait

    try:
        if fetch:
            return list(client.gather(list(futures)))
        wait(list(futures))
        for future in futures:
            if future.status == "error":
                future.result()  # raises the task's exception here
        return []
    except KilledWorker as error:
        key = str(getattr(error, "task", "") or (error.args[0] if error.args else ""))
        what = owner.get(key, "a capture")
        raise DiagError(f"{what}: every worker that worked on it died; analyze it without --cluster") from None


@contextlib.contextmanager
def cluster_client(spec: ClusterSpec | None, pairs: Sequence[tuple[str, Location]]) -> Iterator[Client | None]:
    """A client of the cluster ``spec`` names (None: analyze in this process), connected for the block."""
    if spec is None:
        yield None
        return
    check_shareable(pairs)
    with connect(spec) as client:
        yield client
