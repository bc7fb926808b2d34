"""Credentials for central, against real servers: a bearer token file (sent, rotated, re-read on 401)
and OAuth2 client credentials against a real token endpoint (basic auth, caching, expiry, a 401 from
central, concurrent callers, failures that must become `auth` outcomes and never leak the secret)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, unquote_plus

import pytest
from aiohttp import web

from node.errors import ConfigError
from node.push.auth import BearerTokenFile, OAuth2ClientCredentials
from node.push.client import FHIRClient
from node.push.outcome import FHIR_JSON, OutcomeKind
from node.settings import CREDENTIALS_ENV
from tests.central.server import CentralFHIRServer
from tests.push.conftest import Stub, bundle_bytes, transaction_response

MakeClient = Callable[..., FHIRClient]
MakeStub = Callable[..., Awaitable[Stub]]

CLIENT_ID = "edge-node-site-a"
SECRET = "s3cr3t-Do-Not-Log"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_secret(path: Path, value: str) -> Path:
    path.write_text(value + "\n", encoding="utf-8")
    return path


# -- bearer token file ------------------------------------------------------------------------------------


@pytest.fixture
def bearer_central() -> Iterator[CentralFHIRServer]:
    with CentralFHIRServer(bearer_token="token-one", shutdown_timeout=0.5) as server:
        yield server


async def test_the_bearer_token_from_the_file_is_sent(bearer_central: CentralFHIRServer, make_client: MakeClient,
                                                      tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "token", "token-one")
    client = make_client(bearer_central.base_url, bearer_token_file=token_file)

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.ok
    assert bearer_central.requests[0].headers["Authorization"] == "Bearer token-one"


async def test_a_rotated_token_file_is_picked_up_without_a_restart(
        bearer_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "token", "token-one")
    client = make_client(bearer_central.base_url, bearer_token_file=token_file)
    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok

    bearer_central.bearer_token = "token-two"
    write_secret(token_file, "token-two")
    os.utime(token_file, ns=(0, 1))  # a different mtime, whatever the file system's granularity
    outcome = await client.post_transaction(bundle_bytes(), batch_id="b2")

    assert outcome.ok
    assert [r.headers["Authorization"] for r in bearer_central.requests] == ["Bearer token-one", "Bearer token-two"]


async def test_a_401_re_reads_the_token_file_and_retries_once(
        bearer_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "token", "token-one")
    client = make_client(bearer_central.base_url, bearer_token_file=token_file)
    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok
    before = os.stat(token_file)

    bearer_central.bearer_token = "token-2nd"  # same length: size and (restored) mtime look unchanged
    write_secret(token_file, "token-2nd")
    os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    outcome = await client.post_transaction(bundle_bytes(), batch_id="b2")

    assert outcome.ok
    assert [r.status for r in bearer_central.requests] == [200, 401, 200]


async def test_a_401_with_an_unchanged_token_is_an_auth_outcome_after_one_request(
        bearer_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path) -> None:
    bearer_central.bearer_token = "what-central-wants-now"
    client = make_client(bearer_central.base_url, bearer_token_file=write_secret(tmp_path / "token", "token-one"))

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.AUTH and outcome.status == 401
    assert len(bearer_central.requests) == 1
    assert "token-one" not in outcome.reason


async def test_a_token_file_being_replaced_keeps_the_last_good_token(
        bearer_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "token", "token-one")
    client = make_client(bearer_central.base_url, bearer_token_file=token_file)
    token_file.unlink()
    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok
    token_file.write_text("")
    assert (await client.post_transaction(bundle_bytes(), batch_id="b2")).ok


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_a_missing_or_empty_token_file_is_a_config_error_at_start(tmp_path: Path, content: str | None) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ConfigError, match="bearer_token_file"):
        BearerTokenFile(token_file)


async def test_a_relative_token_file_is_read_from_the_credentials_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_secret(tmp_path / "central-token", "from-credentials")
    monkeypatch.setenv(CREDENTIALS_ENV, str(tmp_path))
    provider = BearerTokenFile(Path("central-token"))
    assert await provider.authorization() == "Bearer from-credentials"
    assert "from-credentials" not in repr(provider)


# -- OAuth2 client credentials against the central test server's token endpoint ---------------------------


@pytest.fixture
def oauth_central() -> Iterator[CentralFHIRServer]:
    with CentralFHIRServer(oauth_client_id=CLIENT_ID, oauth_client_secret=SECRET, oauth_scope="system/*.write",
                           token_expires_in=3600, shutdown_timeout=0.5) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def oauth(oauth_central: CentralFHIRServer, tmp_path: Path, clock: FakeClock) -> OAuth2ClientCredentials:
    secret_file = write_secret(tmp_path / "oauth-secret", SECRET)
    return OAuth2ClientCredentials(oauth_central.token_url, CLIENT_ID, secret_file, "system/*.write", clock=clock)


async def test_many_requests_share_one_cached_token(oauth_central: CentralFHIRServer, make_client: MakeClient,
                                                    oauth: OAuth2ClientCredentials) -> None:
    client = make_client(oauth_central.base_url, auth=oauth)

    outcomes = [await client.post_transaction(bundle_bytes(), batch_id=f"b{n}") for n in range(5)]

    assert all(outcome.ok for outcome in outcomes)
    assert oauth_central.token_requests == 1
    [grant] = oauth_central.token_log
    assert grant == grant | {"grant_type": "client_credentials", "client_id": CLIENT_ID, "auth": "basic",
                             "scope": "system/*.write", "status": 200}
    assert len({r.headers["Authorization"] for r in oauth_central.requests}) == 1


async def test_the_token_is_renewed_shortly_before_it_expires(oauth_central: CentralFHIRServer,
                                                              make_client: MakeClient, clock: FakeClock,
                                                              oauth: OAuth2ClientCredentials) -> None:
    client = make_client(oauth_central.base_url, auth=oauth)
    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok

    clock.now += 3600 - 31  # 30 s margin (min(30 s, 10 % of 3600 s)) not yet reached
    assert (await client.post_transaction(bundle_bytes(), batch_id="b2")).ok
    assert oauth_central.token_requests == 1

    clock.now += 2
    assert (await client.post_transaction(bundle_bytes(), batch_id="b3")).ok
    assert oauth_central.token_requests == 2


async def test_a_401_from_central_fetches_a_new_token_and_retries_once(
        oauth_central: CentralFHIRServer, make_client: MakeClient, oauth: OAuth2ClientCredentials) -> None:
    client = make_client(oauth_central.base_url, auth=oauth)
    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok
    oauth_central.expire_tokens()  # e.g. central restarted and forgot its tokens

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b2")

    assert outcome.ok
    assert oauth_central.token_requests == 2
    assert [r.status for r in oauth_central.requests] == [200, 401, 200]


async def test_a_persistent_401_is_an_auth_outcome_after_one_retry(
        oauth_central: CentralFHIRServer, make_client: MakeClient, oauth: OAuth2ClientCredentials) -> None:
    oauth_central.fail_with(401, times=None)
    client = make_client(oauth_central.base_url, auth=oauth)

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.AUTH and outcome.status == 401
    assert oauth_central.received_bundles == 2 and oauth_central.token_requests == 2


async def test_concurrent_callers_share_one_token_request(oauth_central: CentralFHIRServer,
                                                          make_client: MakeClient,
                                                          oauth: OAuth2ClientCredentials) -> None:
    oauth_central.latency(0.3, on="token", times=1)
    client = make_client(oauth_central.base_url, auth=oauth)

    outcomes = await asyncio.gather(*(client.post_transaction(bundle_bytes(f"p{n}"), batch_id=f"b{n}")
                                      for n in range(6)))

    assert all(outcome.ok for outcome in outcomes)
    assert oauth_central.token_requests == 1


async def test_a_failing_token_endpoint_is_an_auth_outcome_shared_by_waiting_callers(
        oauth_central: CentralFHIRServer, make_client: MakeClient, oauth: OAuth2ClientCredentials) -> None:
    oauth_central.latency(0.2, on="token", times=1)
    oauth_central.fail_with(500, on="token")
    client = make_client(oauth_central.base_url, auth=oauth)

    outcomes = await asyncio.gather(*(client.post_transaction(bundle_bytes(), batch_id=f"b{n}") for n in range(4)))

    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.AUTH}
    assert "HTTP 500" in outcomes[0].reason
    assert oauth_central.token_requests == 1 and oauth_central.received_bundles == 0
    assert (await client.post_transaction(bundle_bytes(), batch_id="later")).ok  # recovers on its own


async def test_a_wrong_secret_is_an_auth_outcome_that_never_shows_the_secret(
        oauth_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Secret-Value"
    provider = OAuth2ClientCredentials(oauth_central.token_url, CLIENT_ID,
                                       write_secret(tmp_path / "secret", wrong))
    client = make_client(oauth_central.base_url, auth=provider)

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.AUTH and "invalid_client" in outcome.reason
    assert [entry["auth"] for entry in oauth_central.token_log] == ["basic", "post"]  # the fallback was tried
    for text in (outcome.reason, repr(outcome), repr(provider), caplog.text):
        assert wrong not in text


async def test_an_unreachable_token_endpoint_is_an_auth_outcome(refused_url: str, make_client: MakeClient,
                                                                tmp_path: Path) -> None:
    provider = OAuth2ClientCredentials(refused_url + "/token", CLIENT_ID, write_secret(tmp_path / "s", SECRET))

    outcome = await make_client(refused_url, auth=provider).post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.AUTH and "unreachable" in outcome.reason


async def test_oauth_from_the_settings_and_nothing_secret_in_the_logs(
        oauth_central: CentralFHIRServer, make_client: MakeClient, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys = oauth_central.node_settings(tmp_path)
    client = make_client(keys.pop("url"), **keys)

    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok
    oauth_central.expire_tokens()
    assert (await client.post_transaction(bundle_bytes(), batch_id="b2")).ok

    tokens = {r.headers["Authorization"].split()[1] for r in oauth_central.requests}
    assert len(tokens) == 2
    for secret in (SECRET, *tokens):
        assert secret not in caplog.text


def test_a_missing_client_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="oauth_client_secret_file"):
        OAuth2ClientCredentials("https://idp.example/token", CLIENT_ID, tmp_path / "absent")


# -- token endpoints that behave differently ---------------------------------------------------------------


def token_endpoint(*, accept_basic: bool, expires_in: object = 300) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A stub serving /token (checks the client credentials, RFC 6749 §2.3.1 encoding) and /fhir."""
    issued: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/fhir":
            return web.Response(body=json.dumps(transaction_response("200 OK")).encode(), content_type=FHIR_JSON)
        form = dict(parse_qsl((await request.read()).decode()))
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Basic":
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            client_id, secret = unquote_plus(user), unquote_plus(password)
            if not accept_basic:
                return web.json_response({"error": "invalid_client"}, status=401)
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
        if (client_id, secret) != (ODD_ID, ODD_SECRET) or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        issued.append(f"tok-{len(issued)}")
        return web.json_response({"access_token": issued[-1], "token_type": "bearer", "expires_in": expires_in})

    return handler


