"""Helpers of the retention tests (no tests here): what the harmonizer and the push stage write, with
timestamps chosen by the test, on their own connection (as their processes do)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from node.store.connect import open_connection
from node.store.outbound import MessageResult, OutboundResource, record_results

DAY = 86_400.0


@contextmanager
def connection(db: Path) -> Iterator[sqlite3.Connection]:
    """A second writer connection (what a harmonizer worker or the push stage holds)."""
    conn = open_connection(db)
    try:
        yield conn
    finally:
        conn.close()


def harmonized(conn: sqlite3.Connection, inbound_id: int, bodies: Sequence[str], *, at: float,
               feed: str = "adt") -> None:
    """Record message `inbound_id` as harmonized into one outbound resource per body, at time `at`."""
    resources = [OutboundResource("Observation", f"obs-{inbound_id}-{n}", body) for n, body in enumerate(bodies)]
    record_results(conn, [MessageResult.harmonized(inbound_id, feed, f"patient-{inbound_id}", resources)], now=at)


def record(conn: sqlite3.Connection, result: MessageResult, *, at: float) -> None:
    record_results(conn, [result], now=at)


def set_outbound(conn: sqlite3.Connection, state: str, *, at: float, inbound_id: int | None = None,
                 outbound_id: int | None = None) -> None:
    """What the push stage does: move outbound rows (of one message, or one row, or all) to `state`."""
    where, params = "1 = 1", ()
    if inbound_id is not None:
        where, params = "inbound_id = ?", (inbound_id,)
    if outbound_id is not None:
        where, params = "id = ?", (outbound_id,)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"UPDATE outbound SET state = ?, updated_at = ? WHERE {where}", (state, at, *params))
    conn.execute("COMMIT")


def inbound_rows(conn: sqlite3.Connection) -> dict[int, dict[str, object]]:
    cursor = conn.execute("SELECT * FROM inbound ORDER BY id")
    names = [d[0] for d in cursor.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in cursor}


def outbound_rows(conn: sqlite3.Connection) -> dict[int, dict[str, object]]:
    cursor = conn.execute("SELECT * FROM outbound ORDER BY id")
    names = [d[0] for d in cursor.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in cursor}


def store_bytes(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
