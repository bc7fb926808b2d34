"""The SQL of the harmonization stage: claim staged messages, record their outcome, read its statistics.

Harmonizer workers are separate processes, each with its own writer connection (node.store.connect);
the intake's GroupCommitWriter is the other writer. Both take SQLite's write lock with BEGIN IMMEDIATE and
wait for each other up to `busy_timeout` (connect.BUSY_TIMEOUT_MS), so workers keep their transactions
short: one chunk of already converted messages, no conversion work while the lock is held.

Crash safety comes from two rules:

- `claim_staged` takes no lock and writes no claim marker. Worker `i` of `n` only ever looks at rows with
  `id % n == i`, so two workers never take the same row; a killed worker's rows are simply still
  `staged` (its open transaction is rolled back by SQLite) and are taken again by its successor.
- `record_results` writes everything about a chunk in ONE transaction: for each message the state change
  (guarded by `state = 'staged'`), its outbound rows (only when the guard matched) and the counters.
  A message is therefore either fully recorded once or not at all, and recording the same results twice
  (a straggler, a second node on the same file) changes nothing the second time.

Failures raise node.errors.StoreError subclasses (node.store.errormap), never sqlite3 errors.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from node.model import MessageState
from node.store.digest import fingerprint
from node.store.errormap import map_sqlite_error
from node.store.transaction import run_in_transaction

# -- counter names and label limits ---------------------------------------------------------------------

UNMAPPED_CODES = "unmapped_codes"
"""edge_node_unmapped_codes_total{feed, system}: codes without a terminology mapping, per code system."""
UNMAPPED_SEGMENTS = "unmapped_segments"
"""edge_node_unmapped_segments_total{feed, segment}: segments no mapper handled, per segment id."""
HARMONIZE_FAILURES = "harmonize_failures"
"""edge_node_harmonize_failures_total{feed, reason}: messages that went `failed`, per HarmonizeError kind."""

MAX_LABELS_PER_FEED = 50
"""Distinct labels one counter keeps per feed; later new labels are counted under `OTHER_LABEL`."""
OTHER_LABEL = "other"
MAX_LABEL_LENGTH = 64
MAX_ERROR_LENGTH = 2000
"""An inbound row's `error` text is cut to this many characters."""

OUTBOUND_STATES = ("pending", "pushed", "dead")
"""States of an outbound row: waiting for the push stage, accepted by central, given up on."""

RECORDED_STATES = frozenset({MessageState.HARMONIZED, MessageState.FAILED, MessageState.SKIPPED})


# -- data -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StagedRow:
    """What a worker needs of one staged inbound message. `raw` is left out of repr()."""

    id: int
    feed: str
    message_type: str
    charset: str
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class OutboundResource:
    """One harmonized FHIR resource: its type, stable id and compact JSON (left out of repr())."""

    resource_type: str
    resource_id: str
    body: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MessageResult:
    """The harmonizer's outcome for one staged message (build with `harmonized`, `failed`, `skipped`)."""

    inbound_id: int
    feed: str
    state: MessageState
    partition_key: str = ""
    resources: tuple[OutboundResource, ...] = ()
    error: str | None = None
    failure_kind: str = ""
    """The failure's kind: the label value of edge_node_harmonize_failures_total{reason}."""
    unmapped_segments: Mapping[str, int] = field(default_factory=dict)
    unmapped_codes: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def harmonized(cls, inbound_id: int, feed: str, partition_key: str, resources: Iterable[OutboundResource],
                   unmapped_segments: Mapping[str, int] | None = None,
                   unmapped_codes: Mapping[str, int] | None = None) -> MessageResult:
        return cls(inbound_id, feed, MessageState.HARMONIZED, partition_key, tuple(resources),
                   unmapped_segments=dict(unmapped_segments or {}), unmapped_codes=dict(unmapped_codes or {}))

    @classmethod
    def failed(cls, inbound_id: int, feed: str, error: str, kind: str) -> MessageResult:
        return cls(inbound_id, feed, MessageState.FAILED, error=error[:MAX_ERROR_LENGTH], failure_kind=kind)

    @classmethod
    def skipped(cls, inbound_id: int, feed: str) -> MessageResult:
        return cls(inbound_id, feed, MessageState.SKIPPED)


@dataclass(frozen=True, slots=True)
class OutboundRow:
    """One row of `outbound`. `body` is left out of repr()."""

    id: int
    inbound_id: int
    resource_type: str
    resource_id: str
    partition_key: str
    body: str = field(repr=False)
    state: str
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class HarmonizeStats:
    """Scrape-time statistics of the stage (node.metrics.HarmonizeCollector, `edge-node status`)."""

    outbound: dict[str, int]
    """Outbound rows per state (every state of OUTBOUND_STATES present, 0 when none)."""
    counters: list[tuple[str, str, str, int]]
    """(name, feed, label, value) of every persisted counter."""
    staged: int
    """Inbound rows waiting for harmonization."""
    oldest_staged_age_s: float
    """Age of the oldest staged row (by id) in seconds; 0 when there is none."""


