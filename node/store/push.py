"""The SQL of the push stage: which outbound rows may go now, their bodies, and what central answered.

Reads (`PushReader`) use their own read-only connection (WAL: they never block the writers), from a
thread of the push worker or a metrics scrape. Writes are functions of a Store (`begin_batch`,
`record_pushed`, `record_retry`, `record_dead`, `finish_batch`, `close_open_batches`) that the node runs
in the GroupCommitWriter's thread (`writer.write(lambda store: ...)`), so the main process keeps ONE
writer connection. Each write is one `BEGIN IMMEDIATE ... COMMIT` transaction of its own, or, run by
`writer.write`, a savepoint in the writer's group transaction (it commits with the intake's messages
of the moment: one fsync for both; the rules below hold the same, since they only need each write to be
atomic and committed before the worker acts on it).

Crash safety: a row leaves `pending` only in the transaction that records central's confirmation
(`record_pushed`) or its rejection (`record_dead`). Before a Bundle is sent, `begin_batch` commits the
audit row and records, on every older row of the batch whose contents differ from the row sent in its
place, which row that is (`superseded_by`): if the node dies before the answer is recorded, those rows stay pending, and
the rows superseded by an attempt whose outcome is unknown are never sent on their own again (central may
hold the newer version already); they follow the fate of the row that superseded them (`record_pushed`
marks them pushed with it, `record_dead` releases them). Older rows with the same contents (`riders`)
are not written then: sent on their own after a crash they would change nothing at central;
`record_pushed` marks them pushed with the batch.

The queue queries name their indexes (migrations 0003, 0006): without statistics SQLite may pick a
partial index on `state = 'pending'` for anything that says so, i.e. read every pending row. Candidates
and blockers come from outbound_pending in push order (the candidates read only as far as needed, the
blockers from the same stretch); the waiting partitions from outbound_retry; the updates by row id say
NOT INDEXED (the rowid is still used) and those by superseded_by name outbound_superseded. Each round
and each confirmation then costs the same with 100 or 100,000 rows pending.

Failures raise node.errors.StoreError subclasses (node.store.errormap), never sqlite3 errors.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from node.errors import StoreClosedError
from node.store.connect import open_connection
from node.store.digest import fingerprint
from node.store.errormap import map_sqlite_error
from node.store.transaction import run_in_transaction

if TYPE_CHECKING:
    from typing import TypeAlias

    from node.store.store import Store

    Target: TypeAlias = Store | sqlite3.Connection
    """The writer's Store (in the writer thread) or a writer connection (tests, tools)."""

_T = TypeVar("_T")

NO_WATERMARK = 1 << 62
"""The watermark when nothing is staged: every harmonized row is eligible."""
MAX_SUMMARY = 1000
MAX_ERROR = 2000

