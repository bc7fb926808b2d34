"""The store's writer side: one connection that stages inbound messages, one transaction per batch.

A Store is synchronous and NOT thread-safe: use it from one thread at a time (the node gives it to
node.store.writer.GroupCommitWriter, which owns it in a dedicated thread). Readers in other threads or
processes use node.store.reader.StoreReader.

Failures raise node.errors exceptions, never sqlite3 ones:

- StoreFullError: no space (disk full, or the cap of `set_max_bytes`). Nothing of the batch is stored.
- StoreIOError: an I/O error. Nothing of the batch is stored as far as SQLite knows; the caller must stop
  using the file in this process (fsync errors may lose pages).
- StoreClosedError: the Store was closed.
- StoreError: any other SQLite failure (e.g. SQLITE_BUSY after busy_timeout, a corrupt file).
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, TypeVar

from node.errors import StoreClosedError, StoreIOError
from node.model import StageOutcome, StageRequest
from node.store import queries
from node.store.checkpoint import CheckpointResult, checkpoint
from node.store.connect import DEFAULT_WAL_AUTOCHECKPOINT, open_connection
from node.store.errormap import map_sqlite_error
from node.store.migrations import migrate
from node.store.queries import InboundReads, StoredMessage
from node.store.transaction import begin_immediate, rollback

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path
    from typing import Self

__all__ = ["Store", "StoredMessage"]

_T = TypeVar("_T")


class Store(InboundReads):
    """The writer connection to one store file (see the module docstring for threading and errors); it
    also reads (node.store.queries.InboundReads)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an open, migrated writer connection; use `Store.open` instead."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._unlimited_pages = queries.max_page_count(conn)

    @classmethod
    def open(cls, path: Path, *, wal_autocheckpoint: int = DEFAULT_WAL_AUTOCHECKPOINT) -> Self:
        """Open (creating if missing) the store file at `path` and apply pending migrations.
        `wal_autocheckpoint`: see node.store.connect (the node passes checkpoint.BACKSTOP_PAGES and runs
        node.store.checkpoint.Checkpointer).

        :raises StoreError: (or a subclass) the file cannot be opened, configured or migrated.
        """
        conn = open_connection(path, wal_autocheckpoint=wal_autocheckpoint)
        try:
            migrate(conn)
            return cls(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise map_sqlite_error(exc, f"open {path}") from exc
        except BaseException:
            conn.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection (idempotent). Later calls raise StoreClosedError."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def stage_batch(self, requests: Sequence[StageRequest]) -> list[StageOutcome]:
        """Commit `requests` in ONE transaction; one outcome per request, in order.

        A request whose dedup key (StageRequest.dedup_key) is already stored, in an earlier transaction
        or earlier in this batch, inserts nothing: its outcome is `duplicate=True` with the stored row's
        id and ack. On any failure the whole batch is rolled back and an exception raised (module
        docstring); a failed ROLLBACK raises StoreIOError.
        """
        if not requests:
            return []
        return self.commit_group(requests, ())[0]

    def commit_group(self, requests: Sequence[StageRequest],
                     writes: Sequence[Callable[[Store], object]]) -> tuple[list[StageOutcome], list[object]]:
        """Run `writes` and stage `requests` in ONE transaction (one fsync): the writer's group commit.

        Each write is `fn(self)`, run first, in order, each in its own SAVEPOINT: it only runs statements
        (node.store.push's functions see the open transaction and neither BEGIN nor COMMIT). A write that
        raises is rolled back to its savepoint alone; its exception is its result and the rest goes on.
        :returns: (the requests' outcomes as in `stage_batch`, each write's result or exception).
        :raises: as `stage_batch`, when the transaction fails as a whole (a request's statement, COMMIT,
            a StoreIOError or an error that ended the transaction inside a write): nothing is committed.
        """
        conn = self._connection()
        now = time.time()
        try:
            begin_immediate(conn)  # polls for a worker's lock instead of SQLite's 1-2-5-10 ms sleeps
            results = [self._write_one(conn, fn) for fn in writes]
            outcomes = [self._stage_one(conn, request, now) for request in requests]
            self._commit()
        except sqlite3.Error as exc:
            self._rollback()
            raise map_sqlite_error(exc, "stage") from exc
        except BaseException:
            self._rollback()
            raise
        return outcomes, results

    def _write_one(self, conn: sqlite3.Connection, fn: Callable[[Store], object]) -> object:
        conn.execute("SAVEPOINT group_write")
        try:
            try:
                result = fn(self)
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, "group write") from exc
        except StoreIOError:
            raise
        except Exception as exc:
            if not conn.in_transaction:  # SQLite ended the whole transaction (e.g. some SQLITE_FULL cases)
                raise
            conn.execute("ROLLBACK TO group_write")
            conn.execute("RELEASE group_write")
            return exc
        conn.execute("RELEASE group_write")
        return result

    def _commit(self) -> None:
        """COMMIT the open transaction. The single place a commit happens (tests override it to inject
        an I/O error; the thing under test is then the caller's error handling, not SQLite)."""
        self._connection().execute("COMMIT")

    def _rollback(self) -> None:
        rollback(self._connection())

    @staticmethod
    def _stage_one(conn: sqlite3.Connection, request: StageRequest, now: float) -> StageOutcome:
        message_id = queries.insert_new(conn, request, now)
        if message_id is not None:
            return StageOutcome(message_id=message_id, duplicate=False, ack=request.ack)
        existing = queries.select_by_dedup_key(conn, request.dedup_key)
        if existing is None:  # ON CONFLICT only skips rows that conflict with the dedup index
            raise sqlite3.IntegrityError("insert skipped but no row has its dedup key")
        stored_id, stored_ack = existing
        return StageOutcome(message_id=stored_id, duplicate=True, ack=stored_ack)

    def checkpoint(self, mode: str = "PASSIVE") -> CheckpointResult:
        """`PRAGMA wal_checkpoint(mode)` on the writer's connection (node.store.checkpoint)."""
        return checkpoint(self._connection(), mode)

    def set_max_bytes(self, n: int | None) -> None:
        """Cap the database at `n` bytes (None: no cap) with PRAGMA max_page_count.

        A transaction that would grow the file past the cap fails with SQLite's own SQLITE_FULL, i.e.
        StoreFullError. The cap is rounded down to whole pages and never below the current size (SQLite
        keeps the current page count then: nothing more fits). It counts database pages, not the WAL file.
        The cap belongs to this connection: set it again after every open.
        """

        def apply(conn: sqlite3.Connection) -> int:
            if n is None:
                return queries.set_max_page_count(conn, self._unlimited_pages)
            return queries.set_max_page_count(conn, max(1, n // queries.page_size(conn)))

        self._read("set_max_bytes", apply)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosedError("store is closed")
        return self._conn

    def _read(self, operation: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._connection()
        try:
            return query(conn)
        except sqlite3.Error as exc:
            raise map_sqlite_error(exc, operation) from exc
