"""GroupCommitWriter inline commits: one asyncio task staging alone commits in the event-loop thread,
with the same outcomes, errors and hooks as a batch of one in the writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

import node.store.writer as writer_module
from node.errors import StoreClosedError, StoreFullError, StoreIOError
from node.store.reader import StoreReader
from node.store.store import Store
from node.store.writer import GroupCommitWriter

from .conftest import build_request

WAIT = 10.0


@pytest.fixture(autouse=True)
def _no_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline from the second request of a task on (no 20 ms / 8-request streak to wait for)."""
    monkeypatch.setattr(writer_module, "SOLO_WINDOW_S", 0.0)
    monkeypatch.setattr(writer_module, "SOLO_MESSAGES", 1)


async def _until_idle(writer: GroupCommitWriter) -> None:
    """Until the writer thread waits for work (right after a batch it may still be finishing it; a
    request arriving then is queued, correctly, instead of committed inline)."""
    for _ in range(int(WAIT / 0.001)):
        if writer._idle:
            return
        await asyncio.sleep(0.001)
    pytest.fail("the writer thread never became idle")


def _count_wakeups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loop = asyncio.get_running_loop()
    wakeups = [0]
    original = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        wakeups[0] += 1
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    return wakeups


async def test_one_task_alone_commits_inline(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commits: list[tuple[str, int]] = []
    writer = GroupCommitWriter(db_path, on_commit=lambda s, n: commits.append((threading.current_thread().name, n)))
    writer.start()
    try:
        first = await writer.stage(build_request("I0"))  # no streak yet: through the writer thread
        await _until_idle(writer)
        wakeups = _count_wakeups(monkeypatch)
        outcomes = [first] + [await writer.stage(build_request(f"I{i}")) for i in range(1, 30)]
        await asyncio.sleep(0)  # on_commit of an inline commit runs soon after, in the loop
        assert len({o.message_id for o in outcomes}) == 30
        assert not any(o.duplicate for o in outcomes)
        assert wakeups[0] == 0  # the loop never waited for the writer thread
        assert writer.commits == 30
        assert commits[0] == ("store-writer", 1)
        assert commits[1:] == [(threading.current_thread().name, 1)] * 29
        resend = await writer.stage(build_request("I7"))
        assert resend.duplicate and resend.message_id == outcomes[7].message_id
    finally:
        writer.stop()
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 30}


async def test_tasks_staging_together_share_commits_in_the_writer_thread(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = GroupCommitWriter(db_path)
    writer.start()
    try:
        wakeups = _count_wakeups(monkeypatch)

        async def sender(index: int) -> None:
            for n in range(20):
                await writer.stage(build_request(f"T{index}-{n}"))

        await asyncio.gather(*(sender(i) for i in range(4)))
        assert writer.commits < 80  # group commit: inline commits would be one per request
        assert wakeups[0] >= writer.commits - 4  # (a streak may start while another task is idle)
    finally:
        writer.stop()
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 80}


class _FailAfter(Store):
    """A real Store whose COMMIT fails like a failed fsync from the `fail_after`-th commit on."""

    fail_after = 3
    commits = 0
    closed_in: list[str] = []
    failed_in = ""

    def _commit(self) -> None:
        if type(self).commits >= type(self).fail_after:
            type(self).failed_in = threading.current_thread().name
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()
        type(self).commits += 1

    def close(self) -> None:
        type(self).closed_in.append(threading.current_thread().name)
        super().close()


async def test_io_error_in_an_inline_commit_is_fatal(db_path: Path) -> None:
    _FailAfter.commits, _FailAfter.closed_in, _FailAfter.failed_in = 0, [], ""
    fatal: list[tuple[BaseException, str]] = []
    writer = GroupCommitWriter(db_path, store_factory=_FailAfter.open,
                               on_fatal=lambda exc: fatal.append((exc, threading.current_thread().name)))
    writer.start()
    try:
        for i in range(3):
            await writer.stage(build_request(f"OK{i}"))
            await _until_idle(writer)
        with pytest.raises(StoreIOError):
            await writer.stage(build_request("FAILS"))
        assert _FailAfter.failed_in == threading.current_thread().name  # the failing commit was inline
        assert isinstance(writer.fatal_error, StoreIOError)
        with pytest.raises(StoreClosedError):
            await writer.stage(build_request("LATER"))
        with pytest.raises(StoreClosedError):
            writer.submit(build_request("LATER-THREAD"))
        await asyncio.to_thread(lambda: writer._thread is not None and writer._thread.join(WAIT))
        assert [(exc, name) for exc, name in fatal] == [(writer.fatal_error, "store-writer")]
        assert _FailAfter.closed_in == ["store-writer"]
    finally:
        writer.stop()
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 3}


async def test_store_full_in_an_inline_commit_is_retryable(db_path: Path) -> None:
    failures: list[str] = []
    writer = GroupCommitWriter(db_path, max_bytes=0,
                               on_commit_failure=lambda exc: failures.append(threading.current_thread().name))
    writer.start()
    try:
        for i in range(4):
            with pytest.raises(StoreFullError):
                await writer.stage(build_request(f"F{i}", raw=bytes(20_000)))
            await _until_idle(writer)
        assert writer.fatal_error is None
        assert failures == ["store-writer"] + [threading.current_thread().name] * 3  # then inline
        await asyncio.to_thread(writer.set_max_bytes, None)  # space came back
        outcome = await writer.stage(build_request("F0", raw=bytes(20_000)))
        assert outcome.duplicate is False
    finally:
        writer.stop()
    with StoreReader(db_path) as reader:
        assert reader.counts() == {("adt", "staged"): 1}


class _Exclusive(Store):
    """A real Store that records whether two threads ever used it at once."""

    users = 0
    overlaps = 0
    entered: threading.Event
    gate: threading.Event
    hold = False
    held_in = ""

    def stage_batch(self, requests):  # type: ignore[no-untyped-def]
        cls = type(self)
        cls.users += 1
        cls.overlaps += cls.users > 1
        try:
            if cls.hold:
                cls.held_in = threading.current_thread().name
                cls.entered.set()
                assert cls.gate.wait(WAIT)
            return super().stage_batch(requests)
        finally:
            cls.users -= 1


async def test_writer_thread_waits_for_an_inline_commit(db_path: Path) -> None:
    _Exclusive.users = _Exclusive.overlaps = 0
    _Exclusive.entered, _Exclusive.gate, _Exclusive.hold = threading.Event(), threading.Event(), False
    writer = GroupCommitWriter(db_path, store_factory=_Exclusive.open)
    writer.start()
    try:
        await writer.stage(build_request("WARM"))  # the streak starts
        await _until_idle(writer)
        _Exclusive.hold = True

        def from_another_thread() -> list[object]:
            assert _Exclusive.entered.wait(WAIT)  # the inline commit holds the store
            _Exclusive.hold = False
            submitted = writer.submit(build_request("QUEUED"))
            called = writer.call(lambda store: store.counts())
            _Exclusive.gate.set()
            return [submitted.result(WAIT), called.result(WAIT)]

        other = asyncio.get_running_loop().run_in_executor(None, from_another_thread)
        inline = await writer.stage(build_request("INLINE"))  # blocks this loop until the gate opens
        queued, counts = await other
        assert not inline.duplicate and not queued.duplicate  # type: ignore[attr-defined]
        assert counts == {("adt", "staged"): 3}
        assert _Exclusive.held_in == threading.current_thread().name  # INLINE was committed inline
        assert _Exclusive.overlaps == 0
    finally:
        _Exclusive.gate.set()
        writer.stop()