# -- claiming -------------------------------------------------------------------------------------------

_CLAIM = """
SELECT id, feed, message_type, charset, raw FROM inbound
WHERE state = 'staged' AND id % ? = ?{feeds}
ORDER BY id LIMIT ?
"""


def claim_staged(conn: sqlite3.Connection, *, worker_index: int, worker_count: int, limit: int,
                 feeds: Sequence[str] | None = None) -> list[StagedRow]:
    """Up to `limit` staged rows of worker `worker_index` of `worker_count` (`id % worker_count ==
    worker_index`), in id order; with `feeds`, only rows of those feeds. Writes nothing: see the module
    docstring for why no claim marker is needed.

    :raises StoreError: the query failed.
    """
    if not 0 <= worker_index < worker_count:
        raise ValueError(f"worker_index {worker_index} outside 0..{worker_count - 1}")
    params: list[object] = [worker_count, worker_index]
    feed_filter = ""
    if feeds is not None:
        if not feeds:
            return []
        feed_filter = f" AND feed IN ({', '.join('?' for _ in feeds)})"
        params.extend(feeds)
    params.append(limit)
    try:
        rows = conn.execute(_CLAIM.format(feeds=feed_filter), params).fetchall()
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, "claim staged") from exc
    return [StagedRow(int(id_), feed, message_type, charset, bytes(raw))
            for id_, feed, message_type, charset, raw in rows]


# -- recording ------------------------------------------------------------------------------------------

_MOVE = """
UPDATE inbound SET state = ?, error = ?, updated_at = ?, harmonized_at = ?
WHERE id = ? AND state = 'staged'
"""

_INSERT_OUTBOUND = """
INSERT INTO outbound (inbound_id, resource_type, resource_id, partition_key, body, body_size, body_digest, state,
                      created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
"""

_SELECT_LABELS = "SELECT label FROM counters WHERE name = ? AND feed = ?"

_ADD_COUNTER = """
INSERT INTO counters (name, feed, label, value) VALUES (?, ?, ?, ?)
ON CONFLICT (name, feed, label) DO UPDATE SET value = value + excluded.value
"""


def record_results(conn: sqlite3.Connection, results: Sequence[MessageResult], *,
                   now: float | None = None) -> list[int]:
    """Record the outcome of a chunk of messages in ONE transaction (BEGIN IMMEDIATE ... COMMIT).

    Per message: move the inbound row from `staged` to the result's state (with `error`, `updated_at`,
    `harmonized_at`); only if that matched (the row was still staged) insert its outbound rows and count
    its unmapped segments, codes and failure. Rows no longer staged are left alone.

    :returns: the ids of the messages recorded now (others had been recorded before).
    :raises StoreError: (or a subclass) nothing of the chunk is recorded. A failed ROLLBACK raises
        StoreIOError.
    """
    for result in results:
        if result.state not in RECORDED_STATES:
            raise ValueError(f"cannot record state {result.state!r}")
    if not results:
        return []
    now = time.time() if now is None else now
    rows = [_outbound_rows(result, now) for result in results]  # before the write lock is taken
    return run_in_transaction(conn, "record harmonized", lambda: _apply(conn, results, rows, now))


def _outbound_rows(result: MessageResult, now: float) -> list[tuple[object, ...]]:
    """The outbound rows of one result, as parameters of _INSERT_OUTBOUND (size and digest computed)."""
    if result.state is not MessageState.HARMONIZED:
        return []
    rows: list[tuple[object, ...]] = []
    for r in result.resources:
        data = r.body.encode("utf-8")
        rows.append((result.inbound_id, r.resource_type, r.resource_id, result.partition_key, r.body, len(data),
                     fingerprint(data), now, now))
    return rows


def _apply(conn: sqlite3.Connection, results: Sequence[MessageResult], rows: Sequence[list[tuple[object, ...]]],
           now: float) -> list[int]:
    """The statements of `record_results`, inside its transaction (`rows`: _outbound_rows per result)."""
    applied: list[int] = []
    deltas: Counter[tuple[str, str, str]] = Counter()
    for result, outbound in zip(results, rows, strict=True):
        error = result.error if result.state is MessageState.FAILED else None
        moved = conn.execute(_MOVE, (result.state.value, error, now, now, result.inbound_id)).rowcount
        if moved != 1:
            continue
        applied.append(result.inbound_id)
        if outbound:
            conn.executemany(_INSERT_OUTBOUND, outbound)
        for segment, n in result.unmapped_segments.items():
            deltas[UNMAPPED_SEGMENTS, result.feed, segment] += n
        for system, n in result.unmapped_codes.items():
            deltas[UNMAPPED_CODES, result.feed, system] += n
        if result.state is MessageState.FAILED:
            deltas[HARMONIZE_FAILURES, result.feed, result.failure_kind or "unknown"] += 1
    _add_counters(conn, deltas)
    return applied