INTERRUPTED = "interrupted"
"""Outcome of a batch whose answer was never recorded (the node stopped or died while it was in flight)."""
ABANDONED = "abandoned"
"""Outcome of a batch the node gave up waiting for at shutdown (its rows stay pending)."""


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A pending outbound row as the batcher sees it (node.push.batcher.Row); no body."""

    id: int
    inbound_id: int
    resource_type: str
    resource_id: str
    partition_key: str
    size: int
    """Bytes of the body (UTF-8)."""
    attempts: int
    created_at: float
    fingerprint: str = ""
    """A digest of the body (node.store.digest): equal for equal contents."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """What `select_candidates` found: the rows that may go now, and the pending rows of partitions in
    flight or waiting for a retry (`blockers`: later versions of their resources with other contents
    must wait for them, node.push.batcher)."""

    rows: list[PendingRow]
    blockers: list[PendingRow]


@dataclass(frozen=True, slots=True)
class PushStats:
    """Scrape-time view of the push stage."""

    pending: int
    oldest_pending_age_s: float
    """Age of the oldest pending row (the head of the queue, by message order); 0 when none."""
    waiting_for_retry: int
    """Pending rows with a future next_attempt_at."""


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A row central rejected on its own: `error` is a summary (issue codes, never diagnostics);
    `outcome_json` central's OperationOutcome (may quote values: stored, never logged)."""

    id: int
    error: str
    outcome_json: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A row of `batches` (the audit)."""

    id: int
    created_at: float
    sent_at: float | None
    finished_at: float | None
    attempts: int
    outcome: str | None
    http_status: int | None
    entries: int
    bytes: int
    counts: dict[str, int]
    response_summary: str | None
    rows: int
    parent_id: int | None


# -- reading ----------------------------------------------------------------------------------------------

_WATERMARK = "SELECT min(id) FROM inbound WHERE state = 'staged'{feeds}"

_ROW_COLUMNS = """id, inbound_id, resource_type, resource_id, partition_key,
       coalesce(body_size, length(CAST(body AS BLOB))), attempts, created_at,
       coalesce(body_digest, push_fingerprint(body))"""
"""Size and fingerprint are stored with the body (migration 0005); rows written before it compute them
(coalesce evaluates its second argument only when the first is NULL)."""

_WAITING_PARTITIONS = """SELECT DISTINCT partition_key FROM outbound INDEXED BY outbound_retry
                         WHERE state = 'pending' AND next_attempt_at > ?"""

_QUEUE = f"""
SELECT {_ROW_COLUMNS}
FROM outbound INDEXED BY outbound_pending
WHERE state = 'pending' AND superseded_by IS NULL AND inbound_id < :watermark
  AND partition_key NOT IN (SELECT value FROM json_each(:held))
ORDER BY inbound_id, id
"""
"""The push queue in order without the held partitions (skipped in SQL, however many rows they have);
read lazily: a round stops as soon as it has what it needs."""

_HELD = f"""
SELECT {_ROW_COLUMNS}
FROM outbound INDEXED BY outbound_pending
WHERE state = 'pending' AND superseded_by IS NULL AND (inbound_id, id) <= (:last_inbound, :last_id)
  AND partition_key IN (SELECT value FROM json_each(:held))
  AND resource_type || '/' || resource_id IN (SELECT value FROM json_each(:keys))
