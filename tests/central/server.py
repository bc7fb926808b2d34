"""`CentralFHIRServer`: a small but real central FHIR R4 transaction endpoint for tests.

It runs an aiohttp web server on its own asyncio loop in a background thread, so synchronous tests,
asyncio tests and tests driving a real `edge-node run` subprocess can all push to it:

    with CentralFHIRServer() as central:                 # 127.0.0.1, port 0
        post(central.base_url, transaction_bundle([patient]))
        assert central.resources[("Patient", "p1")]["meta"]["versionId"] == "1"

What it speaks (the subset of FHIR REST the node uses, strictly):

* `POST {base}` with a Bundle of type `transaction` whose entries are all `PUT Type/id` with a resource of
  that type and id. The Bundle and every entry's resource are validated with fhir.resources (R4B models).
  All or nothing: any bad entry → 400 (422 for business-rule rejections) with an OperationOutcome, one
  issue per problem, `issue.expression[0]` naming the entry (`Bundle.entry[3]`), and nothing stored.
  Otherwise every resource is stored by (type, id) with version history — a new version only when the
  content changed (an identical PUT is idempotent) — and the answer is a `transaction-response` Bundle:
  one entry per request entry in order, `response.status` "201 Created" / "200 OK", `location`
  `Type/id/_history/N`, `etag` `W/"N"`, `lastModified`. `Prefer: return=representation` adds the
  stored resources.
* `GET {base}/Type/id`, `GET {base}/Type/id/_history[/N]`, `GET {base}/metadata` (for debugging).
* Optional TLS (trustme CA; server certificate for 127.0.0.1/localhost) and mTLS (client certificate
  from the same CA required), a static bearer token and/or OAuth2 client credentials at
  `{root}/oauth2/token` (tokens expire after `token_expires_in` seconds; expired or unknown → 401).

Misbehaviour for the node's retry logic (thread-safe, each for the next N requests or until
`clear_faults()`): `latency`, `fail_with` (status, optional Retry-After), `reset_connections` (TCP RST
without an answer), `hang` (never answer), `reject_resource` (400/422 pointing at the entry holding that
resource), and `down()` / `up()` (stop listening, then listen again on the same port). A request first
waits out the latency, then meets at most one of reset, hang, failure (in that order of precedence), then
authentication, then validation. The body is always read first, so a reset or hang comes after the
client sent the whole request. With `commit=True` the bundle is stored before the reset/hang/failure (the
answer is lost on the way back: for idempotency tests). Over TLS the RST is real on the wire (aiohttp
sees ECONNRESET), but blocking ssl sockets (urllib, http.client) report it as an unexpected EOF
(RemoteDisconnected, SSLEOFError).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import hmac
import json
import re
import secrets
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

import trustme
from aiohttp import web
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

Key = tuple[str, str]
"""(resource type, id)."""
Target = Literal["transaction", "read", "token", "any"]
"""Which requests a fault applies to: transaction POSTs (default), GETs under the base (reads and
metadata), the OAuth2 token endpoint, or all of them."""

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
ENTRY_URL = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
MAX_ISSUES = 100


# --------------------------------------------------------------------------------------------------
# Records and helpers visible to tests


@dataclass
class RequestRecord:
    """One request the server received (a copy; the server keeps its own)."""

    number: int
    """1, 2, ... in arrival order over all kinds."""
    time: float
    """Arrival, wall clock (time.time())."""
    kind: str
    """"transaction" (POST base), "read" (GET under base), "metadata", or "token"."""
    method: str
    path: str
    headers: dict[str, str]
    entries: int | None = None
    """Entries in the posted Bundle (None: the body was no Bundle with an entry list)."""
    keys: list[Key] = field(default_factory=list)
    """(type, id) of each entry, in order (from request.url, else from the resource)."""
    status: int | None = None
    """Status answered; None while running and when no answer was sent (reset, hang)."""
    outcome: str = "pending"
    """"committed", "invalid", "unauthorized", "fault", "reset", "hang", "stopped" (server went down
    first), "ok", "not-found", "error" (token endpoint refusal), or "pending" while running."""
    committed: bool = False
    """The bundle was stored (also true for faults with commit=True: stored, then reset/hung/failed)."""
    issues: list[str] = field(default_factory=list)
    """Diagnostics of the OperationOutcome answered, if any."""
    duration: float | None = None


@dataclass(frozen=True)
class ClientFiles:
    """PEM and secret files for the node's `[central]` section, written by `write_client_files`."""

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    bearer_token_file: Path | None = None
    oauth_client_secret_file: Path | None = None


