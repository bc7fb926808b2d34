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


_Item = _Request | _Call
_Settlement = tuple["asyncio.Future[StageOutcome]", "StageOutcome | BaseException"]


class GroupCommitWriter:
    """Owns a Store in one dedicated thread; see the module docstring for batching and failures.

    :param path: the store file.
    :param max_batch: most requests per transaction.
    :param on_commit: `on_commit(seconds, n_requests)`, called in the writer thread after each
        successful commit with the duration of the whole transaction; its exceptions are logged.
    :param on_commit_failure: `on_commit_failure(exc)`, called in the writer thread after each failed
        stage_batch transaction with its exception; its exceptions are logged.
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
        self._cond = threading.Condition(threading.Lock())
        self._pending: collections.deque[_Item] = collections.deque()
        self._accepting = False
        self._stopping = False
        self._started = False
        self._fatal: BaseException | None = None
        self._commits = 0
        self._thread: threading.Thread | None = None

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
        """Queue `request` and wait for its outcome without blocking the event loop.

        :raises StoreFullError, StoreIOError, StoreError: the batch failed (module docstring).
        :raises StoreClosedError: the writer is not running, or failed before taking this request.
        """
        loop = asyncio.get_running_loop()
        aio_future: asyncio.Future[StageOutcome] = loop.create_future()
        self._enqueue(_Request(request, loop=loop, aio_future=aio_future))
        return await aio_future

    def call(self, fn: Callable[[Store], _T]) -> concurrent.futures.Future[_T]:
        """Run `fn(store)` in the writer thread between two batches; the future gets its result.

        A StoreIOError from `fn` is fatal, as from a batch. Must not be waited on from the writer thread.

        :raises StoreClosedError: the writer is not running.
        """
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._enqueue(_Call(fn, future))
        return future

    def set_max_bytes(self, n: int | None) -> None:
        """Store.set_max_bytes in the writer thread; returns once applied (see Store.set_max_bytes)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("set_max_bytes() cannot wait on the writer thread from within it")
        self.call(lambda store: store.set_max_bytes(n)).result()

    def _enqueue(self, item: _Item) -> None:
        with self._cond:
            if not self._accepting:
                raise self._closed_error()
            self._pending.append(item)
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
            self._accepting = not self._stopping
        opened.set()
        try:
            self._serve(store)
        except BaseException as exc:  # a bug in this module: never leave waiters hanging
            logger.exception("store writer failed unexpectedly")
            self._go_fatal(exc)
        finally:
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

    def _take(self) -> _Call | list[_Request] | None:
        """Block for the first item; then take every request queued behind it (up to max_batch, not
        past a call). None when stopping and nothing is left."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            first = self._pending.popleft()
            if isinstance(first, _Call):
                return first
            batch = [first]
            pending = self._pending
            while pending and len(batch) < self._max_batch:
                item = pending[0]
                if not isinstance(item, _Request):
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

    def _commit_batch(self, store: Store, items: list[_Request]) -> None:
        batch = [item for item in items if item.future is None or item.future.set_running_or_notify_cancel()]
        if not batch:
            return
        space = self._space
        if space is not None:
            try:
                space.admit(len(batch))  # cheap: measures at most every 0.5 s
            except StoreFullError as exc:  # refused before the disk is full: nothing written, no commit
                _settle(batch, exc)
                return
        started = time.perf_counter()
        try:
            outcomes = store.stage_batch([item.request for item in batch])
        except StoreIOError as exc:
            logger.error("store commit failed with an I/O error; the writer stops: %s", exc)
            self._commit_failed(exc)
            _settle(batch, exc)
            self._go_fatal(exc)
            return
        except Exception as exc:
            logger.warning("store commit of %d requests failed: %s", len(batch), exc)
            if space is not None:
                space.invalidate()  # e.g. SQLITE_FULL: the next batch measures again
            self._commit_failed(exc)
            _settle(batch, exc)
            return
        seconds = time.perf_counter() - started
        self._commits += 1
        if space is not None:
            space.committed(sum(len(item.request.raw) for item in batch))
        _settle(batch, outcomes)
        if self._on_commit is not None:
            try:
                self._on_commit(seconds, len(batch))
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
        closed = self._closed_error()
        requests = [item for item in rest if isinstance(item, _Request)]
        _settle(requests, closed)
        for item in rest:
            if isinstance(item, _Call) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(_copy(closed))


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