ORDER BY inbound_id, id
"""
"""Rows of held partitions up to the last candidate that share a resource with the candidates: the same
ordered index, the same stretch of it, filtered in SQL."""

_BODIES = "SELECT id, body FROM outbound WHERE id IN (SELECT value FROM json_each(?))"
_PENDING_COUNT = "SELECT count(*) FROM outbound WHERE state = 'pending'"
_HEAD_CREATED = ("SELECT created_at FROM outbound INDEXED BY outbound_pending WHERE state = 'pending' "
                 "ORDER BY inbound_id, id LIMIT 1")
_WAITING = "SELECT count(*) FROM outbound INDEXED BY outbound_retry WHERE state = 'pending' AND next_attempt_at > ?"
_LAST_SUCCESS = "SELECT max(finished_at) FROM batches WHERE outcome = 'ok'"
_LAST_BATCH = "SELECT {columns} FROM batches ORDER BY id DESC LIMIT 1"
_BATCH_COLUMNS = ("id, created_at, sent_at, finished_at, attempts, outcome, http_status, entries, bytes, counts_json, "
                  "response_summary, rows, parent_id")


def select_watermark(conn: sqlite3.Connection, feeds: Sequence[str] | None = None) -> int:
    """The lowest id of a staged inbound row (of `feeds`, when given), or NO_WATERMARK."""
    params: list[object] = []
    clause = ""
    if feeds is not None:
        clause = f" AND feed IN ({', '.join('?' for _ in feeds)})" if feeds else " AND 0"
        params.extend(feeds)
    (lowest,) = conn.execute(_WATERMARK.format(feeds=clause), params).fetchone()
    return NO_WATERMARK if lowest is None else int(lowest)


def select_candidates(conn: sqlite3.Connection, *, now: float, limit: int, busy: Iterable[str] = (),
                      feeds: Sequence[str] | None = None) -> Candidates:
    """Pending rows that may be batched now, in (inbound_id, id) order, whole messages only.

    Left out: rows of messages at or above the watermark (the lowest staged inbound id of `feeds`); rows
    superseded by an attempt whose outcome is unknown; every row of a partition that has a row waiting
    for a retry (`next_attempt_at` > now) or is in `busy` (a batch in flight). Whole messages up to
    `limit` rows (a single message with more is returned whole).

    `blockers`: the rows of those held partitions up to the last candidate that share a resource with a
    candidate, except those with the same contents as every candidate version of their resource
    (node.push.batcher: an earlier version holds a later one back only when their contents differ; held
    rows after the last candidate cannot hold back any candidate). Both are read from outbound_pending,
    which is ordered by message (no hash-keyed index: migration 0006): the candidates lazily, only as far
    as needed, held partitions skipped in SQL; the blockers from the same stretch. One read transaction:
    the watermark and the rows below it are one snapshot.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    conn.create_function("push_fingerprint", 1, fingerprint, deterministic=True)
    conn.execute("BEGIN")
    try:
        watermark = select_watermark(conn, feeds)
        held = set(busy)
        held.update(key for (key,) in conn.execute(_WAITING_PARTITIONS, (now,)))
        held_json = json.dumps(sorted(held))
        rows: list[PendingRow] = []
        cursor = conn.execute(_QUEUE, {"watermark": watermark, "held": held_json})
        try:
            for values in cursor:
                if rows and len(rows) >= limit and values[1] != rows[-1].inbound_id:
                    break  # enough rows, and the next message starts: the last one is complete
                rows.append(_row(values))
        finally:
            cursor.close()
        if len(rows) > limit:  # the last message took `rows` past the limit: it waits, unless alone
            last = rows[-1].inbound_id
            rows = [row for row in rows if row.inbound_id != last] or rows
        blockers: list[PendingRow] = []
        if rows and held:
            keys = json.dumps(sorted({f"{row.resource_type}/{row.resource_id}" for row in rows}))
            blockers = _blockers(rows, conn.execute(_HELD, {
                "last_inbound": rows[-1].inbound_id, "last_id": rows[-1].id, "held": held_json, "keys": keys}))
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return Candidates(rows, blockers)


def _blockers(rows: Sequence[PendingRow], held_rows: Iterable[Sequence[object]]) -> list[PendingRow]:
    """The held rows that can hold a candidate back: not those with the same contents as every candidate
    version of their resource."""
    digests: dict[tuple[object, object], set[object]] = {}
    for row in rows:
        digests.setdefault((row.resource_type, row.resource_id), set()).add(row.fingerprint)
    return [_row(values) for values in held_rows if digests.get((values[2], values[3])) not in (None, {values[8]})]


def _row(values: Sequence[object]) -> PendingRow:
    id_, inbound_id, resource_type, resource_id, partition_key, size, attempts, created_at, digest = values
    return PendingRow(int(id_), int(inbound_id), resource_type, resource_id, partition_key,  # type: ignore[arg-type]
                      int(size or 0), int(attempts), float(created_at), digest)  # type: ignore[arg-type]


def select_bodies(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, str]:
    """Row id -> stored body, for the given rows (rows whose body is gone are absent)."""
    return {int(id_): body for id_, body in conn.execute(_BODIES, (json.dumps(sorted(set(ids))),))
            if body is not None}


def select_stats(conn: sqlite3.Connection, now: float | None = None) -> PushStats:
    now = time.time() if now is None else now
    pending = int(conn.execute(_PENDING_COUNT).fetchone()[0])
    head = conn.execute(_HEAD_CREATED).fetchone()
    waiting = int(conn.execute(_WAITING, (now,)).fetchone()[0])
    age = max(0.0, now - float(head[0])) if head is not None else 0.0
    return PushStats(pending, age, waiting)


