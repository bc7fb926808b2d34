"""Retention (node.store.retention + node.maintenance.RetentionJob) on real SQLite files through the real
GroupCommitWriter: what is purged and what never is, the file really shrinking, dedup after a purge,
chunked transactions with intake commits in between, the periodic thread and its metrics.

Ages come from timestamps written in the past (as the harmonizer and push stage would have written them
back then) and from the job's injected clock."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from node.errors import StoreClosedError, StoreError
from node.maintenance import RetentionJob
from node.metrics import RetentionMetrics
from node.model import StageOutcome, StageRequest
from node.store import retention
from node.store.outbound import MessageResult
from node.store.store import Store
from node.store.writer import GroupCommitWriter
from tests.conftest import wait_until
from tests.store.conftest import MakeRequest
from tests.store.test_retention_support import (
    DAY,
    connection,
    harmonized,
    inbound_rows,
    outbound_rows,
    record,
    set_outbound,
)

NOW = time.time()
OLD = NOW - 30 * DAY
YOUNG = NOW - 1 * DAY


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def db_path(db: Path) -> Path:
    """The conftest's `writer` fixture writes to `db`."""
    return db


def job_for(writer: GroupCommitWriter, *, now: float = NOW, **options: Any) -> RetentionJob:
    return RetentionJob(writer, retention_days=7, interval_s=3600, clock=lambda: now, **options)


def stage(writer: GroupCommitWriter, requests: list[StageRequest]) -> list[StageOutcome]:
    return [future.result(10) for future in [writer.submit(request) for request in requests]]


def test_only_payloads_that_are_done_with_are_purged_and_the_audit_stays(
        writer: GroupCommitWriter, db: Path, make_request: MakeRequest) -> None:
    names = ["staged", "failed", "pushed", "pending", "dead", "pushed+dead", "skipped", "no-resources",
             "pushed-recently", "harmonized-recently"]
    ids = {name: outcome.message_id for name, outcome in zip(
        names, stage(writer, [make_request(f"C-{name}") for name in names]), strict=True)}
    with connection(db) as conn:
        conn.execute("UPDATE inbound SET updated_at = ?, received_at = ?", (OLD, OLD))  # everyone is old
        record(conn, MessageResult.failed(ids["failed"], "adt", "PID-3 missing", "parse"), at=OLD)
        for name in ("pushed", "pending", "dead", "pushed-recently"):
            harmonized(conn, ids[name], ['{"resourceType":"Observation"}'], at=OLD)
        harmonized(conn, ids["pushed+dead"], ['{"n":1}', '{"n":2}'], at=OLD)
        record(conn, MessageResult.skipped(ids["skipped"], "adt"), at=OLD)
        harmonized(conn, ids["no-resources"], [], at=OLD)
        harmonized(conn, ids["harmonized-recently"], [], at=YOUNG)
        set_outbound(conn, "pushed", inbound_id=ids["pushed"], at=OLD)
        set_outbound(conn, "dead", inbound_id=ids["dead"], at=OLD)
        first, second = (row["id"] for row in outbound_rows(conn).values() if row["inbound_id"] == ids["pushed+dead"])
        set_outbound(conn, "pushed", outbound_id=first, at=OLD)
        set_outbound(conn, "dead", outbound_id=second, at=OLD)
        set_outbound(conn, "pushed", inbound_id=ids["pushed-recently"], at=YOUNG)
        before_in, before_out = inbound_rows(conn), outbound_rows(conn)

    report = job_for(writer).run_once()

    with connection(db) as conn:
        after_in, after_out = inbound_rows(conn), outbound_rows(conn)
    purged_in = {name for name, id_ in ids.items() if after_in[id_]["purged_at"] is not None}
    assert purged_in == {"pushed", "skipped", "no-resources"}
    purged_out = {after_in[row["inbound_id"]]["control_id"] for row in after_out.values() if row["purged_at"]}
    assert purged_out == {"C-pushed", "C-pushed+dead"}
    assert (report.inbound_purged, report.outbound_purged) == (3, 2)
    assert report.completed and report.checkpoint is not None

    for id_, row in after_in.items():
        old = before_in[id_]
        if row["purged_at"] is None:  # never touched: staged, failed, pending, dead, recent
            assert row == old
            continue
        assert row["purged_at"] == NOW and row["raw"] == b""  # zero-length blob
        # The audit and the dedup key stay: everything but raw and purged_at is as it was, ACK included.
        assert {k: v for k, v in row.items() if k not in ("raw", "purged_at")} == \
               {k: v for k, v in old.items() if k not in ("raw", "purged_at")}
        assert row["size"] == len(old["raw"]) > 0
    for id_, row in after_out.items():
        old = before_out[id_]
        if row["purged_at"] is None:
            assert row == old  # pending, dead (kept whole for an operator), pushed recently
            continue
        assert row["body"] == "" and row["state"] == "pushed"
        assert {k: v for k, v in row.items() if k not in ("body", "purged_at")} == \
               {k: v for k, v in old.items() if k not in ("body", "purged_at")}

    # A second run finds nothing more; ten days later the recent ones have aged too. Never the others.
    assert job_for(writer).run_once().inbound_purged == 0
    later = job_for(writer, now=NOW + 10 * DAY).run_once()
    assert (later.inbound_purged, later.outbound_purged) == (2, 1)
    with connection(db) as conn:
        kept = {row["control_id"] for row in inbound_rows(conn).values() if row["purged_at"] is None}
        dead_bodies = [row["body"] for row in outbound_rows(conn).values() if row["state"] == "dead"]
    assert kept == {"C-staged", "C-failed", "C-pending", "C-dead", "C-pushed+dead"}
    assert dead_bodies == ['{"resourceType":"Observation"}', '{"n":2}']