def _add_counters(conn: sqlite3.Connection, deltas: Mapping[tuple[str, str, str], int]) -> None:
    """Upsert counter increments; per (name, feed) at most MAX_LABELS_PER_FEED labels (then `other`)."""
    known: dict[tuple[str, str], set[str]] = {}
    merged: Counter[tuple[str, str, str]] = Counter()
    for (name, feed, label), n in sorted(deltas.items()):
        if n <= 0:
            continue
        labels = known.get((name, feed))
        if labels is None:
            labels = known[name, feed] = {row[0] for row in conn.execute(_SELECT_LABELS, (name, feed))}
            labels.discard(OTHER_LABEL)
        label = str(label)[:MAX_LABEL_LENGTH] or "(none)"
        if label != OTHER_LABEL and label not in labels:
            if len(labels) < MAX_LABELS_PER_FEED:
                labels.add(label)
            else:
                label = OTHER_LABEL
        merged[name, feed, label] += n
    if merged:
        conn.executemany(_ADD_COUNTER, [(*key, n) for key, n in merged.items()])


# -- reading --------------------------------------------------------------------------------------------

_OUTBOUND_TOTAL = "SELECT count(*) FROM outbound INDEXED BY outbound_inbound"
_OUTBOUND_PENDING = "SELECT count(*) FROM outbound INDEXED BY outbound_pending WHERE state = 'pending'"
_OUTBOUND_DEAD = "SELECT count(*) FROM outbound INDEXED BY outbound_dead WHERE state = 'dead'"
_COUNTERS = "SELECT name, feed, label, value FROM counters ORDER BY name, feed, label"
_STAGED_COUNT = "SELECT count(*) FROM inbound WHERE state = 'staged'"
_OLDEST_STAGED = "SELECT received_at FROM inbound WHERE state = 'staged' ORDER BY id LIMIT 1"
_OUTBOUND_COLUMNS = "id, inbound_id, resource_type, resource_id, partition_key, body, state, attempts, created_at"


def outbound_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Outbound rows per state; every state of OUTBOUND_STATES is present (0 when none).

    One read transaction; pending and dead from their partial indexes, pushed = all - pending - dead
    (all: the smallest index, 8-byte entries; no index is keyed by state: migration 0006 says why)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        total = int(conn.execute(_OUTBOUND_TOTAL).fetchone()[0])
        pending = int(conn.execute(_OUTBOUND_PENDING).fetchone()[0])
        dead = int(conn.execute(_OUTBOUND_DEAD).fetchone()[0])
    finally:
        if own:
            conn.execute("COMMIT")
    return {"pending": pending, "pushed": total - pending - dead, "dead": dead}


def select_counters(conn: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    """(name, feed, label, value) of every persisted counter."""
    return [(name, feed, label, int(value)) for name, feed, label, value in conn.execute(_COUNTERS)]


def staged_count(conn: sqlite3.Connection) -> int:
    """Inbound rows in state `staged` (all feeds)."""
    return int(conn.execute(_STAGED_COUNT).fetchone()[0])


def oldest_staged_age(conn: sqlite3.Connection, now: float | None = None) -> float:
    """Seconds since the oldest (lowest id) staged row was received; 0 when nothing is staged."""
    row = conn.execute(_OLDEST_STAGED).fetchone()
    if row is None:
        return 0.0
    return max(0.0, (time.time() if now is None else now) - float(row[0]))


def harmonize_stats(conn: sqlite3.Connection, now: float | None = None) -> HarmonizeStats:
    """Everything the metrics and the status CLI show about this stage (several read transactions)."""
    return HarmonizeStats(outbound=outbound_counts(conn), counters=select_counters(conn),
                          staged=staged_count(conn), oldest_staged_age_s=oldest_staged_age(conn, now))


def select_outbound(conn: sqlite3.Connection, inbound_id: int | None = None) -> list[OutboundRow]:
    """Outbound rows in id order, optionally only those of one inbound message."""
    where, params = ("WHERE inbound_id = ?", (inbound_id,)) if inbound_id is not None else ("", ())
    sql = f"SELECT {_OUTBOUND_COLUMNS} FROM outbound {where} ORDER BY id"
    return [OutboundRow(*row) for row in conn.execute(sql, params)]
