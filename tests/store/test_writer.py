"""GroupCommitWriter: group commit from threads and asyncio tasks, failures, shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
from pathlib import Path

import pytest

from node.errors import StoreClosedError, StoreError, StoreFullError, StoreIOError
from node.model import StageOutcome
from node.store.reader import StoreReader
from node.store.store import Store
from node.store.writer import GroupCommitWriter

from .conftest import MakeRequest, build_request

WAIT = 10.0
"""Seconds any single future may take before a test fails instead of hanging."""


def test_concurrent_group_commit_from_16_threads(db_path: Path) -> None:
    commits: list[tuple[float, int]] = []
    writer = GroupCommitWriter(db_path, on_commit=lambda seconds, n: commits.append((seconds, n)))
    writer.start()
    results: dict[str, StageOutcome] = {}
    lock = threading.Lock()

    def connector(thread_no: int) -> None:
        futures = {f"T{thread_no}-{i}": writer.submit(build_request(f"T{thread_no}-{i}")) for i in range(200)}
        outcomes = {control_id: f.result(WAIT) for control_id, f in futures.items()}
        with lock:
            results.update(outcomes)

    threads = [threading.Thread(target=connector, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.stop()

    assert len(results) == 3200
    assert not any(o.duplicate for o in results.values())
    assert len({o.message_id for o in results.values()}) == 3200
    assert 0 < writer.commits < 3200
    assert len(commits) == writer.commits
    assert sum(n for _, n in commits) == 3200
    assert all(seconds >= 0 for seconds, _ in commits)
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 3200}
        for control_id, outcome in list(results.items())[::97]:  # each waiter got its own row
            row = reader.get(outcome.message_id)
            assert row is not None
            assert row.control_id == control_id
        assert reader.integrity_check() == "ok"


async def test_asyncio_stage_from_many_tasks(writer: GroupCommitWriter, monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal wakeups
        wakeups += 1
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    requests = [build_request(f"A{i}") for i in range(1000)]
    outcomes = await asyncio.gather(*(writer.stage(r) for r in requests))

    assert len({o.message_id for o in outcomes}) == 1000
    assert not any(o.duplicate for o in outcomes)
    assert wakeups == writer.commits < 1000  # one wake-up of the loop per commit, not per request
    resend = await writer.stage(requests[500])
    assert resend == StageOutcome(outcomes[500].message_id, True, requests[500].ack)


async def test_cancelled_stage_does_not_break_the_writer(writer: GroupCommitWriter) -> None:
    tasks = [asyncio.create_task(writer.stage(build_request(f"X{i}"))) for i in range(50)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(d, StageOutcome) for d in done[1::2])
    assert (await writer.stage(build_request("AFTER"))).duplicate is False


def test_cancelled_future_is_not_staged(writer: GroupCommitWriter, make_request: MakeRequest) -> None:
    gate = threading.Event()
    blocker = writer.call(lambda store: gate.wait(WAIT))  # holds the writer thread between batches
    cancelled = writer.submit(make_request("CANCELLED"))
    kept = writer.submit(make_request("KEPT"))
    assert cancelled.cancel()
    gate.set()
    assert blocker.result(WAIT) is True
    outcome = kept.result(WAIT)
    assert cancelled.cancelled()
    assert [m.control_id for m in writer.call(lambda store: store.messages()).result(WAIT)] == ["KEPT"]
    assert outcome.message_id == 1


def test_store_full_fails_the_batch_and_the_writer_keeps_running(db_path: Path) -> None:
    writer = GroupCommitWriter(db_path, max_bytes=0)  # below the fresh file's size: no growth at all
    writer.start()
    try:
        failed = [writer.submit(build_request(f"F{i}", raw=bytes(20_000))) for i in range(5)]
        for future in failed:
            with pytest.raises(StoreFullError):
                future.result(WAIT)
        assert writer.fatal_error is None
        writer.set_max_bytes(None)  # space came back
        outcome = writer.submit(build_request("F0", raw=bytes(20_000))).result(WAIT)
        assert outcome.duplicate is False
    finally:
        writer.stop()
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 1}


class FailingCommitStore(Store):
    """A real Store whose COMMIT fails like a failed fsync: it signals `entered`, waits for `gate`, raises."""

    entered = threading.Event()
    gate = threading.Event()

    def _commit(self) -> None:
        type(self).entered.set()
        assert type(self).gate.wait(WAIT)
        raise sqlite3.OperationalError("disk I/O error")


def test_io_error_fails_waiters_and_the_writer_becomes_fatal(db_path: Path) -> None:
    FailingCommitStore.entered = threading.Event()
    FailingCommitStore.gate = threading.Event()
    fatal_calls: list[BaseException] = []
    writer: GroupCommitWriter

    def on_fatal(exc: BaseException) -> None:
        fatal_calls.append(exc)
        writer.stop()  # the node's reaction; must not deadlock in the writer thread

    writer = GroupCommitWriter(db_path, on_fatal=on_fatal, store_factory=FailingCommitStore.open)
    writer.start()
    in_commit = writer.submit(build_request("IN-COMMIT"))
    assert FailingCommitStore.entered.wait(WAIT)
    queued = writer.submit(build_request("QUEUED"))
    FailingCommitStore.gate.set()

    with pytest.raises(StoreIOError):
        in_commit.result(WAIT)
    with pytest.raises(StoreClosedError):
        queued.result(WAIT)
    writer.stop()
    assert isinstance(writer.fatal_error, StoreIOError)
    assert len(fatal_calls) == 1
    assert fatal_calls[0] is writer.fatal_error
    with pytest.raises(StoreClosedError) as later:
        writer.submit(build_request("LATER"))
    assert later.value.__cause__ is writer.fatal_error
    with pytest.raises(StoreClosedError):
        asyncio.run(writer.stage(build_request("LATER-ASYNC")))
    with StoreReader(db_path) as reader:
        assert reader.counts() == {}


def test_stop_commits_everything_submitted(db_path: Path) -> None:
    writer = GroupCommitWriter(db_path, max_batch=7)
    writer.start()
    futures = [writer.submit(build_request(f"S{i}")) for i in range(500)]
    writer.stop()
    assert all(f.done() for f in futures)
    assert len({f.result().message_id for f in futures}) == 500
    assert writer.commits >= 500 // 7
    with pytest.raises(StoreClosedError):
        writer.submit(build_request())
    writer.stop()  # idempotent
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 500}


def test_submit_before_start_is_refused(db_path: Path) -> None:
    writer = GroupCommitWriter(db_path)
    with pytest.raises(StoreClosedError, match="not started"):
        writer.submit(build_request())
    writer.stop()


def test_start_raises_the_open_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    writer = GroupCommitWriter(tmp_path / "file" / "store.db")
    with pytest.raises(StoreError):
        writer.start()
    with pytest.raises(StoreClosedError):
        writer.submit(build_request())
    writer.stop()


def test_reader_sees_counts_while_the_writer_writes(writer: GroupCommitWriter, db_path: Path) -> None:
    total = 2000
    done = threading.Event()

    def produce() -> None:
        for chunk in range(0, total, 100):
            futures = [writer.submit(build_request(f"R{i}")) for i in range(chunk, chunk + 100)]
            concurrent.futures.wait(futures, WAIT)
        done.set()

    producer = threading.Thread(target=produce)
    with StoreReader(db_path) as reader:
        producer.start()
        seen = [0]
        while not done.is_set():
            seen.append(reader.counts().get(("adt", "staged"), 0))
            assert reader.database_bytes() > 0
        producer.join()
        seen.append(reader.counts()[("adt", "staged")])
    assert seen == sorted(seen)
    assert seen[-1] == total