def test_the_database_file_really_shrinks(writer: GroupCommitWriter, db: Path, make_request: MakeRequest) -> None:
    big = 64 * 1024
    outcomes = stage(writer, [make_request(f"BIG-{n}", raw=b"MSH|" + bytes([65 + n % 26]) * big)
                              for n in range(150)])
    with connection(db) as conn:
        for outcome in outcomes:
            harmonized(conn, outcome.message_id, ['{"text":"' + "y" * big + '"}'], at=OLD)
        set_outbound(conn, "pushed", at=OLD)
    writer.call(retention.checkpoint_truncate).result(10)  # everything in the database file itself
    before = db.stat().st_size
    assert before > 150 * 2 * big

    report = job_for(writer).run_once()

    after = db.stat().st_size
    print(f"\nretention: database file {before} -> {after} bytes, {report.pages_vacuumed} pages given back, "
          f"{report.chunks} transactions, {report.seconds:.2f} s")
    assert (report.inbound_purged, report.outbound_purged) == (150, 150)
    assert after < before // 10
    assert db.with_name(db.name + "-wal").stat().st_size == 0  # the WAL was truncated too
    assert report.bytes_after == after < report.bytes_before
    assert writer.call(retention.freelist_pages).result(10) == 0
    assert writer.call(lambda store: store.integrity_check()).result(10) == "ok"


def test_a_resend_of_a_purged_message_is_still_a_duplicate_answered_with_its_ack(
        writer: GroupCommitWriter, db: Path, make_request: MakeRequest) -> None:
    request = make_request("RESENT", ack=b"MSH|^~\\&|EDGE|SITE\rMSA|AA|RESENT\r")
    [first] = stage(writer, [request])
    with connection(db) as conn:
        harmonized(conn, first.message_id, [], at=OLD)
    assert job_for(writer).run_once().inbound_purged == 1

    [again] = stage(writer, [request])

    assert again == StageOutcome(message_id=first.message_id, duplicate=True, ack=request.ack)
    with connection(db) as conn:
        rows = inbound_rows(conn)
    assert list(rows) == [first.message_id] and rows[first.message_id]["raw"] == b""