def select_last_success(conn: sqlite3.Connection) -> float | None:
    """When central last confirmed a batch (finished_at of the newest `ok` batch), or None."""
    (value,) = conn.execute(_LAST_SUCCESS).fetchone()
    return None if value is None else float(value)


def select_batches(conn: sqlite3.Connection, *, after_id: int = 0, limit: int = 1000) -> list[BatchRecord]:
    """Audit rows with id > after_id, in id order."""
    sql = f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id > ? ORDER BY id LIMIT ?"
    return [BatchRecord(*row[:9], json.loads(row[9] or "{}"), *row[10:])
            for row in conn.execute(sql, (after_id, limit))]


def select_last_batch(conn: sqlite3.Connection) -> BatchRecord | None:
    """The newest row of `batches`, or None."""
    row = conn.execute(_LAST_BATCH.format(columns=_BATCH_COLUMNS)).fetchone()
    return None if row is None else BatchRecord(*row[:9], json.loads(row[9] or "{}"), *row[10:])


class PushReader:
    """A read-only connection for the push stage, shared by threads behind a lock (see node.store.reader)."""

    def __init__(self, path: Path) -> None:
        """:raises StoreError: the file cannot be opened (the writer creates and migrates it first)."""
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = open_connection(Path(path), readonly=True)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def candidates(self, *, now: float, limit: int, busy: Iterable[str] = (),
                   feeds: Sequence[str] | None = None) -> Candidates:
        return self._query("select push candidates",
                           lambda conn: select_candidates(conn, now=now, limit=limit, busy=busy, feeds=feeds))

    def bodies(self, ids: Iterable[int]) -> dict[int, str]:
        wanted = list(ids)
        return self._query("select outbound bodies", lambda conn: select_bodies(conn, wanted))

    def stats(self, now: float | None = None) -> PushStats:
        return self._query("push stats", lambda conn: select_stats(conn, now))

    def last_success(self) -> float | None:
        return self._query("last push success", select_last_success)

    def last_batch(self) -> BatchRecord | None:
        """The newest audit row (the batch sent last), or None."""
        return self._query("last batch", select_last_batch)

    def batches(self, *, after_id: int = 0, limit: int = 1000) -> list[BatchRecord]:
        return self._query("select batches", lambda conn: select_batches(conn, after_id=after_id, limit=limit))

    def _query(self, operation: str, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._conn is None:
                raise StoreClosedError("push reader is closed")
            try:
                return query(self._conn)
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, operation) from exc


# -- writing (in the store writer's thread) -----------------------------------------------------------------

_INSERT_BATCH = """
INSERT INTO batches (created_at, sent_at, attempts, entries, bytes, counts_json, rows, parent_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_ASSIGN = """
UPDATE outbound SET batch_id = ?, superseded_by = ?, attempts = attempts + ?, updated_at = ?
WHERE id = ? AND state = 'pending'
"""
_REPOINT = "UPDATE outbound SET superseded_by = ? WHERE superseded_by = ? AND state = 'pending'"
_ATTEMPTS = "SELECT max(attempts) FROM outbound WHERE id IN (SELECT value FROM json_each(?))"
_PUSH_SENT = """
UPDATE outbound NOT INDEXED
SET state = 'pushed', pushed_at = ?, batch_id = ?, next_attempt_at = NULL, error = NULL, superseded_by = NULL,
    updated_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state = 'pending'
"""
_PUSH_SUPERSEDED = """
UPDATE outbound INDEXED BY outbound_superseded
SET state = 'pushed', pushed_at = ?, batch_id = ?, next_attempt_at = NULL, error = NULL, updated_at = ?
WHERE superseded_by IN (SELECT value FROM json_each(?)) AND state = 'pending'
"""
_RETRY = """
UPDATE outbound NOT INDEXED SET next_attempt_at = ?, error = ?, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state = 'pending'
"""
_DEAD = """
UPDATE outbound SET state = 'dead', error = ?, outcome_json = ?, batch_id = ?, next_attempt_at = NULL,
       superseded_by = NULL, updated_at = ?
