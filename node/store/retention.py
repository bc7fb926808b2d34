"""The SQL of retention: purge payloads that have done their job, give the space back to the file system.

What is purged, once older than `[store] retention_days` (the `cutoff`, unix seconds):

- outbound rows in state `pushed` (central has them), by `updated_at` (the time they were pushed): `body`
  becomes '' and `purged_at` is set. Type, id, partition, state, batch id and times stay: the audit.
- inbound messages in state `harmonized` or `skipped`, by `updated_at` (when the harmonizer recorded
  them), whose outbound rows are ALL pushed and purged (none for `skipped`, possibly none for
  `harmonized`): `raw` becomes a zero-length blob and `purged_at` is set. Everything else stays:
  feed, times, control id, sending application/facility, type, `size` (the original length), `sha256`,
  state and `ack`. The dedup key (node.store.queries) is untouched, so a resend of a purged message is
  still recognised as a duplicate and answered with the ACK it got the first time (that is why `ack`
  is kept: without it a resending MLLP sender would get no answer at all).

Never purged: messages still `staged` (not harmonized yet), `failed` ones (an operator must see them),
messages with any outbound row that is `pending`, `dead` or in any other state than pushed-and-purged,
and `dead` outbound rows (kept whole until an operator acts on them: requeue or delete).

Every function does ONE short transaction (at most `limit` rows, default CHUNK_ROWS) so the store writer
can interleave intake commits between them (node.maintenance runs each chunk as its own
GroupCommitWriter.call). `vacuum_chunk` returns freed pages to the file system (`auto_vacuum=INCREMENTAL`,
node.store.connect) in chunks of pages; `checkpoint_truncate` then shrinks the WAL to zero bytes and lets
the database file's new, smaller size reach the disk.

Functions take the writer's Store (what GroupCommitWriter.call passes) or a writer sqlite3.Connection and
raise node.errors.StoreError subclasses (node.store.errormap), never sqlite3 errors.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.store.connect import BUSY_TIMEOUT_MS
from node.store.errormap import map_sqlite_error
from node.store.transaction import run_in_transaction

if TYPE_CHECKING:
    from node.store.store import Store

CHUNK_ROWS = 500
"""Rows one retention transaction purges at most."""
VACUUM_PAGES = 1024
"""Pages one incremental-vacuum transaction gives back at most (4 MiB with 4 KiB pages)."""
CHECKPOINT_BUSY_TIMEOUT_MS = 1000
"""How long the TRUNCATE checkpoint waits for readers; the writer (and so intake) waits that long at most."""

SECONDS_PER_DAY = 86_400.0

_PURGE_OUTBOUND = """
UPDATE outbound SET body = '', purged_at = :now
WHERE id IN (
    SELECT id FROM outbound INDEXED BY outbound_retention
    WHERE state = 'pushed' AND purged_at IS NULL AND updated_at < :cutoff
    ORDER BY updated_at LIMIT :limit
)
"""

_INBOUND_CANDIDATES = """
SELECT id, updated_at FROM inbound INDEXED BY inbound_retention
WHERE purged_at IS NULL AND state IN ('harmonized', 'skipped') AND updated_at < :cutoff
    AND (updated_at, id) > (:after_time, :after_id)
ORDER BY updated_at, id LIMIT :limit
"""
"""Candidates in (updated_at, id) order after a cursor: the ones still blocked by outbound rows (central
unreachable) are stepped over, not scanned again within one run."""

_PURGE_INBOUND = """
UPDATE inbound SET raw = x'', purged_at = :now
WHERE id = :id AND purged_at IS NULL AND state IN ('harmonized', 'skipped')
    AND NOT EXISTS (
        SELECT 1 FROM outbound
        WHERE outbound.inbound_id = inbound.id AND (outbound.state != 'pushed' OR outbound.purged_at IS NULL)
    )