ODD_ID = "edge node:1"
ODD_SECRET = "p@ss:w rd+/é%"


async def stub_with_token_endpoint(stub: MakeStub, *, accept_basic: bool, expires_in: object = 300) -> Stub:
    return await stub(token_endpoint(accept_basic=accept_basic, expires_in=expires_in))


async def test_basic_client_credentials_are_form_encoded(stub: MakeStub, make_client: MakeClient,
                                                         tmp_path: Path) -> None:
    server = await stub_with_token_endpoint(stub, accept_basic=True)
    provider = OAuth2ClientCredentials(server.url + "/token", ODD_ID, write_secret(tmp_path / "s", ODD_SECRET))

    outcome = await make_client(server.url + "/fhir", auth=provider).post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.ok
    assert [seen.path for seen in server.seen] == ["/token", "/fhir"]
    assert b"client_secret" not in server.seen[0].body


async def test_a_token_endpoint_refusing_basic_gets_the_secret_in_the_body_from_then_on(
        stub: MakeStub, make_client: MakeClient, tmp_path: Path) -> None:
    server = await stub_with_token_endpoint(stub, accept_basic=False)
    provider = OAuth2ClientCredentials(server.url + "/token", ODD_ID, write_secret(tmp_path / "s", ODD_SECRET))
    client = make_client(server.url + "/fhir", auth=provider)

    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok
    await provider.rejected(server.seen[-1].headers["Authorization"])  # force a new token
    assert (await client.post_transaction(bundle_bytes(), batch_id="b2")).ok

    token_requests = [seen for seen in server.seen if seen.path == "/token"]
    assert ["Authorization" in seen.headers for seen in token_requests] == [True, False, False]


@pytest.mark.parametrize("expires_in", [None, "120", 0])
async def test_odd_expires_in_values_still_give_a_token(stub: MakeStub, make_client: MakeClient, tmp_path: Path,
                                                        expires_in: object) -> None:
    server = await stub_with_token_endpoint(stub, accept_basic=True, expires_in=expires_in)
    provider = OAuth2ClientCredentials(server.url + "/token", ODD_ID, write_secret(tmp_path / "s", ODD_SECRET))
    client = make_client(server.url + "/fhir", auth=provider)

    assert (await client.post_transaction(bundle_bytes(), batch_id="b1")).ok
    assert (await client.post_transaction(bundle_bytes(), batch_id="b2")).ok
    assert provider.token_requests == 1