def transaction_bundle(resources: Iterable[Mapping[str, Any]], *, method: str = "PUT") -> dict[str, Any]:
    """A transaction Bundle with one `METHOD Type/id` entry per resource (as edge-node sends them)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": dict(resource),
                   "request": {"method": method, "url": f"{resource['resourceType']}/{resource['id']}"}}
                  for resource in resources],
    }


def content_of(resource: Mapping[str, Any]) -> dict[str, Any]:
    """`resource` without the server-managed meta.versionId / meta.lastUpdated (an emptied meta goes)."""
    result = copy.deepcopy(dict(resource))
    meta = result.get("meta")
    if isinstance(meta, dict):
        meta.pop("versionId", None)
        meta.pop("lastUpdated", None)
        if not meta:
            del result["meta"]
    return result


def operation_outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def outcome_issue(code: str, diagnostics: str, expression: Iterable[str] = (),
                  severity: str = "error") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    expression = list(expression)
    if expression:
        issue["expression"] = expression
    return issue


# --------------------------------------------------------------------------------------------------
# Internal state


@dataclass
class _Fault:
    kind: Literal["fail", "reset", "hang"]
    on: Target
    remaining: int | None
    status: int = 0
    retry_after: float | str | None = None
    commit: bool = False


@dataclass
class _Latency:
    seconds: float
    on: Target
    remaining: int | None


@dataclass
class _Rejection:
    status: int
    remaining: int | None


@dataclass
class _Version:
    number: int
    last_updated: datetime
    content: dict[str, Any]
    canonical: str
    request: int

    def resource(self) -> dict[str, Any]:
        resource = copy.deepcopy(self.content)
        meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
        resource["meta"] = {**meta, "versionId": str(self.number), "lastUpdated": _instant(self.last_updated)}
        return resource

    def response(self, created: bool) -> dict[str, Any]:
        return {"status": "201 Created" if created else "200 OK",
                "etag": f'W/"{self.number}"',
                "lastModified": _instant(self.last_updated)}


@dataclass
class _Issue:
    status: int
    issue: dict[str, Any]


class _Rejected(Exception):
    """The transaction is refused: status and OperationOutcome issues."""

    def __init__(self, status: int, issues: list[dict[str, Any]], outcome: str = "invalid") -> None:
        super().__init__(status)
        self.status = status
        self.issues = issues
        self.outcome = outcome


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _canonical(content: Mapping[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _fhirpath(prefix: str, loc: Iterable[int | str]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _entry_key(entry: object) -> Key | None:
    if not isinstance(entry, dict):
        return None
    request = entry.get("request")
    url = request.get("url") if isinstance(request, dict) else None
    if isinstance(url, str) and (match := ENTRY_URL.fullmatch(url)):
        return match["type"], match["id"]
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
        return resource["resourceType"], str(resource.get("id"))
    return None


def _retry_after(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _response(status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None,
              content_type: str = FHIR_JSON) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload, ensure_ascii=False).encode(),
                        content_type=content_type, charset="utf-8", headers=dict(headers or {}))


def _abort(request: web.BaseRequest) -> None:
    """Drop the connection without an answer: SO_LINGER 0 makes the close a TCP RST."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Clients failing the TLS handshake (no client certificate, untrusted CA) or vanishing are what
    these tests provoke: not worth a log line (asyncio reports them in debug mode)."""
    if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
        return
    loop.default_exception_handler(context)


# --------------------------------------------------------------------------------------------------
# The server


class CentralFHIRServer:
    """A central FHIR transaction endpoint in a background thread. See the module docstring."""

    def __init__(self, *, tls: bool | trustme.CA = False, require_client_cert: bool = False,
                 bearer_token: str | None = None, oauth_client_id: str | None = None,
                 oauth_client_secret: str | None = None, oauth_scope: str | None = None,
                 token_expires_in: float = 3600, host: str = "127.0.0.1", port: int = 0,
                 max_body_bytes: int = 64 * 1024 * 1024, shutdown_timeout: float = 1.0) -> None:
        """tls: True (a fresh trustme CA) or a trustme.CA issuing the server (and client) certificates.
        require_client_cert: mTLS (implies tls). bearer_token: a static token the FHIR endpoint accepts.
        oauth_client_id/secret: enable `{root}/oauth2/token` (client credentials); the FHIR endpoint then
        wants an issued, unexpired token (or the static bearer token). oauth_scope: scopes (space
        separated) a client may request (None: any). token_expires_in: lifetime of issued tokens."""
        if require_client_cert and not tls:
            tls = True
        if (oauth_client_id is None) != (oauth_client_secret is None):
            raise ValueError("oauth_client_id and oauth_client_secret go together")
        self.ca: trustme.CA | None = None
        self.server_cert: trustme.LeafCert | None = None
        self.client_cert: trustme.LeafCert | None = None
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self.ca = tls if isinstance(tls, trustme.CA) else trustme.CA()
            self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
            self.client_cert = self.ca.issue_cert("edge-node.klinikum.example")
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.server_cert.configure_cert(self._ssl)
            if require_client_cert:
                self._ssl.verify_mode = ssl.CERT_REQUIRED
                self.ca.configure_trust(self._ssl)
        self.require_client_cert = require_client_cert
        self.bearer_token = bearer_token
        self.oauth_client_id = oauth_client_id
        self.oauth_client_secret = oauth_client_secret
        self.oauth_scope = oauth_scope
        self.token_expires_in = token_expires_in
        """Lifetime (seconds) of tokens issued from now on; may be changed while running."""
        self._host = host
        self._port = port
        self._max_body = max_body_bytes
        self._shutdown_timeout = shutdown_timeout

        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._init_state()
        self._tokens: dict[str, float] = {}  # issued token -> monotonic expiry (kept over reset())

    def _init_state(self) -> None:
        self._history: dict[Key, list[_Version]] = {}
        self._log: list[RequestRecord] = []
        self._token_log: list[dict[str, Any]] = []
        self._latency: _Latency | None = None
        self._resets: _Fault | None = None
        self._hangs: _Fault | None = None
        self._failures: list[_Fault] = []
        self._rejections: dict[Key, _Rejection] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> CentralFHIRServer:
        """Start the thread and listen (port 0: a free port, then kept for down()/up())."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="central-fhir", daemon=True)
        self._thread.start()
        try:
            self._call(self._start_runner())
        except BaseException:
            self._stop_thread()
            raise
        return self

    def stop(self) -> None:
        """Stop listening, drop open connections (hanging requests included) and end the thread."""
        if self._thread is None:
            return
        try:
            if self._runner is not None:
                self._call(self._stop_runner())
        finally:
            self._stop_thread()

    def down(self) -> None:
        """Central goes offline: stop listening and close every open connection (in-flight requests are
        dropped unanswered). The stored data and the port are kept for `up()`."""
        if self._runner is None:
            raise RuntimeError("not up")
        self._call(self._stop_runner())

    def up(self) -> None:
        """Listen again on the same port after `down()`."""
        if self._thread is None:
            raise RuntimeError("not started")
        if self._runner is not None:
            raise RuntimeError("already up")
        self._call(self._start_runner())

    @property
    def is_up(self) -> bool:
        return self._runner is not None

    def __enter__(self) -> CentralFHIRServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_quiet_exception_handler)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def _stop_thread(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._loop = None
        self._runner = None

    async def _start_runner(self) -> None:
        app = web.Application(client_max_size=self._max_body)
        app.add_routes([
            web.post("/fhir", self._handle_transaction),
            web.post("/fhir/", self._handle_transaction),
            web.get("/fhir/metadata", self._handle_metadata),
            web.get("/fhir/{type}/{id}", self._handle_read),
            web.get("/fhir/{type}/{id}/_history", self._handle_history),
            web.get("/fhir/{type}/{id}/_history/{version}", self._handle_vread),
            web.post("/oauth2/token", self._handle_token),
        ])
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(128)
            sock.setblocking(False)
            site = web.SockSite(runner, sock, ssl_context=self._ssl)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = sock.getsockname()[1]
        self._closing = asyncio.Event()
        self._runner = runner

    async def _stop_runner(self) -> None:
        runner, self._runner = self._runner, None
        assert runner is not None and self._closing is not None
        self._closing.set()
        await runner.cleanup()

    # ---- addresses and client files --------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("not started")
        return self._port

    @property
    def root_url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base: transaction Bundles are POSTed here."""
        return f"{self.root_url}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.root_url}/oauth2/token"

    def client_ssl_context(self, *, client_cert: bool = True) -> ssl.SSLContext:
        """A client context trusting the server's CA, with the client certificate unless told not to."""
        if self.ca is None or self.client_cert is None:
            raise RuntimeError("server runs without TLS")
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if client_cert:
            self.client_cert.configure_cert(context)
        return context

    def write_client_files(self, directory: Path) -> ClientFiles:
        """Write what the node needs to reach this server: ca.pem, client.pem + client.key (TLS),
        bearer-token (static token), oauth-client-secret (OAuth2)."""
        directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        if self.ca is not None and self.client_cert is not None:
            files["ca_bundle"] = directory / "ca.pem"
            self.ca.cert_pem.write_to_path(str(files["ca_bundle"]))
            files["client_cert"] = directory / "client.pem"
            files["client_cert"].write_bytes(b"".join(blob.bytes() for blob in self.client_cert.cert_chain_pems))
            files["client_key"] = directory / "client.key"
            self.client_cert.private_key_pem.write_to_path(str(files["client_key"]))
        if self.bearer_token is not None:
            files["bearer_token_file"] = directory / "bearer-token"
            files["bearer_token_file"].write_text(self.bearer_token + "\n", encoding="utf-8")
        if self.oauth_client_secret is not None:
            files["oauth_client_secret_file"] = directory / "oauth-client-secret"
            files["oauth_client_secret_file"].write_text(self.oauth_client_secret + "\n", encoding="utf-8")
        return ClientFiles(**files)

    def node_settings(self, directory: Path) -> dict[str, str]:
        """Keys of the node's `[central]` section for this server (client files written to directory).
        With both a static token and OAuth2 configured, the node gets OAuth2."""
        files = self.write_client_files(directory)
        settings = {"url": self.base_url}
        if files.ca_bundle is not None:
            settings["ca_bundle"] = str(files.ca_bundle)
        if self.require_client_cert and files.client_cert is not None and files.client_key is not None:
            settings["client_cert"] = str(files.client_cert)
            settings["client_key"] = str(files.client_key)
        if self.oauth_client_id is not None and files.oauth_client_secret_file is not None:
            settings["oauth_token_url"] = self.token_url
            settings["oauth_client_id"] = self.oauth_client_id
            settings["oauth_client_secret_file"] = str(files.oauth_client_secret_file)
            if self.oauth_scope:
                settings["oauth_scope"] = self.oauth_scope
        elif files.bearer_token_file is not None:
            settings["bearer_token_file"] = str(files.bearer_token_file)
        return settings

    # ---- misbehaviour controls -------------------------------------------------------------------

    def latency(self, seconds: float, *, times: int | None = None, on: Target = "transaction") -> None:
        """Delay the next `times` requests (None: until cleared; 0 seconds clears) by `seconds`
        before anything else happens (the delay ends early, unanswered, if the server goes down)."""
        with self._lock:
            self._latency = _Latency(seconds, on, times) if seconds > 0 and times != 0 else None

    def fail_with(self, status: int, *, times: int | None = 1, retry_after: float | str | None = None,
                  on: Target = "transaction", commit: bool = False) -> None:
        """Answer the next `times` requests (None: until cleared) with `status` and an OperationOutcome
        (401 with WWW-Authenticate; Retry-After if given: a number of seconds, formatted %g, or a raw
        header value). Calls queue up: fail_with(503, times=2); fail_with(429) → 503, 503, 429.
        commit=True: store the bundle first, then fail (an answer lost on the way back)."""
        if not 400 <= status <= 599:
            raise ValueError("status must be 4xx or 5xx")
        if times == 0:
            return
        with self._lock:
            self._failures.append(_Fault("fail", on, times, status, retry_after, commit))

    def reset_connections(self, *, times: int | None = 1, on: Target = "transaction",
                          commit: bool = False) -> None:
        """Read the next `times` requests, then reset the TCP connection (RST) without answering.
        commit=True: store the bundle first."""
        with self._lock:
            self._resets = _Fault("reset", on, times, commit=commit) if times != 0 else None

    def hang(self, *, times: int | None = 1, on: Target = "transaction", commit: bool = False) -> None:
        """Never answer the next `times` requests: keep them open until the client gives up or the
        server stops/goes down (then the connection is dropped). commit=True: store the bundle first."""
        with self._lock:
            self._hangs = _Fault("hang", on, times, commit=commit) if times != 0 else None

    def reject_resource(self, resource_type: str, resource_id: str, *, status: int = 400,
                        times: int | None = None) -> None:
        """Refuse every bundle containing resource_type/resource_id (for `times` bundles; None: until
        cleared) with `status` (400: invalid, 422: business rule) and an issue naming its entry."""
        if status not in (400, 422):
            raise ValueError("status must be 400 or 422")
        with self._lock:
            self._rejections[(resource_type, resource_id)] = _Rejection(status, times)

    def accept_resource(self, resource_type: str, resource_id: str) -> None:
        """Undo reject_resource."""
        with self._lock:
            self._rejections.pop((resource_type, resource_id), None)

    def clear_faults(self) -> None:
        """Clear latency, failures, resets, hangs and rejections."""
        with self._lock:
            self._latency = None
            self._resets = self._hangs = None
            self._failures.clear()
            self._rejections.clear()

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (the next request with one gets 401)."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    # ---- Python API for assertions ---------------------------------------------------------------

    @property
    def resources(self) -> dict[Key, dict[str, Any]]:
        """(type, id) → current version (with meta.versionId / meta.lastUpdated)."""
        with self._lock:
            return {key: versions[-1].resource() for key, versions in self._history.items()}

    def resource(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        with self._lock:
            versions = self._history.get((resource_type, resource_id))
            return versions[-1].resource() if versions else None

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """All versions of one resource, oldest first, with meta.versionId / meta.lastUpdated."""
        with self._lock:
            return [version.resource() for version in self._history.get((resource_type, resource_id), [])]

    def version_sequence(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """The contents (without server meta) one resource went through, oldest first: for checking that
        one patient's updates arrived in order."""
        with self._lock:
            return [copy.deepcopy(v.content) for v in self._history.get((resource_type, resource_id), [])]

    def version(self, resource_type: str, resource_id: str) -> int:
        """Current version number (0: not stored)."""
        with self._lock:
            return len(self._history.get((resource_type, resource_id), []))

    def assert_stored(self, expected: Iterable[Mapping[str, Any]], *, exact: bool = False) -> None:
        """Assert that for each expected resource the current stored content (server meta ignored) is
        exactly that; exact=True: and nothing else is stored."""
        stored = self.resources
        problems: list[str] = []
        wanted: set[Key] = set()
        for resource in expected:
            key = (resource["resourceType"], resource["id"])
            wanted.add(key)
            if key not in stored:
                problems.append(f"{key[0]}/{key[1]}: not stored")
            elif content_of(stored[key]) != content_of(resource):
                problems.append(f"{key[0]}/{key[1]}: stored {_canonical(content_of(stored[key]))}\n"
                                f"    expected {_canonical(content_of(resource))}")
        if exact:
            problems += [f"{t}/{i}: stored but not expected" for t, i in sorted(set(stored) - wanted)]
        if problems:
            raise AssertionError("central's store differs:\n  " + "\n  ".join(problems))

    @property
    def requests(self) -> list[RequestRecord]:
        """Transaction POSTs received, in arrival order (copies)."""
        with self._lock:
            return [dataclasses.replace(r, keys=list(r.keys), issues=list(r.issues))
                    for r in self._log if r.kind == "transaction"]

    @property
    def log(self) -> list[RequestRecord]:
        """Every request received (transactions, reads, metadata, token), in arrival order (copies)."""
        with self._lock:
            return [dataclasses.replace(r, keys=list(r.keys), issues=list(r.issues)) for r in self._log]

    @property
    def received_bundles(self) -> int:
        """Transaction POSTs received (whatever was answered)."""
        with self._lock:
            return sum(1 for r in self._log if r.kind == "transaction")

    @property
    def accepted_bundles(self) -> int:
        """Transaction Bundles stored."""
        with self._lock:
            return sum(1 for r in self._log if r.kind == "transaction" and r.committed)

    @property
    def token_requests(self) -> int:
        """Requests to the token endpoint (granted or not)."""
        with self._lock:
            return len(self._token_log)

    @property
    def token_log(self) -> list[dict[str, Any]]:
        """Per token request: time, grant_type, client_id, auth ("basic"/"post"/None), scope, status."""
        with self._lock:
            return [dict(entry) for entry in self._token_log]

    def reset(self) -> None:
        """Forget stored resources, the request/token logs and all faults. Issued tokens stay valid."""
        with self._lock:
            self._init_state()

    def wait_for(self, predicate: Callable[[CentralFHIRServer], object], timeout: float = 30.0) -> None:
        """Block until predicate(server) is truthy (re-checked whenever a request finishes); raise
        AssertionError after `timeout` seconds. Not for asyncio tests (it blocks the calling thread)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"central: condition not met within {timeout} s")
                self._changed.wait(min(remaining, 0.5))

    # ---- request handling ------------------------------------------------------------------------

    def _record(self, kind: str, request: web.Request) -> RequestRecord:
        with self._lock:
            record = RequestRecord(number=len(self._log) + 1, time=time.time(), kind=kind,
                                   method=request.method, path=request.path_qs, headers=dict(request.headers))
            self._log.append(record)
            return record

    def _finish(self, record: RequestRecord, started: float, status: int | None, outcome: str,
                issues: Iterable[dict[str, Any]] = ()) -> None:
        with self._lock:
            record.status = status
            record.outcome = outcome
            record.issues = [issue.get("diagnostics", "") for issue in issues]
            record.duration = time.monotonic() - started
        with self._changed:
            self._changed.notify_all()

    def _take_faults(self, kind: str) -> tuple[float, _Fault | None]:
        """Consume the latency and the terminal fault (reset, hang, failure: first match) for a request."""

        def applies(on: Target) -> bool:
            return on == "any" or on == kind or (on == "read" and kind == "metadata")

        def consume(item: _Fault | _Latency) -> None:
            if item.remaining is not None:
                item.remaining -= 1

        with self._lock:
            delay = 0.0
            if self._latency is not None and applies(self._latency.on):
                delay = self._latency.seconds
                consume(self._latency)
                if self._latency.remaining == 0:
                    self._latency = None
            for slot in ("_resets", "_hangs"):
                fault: _Fault | None = getattr(self, slot)
                if fault is not None and applies(fault.on):
                    consume(fault)
                    if fault.remaining == 0:
                        setattr(self, slot, None)
                    return delay, fault
            for fault in self._failures:
                if applies(fault.on):
                    consume(fault)
                    if fault.remaining == 0:
                        self._failures.remove(fault)
                    return delay, fault
            return delay, None

    async def _serve(self, request: web.Request, kind: str,
                     process: Callable[[RequestRecord], tuple[web.Response, str, list[dict[str, Any]]]],
                     record: RequestRecord | None = None) -> web.StreamResponse:
        """Faults, authentication and `process` for one request, recorded in the log."""
        started = time.monotonic()
        closing = self._closing
        assert closing is not None
        record = record or self._record(kind, request)
        delay, fault = self._take_faults(kind)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await closing.wait()
            if closing.is_set():
                _abort(request)
                self._finish(record, started, None, "stopped")
                return web.Response()
        if fault is not None and not fault.commit:
            return await self._apply_fault(request, fault, record, started, closing)
        if kind not in ("token", "metadata") and (refusal := self._auth_refusal(request)) is not None:
            response, issues = refusal
            self._finish(record, started, response.status, "unauthorized", issues)
            return response
        response, outcome, issues = process(record)
        if fault is not None:
            return await self._apply_fault(request, fault, record, started, closing)
        self._finish(record, started, response.status, outcome, issues)
        return response

    async def _apply_fault(self, request: web.Request, fault: _Fault, record: RequestRecord, started: float,
                           closing: asyncio.Event) -> web.StreamResponse:
        if fault.kind == "reset":
            _abort(request)
            self._finish(record, started, None, "reset")
            return web.Response()
        if fault.kind == "hang":
            while not closing.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await closing.wait()
            _abort(request)
            self._finish(record, started, None, "hang")
            return web.Response()
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _retry_after(fault.retry_after)
        if fault.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="central", error="invalid_token"'
        code = {401: "login", 403: "forbidden", 404: "not-found", 408: "timeout", 413: "too-long",
                429: "throttled"}.get(fault.status, "transient" if fault.status >= 500 else "processing")
        issue = outcome_issue(code, f"injected failure: HTTP {fault.status}")
        if record.kind == "token":
            error = {401: "invalid_client"}.get(fault.status, "invalid_request")
            body = {"error": "temporarily_unavailable" if fault.status >= 500 else error}
            response = _response(fault.status, body, headers, content_type="application/json")
            with self._lock:
                self._token_log.append({"time": record.time, "grant_type": None, "client_id": None,
                                        "auth": None, "scope": None, "status": fault.status})
        else:
            response = _response(fault.status, operation_outcome(issue), headers)
        self._finish(record, started, fault.status, "fault", [issue])
        return response

    def _auth_refusal(self, request: web.Request) -> tuple[web.Response, list[dict[str, Any]]] | None:
        if self.bearer_token is None and self.oauth_client_id is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        problem: str | None
        if scheme.lower() != "bearer" or not token:
            problem, error = "missing bearer token", ""
        elif self.bearer_token is not None and hmac.compare_digest(token.encode(), self.bearer_token.encode()):
            return None
        else:
            with self._lock:
                expiry = self._tokens.get(token)
            if expiry is not None and time.monotonic() < expiry:
                return None
            problem, error = ("unknown token" if expiry is None else "token expired"), "invalid_token"
        challenge = 'Bearer realm="central"' + (f', error="{error}", error_description="{problem}"' if error else "")
        issue = outcome_issue("login", problem)
        return _response(401, operation_outcome(issue), {"WWW-Authenticate": challenge}), [issue]

    # ---- transactions ----------------------------------------------------------------------------

    async def _handle_transaction(self, request: web.Request) -> web.StreamResponse:
        record = self._record("transaction", request)
        body = await request.read()
        try:
            data: Any = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("entry"), list):
            keys = [_entry_key(entry) for entry in data["entry"]]
            with self._lock:
                record.entries = len(keys)
                record.keys = [key for key in keys if key is not None]
        elif isinstance(data, dict) and data.get("resourceType") == "Bundle" and "entry" not in data:
            with self._lock:
                record.entries = 0
        representation = "return=representation" in request.headers.get("Prefer", "")
        content_type = request.content_type

        def process(record: RequestRecord) -> tuple[web.Response, str, list[dict[str, Any]]]:
            if content_type not in JSON_TYPES:
                issue = outcome_issue("not-supported", f"unsupported content type {content_type!r}; "
                                                       f"send {FHIR_JSON}")
                return _response(415, operation_outcome(issue)), "invalid", [issue]
            try:
                payload = self._transact(data, record.number, representation)
            except _Rejected as rejected:
                with self._lock:
                    record.committed = False
                return _response(rejected.status, operation_outcome(*rejected.issues)), rejected.outcome, \
                    rejected.issues
            with self._lock:
                record.committed = True
            return _response(200, payload), "committed", []

        return await self._serve(request, "transaction", process, record)

    def _validate(self, data: Any) -> list[tuple[Key, dict[str, Any]]]:
        """The (key, resource) of each entry; raises _Rejected with every problem found."""
        if data is None:
            raise _Rejected(400, [outcome_issue("structure", "request body is not valid JSON", ["Bundle"])])
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            raise _Rejected(400, [outcome_issue("structure", "expected a Bundle resource", ["Bundle"])])
        if data.get("type") != "transaction":
            raise _Rejected(400, [outcome_issue("not-supported", f"Bundle.type {data.get('type')!r}: only "
                                                                 "transaction Bundles are accepted", ["Bundle.type"])])
        entries = data.get("entry", [])
        if not isinstance(entries, list):
            raise _Rejected(400, [outcome_issue("structure", "Bundle.entry must be a list", ["Bundle.entry"])])

        problems: list[_Issue] = []

        def problem(status: int, code: str, index: int | None, message: str, *paths: str) -> None:
            where = [f"Bundle.entry[{index}]"] if index is not None else []
            problems.append(_Issue(status, outcome_issue(code, message, [*where, *paths] or ["Bundle"])))

        # The Bundle itself, without the entries' resources (validated one by one below).
        shell = {**data, "entry": [{k: v for k, v in entry.items() if k != "resource"} if isinstance(entry, dict)
                                   else entry for entry in entries]}
        if not entries:
            shell.pop("entry")
        try:
            Bundle.model_validate(shell)
        except ValidationError as exc:
            for error in exc.errors():
                loc = list(error["loc"])
                index = loc[1] if len(loc) > 1 and loc[0] == "entry" and isinstance(loc[1], int) else None
                problem(400, "structure", index, f"{'.'.join(map(str, loc))}: {error['msg']}", _fhirpath("Bundle", loc))

        parsed: list[tuple[Key, dict[str, Any]]] = []
        seen: dict[Key, int] = {}
        rejected_by: set[Key] = set()
        for index, entry in enumerate(entries):
            where = f"Bundle.entry[{index}]"
            if not isinstance(entry, dict):
                problem(400, "structure", index, f"entry {index} is not an object")
                continue
            request = entry.get("request") if isinstance(entry.get("request"), dict) else {}
            method, url = request.get("method"), request.get("url")
            resource = entry.get("resource")
            label = "/".join(map(str, _entry_key(entry) or ("?", "?")))
            if method != "PUT":
                problem(400, "not-supported", index, f"entry {index} ({label}): request.method {method!r} is not "
                                                     "supported; only PUT Type/id", f"{where}.request.method")
                continue
            match = ENTRY_URL.fullmatch(url) if isinstance(url, str) else None
            if match is None:
                problem(400, "invalid", index, f"entry {index} ({label}): request.url {url!r} is not Type/id",
                        f"{where}.request.url")
                continue
            if not isinstance(resource, dict):
                problem(400, "required", index, f"entry {index} ({label}): PUT without a resource",
                        f"{where}.resource")
                continue
            key = (match["type"], match["id"])
            if (resource.get("resourceType"), resource.get("id")) != key:
                problem(400, "invalid", index, f"entry {index}: request.url {url} does not match the resource "
                                               f"({resource.get('resourceType')}/{resource.get('id')})",
                        f"{where}.request.url", f"{where}.resource.id")
                continue
            try:
                model = get_fhir_model_class(key[0])
            except (ValueError, KeyError, TypeError):
                problem(400, "not-supported", index, f"entry {index} ({label}): unknown resource type {key[0]!r}",
                        f"{where}.resource")
                continue
            try:
                model.model_validate(resource)
            except ValidationError as exc:
                for error in exc.errors():
                    loc = list(error["loc"])
                    problem(400, "structure", index,
                            f"entry {index} ({label}): {'.'.join(map(str, loc)) or key[0]}: {error['msg']}",
                            _fhirpath(f"{where}.resource", loc))
                continue
            if key in seen:
                problem(400, "duplicate", index, f"entry {index} ({label}): same resource as entry {seen[key]}",
                        f"{where}.request.url")
                continue
            seen[key] = index
            with self._lock:
                rejection = self._rejections.get(key)
            if rejection is not None:
                rejected_by.add(key)
                code = "business-rule" if rejection.status == 422 else "invalid"
                problem(rejection.status, code, index, f"entry {index} ({label}): rejected by central",
                        f"{where}.resource")
                continue
            parsed.append((key, resource))

        if problems:
            with self._lock:
                for key in rejected_by:
                    rejection = self._rejections.get(key)
                    if rejection is not None and rejection.remaining is not None:
                        rejection.remaining -= 1
                        if rejection.remaining <= 0:
                            del self._rejections[key]
            status = 400 if any(p.status == 400 for p in problems) else 422
            issues = [p.issue for p in problems[:MAX_ISSUES]]
            if len(problems) > MAX_ISSUES:
                issues.append(outcome_issue("too-costly", f"{len(problems) - MAX_ISSUES} more problems not listed"))
            raise _Rejected(status, issues, "invalid")
        return parsed

    def _transact(self, data: Any, request_number: int, representation: bool) -> dict[str, Any]:
        parsed = self._validate(data)
        now = datetime.now(UTC)
        entries: list[dict[str, Any]] = []
        with self._lock:
            for key, resource in parsed:
                content = content_of(resource)
                canonical = _canonical(content)
                versions = self._history.setdefault(key, [])
                created = not versions
                if versions and versions[-1].canonical == canonical:
                    version = versions[-1]
                else:
                    version = _Version(len(versions) + 1, now, content, canonical, request_number)
                    versions.append(version)
                location = f"{key[0]}/{key[1]}/_history/{version.number}"
                entry: dict[str, Any] = {"response": {**version.response(created), "location": location}}
                if representation:
                    entry = {"fullUrl": f"{self.base_url}/{key[0]}/{key[1]}", "resource": version.resource(), **entry}
                entries.append(entry)
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction-response",
                "timestamp": _instant(now), "entry": entries}

    # ---- reads -----------------------------------------------------------------------------------

    def _not_found(self, what: str) -> tuple[web.Response, str, list[dict[str, Any]]]:
        issue = outcome_issue("not-found", f"{what} is not known")
        return _response(404, operation_outcome(issue)), "not-found", [issue]

    async def _handle_read(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["type"], request.match_info["id"])

        def process(record: RequestRecord) -> tuple[web.Response, str, list[dict[str, Any]]]:
            with self._lock:
                versions = self._history.get(key)
                version = versions[-1] if versions else None
                resource = version.resource() if version else None
            if version is None or resource is None:
                return self._not_found(f"{key[0]}/{key[1]}")
            headers = {"ETag": f'W/"{version.number}"',
                       "Last-Modified": format_datetime(version.last_updated, usegmt=True)}
            return _response(200, resource, headers), "ok", []

        return await self._serve(request, "read", process)

    async def _handle_vread(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["type"], request.match_info["id"])
        number = request.match_info["version"]

        def process(record: RequestRecord) -> tuple[web.Response, str, list[dict[str, Any]]]:
            with self._lock:
                versions = self._history.get(key, [])
                version = versions[int(number) - 1] if number.isdigit() and 0 < int(number) <= len(versions) else None
                resource = version.resource() if version else None
            if version is None or resource is None:
                return self._not_found(f"{key[0]}/{key[1]}/_history/{number}")
            return _response(200, resource, {"ETag": f'W/"{version.number}"'}), "ok", []

        return await self._serve(request, "read", process)

    async def _handle_history(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["type"], request.match_info["id"])

        def process(record: RequestRecord) -> tuple[web.Response, str, list[dict[str, Any]]]:
            with self._lock:
                versions = list(self._history.get(key, []))
                resources = [version.resource() for version in versions]
            if not versions:
                return self._not_found(f"{key[0]}/{key[1]}")
            entries = [{"fullUrl": f"{self.base_url}/{key[0]}/{key[1]}", "resource": resource,
                        "request": {"method": "PUT", "url": f"{key[0]}/{key[1]}"},
                        "response": version.response(version.number == 1)}
                       for version, resource in reversed(list(zip(versions, resources, strict=True)))]
            bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history",
                      "total": len(entries), "entry": entries}
            return _response(200, bundle), "ok", []

        return await self._serve(request, "read", process)

    async def _handle_metadata(self, request: web.Request) -> web.StreamResponse:
        def process(record: RequestRecord) -> tuple[web.Response, str, list[dict[str, Any]]]:
            statement = {
                "resourceType": "CapabilityStatement", "status": "active", "date": _instant(datetime.now(UTC)),
                "kind": "instance", "fhirVersion": "4.0.1", "format": [FHIR_JSON, "json"],
                "implementation": {"description": "edge-node test central", "url": self.base_url},
                "rest": [{"mode": "server", "interaction": [{"code": "transaction"}, {"code": "history-system"}]}],
            }
            return _response(200, statement), "ok", []

        return await self._serve(request, "metadata", process)

    # ---- OAuth2 ----------------------------------------------------------------------------------

    async def _handle_token(self, request: web.Request) -> web.StreamResponse:
        if self.oauth_client_id is None:
            raise web.HTTPNotFound()
        record = self._record("token", request)
        body = await request.read()
        authorization = request.headers.get("Authorization", "")

        def process(record: RequestRecord) -> tuple[web.Response, str, list[dict[str, Any]]]:
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            auth: str | None = None
            client_id, secret = form.get("client_id"), form.get("client_secret")
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "basic":
                auth = "basic"
                try:
                    user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    user = password = ""
                client_id, secret = unquote(user), unquote(password)
            elif client_id is not None:
                auth = "post"
            scope = form.get("scope")
            entry = {"time": record.time, "grant_type": form.get("grant_type"), "client_id": client_id,
                     "auth": auth, "scope": scope}

            def refuse(status: int, error: str, description: str) -> tuple[web.Response, str, list[dict[str, Any]]]:
                headers = {"WWW-Authenticate": 'Basic realm="central"'} if status == 401 else {}
                with self._lock:
                    self._token_log.append({**entry, "status": status})
                payload = {"error": error, "error_description": description}
                return (_response(status, payload, headers, content_type="application/json"), "error",
                        [{"diagnostics": f"{error}: {description}"}])

            if request.content_type != "application/x-www-form-urlencoded":
                return refuse(400, "invalid_request", "expected application/x-www-form-urlencoded")
            if form.get("grant_type") != "client_credentials":
                return refuse(400, "unsupported_grant_type", "only client_credentials")
            assert self.oauth_client_id is not None and self.oauth_client_secret is not None
            if not (client_id == self.oauth_client_id and secret is not None
                    and hmac.compare_digest(secret.encode(), self.oauth_client_secret.encode())):
                return refuse(401, "invalid_client", "unknown client or wrong secret")
            if scope and self.oauth_scope is not None and not set(scope.split()) <= set(self.oauth_scope.split()):
                return refuse(400, "invalid_scope", f"scope {scope!r} not allowed")
            token = secrets.token_urlsafe(24)
            expires_in = self.token_expires_in
            with self._lock:
                self._tokens[token] = time.monotonic() + expires_in
                self._token_log.append({**entry, "status": 200})
            payload: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                                       "expires_in": int(expires_in) if float(expires_in).is_integer() else expires_in}
            if scope or self.oauth_scope:
                payload["scope"] = scope or self.oauth_scope
            return (_response(200, payload, {"Cache-Control": "no-store", "Pragma": "no-cache"},
                              content_type="application/json"), "ok", [])

        return await self._serve(request, "token", process, record)
