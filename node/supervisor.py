"""The running node: start-up, the main wait, graceful shutdown (uvicorn's phases).

Order of start-up: open the store (migrations) → WAL checkpointer (node.store.checkpoint) → harmonizer
workers (if enabled) → push worker (node.push.worker, in this event loop) → store maintenance (retention,
node.maintenance) → metrics endpoint → connectors → READY=1.
Shutdown (SIGTERM/SIGINT, or a fatal store error): stop the connectors (no new input; in-flight
messages finish their commit and get their ACK) → stop the harmonizer workers (they finish their chunk)
and, at the same time, the push worker (batches in flight finish or are abandoned within the shutdown
timeout; abandoned rows stay pending) → stop maintenance (after its current chunk) → stop the store
writer (drains its queue) → stop the checkpointer → stop the endpoint → STOPPING=1. A fatal store I/O
error ends the run with EX_IOERR so systemd restarts us.

Readiness while intake is refused for lack of space ([store] max_bytes / min_free_bytes): the node stays
ready (`/readyz` 200, body "ok: refusing new messages: <why>"): it is alive, answers every sender (AR,
ERR 207), keeps harmonizing and pushing the backlog and frees space by retention; taking it out of
rotation or restarting it would help nothing. The alert is edge_node_store_refusing{reason}.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from connectors.base import Connector
from node import systemd
from node.errors import EX_IOERR
from node.http_endpoint import MetricsEndpoint
from node.metrics import NodeMetrics
from node.store.writer import GroupCommitWriter

if TYPE_CHECKING:
    from node.harmonize.pool import HarmonizerPool
    from node.maintenance import RetentionJob
    from node.push.worker import PushWorker
    from node.store.checkpoint import Checkpointer

log = logging.getLogger(__name__)


class Node:
    """One running edge-node: the store writer, the connectors and the HTTP endpoint."""

    def __init__(self, writer: GroupCommitWriter, connectors: Sequence[Connector],
                 endpoint: MetricsEndpoint | None, shutdown_timeout_s: float,
                 on_close: Callable[[], None] | None = None) -> None:
        self.writer = writer
        self.connectors = list(connectors)
        self.endpoint = endpoint
        self.shutdown_timeout_s = shutdown_timeout_s
        self._on_close = on_close
        self._stop = asyncio.Event()
        self._fatal: BaseException | None = None
        self._started = False
        self.metrics: NodeMetrics | None = None
        self.harmonizer: HarmonizerPool | None = None
        self.maintenance: RetentionJob | None = None
        self.checkpointer: Checkpointer | None = None
        self.pusher: PushWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def health_problem(self) -> str | None:
        """None while the store can write; else a short reason (for `/healthz`)."""
        if self.writer.fatal_error is not None:
            return "store failed: " + type(self.writer.fatal_error).__name__
        return None

    def readiness_problem(self) -> str | None:
        """None once start-up finished and the node is healthy (for `/readyz`)."""
        if not self._started:
            return "starting"
        return self.health_problem()

    def intake_refusal(self) -> str | None:
        """Why new messages are refused for lack of space right now, or None (a `/readyz` note: the
        node stays ready while it drains; see the module docstring)."""
        guard = self.writer.space_guard
        if guard is None or not guard.enabled:
            return None
        reason = guard.status().describe()
        return None if reason is None else f"refusing new messages: {reason}"

    def request_stop(self) -> None:
        """Ask the node to shut down (signal handlers call this; it only sets a flag)."""
        self._stop.set()

    def _on_fatal(self, exc: BaseException) -> None:
        # Called from the writer thread.
        self._fatal = exc
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def startup(self) -> None:
        """Open the store, bind the endpoint and the connectors, then tell systemd READY=1.

        :raises StoreError, ConnectorError, OSError: start-up failed; whatever started is stopped.
        """
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before READY: a stop request is never lost
            self._loop.add_signal_handler(sig, self._stop.set)
        self.writer.on_fatal = self._on_fatal
        await self._loop.run_in_executor(None, self.writer.start)
        try:
            if self.checkpointer is not None:
                await self._loop.run_in_executor(None, self.checkpointer.start)
            if self.harmonizer is not None:
                await self._loop.run_in_executor(None, self.harmonizer.start)
            if self.pusher is not None:
                await self.pusher.start()
            if self.maintenance is not None:
                self.maintenance.start()
            if self.endpoint is not None:
                await self.endpoint.start()
            for connector in self.connectors:
                await connector.start()
        except BaseException:
            await self._stop_parts()
            raise
        self._started = True
        status = " ".join(c.describe() for c in self.connectors)
        if self.harmonizer is not None:
            status += f" {self.harmonizer.describe()}"
        if self.pusher is not None:
            status += f" {self.pusher.describe()}"
        if self.endpoint is not None:
            status += f" metrics={self.endpoint.describe()}"
        log.info("edge-node ready: %s", status)
        systemd.notify(f"READY=1\nSTATUS={status}")

    async def run(self) -> int:
        """Wait for a stop request or a fatal store error, then shut down. Returns the exit status."""
        watchdog = systemd.watchdog_interval()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=watchdog or 3600)
            except TimeoutError:
                if self.health_problem() is None:
                    systemd.notify("WATCHDOG=1")
        await self.shutdown()
        if self._fatal is not None:
            log.error("store failed (%s); exiting for a restart", type(self._fatal).__name__)
            return EX_IOERR
        return 0

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight commits finish (bounded by the shutdown timeout), close."""
        systemd.notify("STOPPING=1")
        log.info("edge-node stopping")
        await self._stop_parts()

    async def _stop_parts(self) -> None:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.stop() for c in self.connectors), return_exceptions=True),
                timeout=self.shutdown_timeout_s)
        except TimeoutError:
            log.warning("connectors did not stop within %.1f s", self.shutdown_timeout_s)
        pushing = self.pusher.stop(self.shutdown_timeout_s) if self.pusher is not None else asyncio.sleep(0)
        if self.harmonizer is not None:
            await asyncio.gather(asyncio.get_running_loop().run_in_executor(None, self.harmonizer.stop), pushing)
        else:
            await pushing
        if self.maintenance is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.maintenance.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.writer.stop)
        if self.checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.checkpointer.stop)
        if self.endpoint is not None:
            await self.endpoint.stop()
        if self._on_close is not None:
            self._on_close()
