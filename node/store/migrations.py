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

CREATE_OUTBOUND = """
CREATE TABLE outbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inbound_id INTEGER NOT NULL REFERENCES inbound (id),
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    batch_id INTEGER,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""
"""One row per harmonized FHIR resource (compact JSON `body`), written by the harmonizer in the same
transaction that moves its inbound message to `harmonized`. `state`: pending | pushed | dead."""

CREATE_OUTBOUND_CLAIM = "CREATE INDEX outbound_claim ON outbound (state, partition_key, inbound_id, id)"
"""The push stage claims pending rows per partition (patient) in message order."""

CREATE_OUTBOUND_RESOURCE = "CREATE INDEX outbound_resource ON outbound (resource_type, resource_id)"
"""Every version of one resource (superseding, audits)."""

CREATE_OUTBOUND_INBOUND = "CREATE INDEX outbound_inbound ON outbound (inbound_id)"
"""The resources of one message; also what the foreign key needs when inbound rows are deleted."""

CREATE_COUNTERS = """
CREATE TABLE counters (
    name TEXT NOT NULL,
    feed TEXT NOT NULL,
    label TEXT NOT NULL,
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, feed, label)
) WITHOUT ROWID
"""
"""Monotonic counters of worker processes (which cannot share the node's prometheus counters), updated in
the transaction of the data they count and exported at scrape time (node.metrics.HarmonizeCollector)."""

ADD_INBOUND_HARMONIZED_AT = "ALTER TABLE inbound ADD COLUMN harmonized_at REAL"
"""When the harmonizer recorded the message's outcome (harmonized, failed or skipped); unix seconds."""

MIGRATION_0002: Sequence[str] = (
    CREATE_OUTBOUND,
    CREATE_OUTBOUND_CLAIM,
    CREATE_OUTBOUND_RESOURCE,
    CREATE_OUTBOUND_INBOUND,
    CREATE_COUNTERS,
    ADD_INBOUND_HARMONIZED_AT,
)

ADD_OUTBOUND_PURGED_AT = "ALTER TABLE outbound ADD COLUMN purged_at REAL"
"""When retention emptied the row's `body` (unix seconds); NULL while the body is kept. The row itself
(type, id, partition, state, batch, times) stays as the audit record."""

ADD_INBOUND_PURGED_AT = "ALTER TABLE inbound ADD COLUMN purged_at REAL"
"""When retention emptied the message's `raw` (unix seconds); NULL while it is kept. Metadata, `size`,
`sha256` (the dedup key stays whole: a resend is still a duplicate) and `ack` stay."""

CREATE_OUTBOUND_RETENTION = """
CREATE INDEX outbound_retention ON outbound (updated_at)
    WHERE state = 'pushed' AND purged_at IS NULL
"""
"""Partial: only pushed rows whose body is still there, oldest first (node.store.retention)."""

CREATE_INBOUND_RETENTION = """
CREATE INDEX inbound_retention ON inbound (updated_at)
    WHERE purged_at IS NULL AND state IN ('harmonized', 'skipped')
"""
"""Partial: only finished messages whose payload is still there, oldest first (node.store.retention)."""

MIGRATION_0004: Sequence[str] = (
    ADD_OUTBOUND_PURGED_AT,
    ADD_INBOUND_PURGED_AT,
    CREATE_OUTBOUND_RETENTION,
    CREATE_INBOUND_RETENTION,
)

CREATE_BATCHES = """
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    sent_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    outcome TEXT,
    http_status INTEGER,
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    counts_json TEXT NOT NULL,
    response_summary TEXT,
    rows INTEGER NOT NULL DEFAULT 0,
    parent_id INTEGER
)
"""
"""The push audit: one row per transaction Bundle sent (or written) to central, kept forever. `attempts`:
the attempt number of its most-tried resource; `outcome`: ok | rejected | too_large | throttled |
transient | auth | misconfigured (node.push.outcome), `interrupted` (the node died with it in flight),
`abandoned` (given up at shutdown), NULL while in flight; `counts_json`: entries per resource type;
`response_summary`: central's answer as statuses and issue codes, never resource contents; `rows`: outbound
rows covered (superseded versions included); `parent_id`: the batch it was split from (413, bisection)."""

CREATE_BATCHES_OUTCOME = "CREATE INDEX batches_outcome ON batches (outcome, finished_at)"
"""Last success, per-outcome audits."""

ADD_OUTBOUND_PUSHED_AT = "ALTER TABLE outbound ADD COLUMN pushed_at REAL"
"""When central's confirmation was committed (unix seconds)."""

ADD_OUTBOUND_OUTCOME_JSON = "ALTER TABLE outbound ADD COLUMN outcome_json TEXT"
"""A dead row's OperationOutcome from central (may quote values: shown to operators, never logged)."""

ADD_OUTBOUND_SUPERSEDED_BY = "ALTER TABLE outbound ADD COLUMN superseded_by INTEGER"
"""The outbound row sent in this row's place (a newer version of the same resource in the same batch).
Set when the batch is sent; a pushed row with it set was pushed as superseded."""

CREATE_OUTBOUND_PENDING = "CREATE INDEX outbound_pending ON outbound (inbound_id, id) WHERE state = 'pending'"
"""The push queue in message order (partial: pushed rows, the vast majority, are not in it)."""

CREATE_OUTBOUND_RETRY = """
CREATE INDEX outbound_retry ON outbound (next_attempt_at, partition_key)
WHERE state = 'pending' AND next_attempt_at IS NOT NULL
"""
"""Partitions waiting for a retry."""

CREATE_OUTBOUND_SUPERSEDED = """
CREATE INDEX outbound_superseded ON outbound (superseded_by) WHERE superseded_by IS NOT NULL
"""
"""The rows that follow a superseding row's fate."""

MIGRATION_0003: Sequence[str] = (
    CREATE_BATCHES,
    CREATE_BATCHES_OUTCOME,
    ADD_OUTBOUND_PUSHED_AT,
    ADD_OUTBOUND_OUTCOME_JSON,
    ADD_OUTBOUND_SUPERSEDED_BY,
    CREATE_OUTBOUND_PENDING,
    CREATE_OUTBOUND_RETRY,
    CREATE_OUTBOUND_SUPERSEDED,
)

ADD_OUTBOUND_BODY_SIZE = "ALTER TABLE outbound ADD COLUMN body_size INTEGER"
"""Bytes of `body` (UTF-8), written with it; NULL on rows written before migration 0005."""

ADD_OUTBOUND_BODY_DIGEST = "ALTER TABLE outbound ADD COLUMN body_digest TEXT"
"""node.store.digest.fingerprint(body), written with it; NULL on rows written before migration 0005. The
push stage reads both for every candidate row each round: stored, they cost no read or hash of the body."""

MIGRATION_0005: Sequence[str] = (
    ADD_OUTBOUND_BODY_SIZE,
    ADD_OUTBOUND_BODY_DIGEST,
)

CREATE_OUTBOUND_DEAD = "CREATE INDEX outbound_dead ON outbound (id) WHERE state = 'dead'"
"""Dead rows (few): their count without a scan; the operators' list."""

MIGRATION_0006: Sequence[str] = (
    "DROP INDEX outbound_resource",  # no query used it
    "DROP INDEX outbound_claim",  # the push reads its queue from outbound_pending (node.store.push)
    CREATE_OUTBOUND_DEAD,
)
"""Write cost: both dropped indexes were keyed by a hash (resource id, partition key), so each harmonized
resource wrote a random page of each, and each push moved its outbound_claim entry from 'pending' to
'pushed', another random page. The push's blockers now come from the same ordered pass over
outbound_pending as its candidates; outbound counts per state from partial indexes and the total."""

migrations = Migrations(MIGRATION_SET)


@migrations(name="0001_create_inbound")
def _m0001_create_inbound(db: Database) -> None:
    for statement in MIGRATION_0001:
        db.execute(statement)


@migrations(name="0002_create_outbound")
def _m0002_create_outbound(db: Database) -> None:
    for statement in MIGRATION_0002:
        db.execute(statement)


@migrations(name="0003_push")
def _m0003_push(db: Database) -> None:
    for statement in MIGRATION_0003:
        db.execute(statement)


@migrations(name="0004_retention")
def _m0004_retention(db: Database) -> None:
    # Numbered 0004: 0003 is the push stage's (batches). Independent of it: sqlite-utils tracks
    # migrations by name, so either may be applied first.
    for statement in MIGRATION_0004:
        db.execute(statement)


@migrations(name="0005_outbound_digest")
def _m0005_outbound_digest(db: Database) -> None:
    for statement in MIGRATION_0005:
        db.execute(statement)


@migrations(name="0006_outbound_write_cost")
def _m0006_outbound_write_cost(db: Database) -> None:
    for statement in MIGRATION_0006:
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
