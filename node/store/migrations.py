"""The store's schema, as numbered migrations (sqlite_utils.migrations, set "edge_node").

`migrate(conn)` applies every pending migration, together with the sqlite-utils bookkeeping table
`_sqlite_migrations`, in ONE `BEGIN IMMEDIATE` transaction: either the schema is fully current afterwards
or nothing changed (and two processes opening a new file at once cannot both create it). Migrations are
append-only: never edit or renumber one that has shipped; add the next number instead.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from node.store.errormap import map_sqlite_error

if TYPE_CHECKING:
    from collections.abc import Sequence

MIGRATION_SET = "edge_node"

CREATE_INBOUND = """
CREATE TABLE inbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    feed TEXT NOT NULL,
    received_at REAL NOT NULL,
    control_id TEXT NOT NULL DEFAULT '',
    sending_app TEXT NOT NULL DEFAULT '',
    sending_facility TEXT NOT NULL DEFAULT '',
    message_type TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    charset TEXT NOT NULL DEFAULT '',
    raw BLOB NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    ack BLOB,
    source TEXT,
    updated_at REAL NOT NULL
)
"""
"""One row per accepted inbound message; `received_at`/`updated_at` are unix seconds."""

CREATE_INBOUND_DEDUP = """
CREATE UNIQUE INDEX inbound_dedup
    ON inbound (feed, sending_app, sending_facility, control_id, sha256)
"""
"""The dedup key (model.StageRequest.dedup_key): a resend finds the stored row and its ACK."""

CREATE_INBOUND_STATE_ID = "CREATE INDEX inbound_state_id ON inbound (state, id)"
"""Later stages claim rows by state in id order."""

CREATE_INBOUND_FEED_STATE = "CREATE INDEX inbound_feed_state ON inbound (feed, state)"
"""(feed, state) counts for metrics and the status CLI."""

MIGRATION_0001: Sequence[str] = (
    CREATE_INBOUND,
    CREATE_INBOUND_DEDUP,
    CREATE_INBOUND_STATE_ID,
    CREATE_INBOUND_FEED_STATE,
)

migrations = Migrations(MIGRATION_SET)


@migrations(name="0001_create_inbound")
def _m0001_create_inbound(db: Database) -> None:
    for statement in MIGRATION_0001:
        db.execute(statement)


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations on a writer connection (node.store.connect); return their names.

    :raises StoreError: (or a subclass, see node.store.errormap) when SQLite fails; nothing is applied.
    """
    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            pending = [migration.name for migration in migrations.pending(db)]
            migrations.apply(db)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, "migrate") from exc
    return pending
