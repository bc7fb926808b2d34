"""The file-drop connector: a directory watched for HL7 v2 files, each holding one or many messages.

Contract, per file matching the feed's `pattern` in `path` (non-recursive; dotfiles, directories,
symlinks, `*.reason` files and other names are ignored):

1. It is read only once *settled*: size and mtime unchanged for `settle_s` (connectors.filedrop.settle);
   an empty file for at least `poll_interval_s` too (it is most likely being written). Files already
   there at start-up are picked up like new ones.
2. Its messages (and any stray bytes, as failed rows) are submitted to the Sink together, at most
   `MAX_IN_FLIGHT` at a time, so group commit batches them (connectors.filedrop.plan).
3. Only when every one is committed is the file moved: into `archive` if every message was staged and
   the splitter found no problem, else into `error` with a `<name>.reason` beside it (one line per
   problem, naming lines and message numbers, never contents). A taken name gets a timestamp.
4. If the store cannot commit (StoreFullError, StoreIOError, StoreClosedError) or the file cannot be
   read, it stays where it is and is tried again after `poll_interval_s`.

Crash safety follows from 3: a crash (or a stop) in the middle of a file leaves the file in place, and
reading it again stages nothing twice because the store deduplicates on (feed, MSH-3, MSH-4, MSH-10,
sha256). Metrics count each submitted row (message, or block of stray lines) as received and each one the
store deduplicated as a duplicate; a file that is read again after a failure is counted again.

Threads: a watchdog observer only sets a `threading.Event`; one worker thread per connector scans the
directory on each wake-up and at least every `poll_interval_s`, reads files and waits for commits. The
event loop is never blocked. Logs name files and counts only, never message contents.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import fnmatch
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from connectors.base import Sink
from connectors.filedrop.moves import REASON_SUFFIX, move_into
from connectors.filedrop.plan import FilePlan, Problem, plan_file
from connectors.filedrop.settle import SettleTracker, Signature
from node.errors import ConnectorError, StoreError
from node.metrics import FeedMetrics
from node.model import StageOutcome, StageRequest
from node.settings import FileDropFeed

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024 * 1024
"""A larger file is not read: it goes to `error` with a reason."""
MAX_IN_FLIGHT = 256
"""Most requests of one file submitted and not yet committed (bounds memory, still fills batches)."""
MIN_RESCAN_S = 0.05
"""Least time between two scans, so a burst of file-system events causes few scans."""

_WATCHED_EVENTS: list[type[FileSystemEvent]] = [FileCreatedEvent, FileMovedEvent, FileModifiedEvent,
                                                 FileClosedEvent]
"""Events that may mean a new or grown file (not opens and reads: our own reads would wake us up)."""


class _QuietStopRace(logging.Filter):
    """Drops watchdog's harmless ERROR when an event arrives while its inotify emitter stops (watchdog 7
    reports every stop within 0.5 s of a file being moved out of the directory that way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStopRace())


class _StoreUnavailable(Exception):
    """The store refused or failed a request of the file: leave the file, try again later."""


class _Changed(Exception):
    """The file changed since the scan (or while it was read): it must settle again."""

    def __init__(self, signature: Signature) -> None:
        super().__init__()
        self.signature = signature


class _Stopping(Exception):
    """stop() was called while a file was being submitted: leave the file, it is redone next run."""


@dataclass(frozen=True, slots=True)
class _Committed:
    """The outcome of submitting one file's requests."""

    new: int
    duplicates: int


