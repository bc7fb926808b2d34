"""The harmonizer worker process: staged HL7 v2 messages → outbound FHIR resources, one chunk at a time.

`run_worker(db_path, worker_index, worker_count, settings_payload, stop_event)` is the process body
(node.harmonize.pool starts it with the "spawn" start method through `worker_main`). Each loop:

1. claim up to `chunk_size` staged rows of this worker's partition (`id % worker_count == worker_index`,
   node.store.outbound.claim_staged) of the HL7 v2 feeds it has options for;
2. harmonize each row outside any transaction: a message type listed in the feed's `skip_message_types`
   goes `skipped`; with `validation = "strict"` the structure is checked first (problems → `failed`,
   kind `structure_violation`); then `convert()`. A HarmonizeError → `failed` with its reason and kind;
   any other exception → `failed` with "internal error: <ExceptionType>" (never the exception's text,
   which may quote data), logged with the row id only;
3. record the chunk's results (node.store.outbound.record_results), RECORD_SLICE messages per
   transaction: each message's state and resources are one transaction either way, and the write lock,
   which the intake's commits wait for, is held for a few milliseconds at a time, not for a whole chunk.

Nothing is lost or duplicated when a worker dies anywhere in this loop: its open transaction is rolled
back by SQLite, its rows are still `staged`, and its successor (same index, same partition) redoes them.
When there is nothing to do it sleeps with backoff (50 ms doubling to 1 s). When `stop_event` is set it
finishes the current chunk and returns 0.

The settings payload (`WorkerSettings`) holds only plain, picklable values; each process builds its own
ConvertOptions from it (terminology maps loaded per feed). A map that cannot be loaded is a ConfigError:
the worker logs it and returns EX_CONFIG (78). The node loads the maps at start-up too
(`load_feed_runtimes`), so a bad map fails the start instead of a node running without it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo

from node.errors import EX_CONFIG, EX_IOERR, ConfigError, StoreError, StoreIOError
from node.harmonize.context import (
    INVALID_RESOURCE,
    INVALID_VALUE,
    MISSING_FIELD,
    STRUCTURE,
    UNREADABLE,
    UNSUPPORTED_MESSAGE,
    ConvertOptions,
    HarmonizeError,
    Profile,
)
from node.harmonize.convert import convert
from node.harmonize.terminology import Terminology
from node.settings import HL7FeedBase
from node.store.checkpoint import BACKSTOP_PAGES
from node.store.connect import open_connection
from node.store.migrations import migrate
from node.store.outbound import MessageResult, OutboundResource, StagedRow, claim_staged, record_results

if TYPE_CHECKING:
    import sqlite3

    from node.settings import NodeSettings

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"
"""Kind of a failure that is a bug (any exception other than HarmonizeError)."""
FAILURE_KINDS = (MISSING_FIELD, INVALID_VALUE, UNSUPPORTED_MESSAGE, UNREADABLE, INVALID_RESOURCE, STRUCTURE,
                 INTERNAL_ERROR)
"""Every reason label of edge_node_harmonize_failures_total (reported as 0 per feed until they occur)."""

RECORD_SLICE = 16
"""Messages recorded per transaction (module docstring, step 3)."""
IDLE_MIN_S = 0.05
IDLE_MAX_S = 1.0
STORE_RETRY_S = 1.0
"""Pause after a store error other than an I/O error (e.g. SQLITE_BUSY past busy_timeout)."""
_SLICE_S = 0.05
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StopEvent(Protocol):
    def is_set(self) -> bool: ...


# -- settings -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """A feed's harmonization settings as plain values (picklable for a spawned process)."""

    name: str
    profile: Profile = "base"
    terminology: tuple[str, ...] = ()
    z_segments: Literal["ignore", "extension"] = "ignore"
    validation: Literal["lenient", "strict"] = "lenient"
    skip_message_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a worker process needs from the node's settings."""

    site_id: str
    feeds: tuple[FeedOptions, ...]
    chunk_size: int = 64
    timezone: str = "Europe/Berlin"
    log_level: int = logging.INFO


