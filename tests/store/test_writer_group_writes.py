"""GroupCommitWriter.write: other stages' state changes committed in the intake's group transaction, each
in a savepoint; what happens when one of them, the requests, the space guard or the disk fails."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from node.errors import StoreClosedError, StoreError, StoreFullError, StoreIOError
from node.model import StageRequest
from node.store.push import BatchStart, begin_batch
from node.store.store import Store
from node.store.writer import GroupCommitWriter
from tests.store.conftest import MakeRequest

from .test_space import FakeDisk, MiB

WAIT = 10.0


def _insert_row(label: str) -> object:
    """A write: one row in `counters` (a table without foreign keys); returns the rows there now."""
    def write(store: Store) -> int:
        conn = store._connection()
        conn.execute("INSERT INTO counters (name, feed, label, value) VALUES ('test', 'f', ?, 1)", (label,))
        return int(conn.execute("SELECT count(*) FROM counters").fetchone()[0])
    return write


def _labels(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT label FROM counters WHERE name = 'test' ORDER BY label")]
    finally:
        conn.close()


def _hold(writer: GroupCommitWriter) -> tuple[threading.Event, object]:
    """Keep the writer thread busy in a call() so that what is submitted next queues up together."""
    gate = threading.Event()
    return gate, writer.call(lambda store: gate.wait(WAIT))


def test_writes_and_requests_share_one_transaction(db_path: Path, make_request: MakeRequest) -> None:
    writer = GroupCommitWriter(db_path)
    writer.start()
    try:
        gate, _held = _hold(writer)
        staged = [writer.submit(make_request(f"G{n}")) for n in range(3)]
        written = [writer.write(_insert_row(f"p{n}")) for n in range(2)]
        before = writer.commits
        gate.set()
        assert [future.result(WAIT) for future in written] == [1, 2]
        assert [future.result(WAIT).message_id for future in staged] == [1, 2, 3]
        assert writer.commits == before + 1  # one transaction, one fsync
        # The push's own functions run as savepoints: no BEGIN/COMMIT of their own inside the group.
        start = BatchStart(sent=[], superseded=[], entries=0, bytes=2, counts={})
        assert writer.write(lambda store: begin_batch(store, start, now=5.0)).result(WAIT) == (1, 1)
    finally:
        writer.stop()
    assert _labels(db_path) == ["p0", "p1"]


def test_a_failing_write_is_rolled_back_alone(db_path: Path, make_request: MakeRequest) -> None:
    def half_then_fail(store: Store) -> None:
        _insert_row("half")(store)
        raise ValueError("a bug in a write")

    writer = GroupCommitWriter(db_path)
    writer.start()
    try:
        gate, _ = _hold(writer)
        first = writer.write(_insert_row("first"))
        bad = writer.write(half_then_fail)
        staged = writer.submit(make_request("KEPT"))
        last = writer.write(_insert_row("last"))
        gate.set()
        with pytest.raises(ValueError, match="a bug in a write"):
            bad.result(WAIT)
        assert first.result(WAIT) and last.result(WAIT)
        assert staged.result(WAIT).duplicate is False
    finally:
        writer.stop()
    assert _labels(db_path) == ["first", "last"]  # nothing of the failed write


class FailingStageStore(Store):
    """Staging a request with control id BOOM fails like a constraint SQLite reports (not an I/O error)."""

    @staticmethod
    def _stage_one(conn: sqlite3.Connection, request: StageRequest, now: float):  # type: ignore[override]
        if request.control_id == "BOOM":
            raise sqlite3.IntegrityError("synthetic failure")
        return Store._stage_one(conn, request, now)


def test_when_the_requests_fail_the_writes_commit_on_their_own(db_path: Path, make_request: MakeRequest) -> None:
    failures: list[BaseException] = []
    writer = GroupCommitWriter(db_path, store_factory=FailingStageStore.open, on_commit_failure=failures.append)
    writer.start()
    try:
        gate, _ = _hold(writer)
        doomed = [writer.submit(make_request("OK-1")), writer.submit(make_request("BOOM"))]
        written = writer.write(_insert_row("survives"))
        gate.set()
        for future in doomed:  # the requests' transaction failed as a whole, as before
            with pytest.raises(StoreError):
                future.result(WAIT)
        assert written.result(WAIT) == 1
        assert len(failures) == 1
        assert writer.submit(make_request("OK-2")).result(WAIT).duplicate is False  # keeps running
    finally:
        writer.stop()
    assert _labels(db_path) == ["survives"]


def test_space_refusal_never_refuses_a_write(tmp_path: Path, make_request: MakeRequest) -> None:
    db = tmp_path / "store.db"
    disk = FakeDisk(free=100 * MiB)
    guard = disk.guard(db, min_free_bytes=8 * MiB)
    writer = GroupCommitWriter(db, space_guard=guard)
    writer.start()
    try:
        writer.submit(make_request("BEFORE")).result(WAIT)
        disk.free = 7 * MiB
        guard.invalidate()
        gate, _ = _hold(writer)
        refused = writer.submit(make_request("REFUSED"))
        written = writer.write(_insert_row("drains"))
        gate.set()
        with pytest.raises(StoreFullError, match="low disk space"):
            refused.result(WAIT)
        assert written.result(WAIT) == 1
    finally:
        writer.stop()
    assert _labels(db) == ["drains"]


class FailingCommitStore(Store):
    fail = False

    def _commit(self) -> None:
        if FailingCommitStore.fail:
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()


def test_an_io_error_fails_writes_and_requests_and_is_fatal(db_path: Path, make_request: MakeRequest) -> None:
    fatal: list[BaseException] = []
    writer = GroupCommitWriter(db_path, store_factory=FailingCommitStore.open, on_fatal=fatal.append)
    writer.start()
    try:
        gate, _ = _hold(writer)
        staged = writer.submit(make_request("LOST"))
        written = writer.write(_insert_row("lost"))
        FailingCommitStore.fail = True
        gate.set()
        with pytest.raises(StoreIOError):
            staged.result(WAIT)
        with pytest.raises(StoreIOError):
            written.result(WAIT)
        with pytest.raises(StoreClosedError):
            writer.write(_insert_row("after"))
    finally:
        FailingCommitStore.fail = False
        writer.stop()
    assert fatal and isinstance(fatal[0], StoreIOError)
    assert _labels(db_path) == []
