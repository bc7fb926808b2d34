"""WAL checkpoints off the hot path: a background thread copies the WAL back into the database file.

Why: with SQLite's default (`wal_autocheckpoint=1000` pages) the connection whose COMMIT pushes the WAL
past 1000 pages runs the checkpoint inside that COMMIT: it writes the pages to the database file and
fsyncs it, several milliseconds. Under load that is, every fraction of a second, an intake commit: an
MLLP sender waits for its ACK while the harmonizer's output is copied around. The node therefore opens
its hot connections (the intake writer, the harmonizer workers) with a high `BACKSTOP_PAGES` limit
instead (they only checkpoint themselves if this thread has fallen far behind or is gone), and this
thread runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection every `interval_s` once the WAL file
is larger than `threshold_bytes` (the file never shrinks by itself, so from then on every run
checkpoints; nothing to do costs one read of the WAL index, no I/O). PASSIVE takes no write lock:
writers go on while it copies.

The WAL starts over from its beginning (and stops growing) only when a writer begins a transaction
right after a checkpoint that copied every frame; under sustained load the passive checkpoint never
gets there (writers add frames while it copies), and a FULL one would wait for a write lock the
writers keep taking. So once the WAL holds more than `complete_bytes` of frames, the thread asks
`finish` to run one more passive checkpoint where no frame can be added by the node's main writer:
the node passes one that runs in the GroupCommitWriter's thread, between its transactions; the next
writer then starts the WAL over. Before that, the thread runs a few more passive passes, each copying
what writers added during the previous one, until a pass finds little new (FINISH_RESIDUAL_FRAMES): the
pass in the writer's thread, which intake waits for, then copies only that little. Without `finish`
(tools, tests) a FULL checkpoint on the thread's connection does it.

Durability is unchanged: a checkpoint only copies frames that are already committed (and, for the
intake's commits, already fsynced in the WAL); SQLite fsyncs the WAL before copying and the database
file after.

Failures (SQLITE_BUSY, an I/O error) are logged and retried at the next interval: the backstop limit
keeps the WAL bounded even if this thread can do nothing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.errors import StoreClosedError, StoreError
from node.store.connect import open_connection
from node.store.errormap import map_sqlite_error

log = logging.getLogger(__name__)

BACKSTOP_PAGES = 16384
"""wal_autocheckpoint of the node's hot connections: 64 MiB of WAL at 4 KiB pages before a committing
connection checkpoints by itself (SQLite's default is 1000 pages)."""
DEFAULT_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Checkpoint once the WAL file is this large (about SQLite's own default of 1000 pages)."""
DEFAULT_COMPLETE_BYTES = 4 * DEFAULT_THRESHOLD_BYTES
"""With more frames than this in the WAL, the thread asks for a checkpoint that lets the WAL start over."""
CATCH_UP_PASSES = 4
"""Passive passes, at most, that copy what writers added during the previous one before finishing."""
FINISH_RESIDUAL_FRAMES = 64
"""Stop catching up once a pass had at most this many new frames to copy (256 KiB at 4 KiB pages)."""
DEFAULT_INTERVAL_S = 0.25
"""How often the thread looks at the WAL (a stat() call, then a checkpoint when it is large)."""


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """What one `PRAGMA wal_checkpoint` reported: whether a writer or reader kept it from finishing,
    the frames in the WAL, and how many of them are now in the database file."""

    busy: bool
    wal_frames: int
    checkpointed_frames: int


def checkpoint(conn: sqlite3.Connection, mode: str = "PASSIVE") -> CheckpointResult:
    """Run `PRAGMA wal_checkpoint(mode)` (PASSIVE, FULL, RESTART or TRUNCATE) on `conn`.

    :raises StoreError: (or a subclass) SQLite failed.
    """
    if mode not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
        raise ValueError(f"unknown checkpoint mode {mode!r}")
    try:
        busy, frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, f"wal_checkpoint({mode})") from exc
    return CheckpointResult(bool(busy), int(frames), int(done))


class Checkpointer:
    """The background checkpoint thread of one store file (see the module docstring).

    `start()` opens its connection (the file must exist: the store writer creates and migrates it
    first) and starts the thread; `stop()` ends it and closes the connection. `checkpoints` counts the
    checkpoints run, `finished` those run through `finish`, `failures` the ones that raised.

    :param finish: runs a passive checkpoint between the main writer's transactions and returns its
        result (module docstring); None: a FULL checkpoint on the thread's own connection.
    """

    def __init__(self, path: Path, *, finish: Callable[[], CheckpointResult] | None = None,
                 threshold_bytes: int = DEFAULT_THRESHOLD_BYTES, complete_bytes: int | None = None,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        complete_bytes = 4 * threshold_bytes if complete_bytes is None else complete_bytes
        if threshold_bytes < 0 or complete_bytes < threshold_bytes or interval_s <= 0:
            raise ValueError("need 0 <= threshold_bytes <= complete_bytes and interval_s > 0")
        self._complete = complete_bytes
        self._finish = finish
        self._path = Path(path)
        self._wal = Path(f"{self._path}-wal")
        self._threshold = threshold_bytes
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._page_size = 4096
        self.checkpoints = 0
        self.finished = 0
        self.failures = 0

    def start(self) -> None:
        """Open the connection and start the thread. :raises StoreError: the file cannot be opened."""
        if self._thread is not None:
            raise RuntimeError("Checkpointer.start() called twice")
        self._conn = open_connection(self._path)
        self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after a checkpoint in progress) and close the connection. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def wal_bytes(self) -> int:
        """Size of the WAL file now (0 when there is none)."""
        try:
            return os.stat(self._wal).st_size
        except FileNotFoundError:
            return 0

    def run_once(self) -> CheckpointResult | None:
        """Checkpoint if the WAL is past the threshold (module docstring); None when it was not or the
        checkpoint failed (logged and counted)."""
        if self.wal_bytes() <= self._threshold or self._conn is None:
            return None  # the file never shrinks by itself: once large, every run checkpoints
        try:
            result = checkpoint(self._conn)
            if result.wal_frames * self._page_size > self._complete:
                # Copy what was added during that pass too (a few times at most), so the pass that runs
                # between the writer's transactions has little left to copy: intake waits for it.
                done = result.checkpointed_frames
                for _ in range(CATCH_UP_PASSES):
                    again = checkpoint(self._conn)
                    added, done = again.checkpointed_frames - done, again.checkpointed_frames
                    if added <= FINISH_RESIDUAL_FRAMES or again.checkpointed_frames < again.wal_frames:
                        break
                if self._finish is None:
                    result = checkpoint(self._conn, "FULL")
                else:
                    result = self._finish()
                    self.finished += 1
        except StoreClosedError:
            return None  # the node's writer has stopped (shutdown): nothing left to finish
        except StoreError as exc:
            self.failures += 1
            log.warning("store: WAL checkpoint failed (retrying in %.1f s): %s", self._interval, exc)
            return None
        self.checkpoints += 1
        return result

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()