def worker_settings(settings: NodeSettings, log_level: int | None = None) -> WorkerSettings:
    """The payload of `settings` for worker processes: the HL7 v2 feeds only (others are not
    harmonized here); terminology paths made absolute."""
    feeds = tuple(
        FeedOptions(name=feed.name, profile=feed.profile,
                    terminology=tuple(os.path.abspath(path) for path in feed.terminology),
                    z_segments=feed.z_segments, validation=feed.validation,
                    skip_message_types=tuple(feed.skip_message_types))
        for feed in settings.feeds if isinstance(feed, HL7FeedBase))
    level = logging.getLogger().getEffectiveLevel() if log_level is None else log_level
    return WorkerSettings(site_id=settings.node.site_id, feeds=feeds, chunk_size=settings.harmonize.chunk_size,
                          timezone=settings.harmonize.timezone, log_level=level)


Validator = Callable[[bytes, str], Any]
"""node.hl7v2.structure.validate_structure: (raw, charset) -> StructureReport(ok, problems, reason)."""


@dataclass(frozen=True, slots=True)
class FeedRuntime:
    """A feed's loaded options in a worker: what `harmonize_row` needs."""

    options: ConvertOptions
    skip: frozenset[str]
    validate: Validator | None = None


def load_feed_runtimes(payload: WorkerSettings) -> dict[str, FeedRuntime]:
    """Load every feed's terminology maps and options. :raises ConfigError: naming the feed and the file."""
    zone = ZoneInfo(payload.timezone)
    validator = _structure_validator() if any(f.validation == "strict" for f in payload.feeds) else None
    runtimes = {}
    for feed in payload.feeds:
        try:
            terminology = Terminology.load(Path(path) for path in feed.terminology)
        except ConfigError as exc:
            raise ConfigError(f"feeds.{feed.name}.terminology: {exc}") from None
        options = ConvertOptions(site_id=payload.site_id, feed=feed.name, profile=feed.profile,
                                 terminology=terminology, z_segments=feed.z_segments, timezone=zone)
        runtimes[feed.name] = FeedRuntime(options, frozenset(filter(None, map(_skip_key, feed.skip_message_types))),
                                          validator if feed.validation == "strict" else None)
    return runtimes


def _structure_validator() -> Validator:
    try:
        from node.hl7v2.structure import validate_structure
    except ImportError as exc:  # hl7apy missing or the module broken: strict cannot be honoured
        raise ConfigError(f"validation = \"strict\" needs node.hl7v2.structure: {exc}") from None
    return validate_structure


# -- one message ----------------------------------------------------------------------------------------

_TYPE_SEPARATOR = re.compile(r"[^A-Z0-9_]")


def message_key(message_type: str) -> tuple[str, str]:
    """(code, trigger) of a stored MSH-9 (`ADT^A01^ADT_A01` → ("ADT", "A01"); `ADT^A11_A09` → A11)."""
    parts = _TYPE_SEPARATOR.split(message_type.strip().upper())
    code = parts[0] if parts else ""
    trigger = parts[1].split("_", 1)[0] if len(parts) > 1 else ""
    return code, trigger


def _skip_key(entry: str) -> str:
    code, trigger = message_key(entry)
    return f"{code}^{trigger}" if trigger else code


def is_skipped(message_type: str, skip: frozenset[str]) -> bool:
    """Whether a skip list entry names the message's code (`ACK`) or code and trigger (`ADT^A60`)."""
    if not skip:
        return False
    code, trigger = message_key(message_type)
    return code in skip or f"{code}^{trigger}" in skip


def harmonize_row(row: StagedRow, feed: FeedRuntime) -> MessageResult:
    """The outcome of one staged message. Never raises (any exception becomes an internal error)."""
    try:
        if is_skipped(row.message_type, feed.skip):
            return MessageResult.skipped(row.id, row.feed)
        if feed.validate is not None:
            report = feed.validate(row.raw, row.charset)
            if not report.ok:
                return MessageResult.failed(row.id, row.feed, report.reason or "structure violation", STRUCTURE)
        result = convert(row.raw, row.charset, feed.options)
        resources = [OutboundResource(r["resourceType"], r["id"], text)
                     for r, text in zip(result.resources, result.json, strict=True)]
    except HarmonizeError as exc:
        return MessageResult.failed(row.id, row.feed, exc.reason, exc.kind)
    except Exception as exc:  # a bug; its text may quote data: only the type is kept
        log.error("harmonizer: message id=%d failed with an internal error (%s)", row.id, type(exc).__name__)
        return MessageResult.failed(row.id, row.feed, f"internal error: {type(exc).__name__}", INTERNAL_ERROR)
    return MessageResult.harmonized(row.id, row.feed, result.partition_key, resources,
                                    result.unmapped_segments, result.unmapped_codes)


