"""One write transaction on a writer connection: BEGIN IMMEDIATE ... COMMIT, rolled back on any failure,
sqlite3 errors mapped to node.errors.StoreError subclasses (node.store.errormap)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from node.errors import StoreIOError
from node.store.errormap import map_sqlite_error

_T = TypeVar("_T")


def run_in_transaction(conn: sqlite3.Connection, operation: str, body: Callable[[], _T]) -> _T:
    """Run `body` inside BEGIN IMMEDIATE ... COMMIT; roll back on any failure.

    :raises StoreError: (or a subclass) SQLite failed, naming `operation`; nothing of `body` is committed.
        A failed ROLLBACK raises StoreIOError.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, operation) from exc
    return result


def rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK the open transaction, if any. :raises StoreIOError: the ROLLBACK failed."""
    if not conn.in_transaction:  # SQLite rolls back by itself after some errors (FULL, IOERR)
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise StoreIOError(f"rollback failed: {map_sqlite_error(exc, 'rollback')}") from exc
