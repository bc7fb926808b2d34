"""PushWorker against the real central test server and a real SQLite store: order, watermark, duplicates
in one batch, partial batches, the audit, the file sink, restarts and shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from node.push.file_sink import FileSink
from node.push.worker import PushWorker
from node.store.push import BatchStart, begin_batch
from node.store.store import Store
from tests.central.server import CentralFHIRServer
from tests.push import test_worker_support as support
from tests.push.test_worker_support import (
    FEED,
    Msg,
    PusherFactory,
    assert_delivered,
    batches,
    encounter,
    eventually,
    load,
    outbound,
    patient,
    patient_stream,
    record,
    settled,
    states,
)

db = support.db  # fixtures
pusher = support.pusher


async def test_every_resource_arrives_once_in_message_order_with_its_latest_version(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    messages = patient_stream(patients=7, versions=6)
    load(db, messages)
    running = await pusher(central.base_url, batch_max_entries=10, concurrency=3)

    await settled(db)

    assert_delivered(db, central)  # includes: every version history is in message order
    histories = [central.version_sequence("Patient", f"p{n}") for n in range(7)]
    assert all(history[-1] == patient(f"p{n}", "6") for n, history in enumerate(histories))
    assert sum(map(len, histories)) > 7  # versions went in several batches: the order was exercised
    audit = batches(db)
    assert audit and all(b["outcome"] == "ok" and b["http_status"] == 200 and b["finished_at"] for b in audit)
    assert all(b["entries"] <= 10 for b in audit)
    assert sum(b["entries"] for b in audit) == sum(len(r.keys) for r in central.requests)
    assert json.loads(audit[0]["counts_json"]).keys() <= {"Patient", "Encounter", "Observation"}
    assert "x 201 Created" in audit[0]["response_summary"]
    assert running.metric("edge_node_push_batches_total", outcome="ok") == len(audit)
    assert running.metric("edge_node_push_resources_total", result="pushed") + \
        running.metric("edge_node_push_resources_total", result="superseded") == len(outbound(db))
    assert running.metric("edge_node_last_push_success_timestamp_seconds") > time.time() - 60
    assert running.metric("edge_node_central_up") == 1
    assert all(row["pushed_at"] and row["batch_id"] for row in outbound(db))


async def test_a_message_above_the_watermark_waits_for_an_earlier_staged_one(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    # One patient, three messages; a harmonizer worker commits the third and second before the first.
    messages = [Msg("p1", (patient("p1", str(v)), encounter(f"e{v}", "p1"))) for v in (1, 2, 3)]
    ids = load(db, messages, order=[2, 1], leave_staged=[0])
    other = load(db, [Msg("q1", (patient("q1"),))])  # newer than all three, other patient: also held back
    await pusher(central.base_url)

    await asyncio.sleep(0.5)
    assert central.requests == [] and states(db) == {"pending": 5}

    record(db, messages, ids, order=[0])
    await settled(db)
    assert_delivered(db, central)
    assert central.version_sequence("Patient", "p1")[-1] == patient("p1", "3")
    assert other  # sent after the watermark moved past it


async def test_the_watermark_only_counts_the_harmonizers_feeds(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    from tests.harmonize.test_worker_support import adt, stage

    stage(db, [adt("ORPHAN-1")], feed="old-feed")  # a feed no longer configured: never harmonized
    load(db, [Msg("p1", (patient("p1"),))])
    await pusher(central.base_url, feeds=[FEED])
    await settled(db)
    assert_delivered(db, central)


async def test_versions_of_one_resource_in_one_batch_collapse_to_the_newest_and_are_marked_superseded(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    messages = [Msg("p1", (patient("p1", str(v)), encounter("e1", "p1", "in-progress" if v < 4 else "finished")))
                for v in (1, 2, 3, 4)]
    load(db, messages)
    await pusher(central.base_url, batch_max_entries=50)

    await settled(db)

    [request] = central.requests
    assert sorted(request.keys) == [("Encounter", "e1"), ("Patient", "p1")]
    assert central.version_sequence("Patient", "p1") == [patient("p1", "4")]
    rows = outbound(db)
    sent = {row["id"] for row in rows if row["superseded_by"] is None}
    assert len(sent) == 2
    superseded = [row for row in rows if row["superseded_by"] is not None]
    assert len(superseded) == 6 and all(row["superseded_by"] in sent and row["state"] == "pushed"
                                        for row in superseded)
    [audit] = batches(db)
    assert audit["entries"] == 2 and audit["rows"] == 8
    assert_delivered(db, central)


async def test_a_partial_batch_waits_batch_max_wait_s_a_full_one_goes_at_once(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    load(db, [Msg(f"p{n}", (patient(f"p{n}"),)) for n in range(3)])
    await pusher(central.base_url, batch_max_entries=2, batch_max_wait_s=1.5, concurrency=1)

    await eventually(lambda: len(central.requests) == 1, timeout=5)
    assert central.requests[0].entries == 2  # the full batch
    await asyncio.sleep(0.6)
    assert len(central.requests) == 1  # the partial one waits for its oldest row to be 1.5 s old
    await settled(db, timeout=5)
    assert_delivered(db, central)


async def test_the_file_sink_writes_one_bundle_file_per_batch(db: Path, tmp_path: Path,
                                                              pusher: PusherFactory) -> None:
    load(db, patient_stream(patients=2, versions=2, observations=False))
    outbox = tmp_path / "outbox"
    await pusher(f"file://{outbox}", batch_max_entries=2, concurrency=1)

    await settled(db)

    files = sorted(outbox.glob("*.json"))
    assert [path.stem for path in files] == [f"test-site-b{b['id']:08d}-{int(b['created_at'])}" for b in batches(db)]
    bundle = json.loads(files[0].read_bytes())
    assert bundle["type"] == "transaction"
    assert all(entry["request"] == {"method": "PUT", "url": f"{entry['resource']['resourceType']}/"
                                                            f"{entry['resource']['id']}"}
               for entry in bundle["entry"])
    assert all(b["outcome"] == "ok" and b["http_status"] is None for b in batches(db))


async def test_a_batch_in_flight_when_the_node_died_is_sent_again_and_superseded_rows_follow_it(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    messages = [Msg("p1", (patient("p1", str(v)),)) for v in (1, 2, 3)]
    load(db, messages)
    rows = outbound(db)
    # A previous run sent v3 in place of v1 and v2 and died before recording the answer.
    store = Store.open(db)
    try:
        begin_batch(store, BatchStart(sent=[rows[2]["id"]], superseded=[(rows[0]["id"], rows[2]["id"]),
                                                                        (rows[1]["id"], rows[2]["id"])],
                                      entries=1, bytes=100, counts={"Patient": 1}))
    finally:
        store.close()

    running = await pusher(central.base_url)
    await settled(db)

    assert central.version_sequence("Patient", "p1") == [patient("p1", "3")]  # v1, v2 never sent alone
    audit = batches(db)
    assert audit[0]["outcome"] == "interrupted" and audit[1]["outcome"] == "ok"
    assert [row["state"] for row in outbound(db)] == ["pushed"] * 3
    assert outbound(db)[2]["attempts"] == 2
    assert running.metric("edge_node_push_resources_total", result="superseded") == 2
    assert_delivered(db, central)


async def test_unchanged_older_versions_ride_along_unmarked_and_are_confirmed_with_their_batch(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    """Rule 4: an older version with the same contents as the row sent in its place is not written when
    the batch is sent (nothing to protect: sent alone it would change nothing), only marked pushed with
    the batch; an older version with other contents is marked superseded before sending."""
    ward = encounter("e-ward", "p0")  # the same contents in every message (a ward, a doctor)
    messages = [Msg("p1", (patient("p1", "1"), ward)), Msg("p2", (patient("p2"), ward)),
                Msg("p1", (patient("p1", "2"), ward))]
    load(db, messages)
    rows = outbound(db)
    central.hang(times=1)
    running = await pusher(central.base_url, read_timeout_s=1.0)
    await eventually(lambda: central.requests)  # the batch is in flight; central has not answered
    marked = {(row["resource_type"], row["resource_id"], row["inbound_id"]): row["superseded_by"]
              for row in outbound(db)}
    p1_v2 = next(row["id"] for row in rows if row["resource_id"] == "p1" and row["body"].count('"v2"'))
    first = rows[0]["inbound_id"]
    assert marked["Patient", "p1", first] == p1_v2  # other contents: marked before sending
    assert all(marked["Encounter", "e-ward", row["inbound_id"]] is None  # same contents: not written
               for row in rows if row["resource_id"] == "e-ward")
    assert list(central.requests[0].keys).count(("Encounter", "e-ward")) == 1
    await settled(db)
    assert_delivered(db, central)
    assert {row["state"] for row in outbound(db)} == {"pushed"}
    entries = sum(len(request.keys) for request in central.requests if request.status == 200)
    assert running.metric("edge_node_push_resources_total", result="pushed") == entries
    assert running.metric("edge_node_push_resources_total", result="superseded") == len(rows) - entries


async def test_stop_abandons_a_hanging_request_within_the_timeout_and_its_rows_stay_pending(
        db: Path, central: CentralFHIRServer, pusher: PusherFactory) -> None:
    load(db, [Msg("p1", (patient("p1"),))])
    central.hang(times=None)
    running = await pusher(central.base_url, read_timeout_s=30)
    await eventually(lambda: running.worker.in_flight == 1 and central.requests)

    started = time.monotonic()
    await running.stop(timeout_s=0.5)
    assert time.monotonic() - started < 3

    assert states(db) == {"pending": 1}
    [audit] = batches(db)
    assert audit["outcome"] == "abandoned"


async def test_describe_names_the_sink(db: Path, tmp_path: Path, pusher: PusherFactory) -> None:
    load(db, [])
    running = await pusher(f"file://{tmp_path / 'out'}", sink=FileSink(tmp_path / "out"))
    assert isinstance(running.worker, PushWorker)
    assert running.worker.describe() == f"push=file://{tmp_path / 'out'}"
