"""The central FHIR test server itself, exercised over real sockets with plain HTTP clients (urllib and
aiohttp): transactions, versioning, validation, every misbehaviour, TLS/mTLS, bearer and OAuth2."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import ssl
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from tests.central.conftest import Reply, get, observation, patient, post
from tests.central.server import FHIR_JSON, CentralFHIRServer, content_of, transaction_bundle
from tests.conftest import wait_until


def assert_outcome(reply: Reply, status: int, entry: int | None = None) -> list[dict[str, Any]]:
    """`reply` is `status` with a valid OperationOutcome; with `entry`: every issue names that entry."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith(FHIR_JSON)
    OperationOutcome.model_validate(reply.body)
    issues = reply.body["issue"]
    assert issues
    if entry is not None:
        for issue in issues:
            assert issue["expression"][0] == f"Bundle.entry[{entry}]", issue
    return issues


# ---- transactions --------------------------------------------------------------------------------


def test_valid_transaction_is_stored_and_answered_with_a_transaction_response(central: CentralFHIRServer) -> None:
    resources = [patient("p1"), observation("o1", "p1"), observation("o2", "p1", 5.1)]

    reply = post(central.base_url, transaction_bundle(resources))

    assert reply.status == 200
    assert reply.headers["Content-Type"] == f"{FHIR_JSON}; charset=utf-8"
    Bundle.model_validate(reply.body)
    assert reply.body["type"] == "transaction-response"
    responses = [entry["response"] for entry in reply.body["entry"]]
    assert [r["location"] for r in responses] == ["Patient/p1/_history/1", "Observation/o1/_history/1",
                                                  "Observation/o2/_history/1"]
    assert {r["status"] for r in responses} == {"201 Created"}
    assert {r["etag"] for r in responses} == {'W/"1"'}
    assert all(r["lastModified"].endswith("Z") for r in responses)
    assert "resource" not in reply.body["entry"][0]
    central.assert_stored(resources, exact=True)
    stored = central.resources[("Patient", "p1")]
    assert stored["meta"]["versionId"] == "1"
    assert content_of(stored) == patient("p1")

    read = get(f"{central.base_url}/Patient/p1")
    assert read.status == 200
    assert read.body == stored
    assert read.headers["ETag"] == 'W/"1"'

    [record] = central.requests
    assert (record.kind, record.status, record.outcome, record.committed) == ("transaction", 200, "committed", True)
    assert record.entries == 3
    assert record.keys == [("Patient", "p1"), ("Observation", "o1"), ("Observation", "o2")]
    assert (central.received_bundles, central.accepted_bundles) == (1, 1)


