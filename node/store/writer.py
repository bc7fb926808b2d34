"""Group commit: one thread owns the Store and commits whatever requests are pending in ONE transaction.

Connectors call `submit()` (any thread; returns a concurrent.futures.Future) or `await stage()` (asyncio;
the MLLP hot path). The writer thread waits for the first request, takes it and every request pending
behind it (at most `max_batch`), runs Store.stage_batch once (one transaction, one fsync), then resolves
each waiter with its own StageOutcome. While it commits, new requests queue up for the next batch, so
the number of transactions adapts to the load. The asyncio waiters of one batch are resolved with ONE
`loop.call_soon_threadsafe` per event loop.

Failures, per batch:

- StoreFullError (no space; retryable): every waiter of the batch gets it; the writer keeps running.
- StoreIOError (fatal): every waiter of the batch gets it, every request still queued and every later
  submit gets StoreClosedError; the writer closes the store, records the error (`fatal_error`), calls
  `on_fatal(exc)` (the node then shuts down and exits with EX_IOERR) and its thread ends.
- any other exception (StoreError, or a bug): every waiter of the batch gets it; the writer keeps running.

Disk space (optional `space_guard`, node.store.space.SpaceGuard): before committing a batch of stage
requests the writer asks the guard to admit it; over the cap ([store] max_bytes) or below the free-space
low-water mark ([store] min_free_bytes) the whole batch fails with StoreFullError and nothing is written.
The guard measures at most every 0.5 s (or every few commits), never per message, and again right after a
failed commit. Only stage requests are refused: `call()` functions (harmonize/push state changes,
retention) always run, so the backlog drains and space can be freed; admission resumes by itself.

Inline commits (asyncio `stage()` only): while ONE task has been the only one staging for a while
(`SOLO_WINDOW_S` and `SOLO_MESSAGES` in a row; e.g. a single MLLP sender) and the writer is idle
(nothing queued, nothing being committed), `stage()` commits that request itself, in the event-loop
thread, as a batch of one: same Store, same space guard, same errors and hooks (`on_commit` then runs
in the loop right after the caller's step, i.e. after the ACK went out). The writer thread and an
inline commit never use the Store at the same time (`_inline` / `_writing`, under the lock); anything
queued meanwhile waits for the writer thread, which takes it as soon as the inline commit ends. It
saves the two thread hand-offs of the queue path (waking the writer thread, waking the event loop).
It blocks the event loop for one commit, so it is never used while other tasks stage too: their
requests would wait behind the loop instead of sharing the commit. The first request from another
task ends the streak; the queue path (group commit) is used until a new streak is long enough. A slow
inline commit (`INLINE_SLOW_S`: a wait for another process's write lock, a disk stall) suspends inline
commits for `INLINE_COOLDOWN_S`. A StoreIOError in an inline commit is fatal exactly as in the writer
thread: nothing more is committed, the writer thread closes the store and calls `on_fatal`.

Writes (`write(fn)`): short state changes of other stages (the push worker's batch bookkeeping) that
would otherwise be transactions of their own, each waiting for its turn and paying its own fsync. The
writer takes them with the stage requests queued beside them and runs them first in the same
transaction, each in a SAVEPOINT: a write that raises is rolled back alone (its future gets the
exception), the rest commits. If the transaction fails as a whole, the requests get the exception as
always and the writes are run once more in a transaction of their own (a full disk that refuses new
messages must not stop the push from draining the backlog); space admission never refuses a write.
`call(fn)` is for work that needs the Store to itself (its own transactions, VACUUM, checkpoints).

A waiter that is cancelled before its batch is taken (concurrent future) is skipped. Cancelling an
asyncio `stage()` does not withdraw the request: it may still be committed (a resend then finds it).
Exceptions given to waiters are per-waiter copies, chained (`__cause__`) to the writer's original.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from node.errors import StoreClosedError, StoreError, StoreFullError, StoreIOError
from node.store.store import Store

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from node.model import StageOutcome, StageRequest
    from node.store.space import SpaceGuard

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 512

SOLO_WINDOW_S = 0.02
"""An asyncio task must have been the only one staging for this long before its requests commit inline."""
SOLO_MESSAGES = 8
"""... and for at least this many requests in a row."""
INLINE_SLOW_S = 0.05
"""An inline commit slower than this (waiting for another process's write lock, a disk stall) ..."""
INLINE_COOLDOWN_S = 1.0
"""... suspends inline commits for this long: the event loop must not be blocked again soon."""


@dataclass(slots=True)
class _Request:
    """One request and its waiter: a concurrent future, or an asyncio future and its loop."""

    request: StageRequest
    future: concurrent.futures.Future[StageOutcome] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    aio_future: asyncio.Future[StageOutcome] | None = None


@dataclass(slots=True)
class _Call:
    """A function to run on the Store in the writer thread, between two batches."""

    fn: Callable[[Store], Any]
    future: concurrent.futures.Future[Any]


@dataclass(slots=True)
class _Write:
    """A function to run inside the writer's next group transaction (a savepoint of it)."""

    fn: Callable[[Store], Any]
    future: concurrent.futures.Future[Any]


_Item = _Request | _Call | _Write
_Settlement = tuple["asyncio.Future[StageOutcome]", "StageOutcome | BaseException"]


class GroupCommitWriter:
    """Owns a Store in one dedicated thread; see the module docstring for batching and failures.

    :param path: the store file.
    :param max_batch: most requests per transaction.
    :param on_commit: `on_commit(seconds, n_requests)`, called after each successful commit with the
        duration of the whole transaction (in the writer thread; for an inline commit soon after it, in
        the event loop); its exceptions are logged.
    :param on_commit_failure: `on_commit_failure(exc)`, called in the committing thread (the writer
        thread, or the event loop for an inline commit) after each failed stage_batch transaction with
        its exception; its exceptions are logged.
    :param on_fatal: `on_fatal(exc)`, called once in the writer thread after a StoreIOError, when every
        waiter has been answered. It may call `stop()`.
    :param max_bytes: cap for Store.set_max_bytes, applied after open (None: no cap).
    :param store_factory: opens the Store in the writer thread (default Store.open). A test seam.
    :param space_guard: admits or refuses each batch of stage requests by disk space (None: no check).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        on_commit: Callable[[float, int], None] | None = None,
        on_commit_failure: Callable[[BaseException], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        max_bytes: int | None = None,
        store_factory: Callable[[Path], Store] = Store.open,
        space_guard: SpaceGuard | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._path = path
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._on_commit_failure = on_commit_failure
        self._on_fatal = on_fatal
        self._max_bytes = max_bytes
        self._store_factory = store_factory
        self._space = space_guard
        self._mutex = threading.Lock()  # the lock of _cond; taken directly where nothing waits or notifies
        self._cond = threading.Condition(self._mutex)
        self._pending: collections.deque[_Item] = collections.deque()
        self._accepting = False
        self._stopping = False
        self._started = False
        self._fatal: BaseException | None = None
        self._commits = 0
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self._writing = False  # the writer thread holds an item it took (guarded by _cond)
        self._inline = False  # an inline commit is using the store (guarded by _cond)
        self._idle = False  # the writer thread waits in _cond.wait() (guarded by _cond)
        # The streak of stage() calls from one asyncio task (event-loop threads only; a heuristic, so
        # unguarded: the flags above decide who may use the store).
        self._solo_task = 0  # id() of the task (not the task: a finished one is not kept alive)
        self._solo_since = 0.0
        self._solo_count = 0

    @property
    def on_fatal(self) -> Callable[[BaseException], None] | None:
        """The fatal-error hook; assignable before `start()` (the node wires itself in here)."""
        return self._on_fatal

    @on_fatal.setter
    def on_fatal(self, hook: Callable[[BaseException], None] | None) -> None:
        self._on_fatal = hook

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (applying migrations) in a new writer thread; return once it is open.

        :raises StoreError: (or another exception from the factory) the store cannot be opened; the
            thread has ended then.
        :raises RuntimeError: start() was called before.
        """
        with self._cond:
            if self._started:
                raise RuntimeError("GroupCommitWriter.start() called twice")
            self._started = True
        opened = threading.Event()
        outcome: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(opened, outcome), name="store-writer", daemon=True
        )
        self._thread.start()
        opened.wait()
        if outcome:
            self._thread.join()
            raise outcome[0]

    def stop(self) -> None:
        """Commit everything submitted so far, close the store and join the thread. Idempotent.

        Later submits raise StoreClosedError. Called from the writer thread itself (e.g. in `on_fatal`),
        it only asks the thread to end.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def fatal_error(self) -> BaseException | None:
        """The StoreIOError (or unexpected error) that stopped the writer, or None."""
        return self._fatal

    @property
    def commits(self) -> int:
        """Number of successful stage_batch transactions so far."""
        return self._commits

    @property
    def path(self) -> Path:
        """The store file."""
        return self._path

    @property
    def space_guard(self) -> SpaceGuard | None:
        """The disk-space admission of stage batches, if any (node.store.space)."""
        return self._space

    @property
    def pending(self) -> int:
        """Number of requests and calls queued and not yet taken by the writer thread."""
        return len(self._pending)

    # -- submitting --------------------------------------------------------------------------------

    def submit(self, request: StageRequest) -> concurrent.futures.Future[StageOutcome]:
        """Queue `request` (thread-safe); the future resolves to its StageOutcome or to the exception
        of its batch (module docstring).

        :raises StoreClosedError: the writer is not running (not started, stopped, or failed).
        """
        future: concurrent.futures.Future[StageOutcome] = concurrent.futures.Future()
        self._enqueue(_Request(request, future=future))
        return future

    async def stage(self, request: StageRequest) -> StageOutcome:
        """Queue `request` and wait for its outcome without blocking the event loop; or, while the
        calling task stages alone, commit it inline (module docstring), blocking the loop for that commit.

        :raises StoreFullError, StoreIOError, StoreError: the batch failed (module docstring).
        :raises StoreClosedError: the writer is not running, or failed before taking this request.
        """
        loop = asyncio.get_running_loop()
        task = id(asyncio.current_task(loop))
        now = time.monotonic()
        if task != self._solo_task:
            self._solo_task, self._solo_since, self._solo_count = task, now, 0
        else:
            self._solo_count += 1
            if (self._solo_count >= SOLO_MESSAGES and now - self._solo_since >= SOLO_WINDOW_S
                    and not self._pending):
                outcome = self._stage_inline(request, loop)
                if outcome is not None:
                    return outcome
        aio_future: asyncio.Future[StageOutcome] = loop.create_future()
        self._enqueue(_Request(request, loop=loop, aio_future=aio_future))
        return await aio_future

    def _stage_inline(self, request: StageRequest, loop: asyncio.AbstractEventLoop) -> StageOutcome | None:
        """Commit `request` in the calling thread if the writer is idle; None if it is not (queue it).

        :raises StoreFullError, StoreIOError, StoreError: as a batch of one in the writer thread.
        """
        with self._mutex:
            store = self._store
            if not self._accepting or self._inline or self._writing or self._pending or store is None:
                return None
            self._inline = True
        started = time.perf_counter()
        try:
            result = self._commit(store, [request], loop=loop)
            if isinstance(result, StoreIOError):
                self._go_fatal(result)  # before the writer thread may use the store again
        finally:
            with self._mutex:
                self._inline = False
                if self._pending or self._stopping:
                    self._cond.notify()  # the writer thread waits for the store (we hold _cond's lock)
        if time.perf_counter() - started > INLINE_SLOW_S:
            self._solo_since = time.monotonic() + INLINE_COOLDOWN_S
        if isinstance(result, BaseException):
            raise _copy(result)
        return result[0]

    def call(self, fn: Callable[[Store], _T]) -> concurrent.futures.Future[_T]:
        """Run `fn(store)` in the writer thread between two batches; the future gets its result.

        A StoreIOError from `fn` is fatal, as from a batch. Must not be waited on from the writer thread.

        :raises StoreClosedError: the writer is not running.
        """
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._enqueue(_Call(fn, future))
        return future

    def write(self, fn: Callable[[Store], _T]) -> concurrent.futures.Future[_T]:
        """Run `fn(store)` inside the writer's next group transaction (module docstring); the future
        gets its result once the transaction has committed, or its exception. `fn` must only run
        statements on the store's connection (no BEGIN/COMMIT); node.store.push's functions qualify.

        :raises StoreClosedError: the writer is not running.
        """
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._enqueue(_Write(fn, future))
        return future

    def set_max_bytes(self, n: int | None) -> None:
        """Store.set_max_bytes in the writer thread; returns once applied (see Store.set_max_bytes)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("set_max_bytes() cannot wait on the writer thread from within it")
        self.call(lambda store: store.set_max_bytes(n)).result()

    def _enqueue(self, item: _Item) -> None:
        with self._mutex:
            if not self._accepting:
                raise self._closed_error()
            self._pending.append(item)
            if self._idle:  # else it is committing and takes this item next, unasked
                self._cond.notify()

    def _closed_error(self) -> StoreClosedError:
        if self._fatal is not None:
            error = StoreClosedError("store writer stopped after a fatal error")
            error.__cause__ = self._fatal
            return error
        if not self._started:
            return StoreClosedError("store writer is not started")
        return StoreClosedError("store writer is stopped")

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self, opened: threading.Event, outcome: list[BaseException]) -> None:
        try:
            store = self._store_factory(self._path)
            try:
                if self._max_bytes is not None:
                    store.set_max_bytes(self._max_bytes)
            except BaseException:
                store.close()
                raise
        except BaseException as exc:
            outcome.append(exc)
            opened.set()
            return
        with self._cond:
            self._store = store
            self._accepting = not self._stopping
        opened.set()
        try:
            self._serve(store)
        except BaseException as exc:  # a bug in this module: never leave waiters hanging
            logger.exception("store writer failed unexpectedly")
            self._go_fatal(exc)
        finally:
            with self._cond:
                while self._inline:  # only after a bug in _serve: let a running inline commit end
                    self._cond.wait()
                self._store = None
            try:
                store.close()
            except Exception:
                logger.exception("closing the store failed")
        if self._fatal is not None and self._on_fatal is not None:
            try:
                self._on_fatal(self._fatal)
            except Exception:
                logger.exception("on_fatal callback failed")

    def _serve(self, store: Store) -> None:
        while self._fatal is None:
            taken = self._take()
            if taken is None:
                return
            if isinstance(taken, _Call):
                self._run_call(store, taken)
            else:
                self._commit_batch(store, taken)

    def _take(self) -> _Call | list[_Request | _Write] | None:
        """Block for the first item; then take every request and write queued behind it (up to
        max_batch, not past a call). None when stopping and nothing is left."""
        with self._cond:
            self._writing = False
            while self._inline or (not self._pending and not self._stopping):
                self._idle = True
                self._cond.wait()
                self._idle = False
            if not self._pending:
                return None
            self._writing = True
            first = self._pending.popleft()
            if isinstance(first, _Call):
                return first
            batch: list[_Request | _Write] = [first]
            pending = self._pending
            while pending and len(batch) < self._max_batch:
                item = pending[0]
                if isinstance(item, _Call):
                    break
                batch.append(item)
                pending.popleft()
            return batch

    def _run_call(self, store: Store, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            result = call.fn(store)
        except StoreIOError as exc:
            call.future.set_exception(_copy(exc))
            self._go_fatal(exc)
        except BaseException as exc:
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)

    def _commit_batch(self, store: Store, items: list[_Request | _Write]) -> None:
        batch = [item for item in items if isinstance(item, _Request)
                 and (item.future is None or item.future.set_running_or_notify_cancel())]
        writes = [item for item in items if isinstance(item, _Write) and item.future.set_running_or_notify_cancel()]
        if not batch and not writes:
            return
        result = self._commit(store, [item.request for item in batch], settle=lambda r: _settle(batch, r),
                              writes=writes)
        if isinstance(result, StoreIOError):
            self._go_fatal(result)

    def _commit(self, store: Store, requests: list[StageRequest],
                settle: Callable[[Sequence[StageOutcome] | BaseException], None] | None = None,
                loop: asyncio.AbstractEventLoop | None = None,
                writes: Sequence[_Write] = ()) -> list[StageOutcome] | BaseException:
        """Admit and commit `requests` (and `writes`) as one transaction; the requests' outcomes, or the
        batch's exception (logged, hooks called). `settle(result)` answers the waiters before `on_commit`
        runs; with `loop` (an inline commit) `on_commit` runs soon after in that loop, after the caller
        has answered its sender. The writes' futures are resolved here (module docstring). The caller
        goes fatal on a StoreIOError."""
        space = self._space
        if space is not None and requests:
            try:
                space.admit(len(requests))  # cheap: measures at most every 0.5 s
            except StoreFullError as exc:  # refused before the disk is full: nothing written, no commit
                if settle is not None:
                    settle(exc)
                if not writes:
                    return exc
                requests, settle = [], None
        started = time.perf_counter()
        try:
            if writes:
                outcomes, results = store.commit_group(requests, [write.fn for write in writes])
            else:
                outcomes, results = store.stage_batch(requests), []
        except StoreIOError as exc:
            logger.error("store commit failed with an I/O error; the writer stops: %s", exc)
            self._commit_failed(exc)
            if settle is not None:
                settle(exc)
            _fail_writes(writes, exc)
            return exc
        except Exception as exc:
            logger.warning("store commit of %d requests failed: %s", len(requests), exc)
            if space is not None:
                space.invalidate()  # e.g. SQLITE_FULL: the next batch measures again
            self._commit_failed(exc)
            if settle is not None:
                settle(exc)
            if writes:
                alone = self._commit(store, [], writes=writes) if requests else exc
                if isinstance(alone, BaseException):
                    _fail_writes(writes, alone)
                    if isinstance(alone, StoreIOError):
                        return alone
            return exc
        for write, result in zip(writes, results, strict=True):
            _deliver(write.future, result)
        if not requests:
            return outcomes
        seconds = time.perf_counter() - started
        self._commits += 1
        if space is not None:
            space.committed(len(requests[0].raw) if len(requests) == 1 else sum(len(r.raw) for r in requests))
        if settle is not None:
            settle(outcomes)
        if self._on_commit is not None:
            if loop is not None:
                loop.call_soon(self._committed, seconds, len(requests))
            else:
                self._committed(seconds, len(requests))
        return outcomes

    def _committed(self, seconds: float, n: int) -> None:
        assert self._on_commit is not None
        try:
            self._on_commit(seconds, n)
        except Exception:
            logger.exception("on_commit callback failed")

    def _commit_failed(self, exc: BaseException) -> None:
        if self._on_commit_failure is not None:
            try:
                self._on_commit_failure(exc)
            except Exception:
                logger.exception("on_commit_failure callback failed")

    def _go_fatal(self, exc: BaseException) -> None:
        """Refuse further work and answer everything still queued with StoreClosedError."""
        with self._cond:
            if self._fatal is None:
                self._fatal = exc
            self._accepting = False
            self._stopping = True
            rest = list(self._pending)
            self._pending.clear()
            self._cond.notify()  # from an inline commit: the writer thread ends
        closed = self._closed_error()
        requests = [item for item in rest if isinstance(item, _Request)]
        _settle(requests, closed)
        for item in rest:
            if isinstance(item, _Call | _Write) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(_copy(closed))