def test_retention_runs_in_small_transactions_and_intake_commits_in_between(
        db: Path, make_request: MakeRequest) -> None:
    events: list[str] = []
    writer = GroupCommitWriter(db, on_commit=lambda _s, _n: events.append("intake commit"))
    writer.start()
    try:
        outcomes = stage(writer, [make_request(f"M-{n}") for n in range(12)])
        with connection(db) as conn:
            for outcome in outcomes:
                harmonized(conn, outcome.message_id, ['{"x":1}'] * 100, at=OLD)  # 1200 outbound rows
            set_outbound(conn, "pushed", at=OLD)
        events.clear()
        submitted: list[concurrent.futures.Future[StageOutcome]] = []
        call = writer.call

        def traced_call(fn: Callable[[Store], Any]) -> concurrent.futures.Future[Any]:
            def traced(store: Store) -> Any:
                result = fn(store)
                events.append("retention chunk")
                return result
            if events.count("retention chunk") == 1 and not submitted:
                # A message arrives while the run is under way (after its first chunk).
                submitted.append(writer.submit(make_request("DURING")))
            return call(traced)

        writer.call = traced_call  # type: ignore[method-assign]
        report = job_for(writer, chunk_rows=100).run_once()
        events.append("run ended")
        writer.call = call  # type: ignore[method-assign]

        assert report.outbound_purged == 1200 and report.inbound_purged == 12
        chunks = events.count("retention chunk")
        assert chunks == report.chunks >= 13  # 12 full chunks of 100 rows, one empty, inbound, vacuum...
        assert submitted[0].done() and not submitted[0].result().duplicate
        # The message was committed between two retention transactions, long before the run ended.
        assert events.index("intake commit") < chunks // 2
        assert events.index("intake commit") < events.index("run ended")
    finally:
        writer.stop()


def test_the_periodic_job_runs_at_start_and_every_interval_and_reports_metrics(
        writer: GroupCommitWriter, db: Path, make_request: MakeRequest) -> None:
    outcomes = stage(writer, [make_request(f"P-{n}") for n in range(3)])
    with connection(db) as conn:
        for outcome in outcomes:
            harmonized(conn, outcome.message_id, ["{}", "{}"], at=OLD)
        set_outbound(conn, "pushed", at=OLD)
    registry = CollectorRegistry()
    job = RetentionJob(writer, retention_days=7, interval_s=0.05, observer=RetentionMetrics(registry))
    started = time.time()
    job.start()
    try:
        wait_until(lambda: job.runs >= 3, timeout=10)
    finally:
        job.stop()
    sample = registry.get_sample_value
    assert sample("edge_node_retention_purged_total", {"kind": "outbound"}) == 6
    assert sample("edge_node_retention_purged_total", {"kind": "inbound"}) == 3
    assert started <= (sample("edge_node_retention_last_run_timestamp_seconds") or 0) <= time.time()
    assert sample("edge_node_retention_failures_total") == 0
    runs = job.runs
    time.sleep(0.15)
    assert job.runs == runs  # stopped


def test_a_failing_run_is_counted_and_the_next_interval_tries_again(tmp_path: Path) -> None:
    class BrokenWriter:
        path = tmp_path / "store.db"
        calls = 0

        def call(self, _fn: object) -> concurrent.futures.Future[Any]:
            BrokenWriter.calls += 1
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future.set_exception(StoreError("database is locked"))
            return future

    registry = CollectorRegistry()
    job = RetentionJob(BrokenWriter(), retention_days=7, interval_s=0.02,  # type: ignore[arg-type]
                       observer=RetentionMetrics(registry))
    job.start()
    try:
        wait_until(lambda: (registry.get_sample_value("edge_node_retention_failures_total") or 0) >= 2)
    finally:
        job.stop()
    assert registry.get_sample_value("edge_node_retention_last_run_timestamp_seconds") == 0
    assert job.runs == 0


def test_a_stopped_writer_ends_the_run_with_store_closed_error(db: Path) -> None:
    writer = GroupCommitWriter(db)
    writer.start()
    writer.stop()
    with pytest.raises(StoreClosedError):
        job_for(writer).run_once()
    job = job_for(writer)
    job.start()  # the periodic thread survives it (logs, counts) until stopped
    stopper = threading.Timer(0.05, job.stop)
    stopper.start()
    stopper.join()
    job.stop()
