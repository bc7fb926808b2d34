"""One write transaction on a writer connection: BEGIN IMMEDIATE ... COMMIT, rolled back on any failure,
sqlite3 errors mapped to node.errors.StoreError subclasses (node.store.errormap)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from node.errors import StoreIOError
from node.store.connect import BUSY_TIMEOUT_MS
from node.store.errormap import map_sqlite_error

LOCK_POLL_S = 0.00025
"""How often `begin_immediate` tries again for the write lock."""

_T = TypeVar("_T")


def run_in_transaction(conn: sqlite3.Connection, operation: str, body: Callable[[], _T]) -> _T:
    """Run `body` inside BEGIN IMMEDIATE (`begin_immediate`: polls for the lock) ... COMMIT; roll back on
    any failure.

    :raises StoreError: (or a subclass) SQLite failed, naming `operation`; nothing of `body` is committed.
        A failed ROLLBACK raises StoreIOError.
    """
    try:
        begin_immediate(conn)
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, operation) from exc
    return result


def begin_immediate(conn: sqlite3.Connection, *, timeout_s: float = BUSY_TIMEOUT_MS / 1000,
                    poll_s: float = LOCK_POLL_S) -> None:
    """BEGIN IMMEDIATE, waiting up to `timeout_s` for another connection's write lock by trying again
    every `poll_s`.

    For the intake's commits: while a harmonizer worker process holds the write lock, SQLite's own busy
    handler (busy_timeout) sleeps 1, 2, 5, 10, 15 ms ... between its tries, so a commit that finds the
    lock taken for 3 ms waits 8 ms; polling takes the lock within `poll_s` of its release. The
    connection's busy_timeout is set to 0 for the tries and restored after.

    :raises sqlite3.OperationalError: SQLITE_BUSY after `timeout_s`, or any other error of BEGIN.
    """
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(poll_s)
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK the open transaction, if any. :raises StoreIOError: the ROLLBACK failed."""
    if not conn.in_transaction:  # SQLite rolls back by itself after some errors (FULL, IOERR)
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise StoreIOError(f"rollback failed: {map_sqlite_error(exc, 'rollback')}") from exc
