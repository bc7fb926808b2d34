"""Connection settings and schema migrations, checked on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.errors import StoreError, StoreFullError, StoreIOError
from node.store.connect import open_connection
from node.store.errormap import map_sqlite_error
from node.store.migrations import MIGRATION_SET, migrate
from node.store.store import Store


def _pragma(conn: sqlite3.Connection, name: str) -> object:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_writer_connection_settings(db_path: Path) -> None:
    conn = open_connection(db_path)
    try:
        assert db_path.parent.is_dir()
        assert _pragma(conn, "journal_mode") == "wal"
        assert _pragma(conn, "synchronous") == 2  # FULL
        assert _pragma(conn, "busy_timeout") == 5000
        assert _pragma(conn, "foreign_keys") == 1
        assert conn.isolation_level is None
        migrate(conn)
        assert _pragma(conn, "auto_vacuum") == 2  # INCREMENTAL, effective since set before any table
        assert not conn.in_transaction
    finally:
        conn.close()


def test_reader_connection_is_read_only(store: Store, db_path: Path) -> None:
    conn = open_connection(db_path, readonly=True)
    try:
        assert _pragma(conn, "journal_mode") == "wal"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM inbound")
    finally:
        conn.close()


def test_reader_of_missing_file_fails_with_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="open"):
        open_connection(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_file_that_is_not_a_database_fails_with_store_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        Store.open(path)


def test_directory_that_cannot_be_created_fails_with_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create directory"):
        open_connection(tmp_path / "file" / "store.db")


def test_migrations_apply_once_and_are_idempotent_on_reopen(db_path: Path, make_request) -> None:
    conn = open_connection(db_path)
    try:
        assert migrate(conn) == [
            "0001_create_inbound", "0002_create_outbound", "0003_push", "0004_retention", "0005_outbound_digest",
            "0006_outbound_write_cost"]
        assert migrate(conn) == []
    finally:
        conn.close()
    store = Store.open(db_path)
    store.stage_batch([make_request()])
    store.close()
    store = Store.open(db_path)  # reopen: nothing to apply, data kept
    try:
        assert sum(store.counts().values()) == 1
    finally:
        store.close()
    conn = open_connection(db_path)
    try:
        assert migrate(conn) == []
        applied = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,)
        ).fetchall()
        assert applied == [
            ("0001_create_inbound",), ("0002_create_outbound",), ("0003_push",), ("0004_retention",),
            ("0005_outbound_digest",), ("0006_outbound_write_cost",)]
    finally:
        conn.close()


def test_schema_of_migration_0001(store: Store, db_path: Path) -> None:
    conn = open_connection(db_path, readonly=True)
    try:
        columns = {row[1]: (row[2], row[3], row[4]) for row in conn.execute("PRAGMA table_info(inbound)")}
        assert list(columns) == [
            "id", "feed", "received_at", "control_id", "sending_app", "sending_facility", "message_type",
            "version", "charset", "raw", "size", "sha256", "state", "error", "ack", "source", "updated_at",
            "harmonized_at",  # added by migration 0002
            "purged_at",  # added by migration 0004
        ]  # fmt: skip
        assert columns["raw"] == ("BLOB", 1, None)
        assert columns["control_id"] == ("TEXT", 1, "''")
        assert columns["error"] == ("TEXT", 0, None)
        indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(inbound)")}
        assert indexes == {"inbound_dedup": 1, "inbound_state_id": 0, "inbound_feed_state": 0,
                           "inbound_retention": 0}  # the last one: migration 0004
        dedup = [row[2] for row in conn.execute("PRAGMA index_info(inbound_dedup)")]
        assert dedup == ["feed", "sending_app", "sending_facility", "control_id", "sha256"]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (sqlite3.SQLITE_FULL, "database or disk is full", StoreFullError),
        (sqlite3.SQLITE_IOERR_FSYNC, "disk I/O error", StoreIOError),
        (sqlite3.SQLITE_IOERR_WRITE, "disk I/O error", StoreIOError),
        (None, "disk I/O error", StoreIOError),
        (None, "database or disk is full", StoreFullError),
        (sqlite3.SQLITE_BUSY, "database is locked", StoreError),
    ],
)
def test_error_mapping(code: int | None, text: str, expected: type[StoreError]) -> None:
    exc = sqlite3.OperationalError(text)
    if code is not None:
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    mapped = map_sqlite_error(exc, "stage")
    assert type(mapped) is expected
    assert str(mapped).startswith("stage: ")