def _fail_writes(writes: Sequence[_Write], exc: BaseException) -> None:
    for write in writes:
        if not write.future.done():
            write.future.set_exception(_copy(exc))


def _settle(batch: list[_Request], results: Sequence[StageOutcome] | BaseException) -> None:
    """Give each waiter its outcome, or a copy of the batch's exception: concurrent futures directly,
    asyncio futures with one call_soon_threadsafe per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Settlement]] = {}
    for index, item in enumerate(batch):
        result = _copy(results) if isinstance(results, BaseException) else results[index]
        if item.future is not None:
            if item.future.running() or item.future.set_running_or_notify_cancel():
                _deliver(item.future, result)
        elif item.loop is not None and item.aio_future is not None:
            by_loop.setdefault(item.loop, []).append((item.aio_future, result))
    for loop, settlements in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_in_loop, settlements)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            logger.debug("event loop closed before %d store outcomes were delivered", len(settlements))


def _settle_in_loop(settlements: list[_Settlement]) -> None:
    for future, result in settlements:
        if not future.done():  # done: cancelled by its awaiting task
            _deliver(future, result)


def _deliver(future: concurrent.futures.Future[_T] | asyncio.Future[_T], result: _T | BaseException) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _copy(error: BaseException) -> BaseException:
    """A fresh instance of a StoreError for one waiter (raising one instance in many tasks would grow
    its traceback), chained to the original. Other exceptions are shared as they are."""
    if not isinstance(error, StoreError):
        return error
    try:
        fresh = type(error)(*error.args)
    except TypeError:
        return error
    fresh.__cause__ = error
    return fresh
