"""FHIRClient against real HTTP servers on 127.0.0.1: every outcome kind from real answers and real
network failures, the headers central sees, fresh connections after failures, and the proxy setting."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

import pytest
from aiohttp import web

from node.errors import ConfigError
from node.push.client import FHIRClient
from node.push.outcome import FHIR_JSON, OutcomeKind
from tests.central.server import CentralFHIRServer
from tests.push.conftest import Stub, bundle_bytes, section, transaction_response

MakeClient = Callable[..., FHIRClient]
MakeStub = Callable[..., Awaitable[Stub]]


def fhir_response(payload: object, status: int = 200, **headers: str) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=FHIR_JSON, headers=headers)


# -- ok and rejected, from the real central test server ------------------------------------------------


async def test_committed_transaction_is_ok_with_each_entry_status_and_location(
        central: CentralFHIRServer, make_client: MakeClient) -> None:
    client = make_client(central.base_url)

    outcome = await client.post_transaction(bundle_bytes("p1", "p2"), batch_id="batch-000001")

    assert outcome.kind is OutcomeKind.OK and outcome.status == 200
    assert [(e.index, e.code, e.location) for e in outcome.entries] == [
        (0, 201, "Patient/p1/_history/1"), (1, 201, "Patient/p2/_history/1")]
    assert central.version("Patient", "p2") == 1


async def test_request_carries_fhir_content_type_accept_and_the_batch_id(
        central: CentralFHIRServer, make_client: MakeClient) -> None:
    client = make_client(central.base_url)

    await client.post_transaction(bundle_bytes(), batch_id="batch-000042")

    [request] = central.requests
    assert request.method == "POST" and request.path == "/fhir"
    assert request.headers["Content-Type"] == FHIR_JSON
    assert request.headers["Accept"] == FHIR_JSON
    assert request.headers["X-Request-ID"] == "batch-000042"
    assert request.headers["Prefer"] == "return=minimal"
    assert "Authorization" not in request.headers


async def test_resending_the_same_bundle_is_idempotent(central: CentralFHIRServer, make_client: MakeClient) -> None:
    client = make_client(central.base_url)
    body = bundle_bytes("p1")

    first = await client.post_transaction(body, batch_id="b1")
    again = await client.post_transaction(body, batch_id="b1")

    assert first.ok and again.ok and central.version("Patient", "p1") == 1


@pytest.mark.parametrize("status", [400, 422])
async def test_rejected_transaction_names_the_entry_and_carries_the_operation_outcome(
        central: CentralFHIRServer, make_client: MakeClient, status: int) -> None:
    central.reject_resource("Patient", "p3", status=status)
    client = make_client(central.base_url)

    outcome = await client.post_transaction(bundle_bytes("p1", "p2", "p3", "p4"), batch_id="b1")

    assert outcome.kind is OutcomeKind.REJECTED and outcome.status == status
    assert outcome.rejected_entries == (2,)
    assert outcome.operation_outcome is not None
    assert outcome.operation_outcome["resourceType"] == "OperationOutcome"
    assert central.resources == {}


async def test_texts_never_contain_resource_contents(make_client: MakeClient, stub: MakeStub) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return fhir_response({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "Leakcheck, Synthetic: bad birthDate 1980-02-03",
             "expression": ["Bundle.entry[0].resource.birthDate"]}]}, status=400)

    server = await stub(handler)
    outcome = await make_client(server.url).post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.REJECTED and outcome.rejected_entries == (0,)
    for text in (outcome.reason, repr(outcome)):
        assert "Leakcheck" not in text and "1980" not in text


async def test_a_failing_entry_inside_a_2xx_answer_is_rejected_with_its_index(
        make_client: MakeClient, stub: MakeStub) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return fhir_response(transaction_response("201 Created", "422 Unprocessable Entity", "200 OK", outcome_at=1))

    server = await stub(handler)
    outcome = await make_client(server.url).post_transaction(bundle_bytes("a", "b", "c"), batch_id="b1")

    assert outcome.kind is OutcomeKind.REJECTED and outcome.status == 200
    assert outcome.rejected_entries == (1,)
    assert [entry.code for entry in outcome.entries] == [201, 422, 200]
    assert outcome.operation_outcome is not None and "Leakcheck" not in outcome.reason


async def test_a_2xx_that_is_no_transaction_response_is_misconfigured(make_client: MakeClient,
                                                                      stub: MakeStub) -> None:
    async def handler(_request: web.Request) -> web.Response:  # e.g. a captive portal or a login page
        return web.Response(text="<html>Welcome</html>", content_type="text/html")

    server = await stub(handler)
    outcome = await make_client(server.url).post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.MISCONFIGURED and outcome.status == 200


# -- status codes that are not about the contents --------------------------------------------------------


async def test_413_is_too_large(central: CentralFHIRServer, make_client: MakeClient) -> None:
    central.fail_with(413)
    outcome = await make_client(central.base_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.TOO_LARGE and outcome.status == 413


async def test_429_with_retry_after_seconds_is_throttled(central: CentralFHIRServer, make_client: MakeClient) -> None:
    central.fail_with(429, retry_after=17)
    outcome = await make_client(central.base_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.THROTTLED and outcome.retry_after_s == 17.0


async def test_429_with_retry_after_http_date_is_throttled(central: CentralFHIRServer,
                                                           make_client: MakeClient) -> None:
    central.fail_with(429, retry_after=formatdate(time.time() + 120, usegmt=True))
    outcome = await make_client(central.base_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.THROTTLED
    assert outcome.retry_after_s is not None and 110 <= outcome.retry_after_s <= 121


async def test_503_is_throttled_with_retry_after_and_transient_without(central: CentralFHIRServer,
                                                                       make_client: MakeClient) -> None:
    client = make_client(central.base_url)
    central.fail_with(503, retry_after=30)
    central.fail_with(503)

    throttled = await client.post_transaction(bundle_bytes(), batch_id="b1")
    transient = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert throttled.kind is OutcomeKind.THROTTLED and throttled.retry_after_s == 30.0
    assert transient.kind is OutcomeKind.TRANSIENT and transient.status == 503


@pytest.mark.parametrize("status", [500, 502, 504, 408])
async def test_server_errors_and_408_are_transient(central: CentralFHIRServer, make_client: MakeClient,
                                                   status: int) -> None:
    central.fail_with(status)
    outcome = await make_client(central.base_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.status == status


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_auth(central: CentralFHIRServer, make_client: MakeClient, status: int) -> None:
    central.fail_with(status)
    outcome = await make_client(central.base_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.AUTH and outcome.status == status


async def test_a_wrong_base_url_is_misconfigured_not_rejected(central: CentralFHIRServer,
                                                              make_client: MakeClient) -> None:
    outcome = await make_client(central.root_url + "/not-fhir").post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.MISCONFIGURED and outcome.status == 404


async def test_a_redirect_is_not_followed_and_is_misconfigured(make_client: MakeClient, stub: MakeStub) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "https://elsewhere.example/fhir"})

    server = await stub(handler)
    outcome = await make_client(server.url).post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.MISCONFIGURED and outcome.status == 307
    assert len(server.seen) == 1


# -- network failures -------------------------------------------------------------------------------------


async def test_a_reset_connection_is_transient_and_the_next_attempt_succeeds(
        central: CentralFHIRServer, make_client: MakeClient) -> None:
    client = make_client(central.base_url)
    central.reset_connections()

    reset = await client.post_transaction(bundle_bytes(), batch_id="b1")
    retry = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert reset.kind is OutcomeKind.TRANSIENT and reset.status is None
    assert retry.ok


async def test_a_hanging_server_is_a_transient_read_timeout(central: CentralFHIRServer,
                                                            make_client: MakeClient) -> None:
    central.hang()
    client = make_client(central.base_url, read_timeout_s=0.3)
    started = time.monotonic()

    outcome = await client.post_transaction(bundle_bytes(), batch_id="b1")

    assert outcome.kind is OutcomeKind.TRANSIENT and "timeout" in outcome.reason
    assert 0.25 <= time.monotonic() - started < 2.0


async def test_a_refused_port_is_transient(refused_url: str, make_client: MakeClient) -> None:
    outcome = await make_client(refused_url).post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.TRANSIENT and outcome.status is None


async def test_an_unknown_host_is_a_transient_dns_failure(make_client: MakeClient) -> None:
    outcome = await make_client("http://central.invalid/fhir").post_transaction(bundle_bytes(), batch_id="b1")
    assert outcome.kind is OutcomeKind.TRANSIENT and "DNS" in outcome.reason


async def test_central_going_down_and_up_again(central: CentralFHIRServer, make_client: MakeClient) -> None:
    client = make_client(central.base_url)
    assert (await client.post_transaction(bundle_bytes("p1"), batch_id="b1")).ok
    central.down()

    down = await client.post_transaction(bundle_bytes("p2"), batch_id="b2")
    central.up()
    up = await client.post_transaction(bundle_bytes("p2"), batch_id="b2")

    assert down.kind is OutcomeKind.TRANSIENT and up.ok
    assert central.version("Patient", "p2") == 1


# -- connections ------------------------------------------------------------------------------------------


async def test_connections_are_kept_alive_and_replaced_after_a_transient_failure(
        make_client: MakeClient, stub: MakeStub) -> None:
    answers = iter([200, 200, 502, 200, 200])

    async def handler(_request: web.Request) -> web.Response:
        status = next(answers)
        if status != 200:
            return web.Response(status=status, text="Bad Gateway")
        return fhir_response(transaction_response("200 OK"))

    server = await stub(handler)
    client = make_client(server.url)
    kinds = [(await client.post_transaction(bundle_bytes(), batch_id=f"b{n}")).kind for n in range(5)]

    assert kinds == ["ok", "ok", "transient", "ok", "ok"]
    ports = [seen.peer_port for seen in server.seen]
    assert ports[0] == ports[1] == ports[2], "keep-alive: one connection until the failure"
    assert ports[3] not in ports[:3], "a fresh connection after the transient failure"
    assert ports[3] == ports[4]
    assert client.sessions_opened == 2


async def test_requests_running_on_a_retired_pool_finish_normally(make_client: MakeClient, stub: MakeStub) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.headers["X-Request-ID"] == "fail":
            return web.Response(status=500)
        await asyncio.sleep(0.3)
        return fhir_response(transaction_response("200 OK"))

    server = await stub(handler)
    client = make_client(server.url)
    slow = asyncio.create_task(client.post_transaction(bundle_bytes(), batch_id="slow"))
    await asyncio.sleep(0.1)

    failed = await client.post_transaction(bundle_bytes(), batch_id="fail")

    assert failed.kind is OutcomeKind.TRANSIENT
    assert (await slow).ok


async def test_closing_with_a_request_in_flight_gives_it_an_outcome(make_client: MakeClient,
                                                                     stub: MakeStub) -> None:
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return fhir_response(transaction_response("200 OK"))

    server = await stub(slow)
    client = make_client(server.url)
    running = asyncio.create_task(client.post_transaction(bundle_bytes(), batch_id="b1"))
    await asyncio.sleep(0.1)

    await client.close()

    assert (await running).kind is OutcomeKind.TRANSIENT


async def test_the_proxy_from_the_settings_is_used(make_client: MakeClient, stub: MakeStub) -> None:
    async def proxy(_request: web.Request) -> web.Response:
        return fhir_response(transaction_response("201 Created"))

    server = await stub(proxy)
    outcome = await make_client("http://central.invalid/fhir", proxy=server.url).post_transaction(
        bundle_bytes(), batch_id="b1")

    assert outcome.ok
    [seen] = server.seen
    assert seen.url == "http://central.invalid/fhir" and seen.headers["X-Request-ID"] == "b1"


async def test_contract_errors_are_raised_not_outcomes(central: CentralFHIRServer, make_client: MakeClient) -> None:
    client = make_client(central.base_url)
    with pytest.raises(ValueError):
        await client.post_transaction(bundle_bytes(), batch_id="../etc/passwd")
    with pytest.raises(ValueError):
        await client.post_transaction(bundle_bytes(), batch_id="a\r\nX-Evil: 1")
    await client.close()
    await client.close()
    with pytest.raises(RuntimeError):
        await client.post_transaction(bundle_bytes(), batch_id="b1")


def test_fhir_client_wants_an_http_url() -> None:
    with pytest.raises(ConfigError):
        FHIRClient(section("file://var/outbox"))