"""

START = (float("-inf"), 0)
"""The cursor of the first inbound chunk."""


@dataclass(frozen=True, slots=True)
class InboundChunk:
    """The outcome of one `purge_inbound_chunk`."""

    purged: int
    """Messages whose raw was purged now."""
    scanned: int
    """Candidates looked at (older than the cutoff, not purged); fewer than the limit: the run is done."""
    cursor: tuple[float, int]
    """(updated_at, id) of the last candidate: where the next chunk starts."""


def cutoff_for(now: float, retention_days: float) -> float:
    """Rows last changed before this unix time are old enough to purge."""
    return now - retention_days * SECONDS_PER_DAY


def purge_outbound_chunk(target: Store | sqlite3.Connection, *, cutoff: float, now: float,
                         limit: int = CHUNK_ROWS) -> int:
    """Purge the bodies of at most `limit` pushed outbound rows older than `cutoff`, oldest first, in one
    transaction. Returns how many; fewer than `limit`: none are left."""
    conn = _connection(target)
    return run_in_transaction(conn, "retention (outbound)", lambda: conn.execute(
        _PURGE_OUTBOUND, {"now": now, "cutoff": cutoff, "limit": limit}).rowcount)


def purge_inbound_chunk(target: Store | sqlite3.Connection, *, cutoff: float, now: float,
                        after: tuple[float, int] = START, limit: int = CHUNK_ROWS) -> InboundChunk:
    """Purge the raw payload of finished inbound messages older than `cutoff` (module docstring), looking
    at most at `limit` candidates after the cursor `after`, in one transaction."""
    conn = _connection(target)

    def purge() -> InboundChunk:
        candidates = conn.execute(_INBOUND_CANDIDATES, {
            "cutoff": cutoff, "after_time": after[0], "after_id": after[1], "limit": limit}).fetchall()
        if not candidates:
            return InboundChunk(0, 0, after)
        purged = 0
        for message_id, _updated_at in candidates:
            purged += conn.execute(_PURGE_INBOUND, {"now": now, "id": message_id}).rowcount
        last_id, last_time = candidates[-1]
        return InboundChunk(purged, len(candidates), (float(last_time), int(last_id)))

    return run_in_transaction(conn, "retention (inbound)", purge)


def freelist_pages(target: Store | sqlite3.Connection) -> int:
    """Free pages inside the database file (what incremental vacuum can give back)."""
    conn = _connection(target)
    try:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, "retention (freelist)") from exc


def vacuum_chunk(target: Store | sqlite3.Connection, max_pages: int = VACUUM_PAGES) -> int:
    """Give at most `max_pages` free pages back to the file system (one transaction; the file shrinks
    when the WAL is checkpointed). Returns the number of pages freed; 0: nothing (more) to free."""
    conn = _connection(target)
    try:
        before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if before == 0:
            return 0
        # Each step of this pragma frees one page and yields an empty row, and sqlite3's execute() steps a
        # column-less statement only once (fetchall() does not help): executescript() steps it to its end.
        conn.executescript(f"PRAGMA incremental_vacuum({max(1, int(max_pages))})")
        after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, "retention (incremental vacuum)") from exc
    return before - after


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The result of PRAGMA wal_checkpoint(TRUNCATE)."""

    busy: bool
    """A reader or writer kept it from completing (the WAL was not truncated; a later run retries)."""
    wal_frames: int
    checkpointed_frames: int


def checkpoint_truncate(target: Store | sqlite3.Connection,
                        busy_timeout_ms: int = CHECKPOINT_BUSY_TIMEOUT_MS) -> Checkpoint:
    """Copy the WAL into the database file (which takes its new size) and truncate the WAL to 0 bytes,
    waiting at most `busy_timeout_ms` for readers."""
    conn = _connection(target)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}").fetchall()
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}").fetchall()
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, "retention (checkpoint)") from exc
    return Checkpoint(bool(busy), int(log), int(done))


def _connection(target: Store | sqlite3.Connection) -> sqlite3.Connection:
    if isinstance(target, sqlite3.Connection):
        return target
    return target._connection()  # the writer's own connection, in the writer thread
