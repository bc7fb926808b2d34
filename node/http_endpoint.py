"""The node's own HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

Scrapes render in a worker thread: the store-derived gauges query SQLite, and that must never delay an
ACK on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthCheck = Callable[[], str | None]
"""Returns None when healthy, else a short reason (no patient data)."""


class MetricsEndpoint:
    """An aiohttp server bound to `host:port` (port 0 picks one; read it back from `.port`)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 health: HealthCheck, ready: HealthCheck, ready_note: HealthCheck | None = None) -> None:
        """`ready_note`: a remark shown in the body of a successful `/readyz` (still 200), e.g. that
        intake is refused for lack of space while the node drains its backlog."""
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._health = health
        self._ready = ready
        self._ready_note = ready_note
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve. :raises OSError: the address cannot be bound."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def describe(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return self._answer(self._health())

    async def _readyz(self, _request: web.Request) -> web.Response:
        problem = self._ready()
        if problem is None and self._ready_note is not None:
            note = await asyncio.get_running_loop().run_in_executor(None, self._ready_note)
            if note:
                return web.Response(text=f"ok: {note}\n")
        return self._answer(problem)

    @staticmethod
    def _answer(problem: str | None) -> web.Response:
        if problem is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=problem + "\n")
