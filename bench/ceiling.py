"""The ceiling: what bare SQLite on this disk can commit, with no network, no parsing, no node.

Own connection, WAL, synchronous=FULL (as the node's store), the node's schema (its migrations, so the
`inbound` row and index shape stay the same as the schema evolves), rows of the same size and content as
the MLLP bench's messages.

- 1 producer: one autocommit INSERT per row (one transaction, one WAL fsync each), in a loop.
- N waiting producers: N threads each hand one row to a single committing thread and wait for its
  commit; the committer takes everything pending, inserts it in ONE transaction (one fsync) and wakes
  the producers of that batch. That is ideal group commit: the best the node's GroupCommitWriter could
  do with the same Python threads and the same SQLite.

Latencies are per row: from handing the row over to its commit returning.
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import HEAD, TAIL
from node.store.migrations import migrate

perf = time.perf_counter

INSERT = """
INSERT INTO inbound (
    feed, received_at, control_id, sending_app, sending_facility, message_type, version, charset,
    raw, size, sha256, state, error, ack, source, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

ACK = (b"MSH|^~\\&|EDGE|DIZ|KIS|KLINIKUM^1.2.276.0.76.3.1.1^ISO|20240315103000+0100||ACK^A01^ACK|"
       b"0123456789abcdef0123|P|2.5||||||UNICODE UTF-8\rMSA|AA|C00000000000001\r")
"""An ACK of the size the node stores with each row (original mode, AA)."""


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("PRAGMA auto_vacuum=INCREMENTAL", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL"):
        conn.execute(pragma).fetchall()
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        raise RuntimeError("cannot switch the ceiling's database to WAL")
    migrate(conn)  # the node's own schema, as the node's store has it
    return conn


def make_row(producer: int, seq: int) -> tuple[object, ...]:
    control_id = b"C000000%02d%011d" % (producer, seq)
    raw = HEAD + control_id + TAIL
    now = time.time()
    return ("mllp", now, control_id.decode("ascii"), "KIS", "KLINIKUM^1.2.276.0.76.3.1.1^ISO",
            "ADT^A01^ADT_A01", "2.5", "utf-8", raw, len(raw), hashlib.sha256(raw).digest(), "staged", None,
            ACK, None, now)


@dataclass(slots=True)
class Result:
    rate: float
    latencies: list[float]
    rows: int
    batches: int = 0
    notes: list[str] = field(default_factory=list)


def one_producer(path: Path, warmup: float, seconds: float) -> Result:
    conn = open_db(path)
    try:
        warm_end = perf() + warmup
        end = warm_end + seconds
        latencies: list[float] = []
        seq = 0
        while True:
            seq += 1
            row = make_row(0, seq)
            started = perf()
            if started >= end:
                break
            conn.execute(INSERT, row)
            done = perf()
            if warm_end <= done < end:
                latencies.append(done - started)
        rows = conn.execute("SELECT count(*) FROM inbound").fetchone()[0]
    finally:
        conn.close()
    return Result(rate=len(latencies) / seconds, latencies=latencies, rows=rows, batches=rows)


def waiting_producers(path: Path, producers: int, warmup: float, seconds: float) -> Result:
    conn = open_db(path)
    pending: queue.SimpleQueue[tuple[tuple[object, ...], threading.Lock] | None] = queue.SimpleQueue()
    stats = {"batches": 0, "rows": 0}
    failure: list[BaseException] = []

    def committer() -> None:
        try:
            while True:
                first = pending.get()
                if first is None:
                    return
                batch = [first]
                try:
                    while True:
                        item = pending.get_nowait()
                        if item is None:
                            pending.put(None)  # keep the sentinel for the outer loop
                            break
                        batch.append(item)
                except queue.Empty:
                    pass
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(INSERT, [row for row, _ in batch])
                conn.execute("COMMIT")
                stats["batches"] += 1
                stats["rows"] += len(batch)
                for _, waiter in batch:
                    waiter.release()
        except BaseException as exc:
            failure.append(exc)
            raise

    warm_end = perf() + 0.05 + warmup
    end = warm_end + seconds
    per_thread: list[list[float]] = [[] for _ in range(producers)]

    def producer(index: int) -> None:
        waiter = threading.Lock()
        waiter.acquire()
        latencies = per_thread[index]
        seq = 0
        while True:
            seq += 1
            row = make_row(index, seq)
            started = perf()
            if started >= end or failure:
                return
            pending.put((row, waiter))
            if not waiter.acquire(timeout=10):
                failure.append(TimeoutError("ceiling commit took over 10 s"))
                return
            done = perf()
            if warm_end <= done < end:
                latencies.append(done - started)

    writer = threading.Thread(target=committer, name="ceiling-committer")
    writer.start()
    threads = [threading.Thread(target=producer, args=(i,)) for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pending.put(None)
    writer.join()
    try:
        if failure:
            raise RuntimeError(f"ceiling failed: {failure[0]!r}")
        rows = conn.execute("SELECT count(*) FROM inbound").fetchone()[0]
    finally:
        conn.close()
    latencies = [x for thread in per_thread for x in thread]
    return Result(rate=len(latencies) / seconds, latencies=latencies, rows=rows, batches=stats["batches"],
                  notes=[f"{stats['rows'] / max(1, stats['batches']):.1f} rows per commit on average"])
