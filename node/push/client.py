"""FHIRClient: the node's only HTTP(S) code towards central. It POSTs transaction Bundles to the FHIR
base URL and turns every answer, and every failure to get one, into a PushOutcome.

- One aiohttp ClientSession at a time (a connection pool with keep-alive). After a `transient` outcome
  (reset, timeout, 5xx) that session is retired: the next attempt opens fresh connections, because a
  pooled connection to a broken proxy or load-balancer node keeps failing (lessons.md, "Delivery").
  A retired session is closed once the requests still running on it are done.
- TLS: the CA bundle from `ca_bundle` (only it; else the system trust store), the client certificate
  for mTLS, TLS 1.2 at least, host names checked. Redirects are not followed (a 3xx is `misconfigured`).
- Timeouts: `connect_timeout_s` for TCP + TLS handshake, `read_timeout_s` for each wait on central's
  answer, and a total cap of connect + 2 x read per request (a slow upload plus a full read wait).
- Proxy: only `proxy` from the settings; the environment (HTTP_PROXY, ...) is not consulted.
- Auth: an AuthProvider sets Authorization; a 401 makes it refresh (re-read the token file, fetch a
  new OAuth2 token) and, when that gives a new credential, the batch is sent once more.

Nothing here raises for network, TLS, HTTP or token-endpoint problems. Logs carry the batch id, sizes,
statuses and reasons, never bundle contents or credentials.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Final

import aiohttp

from node.errors import ConfigError
from node.push.auth import AuthError, AuthProvider, make_auth, read_limited
from node.push.outcome import (
    FHIR_JSON,
    OutcomeKind,
    PushOutcome,
    check_batch_id,
    classify_exception,
    classify_response,
)
from node.settings import CentralSection, credential_path

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""Central's answer is read up to this size (return=minimal keeps transaction-responses small)."""
REQUEST_ID_HEADER = "X-Request-ID"
USER_AGENT = "edge-node"
NETWORK_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError)
"""What aiohttp may raise instead of an answer (ValueError: aiohttp.InvalidURL and friends)."""


def build_ssl_context(section: CentralSection) -> ssl.SSLContext:
    """TLS 1.2+ client context: `ca_bundle` (else the system trust store), host name checks, and the
    client certificate when set. Relative paths are looked up in $CREDENTIALS_DIRECTORY when it is set.
    :raises ConfigError: a file cannot be read or is not a valid PEM certificate/key."""
    try:
        cafile = str(credential_path(section.ca_bundle)) if section.ca_bundle is not None else None
        context = ssl.create_default_context(cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if section.client_cert is not None and section.client_key is not None:
            context.load_cert_chain(credential_path(section.client_cert), credential_path(section.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[central]: cannot load the CA bundle or client certificate/key: {exc}") from None
    return context


class FHIRClient:
    """Pushes transaction Bundles to central's FHIR base URL (`section.url`, http:// or https://).

    The constructor loads certificates and credentials, so configuration problems surface at start-up
    (:raises ConfigError:). The aiohttp session is created on first use, inside the running loop.

    :param auth: the credential provider; None: the one the section configures (or none).
    :param ssl_context: overrides the context built from the section (tests, special deployments).
    """

    def __init__(self, section: CentralSection, *, auth: AuthProvider | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not section.url.startswith(("http://", "https://")):
            raise ConfigError("[central] url: FHIRClient needs an http:// or https:// url")
        self.url = section.url
        self._ssl = ssl_context or build_ssl_context(section)
        self._auth: AuthProvider | None = auth if auth is not None else make_auth(section)
        self._proxy = section.proxy
        self._limit = max(10, 2 * section.concurrency + 2)
        self._timeout = aiohttp.ClientTimeout(
            total=section.connect_timeout_s + 2 * section.read_timeout_s,
            sock_connect=section.connect_timeout_s,
            sock_read=section.read_timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[aiohttp.ClientSession, int] = {}
        """Every session not yet closed (the current one and retired ones) -> requests running on it."""
        self._closed = False
        self.sessions_opened = 0
        """How many sessions (connection pools) were opened: 1 + the number of retirements used."""
        if self.url.startswith("http://") and self._auth is not None:
            log.warning("[central] url is plain http: credentials travel unencrypted")

    def __repr__(self) -> str:
        return f"FHIRClient({self.url!r})"

    def describe(self) -> str:
        return self.url

    async def post_transaction(self, bundle_bytes: bytes, *, batch_id: str) -> PushOutcome:
        """POST one transaction Bundle (FHIR JSON bytes) to the base URL.

        Sends Content-Type/Accept application/fhir+json, `Prefer: return=minimal`, `X-Request-ID:
        <batch_id>` (for central's logs) and Authorization. Never raises for network, TLS, HTTP or auth
        problems. :raises ValueError: invalid batch_id. :raises RuntimeError: the client was closed."""
        check_batch_id(batch_id)
        if self._closed:
            raise RuntimeError("FHIRClient is closed")
        session = self._acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outcome = await self._attempt(session, bundle_bytes, batch_id)
        finally:
            if session in self._in_flight:  # not when close() ran meanwhile
                self._in_flight[session] -= 1
        if outcome.kind is OutcomeKind.TRANSIENT and session is self._session:
            self._session = None  # fresh connections for the next attempt
        await self._close_idle_retired()
        level = logging.DEBUG if outcome.ok else logging.WARNING
        log.log(level, "batch %s: %s %s (%d bytes, %.3f s)", batch_id, outcome.kind, outcome.reason,
                len(bundle_bytes), loop.time() - started)
        return outcome

    async def close(self) -> None:
        """Close every connection. Idempotent; later post_transaction calls raise RuntimeError."""
        self._closed = True
        self._session = None
        sessions = list(self._in_flight)
        self._in_flight.clear()
        for session in sessions:
            await session.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _acquire(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trust_env=False,
                headers={"User-Agent": USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar())
            self._in_flight[self._session] = 0
            self.sessions_opened += 1
        self._in_flight[self._session] += 1
        return self._session

    async def _close_idle_retired(self) -> None:
        for session, running in list(self._in_flight.items()):
            if session is not self._session and running == 0:
                del self._in_flight[session]
                await session.close()

    async def _attempt(self, session: aiohttp.ClientSession, body: bytes, batch_id: str) -> PushOutcome:
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            "Prefer": "return=minimal",
            REQUEST_ID_HEADER: batch_id,
        }
        if self._auth is None:
            return await self._post(session, body, headers)
        try:
            headers["Authorization"] = await self._auth.authorization(session)
            outcome = await self._post(session, body, headers)
            if outcome.status == 401 and await self._auth.rejected(headers["Authorization"]):
                headers["Authorization"] = await self._auth.authorization(session)
                outcome = await self._post(session, body, headers)
        except AuthError as exc:
            return PushOutcome(OutcomeKind.AUTH, str(exc))
        return outcome

    async def _post(self, session: aiohttp.ClientSession, body: bytes, headers: dict[str, str]) -> PushOutcome:
        try:
            async with session.post(self.url, data=body, headers=headers, proxy=self._proxy,
                                    allow_redirects=False) as response:
                payload = await read_limited(response, MAX_RESPONSE_BYTES)
                status, response_headers = response.status, response.headers
        except NETWORK_ERRORS as exc:
            return classify_exception(exc)
        return classify_response(status, response_headers, payload)