class _WakeUp(FileSystemEventHandler):
    """Runs in watchdog's thread: only sets the worker's event."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class FileDropConnector:
    """One `type = "filedrop"` feed (see the module docstring for the contract).

    :param max_file_bytes: files larger than this go to `error` unread (a sanity limit; tests lower it).
    """

    def __init__(self, feed: FileDropFeed, sink: Sink, metrics: FeedMetrics, *,
                 max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.name = feed.name
        self._feed = feed
        self._sink = sink
        self._metrics = metrics
        self._max_file_bytes = max_file_bytes
        self._tracker = SettleTracker(feed.settle_s, empty_settle_s=feed.poll_interval_s)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None
        self._scans = 0
        self._warned: dict[str, str] = {}
        """File name -> the last retry warning logged for it (the same warning is logged once)."""

    # -- lifecycle ---------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"{self.name}=dir:{self._feed.path}"

    @property
    def scans(self) -> int:
        """Directory scans completed so far (lets tests wait for 'the connector has looked')."""
        return self._scans

    async def start(self) -> None:
        """Create the directories, start watching and start the worker thread.

        :raises ConnectorError: a directory cannot be created or watched.
        """
        if self._thread is not None:
            raise RuntimeError(f"feed {self.name}: start() called twice")
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        feed = self._feed
        for directory in (feed.path, feed.archive, feed.error):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConnectorError(f"feed {self.name}: cannot create directory {directory}: "
                                     f"{exc.strerror}") from None
        for key, directory in (("archive", feed.archive), ("error", feed.error)):
            if directory.samefile(feed.path):  # every moved file would be read again, forever
                raise ConnectorError(f"feed {self.name}: {key} must not be the watched directory "
                                     f"{feed.path}")
        observer = Observer()
        try:
            observer.schedule(_WakeUp(self._wake), str(feed.path), recursive=False,
                              event_filter=_WATCHED_EVENTS)
            observer.start()
        except OSError as exc:
            raise ConnectorError(f"feed {self.name}: cannot watch directory {feed.path}: "
                                 f"{exc.strerror or exc}") from None
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name=f"filedrop-{self.name}", daemon=True)
        self._thread.start()
        log.info("feed %s: watching %s for %s", self.name, feed.path, feed.pattern)

    async def stop(self) -> None:
        """Stop watching; the file being processed stops after its submitted messages are committed
        (a partly submitted file stays in place and is redone on the next start: deduplicated).
        Idempotent."""
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        last_scan = float("-inf")
        while not self._stopping.is_set():
            pause = last_scan + MIN_RESCAN_S - time.monotonic()
            if pause > 0 and self._stopping.wait(pause):
                break
            self._wake.clear()
            last_scan = time.monotonic()
            try:
                timeout = self._scan()
            except Exception:  # a bug: keep the feed alive; the traceback holds no message data
                log.exception("feed %s: scan failed", self.name)
                timeout = self._feed.poll_interval_s
            self._scans += 1
            self._wake.wait(timeout)

    def _scan(self) -> float:
        """List, track and process settled files. Returns how long to wait for the next scan."""
        listing = self._list()
        for name in self._warned.keys() - listing.keys() - {""}:
            del self._warned[name]
        now = time.monotonic()
        ready, next_due = self._tracker.observe(listing, now)
        for name in ready:
            if self._stopping.is_set():
                break
            self._handle(name)
        timeout = self._feed.poll_interval_s
        if next_due is not None:
            timeout = min(timeout, max(0.0, next_due - time.monotonic()))
        return timeout

    def _list(self) -> dict[str, os.stat_result]:
        """Regular files in `path` matching the pattern (not dotfiles, not `.reason` files)."""
        found: dict[str, os.stat_result] = {}
        try:
            with os.scandir(self._feed.path) as entries:
                for entry in entries:
                    if not self._wanted(entry.name):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            found[entry.name] = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
        except OSError as exc:
            self._warn_once("", f"cannot list the directory: {exc.strerror or exc}")
        else:
            self._warned.pop("", None)
        return found

    def _wanted(self, name: str) -> bool:
        return (not name.startswith(".") and not name.endswith(REASON_SUFFIX)
                and fnmatch.fnmatchcase(name, self._feed.pattern))

    # -- one file ----------------------------------------------------------------------------------

    def _handle(self, name: str) -> None:
        """Process one settled file: read, stage, move (or leave it for a retry)."""
        path = self._feed.path / name
        expected = self._tracker.signature(name)
        try:
            data = self._read(path, expected)
        except _Changed as changed:
            self._tracker.changed(name, changed.signature, time.monotonic())
            return
        except FileNotFoundError:
            self._tracker.forget(name)
            return
        except OSError as exc:
            self._retry_later(name, f"cannot read the file: {exc.strerror or exc}")
            return
        assert expected is not None  # _read checked the open file against it
        if data is None:
            too_large = Problem(0, f"the file has {expected.size} bytes, more than the limit of "
                                   f"{self._max_file_bytes}; it was not read")
            self._finish(name, expected, FilePlan(problems=[too_large]), _Committed(0, 0))
            return
        plan = plan_file(self._feed, name, data, time.time())
        del data
        try:
            committed = self._commit(plan.requests)
        except _Stopping:
            log.info("feed %s: %s: stopping before all its messages were committed; it stays in place "
                     "and is read again on the next start", self.name, name)
            return
        except _StoreUnavailable as exc:
            self._retry_later(name, str(exc))
            return
        self._finish(name, expected, plan, committed)

    def _read(self, path: Path, expected: Signature | None) -> bytes | None:
        """The file's bytes, or None if it is larger than the limit.

        :raises _Changed: the open file is not the settled one, or it changed while being read.
        :raises OSError: it cannot be opened or read.
        """
        with open(path, "rb") as handle:
            signature = Signature.of(os.fstat(handle.fileno()))
            if signature != expected:
                raise _Changed(signature)
            if signature.size > self._max_file_bytes:
                return None
            data = handle.read(self._max_file_bytes + 1)
            after = Signature.of(os.fstat(handle.fileno()))
        if after != signature or len(data) != signature.size:
            raise _Changed(after)
        return data

    def _commit(self, requests: list[StageRequest]) -> _Committed:
        """Submit every request (at most MAX_IN_FLIGHT pending) and wait until all are committed.

        :raises _StoreUnavailable: a request failed; every submitted one has been answered.
        :raises _Stopping: stop() was called; every submitted one has been answered.
        """
        in_flight: collections.deque[concurrent.futures.Future[StageOutcome]] = collections.deque()
        counts = [0, 0]  # new, duplicates
        try:
            for request in requests:
                if self._stopping.is_set():
                    raise _Stopping
                while len(in_flight) >= MAX_IN_FLIGHT:
                    self._account(in_flight.popleft(), counts)
                in_flight.append(self._submit(request))
                self._metrics.received()
            while in_flight:
                self._account(in_flight.popleft(), counts)
        except BaseException:
            concurrent.futures.wait(in_flight)
            raise
        return _Committed(new=counts[0], duplicates=counts[1])

    def _submit(self, request: StageRequest) -> concurrent.futures.Future[StageOutcome]:
        try:
            return self._sink.submit(request)
        except StoreError as exc:
            raise _StoreUnavailable(f"the store cannot take messages ({type(exc).__name__}: {exc})") from exc

    def _account(self, future: concurrent.futures.Future[StageOutcome], counts: list[int]) -> None:
        try:
            outcome = future.result()
        except StoreError as exc:
            raise _StoreUnavailable(f"the store cannot take messages ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:  # a bug in the store: its text is not guaranteed to be free of data
            log.debug("feed %s: unexpected store failure", self.name, exc_info=True)
            raise _StoreUnavailable(f"unexpected store failure ({type(exc).__name__})") from exc
        if outcome.duplicate:
            counts[1] += 1
            self._metrics.duplicate()
        else:
            counts[0] += 1

    def _finish(self, name: str, read: Signature, plan: FilePlan, committed: _Committed) -> None:
        """Everything of the file is committed: move it to archive, or to error with its reason.

        A file replaced since it was read (same name, new content) is not moved: it is read again.
        """
        path = self._feed.path / name
        to_error = bool(plan.problems)
        directory = self._feed.error if to_error else self._feed.archive
        try:
            current = Signature.of(os.stat(path, follow_symlinks=False))
            if current != read:
                self._tracker.changed(name, current, time.monotonic())
                return
            target = move_into(path, directory, plan.reason_text() if to_error else None)
        except FileNotFoundError:
            self._tracker.forget(name)
            return
        except OSError as exc:
            self._retry_later(name, f"cannot move it to {directory}: {exc.strerror or exc}")
            return
        self._tracker.forget(name)
        self._warned.pop(name, None)
        log.log(logging.WARNING if to_error else logging.INFO,
                "feed %s: %s: %d message(s), %d new row(s), %d duplicate(s), %d problem(s); moved to %s",
                self.name, name, plan.messages, committed.new, committed.duplicates, len(plan.problems),
                target)

    def _retry_later(self, name: str, why: str) -> None:
        self._tracker.defer(name, time.monotonic() + self._feed.poll_interval_s)
        self._warn_once(name, why)

    def _warn_once(self, name: str, why: str) -> None:
        """Log `why` as a warning the first time for `name`, at debug level while it repeats."""
        level = logging.DEBUG if self._warned.get(name) == why else logging.WARNING
        self._warned[name] = why
        log.log(level, "feed %s: %s%s; left in place, tried again in %.1f s", self.name,
                f"{name}: " if name else "", why, self._feed.poll_interval_s)
