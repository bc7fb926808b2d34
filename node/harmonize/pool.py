"""HarmonizerPool: the node's harmonizer worker processes (node.harmonize.worker), started and restarted.

Workers are started with the "spawn" start method (the node has threads by then; fork would copy their
locks in whatever state they are). Each gets the store path, its index, the worker count, a picklable
settings payload and the read end of a pipe; the pool keeps the write end and closes it to stop them
(`PipeStopSignal`): no lock is shared, so a worker killed at any moment cannot block the others, and if the
node dies its workers see the pipe close and stop too.

`start()` loads every feed's terminology maps in the node's process first: a bad map raises ConfigError
and the node fails start-up (exit 78) instead of running without it. A monitor thread restarts a worker
that exits while the pool runs, after a backoff (0.5 s doubling to 30 s for a worker that keeps dying
within 30 s of its start; 30 s at once after a configuration error), and counts each restart.

`stop()` closes the pipe, waits for the workers to finish their current chunk (up to `stop_timeout_s`)
and kills the rest with SIGKILL. That loses nothing: an unfinished chunk is an uncommitted transaction,
its messages are still `staged` and are harmonized after the next start.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import EX_CONFIG
from node.harmonize.worker import PipeStopSignal, WorkerSettings, load_feed_runtimes, worker_main, worker_settings

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from node.metrics import HarmonizeMetrics
    from node.settings import NodeSettings

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
"""A worker that ran this long before dying is restarted after the shortest backoff again."""
_MONITOR_TICK_S = 0.2


@dataclass(slots=True)
class _Slot:
    index: int
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    config_error: bool = False


class HarmonizerPool:
    """`settings.harmonize.workers` worker processes harmonizing the store at `settings.store.path`."""

    def __init__(self, settings: NodeSettings, *, metrics: HarmonizeMetrics | None = None,
                 stop_timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._db_path = str(Path(settings.store.path).absolute())
        self._count = settings.harmonize.workers
        self._metrics = metrics
        self._stop_timeout_s = stop_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(index) for index in range(self._count)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._stop_reader: Connection | None = None
        self._stop_writer: Connection | None = None
        self._restarts = 0
        self._started = False
        self._payload: WorkerSettings | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the feeds' maps, start the workers and the monitor thread.

        :raises ConfigError: a terminology map (or strict validation) cannot be loaded; nothing started.
        :raises RuntimeError: start() was called before.
        """
        if self._started:
            raise RuntimeError("HarmonizerPool.start() called twice")
        self._started = True
        self._payload = payload = worker_settings(self._settings)
        load_feed_runtimes(payload)  # ConfigError here fails the node's start-up
        if not payload.feeds:
            log.info("harmonizer not started: no HL7 v2 feeds")
            return
        self._stop_reader, self._stop_writer = self._ctx.Pipe(duplex=False)
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._monitor = threading.Thread(target=self._watch, name="harmonizer-monitor", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop the workers (see the module docstring). Idempotent; safe when never started."""
        with self._lock:
            self._stopping.set()
            writer, self._stop_writer = self._stop_writer, None
        if writer is not None:
            writer.close()  # every worker's PipeStopSignal is set now
        if self._monitor is not None:
            self._monitor.join()
        deadline = time.monotonic() + self._stop_timeout_s
        processes = [slot.process for slot in self._slots if slot.process is not None]
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.exitcode is None:
                log.warning("harmonizer worker (pid %s) did not stop within %.1f s; killing it (its chunk is "
                            "redone later)", process.pid, self._stop_timeout_s)
                process.kill()
                process.join(5)
        for slot in self._slots:
            if slot.process is not None and slot.process.exitcode is not None:
                slot.process.close()
            slot.process = None
        if self._stop_reader is not None:
            self._stop_reader.close()
            self._stop_reader = None
        self._set_gauge()

    # -- inspection --------------------------------------------------------------------------------

    def pids(self) -> list[int | None]:
        """The pid of each worker slot's current process (None while it waits for a restart)."""
        with self._lock:
            return [slot.process.pid if slot.process is not None else None for slot in self._slots]

    @property
    def restarts(self) -> int:
        """Workers restarted after an unexpected exit since start()."""
        return self._restarts

    def problem(self) -> str | None:
        """None while every worker runs; else a short reason (no patient data)."""
        with self._lock:
            if any(slot.config_error for slot in self._slots):
                return "harmonizer: worker configuration error"
            down = sum(1 for slot in self._slots if slot.process is None)
        return f"harmonizer: {down} of {self._count} workers down" if down and self._monitor else None

    def describe(self) -> str:
        return f"harmonizer={self._count}-workers" if self._monitor is not None else "harmonizer=off"

    # -- internals ---------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        """Start slot's process (with the lock held)."""
        process = self._ctx.Process(
            target=worker_main, name=f"edge-node-harmonizer-{slot.index}", daemon=True,
            args=(self._db_path, slot.index, self._count, self._payload, PipeStopSignal(self._stop_reader)))
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()
        slot.restart_at = None
        slot.config_error = False
        log.info("harmonizer worker %d/%d started (pid %d)", slot.index, self._count, process.pid)
        self._set_gauge()

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._reap_and_restart()
                sentinels = [slot.process.sentinel for slot in self._slots if slot.process is not None]
            if sentinels:
                wait(sentinels, timeout=_MONITOR_TICK_S)
            else:
                self._stopping.wait(_MONITOR_TICK_S)

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is not None and process.exitcode is not None:
                process.join()
                code = process.exitcode
                process.close()
                slot.process = None
                slot.failures = slot.failures + 1 if now - slot.started_at < STABLE_AFTER_S else 1
                slot.config_error = code == EX_CONFIG
                if slot.config_error:
                    delay = RESTART_BACKOFF_MAX_S
                else:
                    delay = min(RESTART_BACKOFF_S * 2 ** (slot.failures - 1), RESTART_BACKOFF_MAX_S)
                if slot.config_error:
                    log.error("harmonizer worker %d/%d exited with a configuration error (see above); retrying in "
                              "%.1f s", slot.index, self._count, delay)
                else:
                    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                    log.warning("harmonizer worker %d/%d %s; restarting in %.1f s (its unfinished chunk is redone)",
                                slot.index, self._count, how, delay)
                slot.restart_at = now + delay
                self._set_gauge()
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
                self._restarts += 1
                if self._metrics is not None:
                    self._metrics.worker_restarts.inc()

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.workers.set(sum(1 for slot in self._slots if slot.process is not None))