WHERE id = ? AND state = 'pending'
"""
_RELEASE = "UPDATE outbound SET superseded_by = NULL, updated_at = ? WHERE superseded_by = ? AND state = 'pending'"
_FINISH = """
UPDATE batches SET finished_at = ?, outcome = ?, http_status = ?, response_summary = ?
WHERE id = ? AND finished_at IS NULL
"""
_CLOSE_OPEN = "UPDATE batches SET finished_at = ?, outcome = ? WHERE finished_at IS NULL"
_CLOSE_SOME = "UPDATE batches SET finished_at = ?, outcome = ? WHERE finished_at IS NULL AND id IN " \
              "(SELECT value FROM json_each(?))"


@dataclass(frozen=True, slots=True)
class BatchStart:
    """What `begin_batch` records about a batch about to be sent."""

    sent: Sequence[int]
    """Ids of the rows whose bodies are sent (one per entry)."""
    superseded: Sequence[tuple[int, int]]
    """(row id, id of the row sent in its place) for the batch's older versions."""
    entries: int
    bytes: int
    counts: dict[str, int]
    parent_id: int | None = None
    """The batch this one was split from (bisection, 413), for the audit."""
    riders: int = 0
    """Older versions with the same contents as their sent row: not marked now (node.push.worker, rule 4),
    confirmed by `record_pushed(riders=...)`; counted in the audit's `rows`."""


@dataclass(frozen=True, slots=True)
class Finish:
    """How a batch ended, for its audit row. `summary` names statuses and issue codes, never contents."""

    outcome: str
    http_status: int | None = None
    summary: str | None = None


def _connection(target: Target) -> sqlite3.Connection:
    if isinstance(target, sqlite3.Connection):
        return target
    return target._connection()  # the writer's own connection, in the writer thread


