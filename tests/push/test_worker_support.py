"""Helpers of the push worker tests (no tests here): synthetic harmonized messages in a real store, a
running PushWorker on a real GroupCommitWriter, and the delivery assertions every scenario ends with.

A `Msg` is what the harmonizer would have recorded for one inbound message: its partition (patient) and
its FHIR resources. `load()` stages one real inbound row per message and records the results with
node.store.outbound.record_results (the harmonizer's own SQL), in any order, leaving chosen messages
staged (for the watermark).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from node.harmonize.convert import dumps
from node.metrics import PushMetrics
from node.push.outcome import Sink
from node.push.worker import PushWorker
from node.settings import CentralSection
from node.store.connect import open_connection
from node.store.outbound import MessageResult, OutboundResource, record_results
from node.store.writer import GroupCommitWriter
from tests.central.server import CentralFHIRServer, content_of
from tests.conftest import eventually as shared_eventually
from tests.harmonize.test_worker_support import adt, query, stage

FEED = "adt"
Resource = dict[str, Any]


# -- synthetic resources (no real data) -----------------------------------------------------------------


def patient(pid: str, version: str = "1", family: str = "Synthetic") -> Resource:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [f"v{version}"]}],
            "gender": "female", "birthDate": "1980-02-03"}


def encounter(eid: str, pid: str, status: str = "in-progress") -> Resource:
    return {"resourceType": "Encounter", "id": eid, "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{pid}"}}


def observation(oid: str, pid: str, value: float) -> Resource:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": value, "unit": "mmol/L"}}


@dataclass(frozen=True)
class Msg:
    """One harmonized message: its partition and resources."""

    partition: str
    resources: tuple[Resource, ...]


def patient_stream(patients: int, versions: int, *, observations: bool = True) -> list[Msg]:
    """`versions` messages per patient, interleaved: each updates the Patient (new given name), updates
    the patient's Encounter status and adds an Observation."""
    messages = []
    for version in range(1, versions + 1):
        for n in range(patients):
            pid = f"p{n}"
            resources = [patient(pid, str(version)),
                         encounter(f"e{n}", pid, "finished" if version == versions else "in-progress")]
            if observations:
                resources.append(observation(f"o{n}-{version}", pid, float(version)))
            messages.append(Msg(pid, tuple(resources)))
    return messages


def load(db: Path, messages: Sequence[Msg], *, order: Iterable[int] | None = None,
         leave_staged: Iterable[int] = ()) -> list[int]:
    """Stage one inbound row per message and record the harmonized results (in `order` of message
    indexes; default: message order), except `leave_staged`. Returns the inbound ids."""
    ids = stage(db, [adt(f"PUSH-{time.time_ns()}-{n}") for n in range(len(messages))], feed=FEED)
    record(db, messages, ids, order=order, skip=leave_staged)
    return ids


def record(db: Path, messages: Sequence[Msg], ids: Sequence[int], *, order: Iterable[int] | None = None,
           skip: Iterable[int] = ()) -> None:
    """Record the harmonized results of `messages` (staged as `ids`), one transaction per message."""
    skipped = set(skip)
    conn = open_connection(db)
    try:
        for index in (order if order is not None else range(len(messages))):
            if index in skipped:
                continue
            message = messages[index]
            resources = [OutboundResource(r["resourceType"], r["id"], dumps(r)) for r in message.resources]
            record_results(conn, [MessageResult.harmonized(ids[index], FEED, message.partition, resources)])
    finally:
        conn.close()


