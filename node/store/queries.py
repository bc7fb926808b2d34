"""Every SQL statement on the `inbound` table, as functions of a connection.

Shared by the writer (node.store.store.Store) and the readers (node.store.reader.StoreReader) so the SQL
exists once. These functions raise sqlite3 errors as they come; their callers map them to StoreError
(node.store.errormap) and own transactions. `InboundReads` holds the read methods both classes offer.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from node.model import MessageState, StageRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_T = TypeVar("_T")

DEFAULT_LIMIT = 1000
"""Default number of rows `select_messages` returns."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of `inbound`. `raw` and `ack` are left out of repr() so logging a row logs no payload."""

    id: int
    feed: str
    received_at: float
    control_id: str
    sending_app: str
    sending_facility: str
    message_type: str
    version: str
    charset: str
    raw: bytes = field(repr=False)
    size: int
    sha256: bytes
    state: MessageState
    error: str | None
    ack: bytes | None = field(repr=False)
    source: str | None
    updated_at: float


_COLUMN_NAMES = tuple(column.name for column in fields(StoredMessage))
"""Columns selected for a StoredMessage: the dataclass fields, which are the table's columns."""
_COLUMNS = ", ".join(_COLUMN_NAMES)

_INSERT = """
INSERT INTO inbound (
    feed, received_at, control_id, sending_app, sending_facility, message_type, version, charset,
    raw, size, sha256, state, error, ack, source, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (feed, sending_app, sending_facility, control_id, sha256) DO NOTHING
RETURNING id
"""

_SELECT_BY_DEDUP_KEY = """
SELECT id, ack FROM inbound
WHERE feed = ? AND sending_app = ? AND sending_facility = ? AND control_id = ? AND sha256 = ?
"""

_SELECT_COUNTS = "SELECT feed, state, count(*) FROM inbound GROUP BY feed, state"

_SELECT_ONE = f"SELECT {_COLUMNS} FROM inbound WHERE id = ?"


def insert_new(conn: sqlite3.Connection, request: StageRequest, now: float) -> int | None:
    """Insert `request` unless its dedup key exists; the new row id, or None for a duplicate."""
    rows = conn.execute(
        _INSERT,
        (
            request.feed,
            request.received_at,
            request.control_id,
            request.sending_app,
            request.sending_facility,
            request.message_type,
            request.version,
            request.charset,
            request.raw,
            len(request.raw),
            request.sha256,
            MessageState(request.state).value,
            request.error,
            request.ack,
            request.source,
            now,
        ),
    ).fetchall()
    return int(rows[0][0]) if rows else None


def select_by_dedup_key(
    conn: sqlite3.Connection, key: tuple[str, str, str, str, bytes]
) -> tuple[int, bytes | None] | None:
    """(id, ack) of the row with dedup key `key` (model.StageRequest.dedup_key order), or None."""
    row = conn.execute(_SELECT_BY_DEDUP_KEY, key).fetchone()
    return None if row is None else (int(row[0]), row[1])


def select_counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(feed, state) -> number of rows; pairs without rows are absent."""
    return {(feed, state): count for feed, state, count in conn.execute(_SELECT_COUNTS)}


def select_message(conn: sqlite3.Connection, message_id: int) -> StoredMessage | None:
    """The row with id `message_id`, or None."""
    row = conn.execute(_SELECT_ONE, (message_id,)).fetchone()
    return None if row is None else _to_message(row)


def select_messages(
    conn: sqlite3.Connection,
    *,
    feed: str | None = None,
    state: MessageState | None = None,
    after_id: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> list[StoredMessage]:
    """Rows with id > `after_id`, optionally of one feed and/or state, in id order, at most `limit`."""
    where = ["id > ?"]
    params: list[object] = [after_id]
    if feed is not None:
        where.append("feed = ?")
        params.append(feed)
    if state is not None:
        where.append("state = ?")
        params.append(MessageState(state).value)
    params.append(limit)
    sql = f"SELECT {_COLUMNS} FROM inbound WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
    return [_to_message(row) for row in conn.execute(sql, params)]


def integrity_check(conn: sqlite3.Connection) -> str:
    """The result of PRAGMA integrity_check: 'ok', or SQLite's problem lines joined by newlines."""
    return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))


def page_size(conn: sqlite3.Connection) -> int:
    """The database page size in bytes."""
    return int(conn.execute("PRAGMA page_size").fetchone()[0])


def max_page_count(conn: sqlite3.Connection) -> int:
    """This connection's current page cap."""
    return int(conn.execute("PRAGMA max_page_count").fetchone()[0])


def set_max_page_count(conn: sqlite3.Connection, pages: int) -> int:
    """Cap this connection's database at `pages` pages; returns the cap SQLite applied.

    SQLite never sets the cap below the current page count: it applies the current count instead.
    """
    return int(conn.execute(f"PRAGMA max_page_count={int(pages)}").fetchone()[0])


def database_bytes(path: Path) -> int:
    """Bytes of the database file plus its WAL file on disk (0 for a missing file)."""
    total = 0
    for name in (str(path), f"{path}-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(name).st_size
    return total


def _to_message(row: Sequence[Any]) -> StoredMessage:
    values = dict(zip(_COLUMN_NAMES, row, strict=True))
    values["state"] = MessageState(values["state"])
    return StoredMessage(**values)


class InboundReads:
    """The read methods of the writer (node.store.store.Store) and the reader
    (node.store.reader.StoreReader), written once. A subclass sets `_path` (the database file) and
    implements `_read`: run `query` on its connection and map sqlite3 errors to StoreError naming
    `operation` (node.store.errormap)."""

    _path: Path

    def _read(self, operation: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        raise NotImplementedError

    def counts(self) -> dict[tuple[str, str], int]:
        """(feed, state) -> number of rows; pairs without rows are absent."""
        return self._read("counts", select_counts)

    def get(self, message_id: int) -> StoredMessage | None:
        """The row with id `message_id`, or None."""
        return self._read("get", lambda conn: select_message(conn, message_id))

    def messages(
        self,
        feed: str | None = None,
        *,
        state: MessageState | None = None,
        after_id: int = 0,
        limit: int = DEFAULT_LIMIT,
    ) -> list[StoredMessage]:
        """Rows with id > `after_id`, optionally of one feed and/or state, in id order, at most `limit`."""
        return self._read(
            "messages",
            lambda conn: select_messages(conn, feed=feed, state=state, after_id=after_id, limit=limit),
        )

    def database_bytes(self) -> int:
        """Bytes of the database file plus its WAL file on disk."""
        return database_bytes(self._path)

    def integrity_check(self) -> str:
        """PRAGMA integrity_check: 'ok' when the file is sound, else SQLite's problem list."""
        return self._read("integrity_check", integrity_check)
