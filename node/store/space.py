"""Disk-space admission of new messages: refuse intake BEFORE the disk is full, never drop anything.

Two limits (node.settings.StoreSection):

- the cap, `[store] max_bytes`: database + WAL file bytes (what `edge_node_store_bytes` shows). At or
  above it new messages are refused.
- the low-water mark, `[store] min_free_bytes`: free bytes of the store's file system for unprivileged
  writers (statvfs `f_bavail * f_frsize`). Below it new messages are refused.

`SpaceGuard.admit(n)` is called by the store writer (node.store.writer.GroupCommitWriter) before it
commits a batch of `n` stage requests; it raises StoreFullError when a limit is crossed, and then nothing
of the batch is written: the senders get AR/CR with ERR 207 ("message store full"), the file-drop
connector leaves the file in place and retries. Only intake is refused: the harmonizer, the push stage and
retention keep writing, so the backlog drains and retention frees space.

Measuring costs two stat() and one statvfs() call, so it is never done per message: the last measurement
is reused until it is older than `refresh_s` (0.5 s), or `refresh_commits` batches or `refresh_bytes`
payload bytes were committed since, or a commit failed (`invalidate()`). Recovery is automatic: while
refusing, every admission attempt after `refresh_s` measures again, and retention calls `invalidate()`
after it gave space back. Between two measurements intake can overshoot the cap by at most that much.

The cap counts the WAL too: it grows to about 4 MiB (the auto-checkpoint threshold of 1000 pages) in
normal operation and is only truncated by retention's checkpoint. Harmonized output of messages already
staged still grows the file after intake stopped (it must: that is how the backlog drains); the
low-water mark is the floor that protects the disk itself.

Thread-safe: the writer thread admits, scrape threads read `status()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.errors import StoreFullError
from node.store.queries import database_bytes

logger = logging.getLogger(__name__)

REFRESH_S = 0.5
"""A measurement is reused for at most this long."""
REFRESH_COMMITS = 64
"""... or for at most this many committed batches."""
REFRESH_BYTES = 256 * 1024
"""... or for at most this many committed payload bytes."""

CAP = "cap"
LOW_SPACE = "low_space"
REASONS = (CAP, LOW_SPACE)
"""Label values of edge_node_store_refusing{reason} and edge_node_store_refused_total{reason}."""


def free_bytes(path: Path, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (a directory)."""
    result = statvfs(str(path))
    return result.f_bavail * result.f_frsize


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


@dataclass(frozen=True, slots=True)
class SpaceStatus:
    """One measurement and what it means for intake."""

    store_bytes: int
    """Database + WAL file bytes."""
    free_bytes: int | None
    """Free bytes of the store's file system; None when statvfs failed (then never `low_space`)."""
    max_bytes: int | None
    min_free_bytes: int
    measured_at: float
    """The guard's clock (time.monotonic) at the measurement."""

    @property
    def over_cap(self) -> bool:
        return self.max_bytes is not None and self.store_bytes >= self.max_bytes

    @property
    def low_space(self) -> bool:
        return self.free_bytes is not None and self.free_bytes < self.min_free_bytes

    @property
    def reasons(self) -> tuple[str, ...]:
        """The limits crossed: () while intake is admitted, else some of ("cap", "low_space")."""
        return tuple(reason for reason, crossed in ((CAP, self.over_cap), (LOW_SPACE, self.low_space)) if crossed)

    @property
    def refusing(self) -> bool:
        return self.over_cap or self.low_space

    def describe(self) -> str | None:
        """Why new messages are refused (no patient data), or None while they are admitted."""
        parts = []
        if self.over_cap:
            assert self.max_bytes is not None
            parts.append(f"store cap reached: database + WAL {_mib(self.store_bytes)} >= "
                         f"[store] max_bytes {_mib(self.max_bytes)}")
        if self.low_space:
            assert self.free_bytes is not None
            parts.append(f"low disk space: {_mib(self.free_bytes)} free < [store] min_free_bytes "
                         f"{_mib(self.min_free_bytes)}")
        return "; ".join(parts) or None


