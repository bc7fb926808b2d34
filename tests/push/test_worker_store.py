"""node.store.push on a real SQLite file: which rows the push worker may take (watermark, whole messages,
busy and waiting partitions, superseded rows) and how outcomes are recorded; migration 0003."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from node.push.batcher import assemble
from node.store import migrations
from node.store.connect import open_connection
from node.store.digest import fingerprint
from node.store.outbound import outbound_counts
from node.store.push import (
    NO_WATERMARK,
    BatchStart,
    DeadRow,
    Finish,
    PushReader,
    begin_batch,
    close_open_batches,
    record_dead,
    record_pushed,
    record_retry,
    select_candidates,
    select_watermark,
)
from tests.harmonize.test_worker_support import adt, stage
from tests.push.test_worker_support import FEED, Msg, batches, encounter, load, outbound, patient, record


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    stage(db, [])  # creates and migrates the file
    connection = open_connection(db)
    yield connection
    connection.close()


def ids(rows: list[object]) -> list[int]:
    return [row.id for row in rows]  # type: ignore[attr-defined]


def test_the_watermark_is_the_lowest_staged_message_of_the_given_feeds(db: Path, conn: sqlite3.Connection) -> None:
    assert select_watermark(conn) == NO_WATERMARK
    first, second = stage(db, [adt("W-1"), adt("W-2")], feed=FEED)
    [other] = stage(db, [adt("W-3")], feed="other")
    assert select_watermark(conn) == first
    assert select_watermark(conn, [FEED]) == first
    assert select_watermark(conn, ["other"]) == other
    assert select_watermark(conn, []) == NO_WATERMARK
    record(db, [Msg("p", (patient("p"),))] * 2, [first, second])
    assert select_watermark(conn, [FEED]) == NO_WATERMARK
    assert select_watermark(conn) == other


def test_candidates_below_the_watermark_in_message_order(db: Path, conn: sqlite3.Connection) -> None:
    messages = [Msg("p1", (patient("p1", "1"), encounter("e1", "p1"))), Msg("p2", (patient("p2"),)),
                Msg("p1", (patient("p1", "2"),))]
    inbound = load(db, messages, order=[2, 0], leave_staged=[1])
    rows = select_candidates(conn, now=0, limit=100, feeds=[FEED]).rows
    assert [row.inbound_id for row in rows] == [inbound[0], inbound[0]]  # message 3 waits for message 2
    rows = select_candidates(conn, now=0, limit=100, feeds=[]).rows  # no harmonized feeds: nothing holds back
    assert [row.inbound_id for row in rows] == [inbound[0], inbound[0], inbound[2]]
    assert all(row.size == len(json.dumps(patient("p1", "1"), separators=(",", ":")).encode()) or
               row.resource_type == "Encounter" for row in rows if row.resource_id == "p1")


def test_size_and_fingerprint_are_stored_with_the_body_and_computed_for_older_rows(
        db: Path, conn: sqlite3.Connection) -> None:
    """Rows recorded by the harmonizer carry body_size and body_digest (migration 0005); rows written
    before it (NULL there) get the same values computed from the body."""
    load(db, [Msg("p1", (patient("p1", "ä"),)), Msg("p2", (patient("p2"),))])
    stored = {row["resource_id"]: row for row in outbound(db)}
    for row in stored.values():
        data = row["body"].encode("utf-8")
        assert (row["body_size"], row["body_digest"]) == (len(data), fingerprint(data))
    assert stored["p1"]["body_size"] > len(stored["p1"]["body"])  # bytes, not characters: "ä" is two
    before = {row.resource_id: (row.size, row.fingerprint) for row in select_candidates(conn, now=0, limit=10).rows}
    conn.execute("UPDATE outbound SET body_size = NULL, body_digest = NULL")
    after = {row.resource_id: (row.size, row.fingerprint) for row in select_candidates(conn, now=0, limit=10).rows}
    assert after == before == {key: (row["body_size"], row["body_digest"]) for key, row in stored.items()}


def test_the_limit_never_cuts_a_message(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", tuple(patient(f"p{n}") for n in range(5))), Msg("p2", (patient("q"),))])
    assert len(select_candidates(conn, now=0, limit=3).rows) == 5  # one message larger than the limit: whole
    assert len(select_candidates(conn, now=0, limit=5).rows) == 5
    assert len(select_candidates(conn, now=0, limit=6).rows) == 6  # two whole messages, exactly the limit
    load(db, [Msg("p3", (patient("r1"), patient("r2")))])
    assert len(select_candidates(conn, now=0, limit=7).rows) == 6  # p3 would pass the limit: next round
    assert len(select_candidates(conn, now=0, limit=8).rows) == 8


def test_a_held_partition_with_a_long_queue_does_not_hide_the_others(db: Path, conn: sqlite3.Connection) -> None:
    """A patient waiting for a retry with thousands of pending rows at the head of the queue: the other
    patients' rows behind them are still found (held partitions are skipped in SQL, not read and dropped)."""
    load(db, [Msg("p1", tuple(patient(f"a{n}") for n in range(50))) for _ in range(40)])  # 2,000 rows of p1
    load(db, [Msg("p2", (patient("b"),))])
    found = select_candidates(conn, now=0, limit=10, busy=["p1"])
    assert [row.partition_key for row in found.rows] == ["p2"]
    assert found.blockers == []  # p1 shares no resource with p2

