"""PushWorker against the real central test server misbehaving: latency, 5xx, 429 + Retry-After, resets,
hangs, a rejected resource (with and without entry pointers), 413, 401, a wrong URL, mTLS, central down.
After each: nothing lost, no duplicates, latest versions, per-patient order (tests.push.test_worker_support
.assert_delivered)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from node.push.outcome import FHIR_JSON
from tests.central.server import CentralFHIRServer
from tests.push import test_worker_support as support
from tests.push.conftest import Stub
from tests.push.test_worker_support import (
    Msg,
    PusherFactory,
    assert_delivered,
    batches,
    eventually,
    load,
    observation,
    outbound,
    patient,
    patient_stream,
    settled,
    states,
)

db = support.db  # fixtures
pusher = support.pusher


def finished(db: Path) -> list[dict[str, Any]]:
    """Audit rows of batches whose outcome is recorded."""
    return [b for b in batches(db) if b["finished_at"] is not None]


def overlapping(requests: list[Any]) -> bool:
    """Whether two requests were being served at the same time."""
    spans = sorted((r.time, r.time + (r.duration or 0)) for r in requests)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


async def test_latency_different_patients_go_in_parallel(db: Path, central: CentralFHIRServer,
                                                          pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=6, versions=3))
    central.latency(0.3)
    await pusher(central.base_url, batch_max_entries=6, concurrency=3)
    await settled(db)
    assert_delivered(db, central)
    assert overlapping(central.requests)


async def test_5xx_is_retried_with_backoff_until_central_recovers(db: Path, central: CentralFHIRServer,
                                                                  pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=3, versions=3))
    central.fail_with(500, times=3)
    central.fail_with(503, times=4)
    running = await pusher(central.base_url, batch_max_entries=5, concurrency=1)
    await settled(db)
    assert_delivered(db, central)
    assert running.metric("edge_node_push_batches_total", outcome="transient") == 7
    assert running.metric("edge_node_central_up") == 1 and running.metric("edge_node_retry_delay_seconds") == 0
    failed = [b for b in batches(db) if b["outcome"] == "transient"]
    assert {b["http_status"] for b in failed} == {500, 503}
    assert max(row["attempts"] for row in outbound(db)) >= 2 and all(row["error"] is None for row in outbound(db))


async def test_429_retry_after_is_honoured_no_request_before_the_delay(db: Path, central: CentralFHIRServer,
                                                                        pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=4, versions=2))
    central.fail_with(429, times=1, retry_after=1.2)
    running = await pusher(central.base_url, batch_max_entries=4, concurrency=1, backoff_max_s=5)
    await settled(db)
    assert_delivered(db, central)
    requests = central.requests
    throttled = next(r for r in requests if r.status == 429)
    answered = throttled.time + (throttled.duration or 0)
    later = [r for r in requests if r.time > answered]
    assert later and min(r.time for r in later) - answered >= 1.15
    assert running.metric("edge_node_push_batches_total", outcome="throttled") == 1
    assert running.metric("edge_node_central_up") == 1  # throttled: central is up and asked us to wait


@pytest.mark.parametrize("commit", [False, True], ids=["lost-request", "lost-answer"])
async def test_connection_resets_are_retried_and_a_lost_answer_stores_nothing_twice(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory, commit: bool) -> None:
    load(db, patient_stream(patients=3, versions=4))
    central.reset_connections(times=3, commit=commit)
    running = await pusher(central.base_url, batch_max_entries=4, concurrency=1)
    await settled(db)
    assert_delivered(db, central)
    assert running.metric("edge_node_push_batches_total", outcome="transient") == 3
    assert sum(1 for r in central.requests if r.outcome == "reset") == 3


@pytest.mark.parametrize("commit", [False, True], ids=["lost-request", "lost-answer"])
async def test_a_hanging_central_times_out_and_the_batch_is_sent_again(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory, commit: bool) -> None:
    load(db, patient_stream(patients=2, versions=3))
    central.hang(times=1, commit=commit)
    running = await pusher(central.base_url, read_timeout_s=0.4, batch_max_entries=4, concurrency=1)
    await settled(db)
    assert_delivered(db, central)
    assert running.metric("edge_node_push_batches_total", outcome="transient") == 1
    [failed] = [b for b in batches(db) if b["outcome"] == "transient"]
    assert "timeout" in failed["response_summary"]


async def test_a_resource_central_rejects_goes_dead_alone_with_its_outcome_and_everything_else_arrives(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    load(db, patient_stream(patients=3, versions=3))
    central.reject_resource("Observation", "o1-2")
    running = await pusher(central.base_url, batch_max_entries=9, concurrency=2)
    await settled(db)

    assert_delivered(db, central, dead=[("Observation", "o1-2")])
    [dead] = [row for row in outbound(db) if row["state"] == "dead"]
    assert dead["error"].startswith("rejected by central (HTTP 400") and "error/invalid" in dead["error"]
    assert "o1-2" not in dead["error"]  # central's diagnostics quote the resource: only codes in the text
    issue = json.loads(dead["outcome_json"])["issue"]
    assert len(issue) == 1 and "(Observation/o1-2): rejected by central" in issue[0]["diagnostics"]
    assert "Observation/o1-2): rejected" not in caplog.text  # the OperationOutcome is stored, never logged
    assert running.metric("edge_node_push_resources_total", result="dead") == 1
    assert [b["outcome"] for b in batches(db)].count("rejected") == 1
    assert dead["batch_id"] == next(b["id"] for b in batches(db) if b["outcome"] == "rejected")


async def test_a_rejected_newest_version_lets_the_older_one_it_superseded_through(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    load(db, [Msg("p1", (patient("p1", "1"),)), Msg("p1", (patient("p1", "2", family="Rejected"),))])
    central.reject_resource("Patient", "p1", times=1)  # only the Bundle carrying v2
    await pusher(central.base_url)
    await settled(db)
    rows = outbound(db)
    assert [row["state"] for row in rows] == ["pushed", "dead"]
    assert central.version_sequence("Patient", "p1") == [patient("p1", "1")]


class OutcomeStripper:
    """A proxy in front of the real central that removes every entry pointer (`expression`,
    `location`) from its OperationOutcomes: central then says "400" without naming the entry."""

    def __init__(self, central: CentralFHIRServer) -> None:
        self.central = central
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        body = await request.read()
        async with self.session.post(self.central.base_url, data=body, headers={"Content-Type": FHIR_JSON}) as answer:
            payload = await answer.read()
            status = answer.status
        if status >= 400:
            outcome = json.loads(payload)
            for issue in outcome.get("issue", []):
                issue.pop("expression", None)
                issue.pop("location", None)
            payload = json.dumps(outcome).encode()
        return web.Response(status=status, body=payload, content_type=FHIR_JSON)


async def test_without_entry_pointers_bisection_isolates_the_rejected_resource(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory, stub: Any) -> None:
    load(db, patient_stream(patients=4, versions=2))
    central.reject_resource("Observation", "o2-2")
    proxy = OutcomeStripper(central)
    front: Stub = await stub(proxy)
    running = await pusher(f"{front.url}/fhir", batch_max_entries=24, concurrency=1)
    try:
        await settled(db)
    finally:
        await running.stop()  # the client's keep-alive connections close before the proxy stops
        if proxy.session is not None:
            await proxy.session.close()

    assert_delivered(db, central, dead=[("Observation", "o2-2")])
    audit = batches(db)
    assert audit[0]["outcome"] == "rejected" and audit[0]["entries"] == 16
    assert all(b["parent_id"] is not None for b in audit[1:])
    rejected = [b for b in audit if b["outcome"] == "rejected"]
    assert rejected[-1]["entries"] == 1  # down to the single resource
    assert len(audit) <= 2 * 6 + 1  # halving: a logarithmic number of Bundles


async def test_413_splits_the_batch_and_lowers_the_bound(db: Path, central: CentralFHIRServer,
                                                         pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=4, versions=3))
    central.fail_with(413, times=1)
    running = await pusher(central.base_url, batch_max_entries=20, concurrency=1)
    await settled(db)
    assert_delivered(db, central)
    audit = batches(db)
    assert audit[0]["outcome"] == "too_large"
    assert audit[1]["parent_id"] == audit[0]["id"] and audit[1]["entries"] <= audit[0]["entries"]
    assert running.worker.max_entries == audit[0]["entries"] // 2
    assert running.worker.max_bytes <= audit[0]["bytes"] // 2
    assert all(b["entries"] <= running.worker.max_entries for b in audit[3:])


async def test_a_single_resource_central_finds_too_large_stays_pending_never_dead(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    load(db, [Msg("p1", (patient("p1"),))])
    central.fail_with(413, times=None)
    await pusher(central.base_url)
    await eventually(lambda: len(finished(db)) >= 3)
    assert states(db) == {"pending": 1}
    central.clear_faults()
    await settled(db)
    assert_delivered(db, central)


async def test_401_raises_the_auth_alert_retries_slowly_never_dead_and_recovers(
        db: Path, tmp_path: Path, pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=2, versions=2))
    with CentralFHIRServer(bearer_token="good-token", shutdown_timeout=0.5) as central:
        token = tmp_path / "token"
        token.write_text("wrong-token\n")
        running = await pusher(central.base_url, bearer_token_file=token, backoff_max_s=0.5)
        await eventually(lambda: running.metric("edge_node_central_auth_failing") == 1)
        await asyncio.sleep(0.6)
        assert states(db) == {"pending": 12}
        assert running.metric("edge_node_central_up") == 0
        assert all(b["outcome"] == "auth" and b["http_status"] == 401 for b in batches(db))

        token.write_text("good-token\n")
        await settled(db)
        assert_delivered(db, central)
        assert running.metric("edge_node_central_auth_failing") == 0
        assert running.metric("edge_node_central_up") == 1
        await running.stop()


async def test_a_wrong_url_is_misconfigured_raises_the_alert_and_marks_nothing_dead(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    load(db, [Msg("p1", (patient("p1"),))])
    running = await pusher(f"{central.root_url}/wrong-base", backoff_max_s=0.2)
    await eventually(lambda: len(finished(db)) >= 2)
    assert states(db) == {"pending": 1}
    assert running.metric("edge_node_central_misconfigured") == 1
    assert all(b["outcome"] == "misconfigured" and b["http_status"] == 404 for b in finished(db))
    [row] = outbound(db)
    assert row["attempts"] >= 2 and row["next_attempt_at"] and row["error"].startswith("misconfigured: HTTP 404")


async def test_mtls_central_gets_everything_over_tls_with_the_client_certificate(
        db: Path, tmp_path: Path, pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=3, versions=2))
    with CentralFHIRServer(require_client_cert=True, shutdown_timeout=0.5) as central:
        keys = central.node_settings(tmp_path / "certs")
        assert set(keys) >= {"ca_bundle", "client_cert", "client_key"}
        running = await pusher(**keys)
        await settled(db)
        assert_delivered(db, central)
        await running.stop()  # close the TLS connections before central stops


async def test_mtls_without_a_client_certificate_fails_without_losing_anything(
        db: Path, tmp_path: Path, pusher: PusherFactory) -> None:
    load(db, [Msg("p1", (patient("p1"),))])
    with CentralFHIRServer(require_client_cert=True, shutdown_timeout=0.5) as central:
        keys = central.node_settings(tmp_path / "certs")
        running = await pusher(keys["url"], ca_bundle=keys["ca_bundle"], backoff_max_s=0.2)
        await eventually(lambda: len(finished(db)) >= 2)
        assert states(db) == {"pending": 1} and central.resources == {}
        assert {b["outcome"] for b in finished(db)} <= {"misconfigured", "transient"}
        assert running.metric("edge_node_central_up") == 0
        await running.stop()


async def test_central_down_opens_the_breaker_and_everything_arrives_when_it_is_back(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=5, versions=3))
    central.down()
    running = await pusher(central.base_url, batch_max_entries=6, concurrency=2, backoff_max_s=0.2)
    await eventually(lambda: running.metric("edge_node_push_breaker_state") == 2)
    assert running.metric("edge_node_central_up") == 0
    assert running.metric("edge_node_retry_delay_seconds") > 0
    await asyncio.sleep(1.0)
    assert states(db) == {"pending": 45}
    central.up()
    await settled(db)
    assert_delivered(db, central)
    assert running.metric("edge_node_push_breaker_state") == 0 and running.metric("edge_node_central_up") == 1


async def test_an_ok_without_one_entry_per_resource_is_not_taken_as_a_confirmation(
        db: Path, pusher: PusherFactory, stub: Any) -> None:
    load(db, [Msg("p1", (patient("p1"), observation("o1", "p1", 1.0)))])

    async def short_answer(request: web.Request) -> web.Response:
        body = {"resourceType": "Bundle", "type": "transaction-response",
                "entry": [{"response": {"status": "201 Created", "location": "Patient/p1/_history/1"}}]}
        return web.Response(body=json.dumps(body).encode(), content_type=FHIR_JSON)

    server: Stub = await stub(short_answer)
    running = await pusher(f"{server.url}/fhir", backoff_max_s=0.2)
    await eventually(lambda: len(finished(db)) >= 2)
    assert states(db) == {"pending": 2}
    assert all(b["outcome"] == "misconfigured" for b in finished(db))
    assert "1 entries for 2 sent" in finished(db)[0]["response_summary"]
    assert running.metric("edge_node_central_misconfigured") == 1
    await running.stop()  # before the stub stops