# -- the process ----------------------------------------------------------------------------------------


def run_worker(db_path: str | Path, worker_index: int, worker_count: int, settings_payload: WorkerSettings,
               stop_event: StopEvent) -> int:
    """Harmonize this worker's partition until `stop_event` is set; return the exit status.

    0: stopped on request. 78 (EX_CONFIG): a terminology map or strict validation cannot be loaded.
    74 (EX_IOERR): the store failed with an I/O error. 1: the store cannot be opened.
    """
    name = f"harmonizer worker {worker_index}/{worker_count}"
    try:
        feeds = load_feed_runtimes(settings_payload)
    except ConfigError as exc:
        log.error("%s: configuration error, exiting: %s", name, exc)
        return EX_CONFIG
    try:
        # Not durable (node.store.connect): losing a commit leaves the messages staged, to be redone.
        conn = open_connection(Path(db_path), durable=False, wal_autocheckpoint=BACKSTOP_PAGES)
    except StoreError as exc:
        log.error("%s: cannot open the store: %s", name, exc)
        return EX_IOERR if isinstance(exc, StoreIOError) else 1
    try:
        migrate(conn)  # a no-op when the node has opened the store (it migrates before starting workers)
        return _loop(conn, name, worker_index, worker_count, settings_payload.chunk_size, feeds, stop_event)
    except StoreIOError as exc:
        log.error("%s: store I/O error, exiting: %s", name, exc)
        return EX_IOERR
    except StoreError as exc:
        log.error("%s: store error, exiting: %s", name, exc)
        return 1
    finally:
        conn.close()


def _loop(conn: sqlite3.Connection, name: str, worker_index: int, worker_count: int, chunk_size: int,
          feeds: dict[str, FeedRuntime], stop: StopEvent) -> int:
    feed_names = sorted(feeds)
    idle = IDLE_MIN_S
    while not stop.is_set():
        try:
            rows = claim_staged(conn, worker_index=worker_index, worker_count=worker_count, limit=chunk_size,
                                feeds=feed_names)
            if not rows:
                _sleep(stop, idle)
                idle = min(idle * 2, IDLE_MAX_S)
                continue
            idle = IDLE_MIN_S
            started = time.perf_counter()
            results = [harmonize_row(row, feeds[row.feed]) for row in rows]
            recorded = 0
            for first in range(0, len(results), RECORD_SLICE):
                recorded += len(record_results(conn, results[first:first + RECORD_SLICE]))
            log.debug("%s: recorded %d of %d messages in %.1f ms", name, recorded, len(rows),
                      (time.perf_counter() - started) * 1000)
        except StoreIOError:
            raise
        except StoreError as exc:  # e.g. SQLITE_BUSY past busy_timeout: nothing was recorded, redo later
            log.warning("%s: store error, retrying in %.0f s: %s", name, STORE_RETRY_S, exc)
            _sleep(stop, STORE_RETRY_S)
    log.info("%s: stopped", name)
    return 0


def _sleep(stop: StopEvent, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, _SLICE_S))


class PipeStopSignal:
    """The pool's stop signal as seen by a worker: set once the pool closes its end of the pipe, or when
    the node process is gone (the pipe's write end closes with it). Lock-free, so a worker killed at
    any moment cannot leave it locked for the others."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def is_set(self) -> bool:
        try:
            return bool(self._reader.poll())
        except (OSError, EOFError):
            return True


def worker_main(db_path: str, worker_index: int, worker_count: int, settings_payload: WorkerSettings,
                stop_event: StopEvent) -> None:
    """Entry point of a spawned worker process: logging to stderr, Ctrl-C left to the node (which stops
    the pool), SIGTERM = stop after the current chunk; exits with `run_worker`'s status."""
    logging.basicConfig(level=settings_payload.log_level, stream=sys.stderr, format=LOG_FORMAT)
    terminated = _Terminated(stop_event)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminated.handle)
    sys.exit(run_worker(db_path, worker_index, worker_count, settings_payload, terminated))


class _Terminated:
    """`stop_event`, also set by SIGTERM."""

    def __init__(self, stop_event: StopEvent) -> None:
        self._stop = stop_event
        self._terminated = False

    def handle(self, _signum: int, _frame: object) -> None:
        self._terminated = True

    def is_set(self) -> bool:
        return self._terminated or self._stop.is_set()