def states(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT state, count(*) FROM outbound GROUP BY state"))


def outbound(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM outbound ORDER BY inbound_id, id")]
    finally:
        conn.close()


def batches(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM batches ORDER BY id")]
    finally:
        conn.close()


# -- the delivery assertions ----------------------------------------------------------------------------


def expected_resources(db: Path) -> dict[tuple[str, str], Resource]:
    """(type, id) -> the newest version that is not dead, from the store's rows in message order."""
    expected: dict[tuple[str, str], Resource] = {}
    for row in outbound(db):
        if row["state"] != "dead":
            expected[row["resource_type"], row["resource_id"]] = json.loads(row["body"])
    return expected


def assert_delivered(db: Path, central: CentralFHIRServer, *, dead: Iterable[tuple[str, str]] = ()) -> None:
    """Nothing lost, no duplicates, latest versions, order kept:

    - every outbound row is `pushed`, except exactly the rows of `dead` keys' rejected versions;
    - central holds exactly the newest non-dead version of every resource (and nothing else);
    - each resource's version history at central is an in-order subsequence of its versions in message
      order (an older version never came after a newer one, nothing was stored twice);
    - no Bundle central received named one resource twice.
    """
    rows = outbound(db)
    dead_keys = set(dead)
    not_pushed = [(r["id"], r["resource_type"], r["resource_id"], r["state"], r["error"]) for r in rows
                  if r["state"] != "pushed" and (r["resource_type"], r["resource_id"]) not in dead_keys]
    assert not not_pushed, f"rows not pushed: {not_pushed[:10]}"
    dead_rows = {(r["resource_type"], r["resource_id"]) for r in rows if r["state"] == "dead"}
    assert dead_rows == dead_keys, f"dead: {sorted(dead_rows)}, expected {sorted(dead_keys)}"
    expected = expected_resources(db)
    central.assert_stored(expected.values(), exact=True)
    versions: dict[tuple[str, str], list[Resource]] = {}
    for row in rows:
        if row["state"] != "dead":
            versions.setdefault((row["resource_type"], row["resource_id"]), []).append(json.loads(row["body"]))
    for key, history in versions.items():
        stored = central.version_sequence(*key)
        assert_subsequence(key, stored, [content_of(version) for version in history])
    for request in central.requests:
        assert len(request.keys) == len(set(request.keys)), f"request {request.number} names a resource twice"


def assert_subsequence(key: tuple[str, str], stored: list[Resource], history: list[Resource]) -> None:
    position = -1
    for number, version in enumerate(stored, 1):
        following = [i for i in range(position + 1, len(history)) if history[i] == version]
        assert following, (f"{key[0]}/{key[1]}: stored version {number} of {len(stored)} is not a later "
                           f"message's version (out of order or unknown)")
        position = following[0]


# -- a running worker -------------------------------------------------------------------------------------


def central_section(url: str, **keys: Any) -> CentralSection:
    """A [central] section with test-sized timeouts and delays."""
    defaults: dict[str, Any] = {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "backoff_initial_s": 0.02,
                                "backoff_max_s": 0.3, "batch_max_wait_s": 0.0, "concurrency": 2}
    return CentralSection(url=url, **{**defaults, **keys})


@dataclass
class Pusher:
    """A started PushWorker with its writer and metrics registry."""

    worker: PushWorker
    writer: GroupCommitWriter
    registry: CollectorRegistry
    db: Path

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self.worker.stop(timeout_s)


eventually = partial(shared_eventually, timeout=20.0, interval=0.02)
"""tests.conftest.eventually with the push tests' longer default timeout."""


_RUNNING: list[Pusher] = []
"""Pushers started by the PusherFactory of the running test."""


async def settled(db: Path, timeout: float = 30.0) -> None:
    """Until no outbound row is pending and no started pusher has a batch in flight (a batch's rows are
    committed a moment before its task has counted them in the metrics)."""
    await eventually(lambda: states(db).get("pending", 0) == 0 and states(db), timeout=timeout)
    await eventually(lambda: all(p.worker.in_flight == 0 for p in _RUNNING if p.db == db), timeout=timeout)


@dataclass
class PusherFactory:
    db: Path
    started: list[Pusher] = field(default_factory=list)
    writers: list[GroupCommitWriter] = field(default_factory=list)

    async def __call__(self, url: str, *, sink: Sink | None = None, feeds: Sequence[str] | None = (FEED,),
                       poll_interval_s: float = 0.02, **keys: Any) -> Pusher:
        writer = GroupCommitWriter(self.db)
        await asyncio.to_thread(writer.start)
        self.writers.append(writer)
        registry = CollectorRegistry()
        worker = PushWorker(central_section(url, **keys), writer, self.db, site_id="test-site",
                            feeds=list(feeds) if feeds is not None else None, metrics=PushMetrics(registry),
                            sink=sink, poll_interval_s=poll_interval_s)
        await worker.start()
        pusher = Pusher(worker, writer, registry, self.db)
        self.started.append(pusher)
        _RUNNING.append(pusher)
        return pusher

    async def close(self) -> None:
        for pusher in self.started:
            await pusher.worker.stop(5.0)
            _RUNNING.remove(pusher)
        for writer in self.writers:
            await asyncio.to_thread(writer.stop)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
async def pusher(db: Path) -> AsyncIterator[PusherFactory]:
    """`await pusher(url, **central_keys)`: a started PushWorker (own writer) on `db`; stopped at teardown."""
    factory = PusherFactory(db)
    yield factory
    await factory.close()
