"""node.store.checkpoint and the hot connections' options, on real files: a writer whose own
autocheckpoint is far away leaves the WAL to the Checkpointer thread, which keeps it bounded."""

from __future__ import annotations

import os
import sqlite3
from functools import partial
from pathlib import Path

import pytest

from node.store.checkpoint import BACKSTOP_PAGES, Checkpointer, checkpoint
from node.store.connect import open_connection
from node.store.store import Store
from node.store.writer import GroupCommitWriter
from tests.store.conftest import MakeRequest


def _pragma(conn: sqlite3.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _wal(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


def _payload(n: int) -> bytes:
    return (f"MSH|^~\\&|LAB|WARD|||20240101||ADT^A01|C{n}|P|2.5\r" + "OBX|1|TX|||" + "x" * 8000 + "\r").encode()


def test_hot_connection_options(db_path: Path) -> None:
    durable = open_connection(db_path)
    relaxed = open_connection(db_path, durable=False, wal_autocheckpoint=BACKSTOP_PAGES)
    try:
        assert _pragma(durable, "synchronous") == 2  # FULL: the intake's commits
        assert _pragma(durable, "wal_autocheckpoint") == 1000  # SQLite's default
        assert _pragma(relaxed, "synchronous") == 1  # NORMAL: the harmonizer workers
        assert _pragma(relaxed, "wal_autocheckpoint") == BACKSTOP_PAGES
    finally:
        relaxed.close()
        durable.close()


def test_checkpoint_reports_what_it_copied(db_path: Path, make_request: MakeRequest) -> None:
    store = Store.open(db_path, wal_autocheckpoint=BACKSTOP_PAGES)
    conn = open_connection(db_path)
    try:
        for n in range(20):
            store.stage_batch([make_request(raw=_payload(n))])
        result = checkpoint(conn)
        assert not result.busy and result.wal_frames > 20 and result.checkpointed_frames == result.wal_frames
        with pytest.raises(ValueError):
            checkpoint(conn, "SOMETIMES")
    finally:
        conn.close()
        store.close()


def test_the_checkpointer_keeps_the_wal_bounded_while_the_writer_writes_without_pause(
        db_path: Path, make_request: MakeRequest) -> None:
    """Back-to-back commits (no pause for a FULL checkpoint to take the lock): the thread copies the WAL
    in the background and lets the writer's thread finish it, so the WAL starts over again and again."""
    threshold = 256 * 1024
    writer = GroupCommitWriter(db_path, store_factory=partial(Store.open, wal_autocheckpoint=BACKSTOP_PAGES))
    writer.start()
    try:
        for n in range(100):  # without the thread the WAL only grows (BACKSTOP_PAGES is far away)
            writer.submit(make_request(raw=_payload(n))).result()
        unchecked = _wal(db_path)
        assert unchecked > 4 * threshold
        checkpointer = Checkpointer(db_path, finish=lambda: writer.call(Store.checkpoint).result(),
                                    threshold_bytes=threshold, interval_s=0.01)
        checkpointer.start()
        try:
            for n in range(100, 600):
                writer.submit(make_request(raw=_payload(n))).result()
            assert checkpointer.finished >= 1
        finally:
            checkpointer.stop()
        # 500 more messages of 8 KB without a pause would add ~5 x `unchecked` to a WAL nobody
        # checkpoints; the file grew by a fraction of that (how much depends on how the thread is
        # scheduled on a busy machine), i.e. the WAL started over again and again.
        assert _wal(db_path) < unchecked + unchecked * 5 / 4
        assert checkpointer.failures == 0
    finally:
        writer.stop()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM inbound").fetchone()[0] == 600
    finally:
        conn.close()


def test_without_finish_a_full_checkpoint_lets_the_wal_start_over(db_path: Path, make_request: MakeRequest) -> None:
    store = Store.open(db_path, wal_autocheckpoint=BACKSTOP_PAGES)
    checkpointer = Checkpointer(db_path, threshold_bytes=0, complete_bytes=0, interval_s=10)
    checkpointer.start()
    try:
        for n in range(50):
            store.stage_batch([make_request(raw=_payload(n))])
        grown = _wal(db_path)
        result = checkpointer.run_once()
        assert result is not None and result.checkpointed_frames == result.wal_frames
        for n in range(50, 100):
            store.stage_batch([make_request(raw=_payload(n))])
        assert _wal(db_path) == grown  # the second 50 reused the file from its beginning
    finally:
        checkpointer.stop()
        store.close()


def test_below_the_threshold_nothing_is_checkpointed(db_path: Path, make_request: MakeRequest) -> None:
    store = Store.open(db_path, wal_autocheckpoint=BACKSTOP_PAGES)
    checkpointer = Checkpointer(db_path, threshold_bytes=64 * 1024 * 1024, interval_s=10)
    checkpointer.start()
    try:
        store.stage_batch([make_request()])
        assert checkpointer.run_once() is None
        assert checkpointer.checkpoints == 0
    finally:
        checkpointer.stop()
        checkpointer.stop()  # idempotent
        store.close()


def test_a_failing_checkpoint_is_counted_and_retried(db_path: Path, make_request: MakeRequest) -> None:
    store = Store.open(db_path, wal_autocheckpoint=BACKSTOP_PAGES)
    checkpointer = Checkpointer(db_path, threshold_bytes=0, interval_s=10)
    checkpointer.start()
    try:
        store.stage_batch([make_request(raw=_payload(1))])
        # A writer holding the write lock and an open read snapshot with unchecked frames does not make
        # PASSIVE fail; a closed connection does (the thread's connection is gone): counted, logged.
        assert checkpointer.run_once() is not None
        conn = checkpointer._conn
        assert conn is not None
        conn.close()
        assert checkpointer.run_once() is None
        assert checkpointer.failures == 1
    finally:
        checkpointer._conn = None
        checkpointer.stop()
        store.close()


def test_a_stopped_writer_is_not_a_checkpoint_failure(db_path: Path, make_request: MakeRequest) -> None:
    writer = GroupCommitWriter(db_path, store_factory=partial(Store.open, wal_autocheckpoint=BACKSTOP_PAGES))
    writer.start()
    writer.submit(make_request(raw=_payload(1))).result()
    checkpointer = Checkpointer(db_path, finish=lambda: writer.call(Store.checkpoint).result(),
                                threshold_bytes=0, complete_bytes=0, interval_s=10)
    checkpointer.start()
    try:
        writer.stop()  # the node stops its writer before the checkpointer
        assert checkpointer.run_once() is None
        assert checkpointer.failures == 0
    finally:
        checkpointer.stop()
