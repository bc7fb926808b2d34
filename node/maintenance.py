"""Periodic store maintenance in the node's main process: retention (node.store.retention).

`RetentionJob` runs at start-up and then every `[store] retention_interval_s`, in its own thread. Every
step is one short transaction run by the store writer (GroupCommitWriter.call), so it shares the node's
one writer connection and intake commits interleave with it: a message arriving during a long run waits
for one chunk at most (CHUNK_ROWS rows or VACUUM_PAGES pages), never for the whole run.

One run:

1. purge the bodies of outbound rows pushed more than `retention_days` ago (chunks of 500 rows);
2. purge the raw payload of inbound messages done with (harmonized/skipped, every outbound row pushed and
   purged) and older than `retention_days`, keeping their metadata, sha256 and ACK (chunks);
3. if anything was purged or the file has free pages: incremental vacuum in chunks of pages, then
   `wal_checkpoint(TRUNCATE)`, so the database file and the WAL really shrink on disk;
4. tell the space guard to measure again (intake refused for space resumes at once if it may).

`dead` outbound rows, `failed` and `staged` messages, and messages with pending or dead resources are
never purged (node.store.retention). A failed run is logged and counted
(edge_node_retention_failures_total); the next interval tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from node.errors import StoreClosedError
from node.store import retention
from node.store.queries import database_bytes

if TYPE_CHECKING:
    from node.store.space import SpaceGuard
    from node.store.store import Store
    from node.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

_T = TypeVar("_T")

INBOUND = "inbound"
OUTBOUND = "outbound"
KINDS = (INBOUND, OUTBOUND)
"""Label values of edge_node_retention_purged_total{kind}."""


class RetentionObserver(Protocol):
    """What the job reports to (node.metrics.RetentionMetrics)."""

    def purged(self, kind: str, n: int) -> None: ...
    def finished(self, timestamp: float) -> None: ...
    def failed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one run did."""

    outbound_purged: int
    inbound_purged: int
    pages_vacuumed: int
    checkpoint: retention.Checkpoint | None
    """None when nothing was purged or vacuumed (no checkpoint needed)."""
    bytes_before: int
    bytes_after: int
    """Database + WAL bytes before and after the run."""
    chunks: int
    """Writer calls (transactions) the run took."""
    seconds: float
    completed: bool
    """False when the run was cut short by stop()."""


class RetentionJob:
    """Runs retention through a GroupCommitWriter, now (`run_once`) or periodically (`start`/`stop`).

    :param writer: the node's store writer (started before the job runs).
    :param retention_days: age after which payloads are purged.
    :param interval_s: seconds between two runs of the periodic thread.
    :param space_guard: told to measure again after each run.
    :param observer: metrics (node.metrics.RetentionMetrics).
    :param clock: unix seconds; purge ages and `purged_at` are measured with it (a test seam).
    """

    def __init__(self, writer: GroupCommitWriter, *, retention_days: float, interval_s: float,
                 space_guard: SpaceGuard | None = None, observer: RetentionObserver | None = None,
                 clock: Callable[[], float] = time.time, chunk_rows: int = retention.CHUNK_ROWS,
                 vacuum_pages: int = retention.VACUUM_PAGES) -> None:
        if chunk_rows < 1 or vacuum_pages < 1:
            raise ValueError("chunk_rows and vacuum_pages must be at least 1")
        self._writer = writer
        self.retention_days = retention_days
        self.interval_s = interval_s
        self._space = space_guard
        self._observer = observer
        self._clock = clock
        self._chunk_rows = chunk_rows
        self._vacuum_pages = vacuum_pages
        self._stopping = threading.Event()
        self._run_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runs = 0
        """Completed runs (tests wait on it)."""

    # -- one run ----------------------------------------------------------------------------------

    def run_once(self) -> RetentionReport:
        """One retention run (module docstring). Blocks; call it from any thread but the writer's.

        :raises StoreError: a step failed (what earlier steps committed stays committed).
        :raises StoreClosedError: the writer is not running.
        """
        with self._run_lock:
            return self._run()

    def _run(self) -> RetentionReport:
        started = time.monotonic()
        path = self._writer.path
        bytes_before = database_bytes(path)
        now = self._clock()
        cutoff = retention.cutoff_for(now, self.retention_days)
        limit = self._chunk_rows
        chunks = 0

        outbound = 0
        while not self._stopping.is_set():
            n = self._call(lambda store: retention.purge_outbound_chunk(store, cutoff=cutoff, now=now, limit=limit))
            chunks += 1
            outbound += n
            self._report(OUTBOUND, n)
            if n < limit:
                break

        inbound = 0
        cursor = retention.START
        while not self._stopping.is_set():
            chunk = self._call(lambda store, after=cursor: retention.purge_inbound_chunk(
                store, cutoff=cutoff, now=now, after=after, limit=limit))
            chunks += 1
            inbound += chunk.purged
            cursor = chunk.cursor
            self._report(INBOUND, chunk.purged)
            if chunk.scanned < limit:
                break

        pages = 0
        checkpoint = None
        if not self._stopping.is_set() and (outbound or inbound or self._call(retention.freelist_pages)):
            pages_per_chunk = self._vacuum_pages
            while not self._stopping.is_set():
                freed = self._call(lambda store: retention.vacuum_chunk(store, pages_per_chunk))
                chunks += 1
                pages += freed
                if freed < pages_per_chunk:
                    break
            checkpoint = self._call(retention.checkpoint_truncate)
            chunks += 1
            if checkpoint.busy:
                log.info("retention: readers kept the WAL from being truncated; the next run retries")
        if self._space is not None:
            self._space.invalidate()
        completed = not self._stopping.is_set()
        report = RetentionReport(outbound, inbound, pages, checkpoint, bytes_before, database_bytes(path),
                                 chunks, time.monotonic() - started, completed)
        if outbound or inbound or pages:
            log.info("retention: purged %d outbound and %d inbound payloads, gave back %d pages; "
                     "store %d -> %d bytes in %.2f s", outbound, inbound, pages, report.bytes_before,
                     report.bytes_after, report.seconds)
        if completed:
            self.runs += 1
            if self._observer is not None:
                self._observer.finished(time.time())
        return report

    def _call(self, fn: Callable[[Store], _T]) -> _T:
        return self._writer.call(fn).result()

    def _report(self, kind: str, n: int) -> None:
        if n and self._observer is not None:
            self._observer.purged(kind, n)

    # -- periodic ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic thread: a run now, then one every `interval_s`."""
        if self._thread is not None:
            raise RuntimeError("RetentionJob.start() called twice")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="store-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the periodic thread; a run in progress ends after its current chunk. Idempotent."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        delay = 0.0
        while not self._stopping.wait(delay):
            delay = self.interval_s
            try:
                self.run_once()
            except StoreClosedError:
                if self._stopping.is_set():
                    return
                log.warning("retention skipped: the store writer is not running")
                self._failed()
            except Exception as exc:
                log.error("retention run failed (the next run retries in %.0f s): %s", self.interval_s, exc)
                self._failed()

    def _failed(self) -> None:
        if self._observer is not None:
            self._observer.failed()
