"""The push worker: harmonized FHIR resources (`outbound`, state `pending`) → central, exactly once in
effect, in order per patient, through any outage.

It runs in the node's main asyncio loop (node.supervisor starts it after the harmonizer). Each round it
reads the rows that may go now (node.store.push, its own read-only connection, in a thread), lets
node.push.batcher make transaction Bundles of them, and sends up to `[central] concurrency` of them at
once through the sink (`make_sink`: FHIRClient for https://, FileSink for file://). Every state change
is one transaction, or one savepoint of the store writer's group transaction (GroupCommitWriter.write),
so the main process keeps one writer connection.

Ordering rules
--------------

1. Per partition (patient, `partition_key`), resources are pushed in (inbound_id, id) order: message
   order, then the order the harmonizer wrote a message's resources in. A partition with a batch in
   flight, or with a row waiting for a retry (`next_attempt_at` in the future), sends nothing newer until
   that is resolved (pushed or dead), and a round puts one partition into one batch only. So an older
   version never overtakes a newer one.
   The same holds per resource across partitions (an Encounter that moves to another patient with a
   merge, a Location or Organization many patients share): a version whose contents differ from an
   earlier, unresolved version of the same (type, id) waits for it, whatever partition holds it (rows
   of busy or waiting partitions are passed to the batcher as `blockers`). Versions with equal contents
   may go in any order, so resources every message repeats unchanged do not serialise the batches.
2. Watermark: a row is eligible only if its inbound_id is below the lowest inbound id still `staged` (of
   the feeds the harmonizer converts). Harmonizer workers commit in id % n partitions and may commit
   one patient's messages out of order; with the watermark, a later message's resources never go before
   an earlier message of the same patient has been harmonized.
3. Whole messages: all resources of one message travel in one Bundle. Batches are made of whole messages
   in order, bounded by `batch_max_entries` and `batch_max_bytes` (a single message larger than the
   bounds travels alone; a batch also holds at most batch_max_entries * 4 rows, superseded included).
4. No resource twice in one Bundle (FHIR servers reject that): within a batch only the newest version of
   each (type, id) (highest (inbound_id, id)) is sent; the older rows are marked superseded by it when the
   batch is sent and `pushed` together with it when central confirms ("superseded_by" notes which row
   carried them). This keeps bursts of updates to one patient in few requests (keeping such messages in
   separate batches would send one request per update during a catch-up). If the batch's fate is not
   known (the node died, the answer was lost), the superseded rows are never sent on their own later:
   central may already hold the newer version; they follow the newer row (pushed with it, or released
   and sent on their own if central rejects it, which is then exactly what sending each message alone
   would have left central with). Older versions with the SAME contents as the row sent in their place
   (the ward, the doctor every message repeats) are not marked when the batch is sent, only `pushed`
   with it: should they be sent on their own after all, they change nothing at central, and the batch's
   start then writes only its sent rows.
5. Partitions go in parallel up to `concurrency` batches in flight. A batch that is not full waits until
   its oldest row is `batch_max_wait_s` old (more rows may join); full batches go at once.

Outcomes (node.push.outcome)
----------------------------

- `ok`: only with a transaction-response holding exactly one 2xx entry per entry sent (the file sink's
  fsynced file is its confirmation); anything else is treated as `misconfigured` and never marks a row
  pushed. Then: rows `pushed` (pushed_at, batch_id), the audit row finished, last success updated.
- `rejected` with entry indexes: those entries' rows go `dead` with the summary (issue codes) in
  `error` and central's OperationOutcome in `outcome_json` (never logged: diagnostics may quote values);
  the rest is sent again at once. Without usable indexes: bisection. The batch is split into halves by
  message (down to single messages), then by resources; halves are sent one after the other (order
  kept), so only a resource central rejects on its own goes `dead`.
- `too_large` (413): the batch is split the same way and its halves sent; the effective bounds drop to
  half the refused batch's entries and bytes (until the next start). A single resource central finds
  too large stays pending and is retried at the slow rate with an error logged: never dead.
- `throttled`: the breaker opens for Retry-After (capped at backoff_max_s); nothing is sent before.
- `transient`: the rows wait a full-jitter backoff (capped at backoff_max_s); the circuit breaker opens
  after consecutive failures and lets one probe through at a time while central is down.
- `auth` (401/403) and `misconfigured`: the rows wait backoff_max_s (slow retries), alert gauges go to 1.
  Never `dead`.

`attempts` and `next_attempt_at` live on the rows (restart-safe, visible to operators); each Bundle sent
has an audit row in `batches` (node.store.migrations).

Crash safety: a row leaves `pending` only in the transaction that records central's answer. If the node
is SIGKILLed at any moment, the rows of batches in flight are still pending after the restart, their
audit rows are closed as `interrupted`, and they are pushed again: harmless, every entry is a PUT with
a stable id. At shutdown the worker lets in-flight requests finish within the shutdown timeout, then
cancels them (`abandoned`: their rows simply stay pending).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from node.errors import StoreClosedError, StoreError
from node.push.backoff import BREAKER_STATE_VALUES, DEFAULT_THRESHOLD, Backoff, BreakerState, CircuitBreaker, Uniform
from node.push.batcher import ROWS_PER_ENTRY, Batch, assemble, bundle_bytes, plan, split
from node.push.file_sink import make_sink
from node.push.outcome import OutcomeKind, PushOutcome, Sink, entry_indexes, summarize_outcome
from node.store.push import (
    ABANDONED,
    INTERRUPTED,
    BatchStart,
    DeadRow,
    Finish,
    PushReader,
    PushStats,
    begin_batch,
    close_open_batches,
    finish_batch,
    record_dead,
    record_pushed,
    record_retry,
)

if TYPE_CHECKING:
    from node.metrics import PushMetrics
    from node.settings import CentralSection
    from node.store.store import Store
    from node.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

_T = TypeVar("_T")

POLL_INTERVAL_S = 0.2
"""How often the queue is read when there is nothing to send (new rows come from worker processes)."""
STORE_RETRY_S = 1.0
"""Pause after a store error (nothing recorded: the rows are pushed again later)."""
READ_ROWS_PER_ENTRY = ROWS_PER_ENTRY
"""A round reads at most free batches * batch_max_entries * READ_ROWS_PER_ENTRY candidate rows: as many
as a batch may hold (batcher.ROWS_PER_ENTRY), so batches fill up to batch_max_entries even when most
rows are older versions that collapse into their newest (measured: with 2 rows per entry the batches of
the end-to-end bench averaged 70 entries instead of 87, i.e. more requests and more bookkeeping per
resource). Reading is cheap: size and digest are stored with each row (migration 0005)."""
MIN_BATCH_BYTES = 1024
"""The effective byte bound never drops below this after 413s."""
WORKING = frozenset({OutcomeKind.OK, OutcomeKind.REJECTED, OutcomeKind.TOO_LARGE})
"""Outcomes that prove central works and accepts our credentials."""
DOWN = frozenset({OutcomeKind.TRANSIENT, OutcomeKind.AUTH, OutcomeKind.MISCONFIGURED})
"""Outcomes after which edge_node_central_up is 0."""


def _riders(batch: Batch) -> list[int]:
    """Superseded rows with the same contents as the row sent in their place (rule 4: not marked when the
    batch is sent, only confirmed with it)."""
    return [old.id for old, new in batch.superseded if old.fingerprint == new.fingerprint]


def batch_name(site_id: str, batch_id: int, created_at: float) -> str:
    """The batch id sent to central (X-Request-ID) and used by the file sink as file name:
    `<site>-b<id>-<unix seconds>`; the time keeps names unique if the store is ever recreated."""
    return f"{site_id}-b{batch_id:08d}-{int(created_at)}"


def response_summary(outcome: PushOutcome) -> str:
    """Central's answer for the audit: statuses and issue codes, never resource contents."""
    if outcome.kind is OutcomeKind.OK and outcome.entries:
        statuses = Counter(entry.status for entry in outcome.entries)
        listed = ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
        return f"HTTP {outcome.status}: {listed}"
    return outcome.reason


