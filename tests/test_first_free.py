"""``diag.analysis._FirstFree``: the linking work either the flow table's thread or the correlation's does,
whichever is free first. It runs once, its result or its error reaches the thread that waits."""

from __future__ import annotations

import threading

import pytest

from diag.analysis import _FirstFree
from diag.diagnose.connections import PacketLinks


def test_the_work_runs_once_however_many_threads_offer_to_run_it() -> None:
    calls: list[str] = []
    done = object()

    def work() -> PacketLinks:
        calls.append(threading.current_thread().name)
        return done  # type: ignore[return-value]

    shared = _FirstFree(work)
    start = threading.Barrier(4)

    def offer() -> None:
        start.wait()
        shared.run_unless_taken()

    threads = [threading.Thread(target=offer, name=f"offer-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(calls) == 1 and shared.result() is done and len(calls) == 1


def test_an_error_of_the_work_is_raised_in_the_thread_that_waits_not_in_the_one_that_ran_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def work() -> PacketLinks:
        raise ValueError("no links")

    uncaught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_value))
    shared = _FirstFree(work)
    ran = threading.Thread(target=shared.run_unless_taken)
    ran.start()
    ran.join(timeout=60)
    assert uncaught == []  # the correlation's thread goes on to its tables
    assert shared._done.done()  # the error is kept for the waits (else they would wait forever, not fail)
    with pytest.raises(ValueError, match="no links"):
        shared.result()
    with pytest.raises(ValueError, match="no links"):  # every wait, not only the first
        shared.result()


def test_a_wait_with_nobody_having_run_it_runs_it_rather_than_waiting_forever() -> None:
    calls: list[int] = []

    def work() -> PacketLinks:
        calls.append(1)
        return {}  # type: ignore[return-value]

    shared = _FirstFree(work)
    assert shared.result() == {} and calls == [1]
    shared.run_unless_taken()
    assert calls == [1]
