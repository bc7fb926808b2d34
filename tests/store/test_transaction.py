"""node.store.transaction.begin_immediate on a real file: waits for another connection's write lock by
polling, gives up after its timeout, and leaves the connection's busy_timeout as it was."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from node.store.connect import BUSY_TIMEOUT_MS, open_connection
from node.store.migrations import migrate
from node.store.transaction import begin_immediate


def test_the_lock_is_taken_soon_after_the_other_writer_releases_it(db_path: Path) -> None:
    holder = open_connection(db_path)
    migrate(holder)
    waiter = open_connection(db_path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        released = threading.Event()
        release_at: list[float] = []

        def release() -> None:
            time.sleep(0.05)
            release_at.append(time.monotonic())
            holder.execute("COMMIT")
            released.set()

        thread = threading.Thread(target=release)
        thread.start()
        begin_immediate(waiter)
        acquired = time.monotonic()
        thread.join()
        assert released.is_set() and waiter.in_transaction
        # Taken after the release, long before the timeout (how soon is for the bench, not a timed test).
        assert release_at[0] <= acquired < release_at[0] + 0.5
        waiter.execute("ROLLBACK")
        assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    finally:
        waiter.close()
        holder.close()


def test_a_lock_held_past_the_timeout_fails_with_busy(db_path: Path) -> None:
    holder = open_connection(db_path)
    migrate(holder)
    waiter = open_connection(db_path)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            begin_immediate(waiter, timeout_s=0.05)
        assert caught.value.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
        assert not waiter.in_transaction
        assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
        holder.execute("ROLLBACK")
        begin_immediate(waiter, timeout_s=0.05)  # free now: at once
        waiter.execute("ROLLBACK")
    finally:
        waiter.close()
        holder.close()