class SpaceGuard:
    """Admission of stage batches by disk space (see the module docstring).

    :param path: the store's database file (its WAL is `path-wal`; free space is that of its directory).
    :param max_bytes: the cap of database + WAL bytes; None: no cap.
    :param min_free_bytes: the free-space low-water mark; 0: never refuse for free space.
    :param clock: monotonic seconds (a test seam).
    :param statvfs: os.statvfs (a test seam).
    :param measure_store: bytes of database + WAL for `path` (a test seam).
    """

    def __init__(self, path: Path, *, max_bytes: int | None = None, min_free_bytes: int = 0,
                 refresh_s: float = REFRESH_S, refresh_commits: int = REFRESH_COMMITS,
                 refresh_bytes: int = REFRESH_BYTES, clock: Callable[[], float] = time.monotonic,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 measure_store: Callable[[Path], int] = database_bytes) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        if min_free_bytes < 0:
            raise ValueError("min_free_bytes must not be negative")
        self.path = path
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._refresh_s = refresh_s
        self._refresh_commits = refresh_commits
        self._refresh_bytes = refresh_bytes
        self._clock = clock
        self._statvfs = statvfs
        self._measure_store = measure_store
        self._lock = threading.Lock()
        self._status: SpaceStatus | None = None
        self._invalid = True
        self._commits_since = 0
        self._bytes_since = 0
        self._statvfs_failed = False
        self._refused = dict.fromkeys(REASONS, 0)
        self.measurements = 0
        """How many times the guard measured (tests check it is not once per batch)."""

    # -- the writer thread ------------------------------------------------------------------------

    def admit(self, n: int = 1) -> None:
        """Admit a batch of `n` stage requests, or refuse it.

        :raises StoreFullError: a limit is crossed; nothing of the batch may be written.
        """
        with self._lock:
            status = self._status
            if status is None or self._stale(status):
                status = self._measure()
            if not status.refusing:
                return
            for reason in status.reasons:
                self._refused[reason] += n
        raise StoreFullError(f"store full: {status.describe()}; new messages are refused until space is freed")

    def committed(self, payload_bytes: int) -> None:
        """A stage batch with `payload_bytes` of messages was committed (counts toward the next refresh)."""
        with self._lock:
            self._commits_since += 1
            self._bytes_since += payload_bytes

    def invalidate(self) -> None:
        """Measure again at the next admission or status (after a failed commit, after retention)."""
        with self._lock:
            self._invalid = True

    # -- any thread -------------------------------------------------------------------------------

    def status(self) -> SpaceStatus:
        """The current measurement (taken now if the last one is stale)."""
        with self._lock:
            status = self._status
            if status is None or self._invalid or self._clock() - status.measured_at >= self._refresh_s:
                status = self._measure()
            return status

    def refused(self) -> dict[str, int]:
        """Stage requests refused so far, per reason (a request refused for both counts for both)."""
        with self._lock:
            return dict(self._refused)

    @property
    def enabled(self) -> bool:
        """False when neither limit can ever refuse (no cap, low-water mark 0)."""
        return self.max_bytes is not None or self.min_free_bytes > 0

    # -- internals (lock held) --------------------------------------------------------------------

    def _stale(self, status: SpaceStatus) -> bool:
        return (self._invalid or self._commits_since >= self._refresh_commits
                or self._bytes_since >= self._refresh_bytes
                or self._clock() - status.measured_at >= self._refresh_s)

    def _measure(self) -> SpaceStatus:
        self.measurements += 1
        store_bytes = self._measure_store(self.path)
        free: int | None = None
        try:
            free = free_bytes(self.path.parent, self._statvfs)
            self._statvfs_failed = False
        except OSError as exc:
            if not self._statvfs_failed:
                logger.warning("cannot read the free space of %s (%s): the low-water mark is not checked",
                               self.path.parent, exc.strerror or exc)
            self._statvfs_failed = True
        status = SpaceStatus(store_bytes=store_bytes, free_bytes=free, max_bytes=self.max_bytes,
                             min_free_bytes=self.min_free_bytes, measured_at=self._clock())
        previous = self._status
        self._status = status
        self._invalid = False
        self._commits_since = 0
        self._bytes_since = 0
        was_refusing = previous is not None and previous.refusing
        if status.refusing and (previous is None or previous.reasons != status.reasons):
            logger.warning("refusing new messages: %s", status.describe())
        elif was_refusing and not status.refusing:
            logger.warning("accepting new messages again: the store has space")
        return status