def test_identical_resend_is_idempotent_and_changed_content_makes_version_2(central: CentralFHIRServer) -> None:
    bundle = transaction_bundle([patient("p1"), observation("o1", "p1")])
    assert post(central.base_url, bundle).status == 200

    again = post(central.base_url, bundle)

    assert again.status == 200
    assert [e["response"]["status"] for e in again.body["entry"]] == ["200 OK", "200 OK"]
    assert [e["response"]["location"] for e in again.body["entry"]] == ["Patient/p1/_history/1",
                                                                        "Observation/o1/_history/1"]
    assert central.version("Patient", "p1") == 1
    assert len(central.history("Patient", "p1")) == 1

    # Key order and server meta sent back do not count as a change either.
    echoed = dict(reversed(list(central.resources[("Patient", "p1")].items())))
    assert post(central.base_url, transaction_bundle([echoed])).body["entry"][0]["response"]["etag"] == 'W/"1"'

    changed = patient("p1", gender="female")
    reply = post(central.base_url, transaction_bundle([changed, observation("o1", "p1")]))

    assert [e["response"]["status"] for e in reply.body["entry"]] == ["200 OK", "200 OK"]
    assert reply.body["entry"][0]["response"]["location"] == "Patient/p1/_history/2"
    assert reply.body["entry"][0]["response"]["etag"] == 'W/"2"'
    assert reply.body["entry"][1]["response"]["location"] == "Observation/o1/_history/1"
    assert central.version_sequence("Patient", "p1") == [patient("p1"), changed]
    assert [v["meta"]["versionId"] for v in central.history("Patient", "p1")] == ["1", "2"]
    central.assert_stored([changed, observation("o1", "p1")], exact=True)
    with pytest.raises(AssertionError, match="Patient/p1: stored"):
        central.assert_stored([patient("p1")])

    history = get(f"{central.base_url}/Patient/p1/_history")
    assert history.status == 200
    Bundle.model_validate(history.body)
    assert history.body["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history.body["entry"]] == ["2", "1"]
    first = get(f"{central.base_url}/Patient/p1/_history/1")
    assert content_of(first.body) == patient("p1")


def test_prefer_representation_returns_the_stored_resources(central: CentralFHIRServer) -> None:
    reply = post(central.base_url, transaction_bundle([patient("p1")]), headers={"Prefer": "return=representation"})

    [entry] = reply.body["entry"]
    assert entry["resource"] == central.resource("Patient", "p1")
    assert entry["fullUrl"] == f"{central.base_url}/Patient/p1"


def test_gzip_request_body_is_accepted(central: CentralFHIRServer) -> None:
    body = gzip.compress(json.dumps(transaction_bundle([patient("p1")])).encode())

    reply = post(central.base_url, body, headers={"Content-Encoding": "gzip"})

    assert reply.status == 200
    assert central.version("Patient", "p1") == 1


def test_invalid_resource_rejects_the_whole_bundle_naming_the_entry(central: CentralFHIRServer) -> None:
    resources = [patient("p0"), patient("p1"), observation("o1", "p1"), patient("p3", birthDate="1970-13-45"),
                 observation("o4", "p3")]

    reply = post(central.base_url, transaction_bundle(resources))

    [issue] = assert_outcome(reply, 400, entry=3)
    assert issue["expression"][1] == "Bundle.entry[3].resource.birthDate"
    assert "Patient/p3" in issue["diagnostics"]
    assert central.resources == {}
    [record] = central.requests
    assert (record.status, record.outcome, record.committed, record.entries) == (400, "invalid", False, 5)
    assert record.issues == [issue["diagnostics"]]


def test_every_bad_entry_gets_its_own_issue(central: CentralFHIRServer) -> None:
    resources = [patient("p0", bogus=1), patient("p1"), {"resourceType": "Observation", "id": "o2"}]

    issues = assert_outcome(post(central.base_url, transaction_bundle(resources)), 400)

    assert {issue["expression"][0] for issue in issues} == {"Bundle.entry[0]", "Bundle.entry[2]"}
    assert central.resources == {}


def _entry(resource: dict[str, Any], method: str = "PUT", url: str | None = None) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": method, "url": url or f"Patient/{resource['id']}"}}


@pytest.mark.parametrize(("bad_entry", "code"), [
    pytest.param(_entry(patient("px"), method="POST", url="Patient"), "not-supported", id="post"),
    pytest.param({"request": {"method": "DELETE", "url": "Patient/px"}}, "not-supported", id="delete"),
    pytest.param(_entry(patient("px"), url="Patient/other"), "invalid", id="url-id-mismatch"),
    pytest.param(_entry(patient("px"), url="Observation/px"), "invalid", id="url-type-mismatch"),
    pytest.param(_entry(patient("px"), url="http://elsewhere/Patient/px"), "invalid", id="absolute-url"),
    pytest.param({"request": {"method": "PUT", "url": "Patient/px"}}, "required", id="no-resource"),
    pytest.param(_entry({"resourceType": "Nonsense", "id": "px"}, url="Nonsense/px"), "not-supported",
                 id="unknown-type"),
    pytest.param(_entry(patient("p1")), "duplicate", id="duplicate"),
])
def test_entries_other_than_put_type_id_are_refused(central: CentralFHIRServer, bad_entry: dict[str, Any],
                                                     code: str) -> None:
    bundle = transaction_bundle([patient("p0"), patient("p1")])
    bundle["entry"].append(bad_entry)

    [issue] = assert_outcome(post(central.base_url, bundle), 400, entry=2)

    assert issue["code"] == code
    assert central.resources == {}


@pytest.mark.parametrize(("body", "expression"), [
    pytest.param(b"{not json", "Bundle", id="not-json"),
    pytest.param(patient("p1"), "Bundle", id="not-a-bundle"),
    pytest.param({**transaction_bundle([patient("p1")]), "type": "batch"}, "Bundle.type", id="batch"),
    pytest.param({**transaction_bundle([patient("p1")]), "bogus": 1}, "Bundle.bogus", id="bundle-shell"),
])
def test_malformed_bundles_are_refused(central: CentralFHIRServer, body: object, expression: str) -> None:
    [issue] = assert_outcome(post(central.base_url, body), 400)

    assert issue["expression"] == [expression]
    assert central.resources == {}


def test_empty_transaction_and_wrong_content_type(central: CentralFHIRServer) -> None:
    reply = post(central.base_url, {"resourceType": "Bundle", "type": "transaction"})
    assert (reply.status, reply.body["entry"]) == (200, [])

    assert_outcome(post(central.base_url, b"<Bundle/>", headers={"Content-Type": "application/fhir+xml"}), 415)


def test_reads_of_unknown_resources_are_404_and_metadata_is_a_capability_statement(
        central: CentralFHIRServer) -> None:
    assert_outcome(get(f"{central.base_url}/Patient/nobody"), 404)
    assert_outcome(get(f"{central.base_url}/Patient/nobody/_history"), 404)

    metadata = get(f"{central.base_url}/metadata")

    assert metadata.status == 200
    CapabilityStatement.model_validate(metadata.body)


# ---- misbehaviour --------------------------------------------------------------------------------


def test_latency_delays_the_next_requests_only(central: CentralFHIRServer) -> None:
    central.latency(0.3, times=1)
    bundle = transaction_bundle([patient("p1")])

    started = time.monotonic()
    assert post(central.base_url, bundle).status == 200
    slow = time.monotonic() - started
    started = time.monotonic()
    assert post(central.base_url, bundle).status == 200
    fast = time.monotonic() - started

    assert slow >= 0.3
    assert fast < 0.3


def test_503_with_retry_after_then_429_then_success(central: CentralFHIRServer) -> None:
    central.fail_with(503, times=2, retry_after=2)
    central.fail_with(429, retry_after=0.5)
    bundle = transaction_bundle([patient("p1")])

    replies = [post(central.base_url, bundle) for _ in range(4)]

    assert [r.status for r in replies] == [503, 503, 429, 200]
    assert [r.headers["Retry-After"] for r in replies] == ["2", "2", "0.5", None]
    assert assert_outcome(replies[0], 503)[0]["code"] == "transient"
    assert assert_outcome(replies[2], 429)[0]["code"] == "throttled"
    assert [r.outcome for r in central.requests] == ["fault", "fault", "fault", "committed"]
    assert central.version("Patient", "p1") == 1
    assert central.accepted_bundles == 1


def test_failures_until_cleared_and_after_commit(central: CentralFHIRServer) -> None:
    central.fail_with(502, times=None)
    bundle = transaction_bundle([patient("p1")])
    assert [post(central.base_url, bundle).status for _ in range(3)] == [502, 502, 502]
    assert central.resources == {}
    central.clear_faults()
    assert post(central.base_url, bundle).status == 200

    central.fail_with(504, commit=True)
    changed = patient("p1", gender="female")
    assert post(central.base_url, transaction_bundle([changed])).status == 504
    assert central.version_sequence("Patient", "p1") == [patient("p1"), changed]
    assert central.requests[-1].committed


@pytest.mark.parametrize("status", [401, 403])
def test_injected_auth_failures(central: CentralFHIRServer, status: int) -> None:
    central.fail_with(status)

    reply = post(central.base_url, transaction_bundle([patient("p1")]))

    assert_outcome(reply, status)
    assert ("WWW-Authenticate" in reply.headers) == (status == 401)


def test_reset_connections_drops_the_request_unanswered(central: CentralFHIRServer) -> None:
    central.reset_connections(times=1)
    bundle = transaction_bundle([patient("p1")])

    with pytest.raises(ConnectionResetError):
        post(central.base_url, bundle)

    assert central.resources == {}
    [record] = central.requests
    assert (record.status, record.outcome, record.entries) == (None, "reset", 1)

    central.reset_connections(times=1, commit=True)
    with pytest.raises(ConnectionResetError):
        post(central.base_url, bundle)
    assert central.version("Patient", "p1") == 1
    assert post(central.base_url, bundle).body["entry"][0]["response"]["status"] == "200 OK"


async def test_hang_until_the_client_gives_up_without_blocking_other_requests(central: CentralFHIRServer) -> None:
    central.hang(times=1)
    async with aiohttp.ClientSession(headers={"Content-Type": FHIR_JSON}) as session:

        async def push(pid: str, timeout: float) -> int:
            body = json.dumps(transaction_bundle([patient(pid)]))
            async with session.post(central.base_url, data=body,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return response.status

        hanging = asyncio.create_task(push("p1", 1.0))
        await asyncio.sleep(0.1)
        assert await push("p2", 5) == 200  # served while the first one hangs
        assert not hanging.done()
        with pytest.raises(asyncio.TimeoutError):
            await hanging

    for _ in range(100):
        if central.requests[0].outcome == "hang":
            break
        await asyncio.sleep(0.02)
    assert [(r.keys, r.outcome, r.status) for r in central.requests] == [
        ([("Patient", "p1")], "hang", None), ([("Patient", "p2")], "committed", 200)]
    assert set(central.resources) == {("Patient", "p2")}


def test_stop_and_down_end_hanging_requests() -> None:
    central = CentralFHIRServer().start()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            post(central.base_url, transaction_bundle([patient("p1")]), timeout=20)
        except (ConnectionError, urllib.error.URLError) as exc:
            errors.append(exc)

    try:
        central.hang(times=None)
        thread = threading.Thread(target=client)
        thread.start()
        wait_until(lambda: central.requests)
        started = time.monotonic()
        central.down()
        thread.join(5)
        assert errors, "the hanging client got no error"
        assert time.monotonic() - started < 3

        central.up()
        thread = threading.Thread(target=client)
        thread.start()
        wait_until(lambda: len(central.requests) == 2)
    finally:
        started = time.monotonic()
        central.stop()
    thread.join(5)
    assert time.monotonic() - started < 3
    assert len(errors) == 2
    assert central.resources == {}


def test_rejected_resource_fails_the_bundle_at_its_entry_so_clients_can_bisect(central: CentralFHIRServer) -> None:
    central.reject_resource("Observation", "o2", status=422)
    resources = [patient("p1"), observation("o1", "p1"), observation("o2", "p1"), observation("o3", "p1")]

    reply = post(central.base_url, transaction_bundle(resources))

    [issue] = assert_outcome(reply, 422, entry=2)
    assert issue["code"] == "business-rule"
    assert "Observation/o2" in issue["diagnostics"]
    assert central.resources == {}

    # Bisect: the half without o2 goes through, the half with it keeps failing.
    assert post(central.base_url, transaction_bundle(resources[:2])).status == 200
    assert_outcome(post(central.base_url, transaction_bundle(resources[2:])), 422, entry=0)
    assert post(central.base_url, transaction_bundle(resources[3:])).status == 200
    central.assert_stored([resources[0], resources[1], resources[3]], exact=True)

    central.accept_resource("Observation", "o2")
    assert post(central.base_url, transaction_bundle(resources[2:3])).status == 200

    central.reject_resource("Patient", "p9", status=400, times=1)
    assert_outcome(post(central.base_url, transaction_bundle([patient("p9")])), 400, entry=0)
    assert post(central.base_url, transaction_bundle([patient("p9")])).status == 200


def test_down_stops_listening_and_up_listens_again_on_the_same_port(central: CentralFHIRServer) -> None:
    assert post(central.base_url, transaction_bundle([patient("p1")])).status == 200
    port = central.port

    central.down()

    assert not central.is_up
    with pytest.raises(urllib.error.URLError) as refused:
        post(central.base_url, transaction_bundle([patient("p2")]))
    assert isinstance(refused.value.reason, ConnectionRefusedError)

    central.up()

    assert central.port == port
    assert post(central.base_url, transaction_bundle([patient("p2")])).status == 200
    assert set(central.resources) == {("Patient", "p1"), ("Patient", "p2")}


async def test_down_closes_kept_alive_connections(central: CentralFHIRServer) -> None:
    body = json.dumps(transaction_bundle([patient("p1")]))
    async with aiohttp.ClientSession(headers={"Content-Type": FHIR_JSON}) as session:
        async with session.post(central.base_url, data=body) as response:
            assert response.status == 200
        central.down()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(central.base_url, data=body) as response:
                pass
        central.up()
        async with session.post(central.base_url, data=body) as response:
            assert response.status == 200


async def test_concurrent_transactions(central: CentralFHIRServer) -> None:
    async with aiohttp.ClientSession(headers={"Content-Type": FHIR_JSON}) as session:

        async def push(n: int) -> int:
            bundle = transaction_bundle([patient(f"p{n}"), observation(f"o{n}", f"p{n}")])
            async with session.post(central.base_url, data=json.dumps(bundle)) as response:
                return response.status

        statuses = await asyncio.gather(*(push(n) for n in range(30)))

    assert statuses == [200] * 30
    assert len(central.resources) == 60
    assert central.received_bundles == central.accepted_bundles == 30


def test_reset_forgets_data_logs_and_faults_and_wait_for(central: CentralFHIRServer) -> None:
    post(central.base_url, transaction_bundle([patient("p1")]))
    central.fail_with(503, times=None)

    central.reset()

    assert (central.resources, central.requests, central.received_bundles) == ({}, [], 0)
    threading.Timer(0.1, post, (central.base_url, transaction_bundle([patient("p2")]))).start()
    central.wait_for(lambda c: c.version("Patient", "p2") == 1, timeout=5)
    with pytest.raises(AssertionError, match="within"):
        central.wait_for(lambda c: c.version("Patient", "p3"), timeout=0.1)


# ---- TLS -----------------------------------------------------------------------------------------


def test_tls_with_the_servers_ca() -> None:
    with CentralFHIRServer(tls=True) as central:
        assert central.base_url.startswith("https://127.0.0.1:")

        reply = post(central.base_url, transaction_bundle([patient("p1")]),
                     context=central.client_ssl_context(client_cert=False))

        assert reply.status == 200
        with pytest.raises(urllib.error.URLError) as untrusted:
            post(central.base_url, transaction_bundle([patient("p1")]), context=ssl.create_default_context())
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)


def test_mtls_refuses_clients_without_a_certificate_and_accepts_the_written_files(tmp_path: Path) -> None:
    with CentralFHIRServer(require_client_cert=True) as central:
        files = central.write_client_files(tmp_path)
        assert files.ca_bundle and files.client_cert and files.client_key
        bundle = transaction_bundle([patient("p1")])

        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            post(central.base_url, bundle, context=central.client_ssl_context(client_cert=False))
        assert central.resources == {}

        context = ssl.create_default_context(cafile=str(files.ca_bundle))
        context.load_cert_chain(str(files.client_cert), str(files.client_key))
        assert post(central.base_url, bundle, context=context).status == 200
        assert central.version("Patient", "p1") == 1


# ---- authentication ------------------------------------------------------------------------------


def test_static_bearer_token() -> None:
    with CentralFHIRServer(bearer_token="s3cret") as central:
        bundle = transaction_bundle([patient("p1")])

        missing = post(central.base_url, bundle)
        wrong = post(central.base_url, bundle, headers={"Authorization": "Bearer nope"})
        right = post(central.base_url, bundle, headers={"Authorization": "Bearer s3cret"})

        assert_outcome(missing, 401)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert_outcome(wrong, 401)
        assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
        assert right.status == 200
        assert [r.outcome for r in central.requests] == ["unauthorized", "unauthorized", "committed"]
        assert get(f"{central.base_url}/Patient/p1").status == 401
        assert get(f"{central.base_url}/metadata").status == 200


def _token(central: CentralFHIRServer, *, basic: bool = False, secret: str = "client-secret",
           grant_type: str = "client_credentials", scope: str | None = None) -> Reply:
    form = {"grant_type": grant_type}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(f"edge-node:{secret}".encode()).decode()
    else:
        form |= {"client_id": "edge-node", "client_secret": secret}
    if scope:
        form["scope"] = scope
    return post(central.token_url, urlencode(form).encode(), headers=headers)


def test_oauth2_client_credentials_tokens_expire() -> None:
    with CentralFHIRServer(oauth_client_id="edge-node", oauth_client_secret="client-secret",
                           oauth_scope="system/*.write", token_expires_in=0.5) as central:
        bundle = transaction_bundle([patient("p1")])
        assert_outcome(post(central.base_url, bundle), 401)

        granted = _token(central, scope="system/*.write")
        assert granted.status == 200
        assert granted.headers["Cache-Control"] == "no-store"
        assert granted.body["token_type"] == "Bearer"
        assert granted.body["expires_in"] == 0.5
        assert granted.body["scope"] == "system/*.write"
        auth = {"Authorization": f"Bearer {granted.body['access_token']}"}
        assert post(central.base_url, bundle, headers=auth).status == 200

        time.sleep(0.6)
        expired = post(central.base_url, bundle, headers=auth)
        assert_outcome(expired, 401)
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        assert "expired" in expired.headers["WWW-Authenticate"]

        central.token_expires_in = 60
        fresh = _token(central, basic=True)
        assert fresh.status == 200
        assert fresh.body["expires_in"] == 60
        auth = {"Authorization": f"Bearer {fresh.body['access_token']}"}
        assert post(central.base_url, bundle, headers=auth).status == 200
        central.expire_tokens()
        assert post(central.base_url, bundle, headers=auth).status == 401

        assert _token(central, secret="wrong").status == 401
        assert _token(central, basic=True, secret="wrong").status == 401
        assert _token(central, grant_type="password").body["error"] == "unsupported_grant_type"
        assert _token(central, scope="system/*.read").body["error"] == "invalid_scope"
        assert central.token_requests == 6
        assert [(t["auth"], t["status"]) for t in central.token_log] == [
            ("post", 200), ("basic", 200), ("post", 401), ("basic", 401), ("post", 400), ("post", 400)]


def test_node_settings_fit_the_nodes_central_section(tmp_path: Path) -> None:
    from node.settings import CentralSection

    with CentralFHIRServer(require_client_cert=True, oauth_client_id="edge-node",
                           oauth_client_secret="client-secret") as central:
        settings = central.node_settings(tmp_path)
        section = CentralSection.model_validate(settings)

        assert section.url == central.base_url
        assert section.oauth_token_url == central.token_url
        assert section.client_key is not None
        assert section.client_key.read_text().startswith("-----BEGIN")
        assert section.oauth_client_secret_file is not None
        assert section.oauth_client_secret_file.read_text().strip() == "client-secret"