def test_busy_and_waiting_partitions_send_nothing(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1", "1"),)), Msg("p2", (patient("p2"),)), Msg("p1", (patient("p1", "2"),)),
              Msg("p3", (patient("p3"),))])
    rows = outbound(db)
    assert [r.partition_key for r in select_candidates(conn, now=0, limit=10, busy=["p2"]).rows] == ["p1", "p1", "p3"]
    batch, _ = begin_batch(conn, BatchStart([rows[0]["id"]], [], 1, 10, {"Patient": 1}), now=1)
    record_retry(conn, batch, [rows[0]["id"]], 100.0, "transient: HTTP 503", Finish("transient", 503), now=1)
    assert [r.partition_key for r in select_candidates(conn, now=50, limit=10).rows] == ["p2", "p3"]  # p1 waits
    assert [r.partition_key for r in select_candidates(conn, now=100.5, limit=10).rows] == ["p1", "p2", "p1", "p3"]
    [waiting] = [r for r in outbound(db) if r["id"] == rows[0]["id"]]
    assert waiting["attempts"] == 1 and waiting["next_attempt_at"] == 100.0 and waiting["error"].startswith("transient")


def test_rows_of_busy_and_waiting_partitions_come_back_as_blockers_of_shared_resources(
        db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1"), encounter("e1", "p1"))), Msg("p2", (patient("p2"), encounter("e1", "p2"))),
              Msg("p3", (patient("p3"),))])
    found = select_candidates(conn, now=0, limit=10, busy=["p1"])
    assert [r.partition_key for r in found.rows] == ["p2", "p2", "p3"]
    [blocker] = found.blockers  # p1's Patient shares nothing with the candidates: not needed
    assert (blocker.partition_key, blocker.resource_type, blocker.resource_id) == ("p1", "Encounter", "e1")
    rows = {(r.partition_key, r.resource_type): r for r in found.rows}
    assert len(blocker.fingerprint) == 32 and blocker.fingerprint != rows["p2", "Encounter"].fingerprint
    assert select_candidates(conn, now=0, limit=10).blockers == []


def test_a_blocker_with_the_contents_of_every_candidate_version_is_left_out(
        db: Path, conn: sqlite3.Connection) -> None:
    """Busy p1 holds Encounter e1 with contents A. Candidates with only A for e1: p1's row cannot hold
    them back (equal contents may go in any order), so it is not returned. Once a candidate has other
    contents B for e1 too, the blocker matters again (for B) and is returned."""
    shared_a = encounter("e1", "p0", "in-progress")
    shared_b = encounter("e1", "p0", "finished")
    load(db, [Msg("p1", (patient("p1"), shared_a)), Msg("p2", (patient("p2"), shared_a)),
              Msg("p3", (patient("p3"), shared_a))])
    found = select_candidates(conn, now=0, limit=10, busy=["p1"])
    assert [r.partition_key for r in found.rows] == ["p2", "p2", "p3", "p3"]
    assert found.blockers == []
    load(db, [Msg("p4", (patient("p4"), shared_b))])
    found = select_candidates(conn, now=0, limit=10, busy=["p1"])
    [blocker] = found.blockers
    assert (blocker.partition_key, blocker.resource_id) == ("p1", "e1")
    # and the batcher then keeps the B version behind it (its own rule, checked with the real rows)
    made = assemble(found.rows, max_entries=100, max_bytes=10**6, blockers=found.blockers)
    sent = {(row.partition_key, row.resource_id) for batch in made for row in batch.rows}
    assert ("p4", "e1") not in sent and ("p2", "e1") in sent


