"""Credentials for central: a static bearer token from a file, or OAuth2 client credentials.

Both read their secret from a file (relative names in systemd's `$CREDENTIALS_DIRECTORY`, see
node.settings.credential_path) at start-up, where a missing or empty file is a ConfigError, and read it
again whenever its mtime/size/inode changes, so a rotated credential is picked up without a restart.
A file that is briefly missing or empty at runtime (being rewritten) keeps the last good value.

Neither secrets nor tokens ever appear in logs, exception texts or repr(): errors name the file, the
token endpoint's HTTP status and its OAuth2 `error` code only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

import aiohttp

from node.errors import ConfigError, NodeError
from node.push.outcome import classify_exception
from node.settings import credential_path

if TYPE_CHECKING:
    from node.settings import CentralSection

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 30.0
REFRESH_FRACTION = 0.1
"""A token is renewed min(30 s, 10 % of its lifetime) before it expires."""
MAX_TOKEN_RESPONSE = 1 << 20

ClientAuthMethod = Literal["basic", "post"]
"""RFC 6749 §2.3.1: `client_secret_basic` (HTTP Basic, preferred) or `client_secret_post` (form body)."""


class AuthError(NodeError):
    """No credential can be had right now (token endpoint unreachable or refusing). The push becomes an
    `auth` outcome and is retried; the text never contains a secret or token."""


class AuthProvider(Protocol):
    """Supplies the Authorization header for requests to central."""

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        """The header value ("Bearer ..."). :raises AuthError: no credential available now."""
        ...

    async def rejected(self, authorization: str) -> bool:
        """Central answered 401 to `authorization`. True when a fresh credential may help (the caller
        then retries once with `authorization()`), False when nothing changed."""
        ...


@dataclass(frozen=True, slots=True)
class _FileVersion:
    mtime_ns: int
    size: int
    inode: int


class SecretFile:
    """A one-line secret in a file, re-read when the file changes. :raises ConfigError: at construction,
    when the file cannot be read or is empty."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = credential_path(path)
        self._what = what
        try:
            self._version = self._stat()
            value = self._read()
        except OSError as exc:
            raise ConfigError(f"[central] {what}: cannot read {self.path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"[central] {what}: {self.path} is empty")
        self._value = value

    def __repr__(self) -> str:
        return f"SecretFile({str(self.path)!r})"

    def _stat(self) -> _FileVersion:
        st = os.stat(self.path)
        return _FileVersion(st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> str:
        return self.path.read_text(encoding="utf-8").strip()

    def current(self) -> str:
        """The secret; re-read first if the file changed since the last read."""
        try:
            version = self._stat()
        except OSError:
            return self._value  # being replaced right now: keep the last good value
        if version != self._version:
            self._reload(version)
        return self._value

    def reload(self) -> bool:
        """Re-read the file unconditionally; True when the secret changed."""
        before = self._value
        try:
            self._reload(self._stat())
        except OSError:
            pass
        return self._value != before

    def _reload(self, version: _FileVersion) -> None:
        try:
            value = self._read()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot re-read %s (%s): keeping the previous %s", self.path, exc, self._what)
            return
        if not value:
            log.warning("%s is empty: keeping the previous %s", self.path, self._what)
            return
        if value != self._value:
            log.info("%s changed: using the new %s", self.path, self._what)
        self._value = value
        self._version = version


class BearerTokenFile:
    """A static bearer token from `bearer_token_file`, re-read when the file changes or central answers
    401. :raises ConfigError: the file is missing or empty at start-up."""

    def __init__(self, path: Path) -> None:
        self._file = SecretFile(path, "bearer_token_file")

    def __repr__(self) -> str:
        return f"BearerTokenFile({str(self._file.path)!r})"

    async def authorization(self, session: aiohttp.ClientSession | None = None) -> str:
        return f"Bearer {self._file.current()}"

    async def rejected(self, authorization: str) -> bool:
        self._file.reload()
        return f"Bearer {self._file.current()}" != authorization


class OAuth2ClientCredentials:
    """OAuth2 client credentials grant (RFC 6749 §4.4) with a cached access token.

    - Client authentication: HTTP Basic with the form-urlencoded id and secret (§2.3.1) first; if the
      token endpoint answers 401 (or 400 `invalid_client`) to that, the id and secret are sent in the
      form body instead, and whichever worked is kept for later requests.
    - The token is cached until min(30 s, 10 % of `expires_in`) before it expires (no `expires_in`:
      until central answers 401). `rejected()` (a 401 from central) drops it, so the next call fetches
      a new one.
    - Concurrent callers share one token request (an asyncio.Lock); callers that waited for a request
      that failed get the same AuthError instead of each asking again.
    - The token endpoint is reached through the same session (TLS context with ca_bundle and client
      certificate) and proxy as central. Every failure raises AuthError, never anything else.

    :raises ConfigError: the secret file is missing or empty at start-up.
    """

    def __init__(self, token_url: str, client_id: str, secret_file: Path, scope: str | None = None, *,
                 proxy: str | None = None, client_auth: ClientAuthMethod = "basic",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self._secret = SecretFile(secret_file, "oauth_client_secret_file")
        self._proxy = proxy
        self._method: ClientAuthMethod = client_auth
        self._method_known = False
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._valid_until = 0.0
        self._attempts = 0
        self._last_error: AuthError | None = None
        self.token_requests = 0
        """Requests sent to the token endpoint (for tests and metrics)."""

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials({self.token_url!r}, client_id={self.client_id!r})"

    def _valid(self) -> bool:
        return self._token is not None and self._clock() < self._valid_until

    async def authorization(self, session: aiohttp.ClientSession) -> str:
        if not self._valid():
            attempts_seen = self._attempts
            async with self._lock:
                if not self._valid():
                    if self._attempts != attempts_seen and self._last_error is not None:
                        raise self._last_error  # the request we waited for failed just now
                    await self._refresh(session)
        assert self._token is not None
        return f"Bearer {self._token}"

    async def rejected(self, authorization: str) -> bool:
        if self._token is not None and authorization == f"Bearer {self._token}":
            log.info("central refused the access token: fetching a new one")
            self._token = None
        return True

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        try:
            self._token, self._valid_until = await self._fetch(session)
        except AuthError as exc:
            self._last_error = exc
            raise
        except BaseException:  # cancelled: waiters try themselves
            self._last_error = None
            raise
        else:
            self._last_error = None
        finally:
            self._attempts += 1  # counts finished attempts: callers that waited for this one see it

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        methods: list[ClientAuthMethod] = [self._method]
        if not self._method_known:
            methods.append("post" if self._method == "basic" else "basic")
        for number, method in enumerate(methods):
            started = self._clock()
            status, body = await self._request(session, method)
            error = _oauth_error(body)
            if number + 1 < len(methods) and (status == 401 or (status == 400 and error == "invalid_client")):
                log.info("token endpoint refused client_secret_%s (HTTP %d): trying client_secret_%s",
                         method, status, methods[number + 1])
                continue
            if status != 200:
                detail = f" ({error})" if error else ""
                raise AuthError(f"token endpoint {self.token_url} answered HTTP {status}{detail}")
            token, expires_in = _parse_token(body, self.token_url)
            self._method, self._method_known = method, True
            log.info("obtained an access token from %s (expires in %s s)", self.token_url,
                     "?" if expires_in is None else f"{expires_in:g}")
            if expires_in is None:
                return token, math.inf
            return token, started + expires_in - min(REFRESH_MARGIN_S, REFRESH_FRACTION * expires_in)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(self, session: aiohttp.ClientSession, method: ClientAuthMethod) -> tuple[int, bytes]:
        secret = self._secret.current()
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json"}
        if method == "basic":
            pair = f"{_form_encode(self.client_id)}:{_form_encode(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form |= {"client_id": self.client_id, "client_secret": secret}
        self.token_requests += 1
        try:
            async with session.post(self.token_url, data=form, headers=headers, proxy=self._proxy,
                                    allow_redirects=False) as response:
                return response.status, await read_limited(response, MAX_TOKEN_RESPONSE)
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
            reason = classify_exception(exc).reason
        raise AuthError(f"token endpoint {self.token_url} unreachable: {reason}")


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The response body, or its first `limit` bytes when it is longer (a broken or hostile server
    must not fill the node's memory)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _form_encode(value: str) -> str:
    """application/x-www-form-urlencoded, as RFC 6749 §2.3.1 wants for Basic client credentials."""
    return quote(value, safe="").replace("%20", "+")


def _oauth_error(body: bytes) -> str | None:
    """The `error` code of an RFC 6749 §5.2 error response (a short ASCII token), else None."""
    value = _json(body)
    error = value.get("error") if value else None
    if isinstance(error, str) and error.isascii() and len(error) <= 64 and error.replace("_", "").isalnum():
        return error
    return None


def _parse_token(body: bytes, url: str) -> tuple[str, float | None]:
    value = _json(body)
    token = value.get("access_token") if value else None
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n "):
        raise AuthError(f"token endpoint {url} answered without a usable access_token")
    token_type = value.get("token_type", "Bearer") if value else "Bearer"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise AuthError(f"token endpoint {url} issued an unsupported token_type")
    expires_in = value.get("expires_in") if value else None
    if isinstance(expires_in, str):  # some servers send a string
        try:
            expires_in = float(expires_in)
        except ValueError:
            expires_in = None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not expires_in > 0:
        expires_in = None
    return token, float(expires_in) if expires_in is not None else None


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def make_auth(section: CentralSection) -> AuthProvider | None:
    """The provider `section` asks for, or None. :raises ConfigError: a secret file is missing or empty."""
    if section.bearer_token_file is not None:
        return BearerTokenFile(section.bearer_token_file)
    if section.oauth_token_url is not None:
        assert section.oauth_client_id is not None and section.oauth_client_secret_file is not None
        return OAuth2ClientCredentials(section.oauth_token_url, section.oauth_client_id,
                                       section.oauth_client_secret_file, section.oauth_scope,
                                       proxy=section.proxy)
    return None