def _transaction(store: Target, operation: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """`body` in its own BEGIN IMMEDIATE ... COMMIT; or, when a transaction is open already (the writer's
    group commit, GroupCommitWriter.write: a savepoint of its transaction), just `body`."""
    conn = _connection(store)
    if conn.in_transaction:
        try:
            return body(conn)
        except sqlite3.Error as exc:
            raise map_sqlite_error(exc, operation) from exc
    return run_in_transaction(conn, operation, lambda: body(conn))


def _ids(ids: Iterable[int]) -> str:
    return json.dumps(sorted(set(ids)))


def begin_batch(store: Target, start: BatchStart, *, now: float | None = None) -> tuple[int, int]:
    """Record a batch about to be sent: its audit row, and on each of its rows the batch id, one more
    attempt (rows sent) and what supersedes it (NULL for rows sent). Rows that an earlier, unresolved
    attempt marked superseded by one of this batch's older rows now point at the row sent.

    :returns: (batch id, attempt number: the most attempts any sent row has had, this one included).
    """
    now = time.time() if now is None else now

    def body(conn: sqlite3.Connection) -> tuple[int, int]:
        sent = list(start.sent)
        attempt = int(conn.execute(_ATTEMPTS, (_ids(sent),)).fetchone()[0] or 0) + 1
        cursor = conn.execute(_INSERT_BATCH, (now, now, attempt, start.entries, start.bytes,
                                              json.dumps(start.counts, sort_keys=True),
                                              len(sent) + len(start.superseded) + start.riders, start.parent_id))
        batch_id = int(cursor.lastrowid or 0)
        conn.executemany(_ASSIGN, [(batch_id, None, 1, now, row_id) for row_id in sent])
        conn.executemany(_ASSIGN, [(batch_id, newer, 0, now, row_id) for row_id, newer in start.superseded])
        conn.executemany(_REPOINT, [(newer, row_id) for row_id, newer in start.superseded])
        return batch_id, attempt

    return _transaction(store, "begin push batch", body)


def record_pushed(store: Target, batch_id: int, sent: Iterable[int], finish: Finish, *,
                  riders: Iterable[int] = (), now: float | None = None) -> tuple[int, int]:
    """Central confirmed the batch: its sent rows, every pending row they supersede and the `riders`
    (older versions with the same contents, not marked when the batch was sent) become `pushed`
    (pushed_at, batch_id); the audit row is finished. :returns: (rows sent, superseded rows) marked."""
    now = time.time() if now is None else now
    ids = _ids(sent)
    rider_ids = list(riders)

    def body(conn: sqlite3.Connection) -> tuple[int, int]:
        superseded = conn.execute(_PUSH_SUPERSEDED, (now, batch_id, now, ids)).rowcount
        if rider_ids:
            superseded += conn.execute(_PUSH_SENT, (now, batch_id, now, _ids(rider_ids))).rowcount
        pushed = conn.execute(_PUSH_SENT, (now, batch_id, now, ids)).rowcount
        _finish(conn, batch_id, finish, now)
        return pushed, superseded

    return _transaction(store, "record pushed batch", body)


def record_retry(store: Target, batch_id: int, sent: Iterable[int], next_attempt_at: float, error: str,
                 finish: Finish, *, now: float | None = None) -> int:
    """The batch is to be sent again later: its sent rows get `next_attempt_at` and `error` (the reason,
    no contents); the audit row is finished. :returns: rows updated."""
    now = time.time() if now is None else now

    def body(conn: sqlite3.Connection) -> int:
        count = conn.execute(_RETRY, (next_attempt_at, error[:MAX_ERROR], now, _ids(sent))).rowcount
        _finish(conn, batch_id, finish, now)
        return count

    return _transaction(store, "record push retry", body)


def record_dead(store: Target, batch_id: int, dead: Iterable[DeadRow], finish: Finish | None, *,
                now: float | None = None) -> int:
    """Central rejected these rows on their own: they become `dead` with the summary and the
    OperationOutcome; rows they superseded are released (pending again, sent on their own later). With
    `finish`, the audit row is finished too. :returns: rows marked dead."""
    now = time.time() if now is None else now
    rows = list(dead)

    def body(conn: sqlite3.Connection) -> int:
        count = 0
        for row in rows:
            count += conn.execute(_DEAD, (row.error[:MAX_ERROR], row.outcome_json, batch_id, now, row.id)).rowcount
            conn.execute(_RELEASE, (now, row.id))
        if finish is not None:
            _finish(conn, batch_id, finish, now)
        return count

    return _transaction(store, "record dead rows", body)


def finish_batch(store: Target, batch_id: int, finish: Finish, *, now: float | None = None) -> None:
    """Finish the audit row of a batch whose rows stay as they are (split after a 413 or for bisection)."""
    now = time.time() if now is None else now
    _transaction(store, "finish push batch", lambda conn: _finish(conn, batch_id, finish, now))


def close_open_batches(store: Target, outcome: str = INTERRUPTED, *, ids: Iterable[int] | None = None,
                       now: float | None = None) -> int:
    """Finish audit rows still open (all, or those of `ids`) with `outcome`: at start-up (`interrupted`:
    the node died with them in flight) and at shutdown (`abandoned`). Their rows are simply pending."""
    now = time.time() if now is None else now

    def body(conn: sqlite3.Connection) -> int:
        if ids is None:
            return conn.execute(_CLOSE_OPEN, (now, outcome)).rowcount
        return conn.execute(_CLOSE_SOME, (now, outcome, _ids(ids))).rowcount

    return _transaction(store, "close open push batches", body)


def _finish(conn: sqlite3.Connection, batch_id: int, finish: Finish, now: float) -> None:
    summary = finish.summary[:MAX_SUMMARY] if finish.summary is not None else None
    conn.execute(_FINISH, (now, finish.outcome, finish.http_status, summary, batch_id))
