"""Fixtures for the push transport tests: the real central test server (tests.central.server), a tiny
scriptable aiohttp server for answers central never gives (redirects, failing entries in a 2xx, a
proxy, odd token endpoints), and FHIRClient factories that close what they open."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from node.push.auth import AuthProvider
from node.push.client import FHIRClient
from node.settings import CentralSection
from tests.central.server import CentralFHIRServer, transaction_bundle

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def patient(pid: str) -> dict[str, Any]:
    """A synthetic Patient (no real data); the family name is a marker for "contents must not leak"."""
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Leakcheck", "given": ["Synthetic"]}],
            "gender": "female", "birthDate": "1980-02-03"}


def bundle_bytes(*ids: str) -> bytes:
    """A transaction Bundle of `PUT Patient/<id>` entries, as FHIR JSON bytes."""
    return json.dumps(transaction_bundle([patient(pid) for pid in ids or ("p1",)])).encode()


def transaction_response(*statuses: str, outcome_at: int | None = None) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for index, status in enumerate(statuses):
        response: dict[str, Any] = {"status": status, "location": f"Patient/p{index}/_history/1"}
        if index == outcome_at:
            response["outcome"] = {"resourceType": "OperationOutcome",
                                   "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Leakcheck"}]}
        entries.append({"response": response})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


@dataclass
class Seen:
    method: str
    url: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer_port: int


@dataclass
class Stub:
    """An aiohttp server on 127.0.0.1 (port 0) on the test's own loop; `handler` answers everything."""

    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(Seen(request.method, str(request.url), request.path, dict(request.headers), body,
                              peer[1] if peer else 0))
        return await self.handler(request)

    async def start(self) -> Stub:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def stub() -> AsyncIterator[Callable[..., Awaitable[Stub]]]:
    """`await stub(handler, ssl_context=None)`: a started Stub, stopped at teardown."""
    started: list[Stub] = []

    async def make(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Stub:
        server = await Stub(handler, ssl_context).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
def central() -> Iterator[CentralFHIRServer]:
    """The real central test server, plain HTTP, no authentication."""
    with CentralFHIRServer(shutdown_timeout=0.5) as server:
        yield server


def section(url: str, **keys: Any) -> CentralSection:
    """A [central] section with test-sized timeouts."""
    return CentralSection(url=url, **{"connect_timeout_s": 2.0, "read_timeout_s": 2.0, **keys})


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., FHIRClient]]:
    """`make_client(url, auth=None, **section_keys)`: a FHIRClient closed at teardown."""
    clients: list[FHIRClient] = []

    def make(url: str, *, auth: AuthProvider | None = None, **keys: Any) -> FHIRClient:
        client = FHIRClient(section(url, **keys), auth=auth)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL whose port refuses connections: bound but not listening (kept bound, so never reused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