def test_superseded_rows_follow_the_row_sent_in_their_place(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1", str(v)),)) for v in (1, 2, 3, 4)])
    r1, r2, r3, r4 = (row["id"] for row in outbound(db))
    # An attempt sent r2 for r1 (outcome unknown); a later one sends r4 for r2 and r3.
    begin_batch(conn, BatchStart([r2], [(r1, r2)], 1, 10, {}), now=1)
    assert ids(select_candidates(conn, now=2, limit=10).rows) == [r2, r3, r4]  # r1 never alone again
    batch, attempt = begin_batch(conn, BatchStart([r4], [(r2, r4), (r3, r4)], 1, 10, {}), now=2)
    assert attempt == 1
    by_id = {row["id"]: row for row in outbound(db)}
    assert [by_id[r]["superseded_by"] for r in (r1, r2, r3, r4)] == [r4, r4, r4, None]
    assert record_pushed(conn, batch, [r4], Finish("ok", 200, "HTTP 200: 1 x 201 Created"), now=3) == (1, 3)
    assert {row["state"] for row in outbound(db)} == {"pushed"}
    assert all(row["batch_id"] == batch and row["pushed_at"] == 3 for row in outbound(db))


def test_riders_are_confirmed_with_the_batch_and_counted_as_superseded(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1"),)), Msg("p1", (patient("p1"),)), Msg("p1", (patient("p1"),))])
    r1, r2, r3 = (row["id"] for row in outbound(db))
    batch, _ = begin_batch(conn, BatchStart([r3], [], 1, 10, {"Patient": 1}, riders=2), now=1)
    assert [row["superseded_by"] for row in outbound(db)] == [None, None, None]  # riders are not written
    assert batches(db)[0]["rows"] == 3
    assert record_pushed(conn, batch, [r3], Finish("ok", 200), riders=[r1, r2], now=2) == (1, 2)
    assert {row["state"] for row in outbound(db)} == {"pushed"}
    assert record_pushed(conn, batch, [r3], Finish("ok", 200), riders=[r1, r2], now=3) == (0, 0)  # once only


def test_a_dead_row_releases_what_it_superseded(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1", str(v)),)) for v in (1, 2)])
    r1, r2 = (row["id"] for row in outbound(db))
    batch, _ = begin_batch(conn, BatchStart([r2], [(r1, r2)], 1, 10, {}), now=1)
    oo = json.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]})
    assert record_dead(conn, batch, [DeadRow(r2, "rejected by central (HTTP 400): error/invalid", oo)],
                       Finish("rejected", 400, "HTTP 400: ..."), now=2) == 1
    rows = {row["id"]: row for row in outbound(db)}
    assert rows[r2]["state"] == "dead" and rows[r2]["outcome_json"] == oo and rows[r2]["batch_id"] == batch
    assert rows[r1]["state"] == "pending" and rows[r1]["superseded_by"] is None
    assert ids(select_candidates(conn, now=3, limit=10).rows) == [r1]
    assert outbound_counts(conn) == {"pending": 1, "pushed": 0, "dead": 1}
    batch, _ = begin_batch(conn, BatchStart([r1], [], 1, 10, {}), now=4)
    record_pushed(conn, batch, [r1], Finish("ok", 200), now=5)
    load(db, [Msg("p2", (patient("p2"),))])
    assert outbound_counts(conn) == {"pending": 1, "pushed": 1, "dead": 1}  # from partial indexes + total


