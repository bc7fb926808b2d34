"""Read-only access to the store file for scrape-time metrics and the status CLI.

A StoreReader holds one `mode=ro` connection (node.store.connect) and serialises its use with a lock, so
one reader may be shared by threads (metrics scrapes, CLI). Thanks to WAL it sees the latest committed
data while a writer (in this or another process) writes, and never blocks the writer. Every query is its
own read transaction: two calls may see different snapshots.

Failures raise StoreError (or a subclass, node.store.errormap): the file does not exist (the writer has
not created it yet), is not a database, or a query fails; after `close()`, StoreClosedError.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, TypeVar

from node.errors import StoreClosedError
from node.store import outbound
from node.store.connect import open_connection
from node.store.errormap import map_sqlite_error
from node.store.queries import InboundReads

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

_T = TypeVar("_T")


class StoreReader(InboundReads):
    """A read-only view of the store file at `path` (see the module docstring); the reads of
    node.store.queries.InboundReads and `harmonize_stats`."""

    def __init__(self, path: Path) -> None:
        """Open `path` read-only. :raises StoreError: it cannot be opened (e.g. does not exist yet)."""
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = open_connection(path, readonly=True)

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def harmonize_stats(self) -> outbound.HarmonizeStats:
        """Outbound rows per state, the harmonizer's persisted counters and the staged backlog."""
        return self._read("harmonize_stats", outbound.harmonize_stats)

    def _read(self, operation: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._conn is None:
                raise StoreClosedError("store reader is closed")
            try:
                return query(self._conn)
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, operation) from exc