def entry_outcome(outcome: PushOutcome, index: int) -> dict[str, Any] | None:
    """The OperationOutcome about entry `index`: the entry's own (2xx answer with failed entries), else
    the issues of the transaction's OperationOutcome that point at it (else all of it)."""
    if index < len(outcome.entries) and outcome.entries[index].outcome is not None:
        return outcome.entries[index].outcome
    operation_outcome = outcome.operation_outcome
    if operation_outcome is None:
        return None
    issues = operation_outcome.get("issue")
    mine = [issue for issue in issues if isinstance(issue, dict) and index in entry_indexes({"issue": [issue]})] \
        if isinstance(issues, list) else []
    return {**operation_outcome, "issue": mine} if mine else operation_outcome


class PushWorker:
    """Pushes pending outbound rows to central; see the module docstring.

    :param section: `[central]`.
    :param writer: the node's store writer (started before `start()`, stopped after `stop()`).
    :param store_path: the store file (for the worker's read-only connection).
    :param site_id: prefixes batch ids.
    :param feeds: feeds whose staged messages hold the watermark (the harmonizer's feeds); None: all.
    :param sink: where Bundles go; None: `make_sink(section)` at start.
    :param clock: wall clock for stored times and retry schedules (unix seconds).
    :param monotonic: the circuit breaker's clock.
    :param uniform: the backoff's random source (tests pass a seeded one).
    """

    def __init__(self, section: CentralSection, writer: GroupCommitWriter, store_path: Path, *,
                 site_id: str = "node", feeds: Sequence[str] | None = None, metrics: PushMetrics | None = None,
                 sink: Sink | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, uniform: Uniform | None = None,
                 poll_interval_s: float = POLL_INTERVAL_S, breaker_threshold: int = DEFAULT_THRESHOLD) -> None:
        self._section = section
        self._writer = writer
        self._store_path = Path(store_path)
        self._site_id = site_id
        self._feeds = list(feeds) if feeds is not None else None
        self._metrics = metrics
        self._sink = sink
        self._clock = clock
        self._backoff = Backoff.from_settings(section, uniform=uniform)
        self.breaker = CircuitBreaker(self._backoff, threshold=breaker_threshold, clock=monotonic,
                                      probe_timeout_s=section.connect_timeout_s + 2 * section.read_timeout_s + 30)
        self._poll_s = poll_interval_s
        self.max_entries = section.batch_max_entries
        """The effective bound on entries per Bundle (lowered after a 413)."""
        self.max_bytes = section.batch_max_bytes
        """The effective bound on bytes per Bundle (lowered after a 413)."""
        self._reader: PushReader | None = None
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[int] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._paused_until = 0.0
        self._run_task: asyncio.Task[None] | None = None
        self._down = False

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the sink, close audit rows left open by a previous run, start the loop.
        :raises ConfigError: certificates, credentials or the outbox directory cannot be loaded.
        :raises StoreError: the store cannot be read or written."""
        if self._run_task is not None:
            raise RuntimeError("PushWorker.start() called twice")
        if self._sink is None:
            self._sink = make_sink(self._section)
        self._reader = PushReader(self._store_path)
        interrupted = await self._write(lambda store: close_open_batches(store, INTERRUPTED, now=self._clock()))
        if interrupted:
            log.info("push: %d batches were in flight when the node last stopped; their resources are sent again",
                     interrupted)
        last = await asyncio.to_thread(self._reader.last_success)
        if self._metrics is not None:
            self._metrics.last_success.set(last or 0.0)
        self._run_task = asyncio.create_task(self._run(), name="push-worker")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Send nothing new; let batches in flight finish within `timeout_s`, then cancel them (their rows
        stay pending, their audit rows become `abandoned`); close the sink. Idempotent."""
        self._stopping = True
        self._wake.set()
        task = self._run_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                log.warning("push: %d batches still in flight after %.1f s; abandoning them (their resources stay "
                            "pending)", len(self._tasks), timeout_s)
                for running in list(self._tasks):
                    running.cancel()
                task.cancel()
                await asyncio.gather(task, *self._tasks, return_exceptions=True)
        if self._open:
            try:
                ids = sorted(self._open)
                await self._write(lambda store: close_open_batches(store, ABANDONED, ids=ids, now=self._clock()))
            except StoreError as exc:
                log.warning("push: cannot record abandoned batches (they are closed at the next start): %s", exc)
            self._open.clear()
        if self._sink is not None:
            await self._sink.close()
        if self._reader is not None:
            self._reader.close()

    def describe(self) -> str:
        sink = self._sink
        describe = getattr(sink, "describe", None)
        return f"push={describe() if callable(describe) else self._section.url}"

    def stats(self) -> PushStats | None:
        """The queue's scrape-time statistics (None before start or when the store cannot be read)."""
        reader = self._reader
        if reader is None:
            return None
        try:
            return reader.stats(self._clock())
        except StoreError:
            return None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                delay = await self._round()
            except StoreClosedError:
                log.info("push: the store writer stopped; pushing stops")
                break
            except StoreError as exc:
                log.warning("push: store error, retrying in %.0f s: %s", STORE_RETRY_S, exc)
                delay = STORE_RETRY_S
            except Exception:  # a bug: keep the node alive, nothing is lost (rows stay pending)
                log.exception("push: unexpected error; retrying in %.0f s", STORE_RETRY_S)
                delay = STORE_RETRY_S
            await self._sleep(delay)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), seconds)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0)
        self._wake.clear()

    async def _round(self) -> float:
        """Launch what may go now; return how long to sleep (a finished batch or stop() wakes earlier)."""
        free = self._section.concurrency - len(self._tasks)
        if free <= 0:
            return self._poll_s * 10
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            return pause
        wait = self.breaker.wait_s()
        if wait > 0:
            return wait
        if self.breaker.state is not BreakerState.CLOSED:
            if self._tasks:
                return self._poll_s
            free = 1  # one probe
        now = self._clock()
        assert self._reader is not None
        limit = free * self.max_entries * READ_ROWS_PER_ENTRY
        busy = set(self._busy)
        found = await asyncio.to_thread(self._reader.candidates, now=now, limit=limit, busy=busy, feeds=self._feeds)
        if not found.rows or self._stopping:
            return self._poll_s
        sleep = self._poll_s
        launched = 0
        for batch in assemble(found.rows, max_entries=self.max_entries, max_bytes=self.max_bytes, max_batches=free,
                              blockers=found.blockers):
            if not batch.full:
                due = batch.oldest_created_at + self._section.batch_max_wait_s
                if now < due:
                    sleep = min(sleep, max(0.01, due - now))
                    continue
            if not self.breaker.allow():
                break
            self._launch(batch)
            launched += 1
        return 0.0 if launched else sleep

    def _launch(self, batch: Batch) -> None:
        partitions = batch.partitions
        self._busy.update(partitions)
        task = asyncio.create_task(self._deliver(batch), name="push-batch")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._busy.difference_update(partitions)
            self._wake.set()
            if finished.cancelled():
                return
            exc = finished.exception()
            if isinstance(exc, StoreClosedError):
                self._stopping = True
            elif isinstance(exc, StoreError):
                log.warning("push: store error (the batch's resources are sent again later): %s", exc)
                self._paused_until = time.monotonic() + STORE_RETRY_S
            elif exc is not None:
                log.error("push: batch failed unexpectedly (its resources are sent again later)",
                          exc_info=(type(exc), exc, exc.__traceback__))
                self._paused_until = time.monotonic() + STORE_RETRY_S

        task.add_done_callback(done)

    async def _deliver(self, batch: Batch) -> None:
        await self._send(batch, {}, parent=None, allowed=True)

    # -- one Bundle ----------------------------------------------------------------------------------------

    async def _send(self, batch: Batch, bodies: dict[int, str], *, parent: int | None, allowed: bool) -> bool:
        """Send `batch` and act on the outcome (splitting and resending as needed). True when every row
        of it is resolved (pushed or dead), False when some wait for a retry (then nothing after them in
        this task is sent: the order of their partitions is kept)."""
        if not allowed and (self._stopping or not self.breaker.allow()):
            return False
        try:
            missing = [entry.row.id for entry in batch.entries if entry.row.id not in bodies]  # only what is sent
            if missing:
                assert self._reader is not None
                bodies.update(await asyncio.to_thread(self._reader.bodies, missing))
            payload = bundle_bytes(batch, bodies)
            start = BatchStart(sent=[entry.row.id for entry in batch.entries],
                               superseded=[(old.id, new.id) for old, new in batch.superseded
                                           if old.fingerprint != new.fingerprint],
                               riders=len(_riders(batch)),
                               entries=len(batch.entries), bytes=len(payload), counts=dict(batch.counts),
                               parent_id=parent)
            created = self._clock()
            batch_id, attempt = await self._write(lambda store: begin_batch(store, start, now=created))
        except BaseException:
            self.breaker.abandon()  # allowed through, but nothing was sent
            raise
        self._open.add(batch_id)
        name = batch_name(self._site_id, batch_id, created)
        started = time.monotonic()
        assert self._sink is not None
        try:
            outcome = await self._sink.post_transaction(payload, batch_id=name)
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        seconds = time.monotonic() - started
        outcome = self._confirmed(outcome, batch)
        self.breaker.record(outcome)
        self._observe(outcome, seconds)
        resolved = await self._handle(outcome, batch, bodies, batch_id, name, attempt)
        self._open.discard(batch_id)
        return resolved

    @staticmethod
    def _confirmed(outcome: PushOutcome, batch: Batch) -> PushOutcome:
        """An `ok` counts only with one 2xx entry per entry sent (HTTP) or a written file (no status)."""
        if outcome.kind is OutcomeKind.OK and outcome.status is not None and len(outcome.entries) != len(batch.entries):
            return PushOutcome(OutcomeKind.MISCONFIGURED,
                               f"HTTP {outcome.status}: the transaction-response has {len(outcome.entries)} entries "
                               f"for {len(batch.entries)} sent; not taken as a confirmation", outcome.status)
        return outcome

    async def _handle(self, outcome: PushOutcome, batch: Batch, bodies: dict[int, str], batch_id: int, name: str,
                      attempt: int) -> bool:
        kind = outcome.kind
        finish = Finish(kind.value, outcome.status, response_summary(outcome))
        sent = [entry.row.id for entry in batch.entries]
        now = self._clock()
        if kind is OutcomeKind.OK:
            riders = _riders(batch)
            pushed, superseded = await self._write(
                lambda store: record_pushed(store, batch_id, sent, finish, riders=riders, now=now))
            self._count("pushed", pushed)
            self._count("superseded", superseded)
            if self._metrics is not None:
                self._metrics.last_success.set(now)
            if self._down:
                log.info("push: central accepts batches again (batch %s)", name)
                self._down = False
            log.debug("push: batch %s confirmed: %d resources (%d superseded versions)", name, pushed, superseded)
            return True
        if kind is OutcomeKind.REJECTED:
            indexes = sorted({i for i in outcome.rejected_entries if 0 <= i < len(batch.entries)})
            if indexes:
                return await self._reject(outcome, batch, bodies, batch_id, name, indexes, finish)
            parts = split(batch)
            if parts is None:  # a single resource, rejected on its own
                return await self._reject(outcome, batch, bodies, batch_id, name, [0], finish)
            log.warning("push: batch %s rejected without naming entries (%s); bisecting %d messages, %d entries",
                        name, outcome.reason, len(batch.messages), len(batch.entries))
            await self._write(lambda store: finish_batch(store, batch_id, finish, now=now))
            return await self._send_parts(parts, bodies, batch_id)
        if kind is OutcomeKind.TOO_LARGE:
            self._shrink(batch)
            parts = split(batch)
            if parts is not None:
                log.warning("push: batch %s (%d entries) too large for central; splitting, batches now at most %d "
                            "entries / %d bytes", name, len(batch.entries), self.max_entries, self.max_bytes)
                await self._write(lambda store: finish_batch(store, batch_id, finish, now=now))
                return await self._send_parts(parts, bodies, batch_id)
            delay = self._backoff.cap_s
            log.error("push: batch %s: central refuses a single resource (outbound id %d) as too large; it stays "
                      "pending and is retried every %.0f s (raise central's limit)", name, sent[0], delay)
        else:
            delay = self._retry_delay(outcome, attempt)
            log.log(logging.INFO if kind is OutcomeKind.THROTTLED else logging.WARNING,
                    "push: batch %s: %s (%s); retry in %.1f s (attempt %d)", name, kind, outcome.reason, delay, attempt)
        error = f"{kind}: {outcome.reason}"
        await self._write(lambda store: record_retry(store, batch_id, sent, now + delay, error, finish, now=now))
        return False

    async def _reject(self, outcome: PushOutcome, batch: Batch, bodies: dict[int, str], batch_id: int, name: str,
                      indexes: list[int], finish: Finish) -> bool:
        """Entries `indexes` go dead; the rest of the batch (their superseded rows included) is sent again."""
        dead: list[DeadRow] = []
        for index in indexes:
            row_outcome = entry_outcome(outcome, index)
            summary = summarize_outcome(row_outcome)
            error = f"rejected by central (HTTP {outcome.status}, batch {name}, entry {index}): {summary}"
            dead.append(DeadRow(batch.entries[index].row.id, error,
                                json.dumps(row_outcome, ensure_ascii=False) if row_outcome is not None else None))
        now = self._clock()
        count = await self._write(lambda store: record_dead(store, batch_id, dead, finish, now=now))
        self._count("dead", count)
        gone = {row.id for row in dead}
        log.warning("push: batch %s: central rejected %d resource(s) (outbound ids %s: %s); they are dead, the other "
                    "%d entries are sent again", name, len(dead), sorted(gone), outcome.reason,
                    len(batch.entries) - len(dead))
        rest = [row for row in batch.rows if row.id not in gone]
        if not rest:
            return True
        return await self._send(plan(rest), bodies, parent=batch_id, allowed=False)

    async def _send_parts(self, parts: list[list[Any]], bodies: dict[int, str], parent: int) -> bool:
        for part in parts:
            if not await self._send(plan(part), bodies, parent=parent, allowed=False):
                return False
        return True

    def _retry_delay(self, outcome: PushOutcome, attempt: int) -> float:
        kind = outcome.kind
        if kind in (OutcomeKind.AUTH, OutcomeKind.MISCONFIGURED):
            return self._backoff.cap_s
        if kind is OutcomeKind.THROTTLED and outcome.retry_after_s is not None:
            return self._backoff.delay(0, outcome.retry_after_s)
        return self._backoff.delay(max(0, attempt - 1))

    def _shrink(self, batch: Batch) -> None:
        """After a 413: at most half the refused batch's entries and bytes from now on."""
        self.max_entries = max(1, min(self.max_entries, len(batch.entries) // 2))
        self.max_bytes = max(MIN_BATCH_BYTES, min(self.max_bytes, batch.bytes // 2))

    # -- helpers -------------------------------------------------------------------------------------------

    async def _write(self, fn: Callable[[Store], _T]) -> _T:
        """Run a node.store.push write in the store writer's next group transaction (one fsync with the
        intake's messages of the moment)."""
        return await asyncio.wrap_future(self._writer.write(fn))

    def _count(self, result: str, n: int) -> None:
        if self._metrics is not None and n:
            self._metrics.resources.labels(result=result).inc(n)

    def _observe(self, outcome: PushOutcome, seconds: float) -> None:
        kind = outcome.kind
        if kind in DOWN and not self._down:
            self._down = True
        metrics = self._metrics
        if metrics is None:
            return
        metrics.batches.labels(outcome=kind.value).inc()
        metrics.duration.observe(seconds)
        metrics.central_up.set(0 if kind in DOWN else 1)
        if kind is OutcomeKind.AUTH:
            metrics.auth_failing.set(1)
        elif kind is OutcomeKind.MISCONFIGURED:
            metrics.misconfigured.set(1)
        elif kind in WORKING:
            metrics.auth_failing.set(0)
            metrics.misconfigured.set(0)
        snapshot = self.breaker.snapshot()
        metrics.retry_delay.set(snapshot.retry_delay_s)
        metrics.breaker_state.set(BREAKER_STATE_VALUES[snapshot.state])