def test_outcomes_change_only_pending_rows_and_audit_rows_are_finished_once(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1"),))])
    [row] = outbound(db)
    batch, _ = begin_batch(conn, BatchStart([row["id"]], [], 1, 10, {"Patient": 1}), now=1)
    assert record_pushed(conn, batch, [row["id"]], Finish("ok", 200), now=2) == (1, 0)
    assert record_pushed(conn, batch, [row["id"]], Finish("ok", 200), now=3) == (0, 0)
    assert record_dead(conn, batch, [DeadRow(row["id"], "x")], Finish("rejected"), now=4) == 0
    reader = PushReader(db)
    try:
        [audit] = reader.batches()
        assert (audit.outcome, audit.finished_at, audit.counts, audit.rows) == ("ok", 2, {"Patient": 1}, 1)
        assert reader.last_success() == 2
        assert reader.stats(now=10).pending == 0
    finally:
        reader.close()


def test_open_batches_are_closed_as_interrupted_and_stats_show_the_queue(db: Path, conn: sqlite3.Connection) -> None:
    load(db, [Msg("p1", (patient("p1"),)), Msg("p2", (patient("p2"),))])
    first = outbound(db)[0]
    begin_batch(conn, BatchStart([first["id"]], [], 1, 10, {}), now=1)
    assert close_open_batches(conn, now=5) == 1
    assert close_open_batches(conn, now=6) == 0
    reader = PushReader(db)
    try:
        [audit] = reader.batches()
        assert audit.outcome == "interrupted" and audit.finished_at == 5
        stats = reader.stats(now=first["created_at"] + 30)
        assert stats.pending == 2 and 29 < stats.oldest_pending_age_s <= 30 and stats.waiting_for_retry == 0
    finally:
        reader.close()


_EARLIER = (("0001_create_inbound", migrations.MIGRATION_0001), ("0002_create_outbound", migrations.MIGRATION_0002),
            ("0003_push", migrations.MIGRATION_0003), ("0004_retention", migrations.MIGRATION_0004))


def _old_store(db: Path, migrations_applied: int) -> sqlite3.Connection:
    """A store as the first `migrations_applied` migrations left it, with one message and one resource."""
    before = Migrations(migrations.MIGRATION_SET)
    for name, statements in _EARLIER[:migrations_applied]:
        before(name=name)(lambda d, statements=statements: [d.execute(s) for s in statements])
    conn = open_connection(db)
    before.apply(Database(conn))
    conn.execute("INSERT INTO inbound (feed, received_at, raw, size, sha256, state, updated_at) "
                 "VALUES ('adt', 1.0, x'00', 1, x'00', 'harmonized', 1.0)")
    conn.execute("INSERT INTO outbound (inbound_id, resource_type, resource_id, partition_key, body, "
                 "created_at, updated_at) VALUES (1, 'Patient', 'p', 'p', '{}', 1.0, 1.0)")
    return conn


def test_migration_0003_upgrades_a_store_with_outbound_rows(db: Path) -> None:
    conn = _old_store(db, 2)
    try:
        applied = migrations.migrate(conn)
        assert "0003_push" in applied and "0002_create_outbound" not in applied
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbound)")}
        batch_columns = [row[1] for row in conn.execute("PRAGMA table_info(batches)")]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(outbound)")}
        kept = conn.execute("SELECT state, pushed_at, superseded_by, outcome_json FROM outbound").fetchall()
    finally:
        conn.close()
    assert {"pushed_at", "outcome_json", "superseded_by"} <= columns
    assert batch_columns[:11] == ["id", "created_at", "sent_at", "finished_at", "attempts", "outcome", "http_status",
                                  "entries", "bytes", "counts_json", "response_summary"]
    assert {"outbound_pending", "outbound_retry", "outbound_superseded"} <= indexes
    assert kept == [("pending", None, None, None)]


def test_migration_0005_adds_size_and_digest_to_existing_rows_as_null(db: Path) -> None:
    conn = _old_store(db, 4)
    try:
        assert migrations.migrate(conn) == ["0005_outbound_digest", "0006_outbound_write_cost"]
        kept = conn.execute("SELECT body, body_size, body_digest FROM outbound").fetchall()
    finally:
        conn.close()
    assert kept == [("{}", None, None)]
    reader = PushReader(db)
    try:
        [row] = reader.candidates(now=0, limit=10).rows
    finally:
        reader.close()
    assert (row.size, row.fingerprint) == (2, fingerprint(b"{}"))


def test_the_queue_queries_use_the_partial_indexes(conn: sqlite3.Connection) -> None:
    from node.store import push

    conn.create_function("push_fingerprint", 1, fingerprint)

    def plan(sql: str, *params: object) -> str:
        return " ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    # The queue in message order from the partial index (no sort); the blockers from the same stretch.
    queue = plan(push._QUEUE.replace(":watermark", "10").replace(":held", "'[]'"))
    assert "outbound_pending (inbound_id<?)" in queue and "TEMP B-TREE" not in queue
    held = plan(push._HELD.replace(":last_inbound", "10").replace(":last_id", "5").replace(":held", "'[]'")
                .replace(":keys", "'[]'"))
    assert "outbound_pending (inbound_id<?)" in held and "TEMP B-TREE" not in held  # a bounded range
    assert "outbound_retry (next_attempt_at>?)" in plan(push._WAITING_PARTITIONS, 0.0)


def test_the_confirmation_updates_touch_only_their_rows(conn: sqlite3.Connection) -> None:
    """By rowid or by superseded_by, never a walk over every pending row (a partial index on pending)."""
    from node.store import push

    for sql, index in ((push._PUSH_SENT, "INTEGER PRIMARY KEY"), (push._RETRY, "INTEGER PRIMARY KEY"),
                       (push._PUSH_SUPERSEDED, "outbound_superseded (superseded_by=?)")):
        plan = " ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (1,) * sql.count("?")))
        assert index in plan and "outbound_pending" not in plan
