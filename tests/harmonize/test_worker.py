"""The harmonizer worker on a real SQLite file: claiming, outcomes, one transaction per chunk, idempotence,
crash safety. Messages are ADT with PID and assertions are about the Patient, so the tests hold whatever
other segment mappers exist."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest

from node.errors import EX_CONFIG, ConfigError, StoreError
from node.harmonize import worker
from node.harmonize.context import STRUCTURE, UNREADABLE, UNSUPPORTED_MESSAGE, ConvertOptions
from node.harmonize.convert import convert, dumps
from node.harmonize.worker import (
    INTERNAL_ERROR,
    FeedOptions,
    FeedRuntime,
    WorkerSettings,
    harmonize_row,
    is_skipped,
    load_feed_runtimes,
    message_key,
    run_worker,
)
from node.model import MessageState
from node.store.connect import open_connection
from node.store.outbound import (
    HARMONIZE_FAILURES,
    MAX_LABELS_PER_FEED,
    OTHER_LABEL,
    UNMAPPED_CODES,
    UNMAPPED_SEGMENTS,
    MessageResult,
    OutboundResource,
    StagedRow,
    _apply,
    _outbound_rows,
    claim_staged,
    harmonize_stats,
    record_results,
)
from tests.conftest import wait_until
from tests.harmonize.test_worker_support import adt, counts, outbound_keys, query, stage, stage_request, states

SITE = "test-site"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def payload(*feeds: FeedOptions, chunk_size: int = 16) -> WorkerSettings:
    return WorkerSettings(site_id=SITE, feeds=feeds or (FeedOptions("adt"),), chunk_size=chunk_size)


def run_until_done(db: Path, settings: WorkerSettings, *, workers: int = 1, timeout: float = 20.0) -> list[int]:
    """Run `workers` run_worker loops in threads until nothing is staged; their exit statuses."""
    stop = threading.Event()
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda i=i: statuses.append(run_worker(db, i, workers, settings, stop)))
               for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: "staged" not in counts(db), timeout=timeout)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    return statuses


def expected_resources(raw: bytes, feed: str = "adt") -> tuple[str, list[tuple[str, str, str]]]:
    """(partition key, [(type, id, body)]) as convert() makes them for `raw`."""
    result = convert(raw, "ascii", ConvertOptions(site_id=SITE, feed=feed))
    return result.partition_key, [(r["resourceType"], r["id"], dumps(r)) for r in result.resources]


# -- claiming -------------------------------------------------------------------------------------------


def test_two_workers_claim_disjoint_partitions_in_id_order(db: Path) -> None:
    ids = stage(db, [adt(f"P{n}") for n in range(25)])
    conn = open_connection(db)
    try:
        zero = claim_staged(conn, worker_index=0, worker_count=2, limit=100)
        one = claim_staged(conn, worker_index=1, worker_count=2, limit=100)
        first_three = claim_staged(conn, worker_index=1, worker_count=2, limit=3)
        other_feed = claim_staged(conn, worker_index=0, worker_count=1, limit=100, feeds=["lab"])
        with pytest.raises(ValueError):
            claim_staged(conn, worker_index=2, worker_count=2, limit=1)
    finally:
        conn.close()
    assert {row.id for row in zero}.isdisjoint(row.id for row in one)
    assert sorted(row.id for row in zero + one) == ids
    assert [row.id for row in zero] == sorted(i for i in ids if i % 2 == 0)
    assert [row.id for row in first_three] == [row.id for row in one[:3]]
    assert other_feed == []
    assert zero[0].raw == adt(f"P{ids.index(zero[0].id)}") and zero[0].message_type == "ADT^A01^ADT_A01"
    assert "raw" not in repr(zero[0])


def test_claim_takes_only_staged_rows(db: Path) -> None:
    ids = stage(db, [adt(f"S{n}") for n in range(4)])
    conn = open_connection(db)
    try:
        record_results(conn, [MessageResult.skipped(ids[0], "adt"), MessageResult.failed(ids[1], "adt", "x", "k")])
        claimed = claim_staged(conn, worker_index=0, worker_count=1, limit=10)
    finally:
        conn.close()
    assert [row.id for row in claimed] == ids[2:]


# -- one chunk ------------------------------------------------------------------------------------------


def test_a_chunk_of_good_bad_and_skipped_messages(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [adt("GOOD-1", extra="ZQQ|1"), adt("GOOD-2", mrn="M-7"), adt("GOOD-3", mrn="M-7", trigger="A08")]
    unsupported = adt("BAD-1", trigger="A99")
    unreadable = b"PID|1||X^^^SITE^PI\rEVN|A01\r"
    skipped = adt("SKIP-1", trigger="A60")
    ids = stage(db, [*good, unsupported, stage_request(unreadable, feed="adt"), skipped])
    settings = payload(FeedOptions("adt", skip_message_types=("ADT^A60", "ACK")))
    with caplog.at_level(logging.INFO):
        assert run_until_done(db, settings) == [0]

    assert states(db) == dict(zip(ids, ["harmonized"] * 3 + ["failed", "failed", "skipped"], strict=True))
    rows = {row[0]: row[1:] for row in query(db, "SELECT id, error, harmonized_at FROM inbound")}
    assert rows[ids[3]][0] == "MSH-9: unsupported message type (ADT^A99)"
    assert rows[ids[4]][0].startswith("MSH: unreadable message")
    assert rows[ids[0]][0] is None and rows[ids[5]][0] is None
    assert all(harmonized_at is not None for _, harmonized_at in rows.values())

    outbound = query(db, "SELECT inbound_id, resource_type, resource_id, partition_key, body, state, attempts "
                         "FROM outbound ORDER BY id")
    assert {row[0] for row in outbound} == set(ids[:3])  # nothing for failed or skipped messages
    for inbound_id, raw in zip(ids[:3], good, strict=True):
        partition, resources = expected_resources(raw)
        mine = [row for row in outbound if row[0] == inbound_id]
        assert [(row[1], row[2], row[4]) for row in mine] == resources
        assert {row[3] for row in mine} == {partition}
        assert {(row[5], row[6]) for row in mine} == {("pending", 0)}
        patient = json.loads(next(row[4] for row in mine if row[1] == "Patient"))
        assert patient["id"] == partition
    same_patient = {row[3] for row in outbound if row[0] in ids[1:3]}
    assert len(same_patient) == 1  # GOOD-2 and GOOD-3 are one patient: one partition

    counters = {row[:3]: row[3] for row in query(db, "SELECT name, feed, label, value FROM counters")}
    assert counters[UNMAPPED_SEGMENTS, "adt", "ZQQ"] == 1
    assert counters[HARMONIZE_FAILURES, "adt", UNSUPPORTED_MESSAGE] == 1
    assert counters[HARMONIZE_FAILURES, "adt", UNREADABLE] == 1
    assert "Doe" not in caplog.text and "GOOD-1" not in caplog.text


def test_outcomes_of_harmonize_row(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    options = ConvertOptions(site_id=SITE, feed="adt")
    row = StagedRow(7, "adt", "ADT^A01^ADT_A01", "ascii", adt("ROW-1", name="Canarysurname^Canarygiven"))

    class Report:
        def __init__(self, ok: bool, problems: list[str]) -> None:
            self.ok, self.problems, self.reason = ok, problems, "; ".join(problems)

    strict_bad = FeedRuntime(options, frozenset(), lambda raw, charset: Report(False, ["PID-7: a", "PV1-3: b"]))
    result = harmonize_row(row, strict_bad)
    assert (result.state, result.error, result.failure_kind) == (MessageState.FAILED, "PID-7: a; PV1-3: b", STRUCTURE)

    strict_ok = FeedRuntime(options, frozenset(), lambda raw, charset: Report(True, []))
    assert harmonize_row(row, strict_ok).state is MessageState.HARMONIZED

    skip = FeedRuntime(options, frozenset({"ADT^A01"}), strict_bad.validate)
    assert harmonize_row(row, skip).state is MessageState.SKIPPED  # skipped before validation

    def explode(raw: bytes, charset: str, options: ConvertOptions) -> None:
        raise RuntimeError("Canarysurname was here")

    monkeypatch.setattr(worker, "convert", explode)
    with caplog.at_level(logging.INFO):
        result = harmonize_row(row, FeedRuntime(options, frozenset()))
    assert (result.state, result.error, result.failure_kind) == (
        MessageState.FAILED, "internal error: RuntimeError", INTERNAL_ERROR)
    assert "id=7" in caplog.text and "RuntimeError" in caplog.text
    assert "Canary" not in caplog.text


@pytest.mark.parametrize(("stored", "key"), [
    ("ADT^A01^ADT_A01", ("ADT", "A01")), ("adt^a11_a09", ("ADT", "A11")), ("ACK", ("ACK", "")),
    ("ADT$A08$ADT_A01", ("ADT", "A08")), ("", ("", "")),
])
def test_message_key(stored: str, key: tuple[str, str]) -> None:
    assert message_key(stored) == key


def test_skip_list_matches_code_or_code_and_trigger() -> None:
    feeds = load_feed_runtimes(payload(FeedOptions("adt", skip_message_types=("ack", "ADT^A60", "ORU^R01^ORU_R01"))))
    skip = feeds["adt"].skip
    assert is_skipped("ACK^A01^ACK", skip)
    assert is_skipped("ADT^A60^ADT_A60", skip) and is_skipped("ORU^R01", skip)
    assert not is_skipped("ADT^A01^ADT_A01", skip) and not is_skipped("ORU^R30", skip)


# -- recording ------------------------------------------------------------------------------------------


def test_record_results_twice_records_nothing_the_second_time(db: Path) -> None:
    ids = stage(db, [adt("ID-1"), adt("ID-2"), adt("ID-3")])
    resources = (OutboundResource("Patient", "p1", '{"id":"p1"}'), OutboundResource("Encounter", "e1", "{}"))
    results = [MessageResult.harmonized(ids[0], "adt", "p1", resources, {"ZQQ": 2}, {"L": 1}),
               MessageResult.failed(ids[1], "adt", "PID-3: missing", "missing_required_field"),
               MessageResult.skipped(ids[2], "adt")]
    conn = open_connection(db)
    try:
        assert record_results(conn, results) == ids
        before = (outbound_keys(db), query(db, "SELECT * FROM counters ORDER BY 1, 2, 3"),
                  query(db, "SELECT id, state, error, updated_at FROM inbound"))
        assert record_results(conn, results) == []
        assert record_results(conn, list(reversed(results))) == []
    finally:
        conn.close()
    after = (outbound_keys(db), query(db, "SELECT * FROM counters ORDER BY 1, 2, 3"),
             query(db, "SELECT id, state, error, updated_at FROM inbound"))
    assert after == before
    assert outbound_keys(db) == [(ids[0], "Patient", "p1"), (ids[0], "Encounter", "e1")]
    assert before[1] == [(HARMONIZE_FAILURES, "adt", "missing_required_field", 1), (UNMAPPED_CODES, "adt", "L", 1),
                         (UNMAPPED_SEGMENTS, "adt", "ZQQ", 2)]


def test_record_results_is_one_transaction(db: Path) -> None:
    ids = stage(db, [adt("TX-1"), adt("TX-2")])
    bad = [MessageResult.harmonized(ids[0], "adt", "p", [OutboundResource("Patient", "p", "{}")]),
           MessageResult.harmonized(ids[1], "adt", "p", [OutboundResource("Patient", None, "{}")])]  # type: ignore[arg-type]
    conn = open_connection(db)
    try:
        with pytest.raises(Exception, match="NOT NULL"):
            record_results(conn, bad)
        assert not conn.in_transaction
        with pytest.raises(ValueError):
            record_results(conn, [MessageResult(ids[0], "adt", MessageState.STAGED)])
    finally:
        conn.close()
    assert counts(db) == {"staged": 2}
    assert outbound_keys(db) == []


def test_counter_labels_are_capped_per_feed(db: Path) -> None:
    ids = stage(db, [adt(f"CAP-{n}") for n in range(3)])
    systems = {f"SYS{n:03d}": 1 for n in range(MAX_LABELS_PER_FEED + 10)}
    conn = open_connection(db)
    try:
        record_results(conn, [MessageResult.harmonized(ids[0], "adt", "p", [], unmapped_codes=systems)])
        record_results(conn, [MessageResult.harmonized(ids[1], "adt", "p", [], unmapped_codes={"SYS000": 5,
                                                                                             "NEW": 1})])
        record_results(conn, [MessageResult.harmonized(ids[2], "lab", "p", [], unmapped_codes={"NEW": 1})])
        stats = harmonize_stats(conn)
    finally:
        conn.close()
    adt_codes = {label: value for name, feed, label, value in stats.counters
                 if name == UNMAPPED_CODES and feed == "adt"}
    assert len(adt_codes) == MAX_LABELS_PER_FEED + 1
    assert adt_codes[OTHER_LABEL] == 10 + 1  # the 10 beyond the cap, then NEW
    assert adt_codes["SYS000"] == 6
    assert (UNMAPPED_CODES, "lab", "NEW", 1) in stats.counters  # the cap is per feed
    assert stats.outbound == {"pending": 0, "pushed": 0, "dead": 0}


def test_a_busy_store_fails_the_chunk_cleanly_and_a_retry_records_it(db: Path) -> None:
    ids = stage(db, [adt("BUSY-1")])
    result = MessageResult.harmonized(ids[0], "adt", "p", [OutboundResource("Patient", "p", "{}")])
    holder, conn = open_connection(db), open_connection(db)
    try:
        conn.execute("PRAGMA busy_timeout=50")
        holder.execute("BEGIN IMMEDIATE")  # the intake writer in the middle of a commit
        with pytest.raises(StoreError, match="record harmonized: SQLITE_BUSY"):
            record_results(conn, [result])
        assert not conn.in_transaction
        holder.execute("ROLLBACK")
        assert record_results(conn, [result]) == ids
    finally:
        holder.close()
        conn.close()
    assert outbound_keys(db) == [(ids[0], "Patient", "p")]


def test_the_worker_redoes_a_chunk_whose_commit_failed(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    ids = stage(db, [adt(f"RETRY-{n}") for n in range(5)])
    failures = iter([StoreError("record harmonized: SQLITE_BUSY: database is locked")])

    def flaky(conn: object, results: list[MessageResult]) -> list[int]:
        for error in failures:
            raise error
        return record_results(conn, results)  # type: ignore[arg-type]

    monkeypatch.setattr(worker, "record_results", flaky)
    monkeypatch.setattr(worker, "STORE_RETRY_S", 0.05)
    with caplog.at_level(logging.WARNING):
        assert run_until_done(db, payload(chunk_size=2)) == [0]
    assert "store error, retrying" in caplog.text
    assert sorted(inbound_id for inbound_id, _, _ in outbound_keys(db)) == ids


# -- whole loops ----------------------------------------------------------------------------------------


def test_two_concurrent_workers_harmonize_every_message_exactly_once(db: Path) -> None:
    messages = [adt(f"TWO-{n}", mrn=f"M{n % 7}") for n in range(120)]
    ids = stage(db, messages)
    assert run_until_done(db, payload(chunk_size=7), workers=2) == [0, 0]
    assert counts(db) == {"harmonized": 120}
    keys = outbound_keys(db)
    assert len(keys) == len(set(keys))
    expected = []
    for inbound_id, raw in zip(ids, messages, strict=True):
        expected += [(inbound_id, kind, rid) for kind, rid, _ in expected_resources(raw)[1]]
    assert sorted(keys) == sorted(expected)


def test_stop_event_ends_an_idle_worker_promptly(db: Path) -> None:
    stage(db, [])
    stop = threading.Event()
    statuses: list[int] = []
    thread = threading.Thread(target=lambda: statuses.append(run_worker(db, 0, 1, payload(), stop)))
    thread.start()
    threading.Timer(0.3, stop.set).start()
    thread.join(5)
    assert statuses == [0]


def test_rows_of_feeds_without_options_stay_staged(db: Path) -> None:
    ids = stage(db, [adt("OTHER-1")], feed="fhir-intake") + stage(db, [adt("MINE-1")])
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(db, 0, 1, payload(), stop))
    thread.start()
    try:
        wait_until(lambda: states(db)[ids[1]] == "harmonized")
    finally:
        stop.set()
        thread.join(5)
    assert states(db)[ids[0]] == "staged"


def test_a_bad_terminology_map_is_a_config_error(db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("source_system,source_code,target_system,target_code\nL,NA,NOSUCHSYSTEM,1\n", encoding="utf-8")
    settings = payload(FeedOptions("adt", terminology=(str(bad),)))
    with pytest.raises(ConfigError, match=r"feeds\.adt\.terminology: .*bad\.csv:2"):
        load_feed_runtimes(settings)
    stage(db, [adt("MAP-1")])
    with caplog.at_level(logging.ERROR):
        assert run_worker(db, 0, 1, settings, threading.Event()) == EX_CONFIG
    assert "configuration error" in caplog.text and "bad.csv:2" in caplog.text
    assert counts(db) == {"staged": 1}


def test_strict_validation_uses_the_structure_validator() -> None:
    from node.hl7v2.structure import validate_structure

    feeds = load_feed_runtimes(payload(FeedOptions("adt", validation="strict"), FeedOptions("lab")))
    assert feeds["adt"].validate is validate_structure
    assert feeds["lab"].validate is None


# -- crash safety ---------------------------------------------------------------------------------------


def _die_inside_the_transaction(db: str, results: list[MessageResult]) -> None:
    """Child process: write a chunk's statements, then SIGKILL itself before COMMIT."""
    conn = open_connection(Path(db))
    conn.execute("BEGIN IMMEDIATE")
    _apply(conn, results, [_outbound_rows(result, 1.0) for result in results], 1.0)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_inside_its_transaction_leaves_its_rows_staged_and_they_are_redone(db: Path) -> None:
    messages = [adt(f"KILL-{n}", extra="ZQQ|1") for n in range(6)]
    ids = stage(db, messages)
    results = []
    for inbound_id, raw in zip(ids, messages, strict=True):
        partition, resources = expected_resources(raw)
        results.append(MessageResult.harmonized(inbound_id, "adt", partition,
                                                [OutboundResource(*resource) for resource in resources], {"ZQQ": 1}))
    child = multiprocessing.get_context("spawn").Process(target=_die_inside_the_transaction, args=(str(db), results))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL

    assert counts(db) == {"staged": 6}
    assert outbound_keys(db) == []
    assert query(db, "SELECT * FROM counters") == []

    assert run_until_done(db, payload(chunk_size=4)) == [0]
    assert counts(db) == {"harmonized": 6}
    assert sorted(outbound_keys(db)) == sorted(
        (r.inbound_id, res.resource_type, res.resource_id) for r in results for res in r.resources)
    assert query(db, "SELECT name, label, value FROM counters") == [(UNMAPPED_SEGMENTS, "ZQQ", 6)]


# -- schema ---------------------------------------------------------------------------------------------


def test_migration_0002_upgrades_a_store_created_by_0001(db: Path) -> None:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    from node.store import migrations

    only_0001 = Migrations(migrations.MIGRATION_SET)
    only_0001(name="0001_create_inbound")(migrations._m0001_create_inbound)
    conn = open_connection(db)
    try:
        only_0001.apply(Database(conn))
        conn.execute("INSERT INTO inbound (feed, received_at, raw, size, sha256, state, updated_at) "
                     "VALUES ('adt', 1.0, x'00', 1, x'00', 'staged', 1.0)")
        applied = migrations.migrate(conn)  # 0002 and every later migration, never 0001 again
        assert migrations.migrate(conn) == []
        columns = [row[1] for row in conn.execute("PRAGMA table_info(inbound)")]
        outbound = {row[1]: (row[2], row[3], row[4]) for row in conn.execute("PRAGMA table_info(outbound)")}
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(outbound)")}
        counter_pk = [row[1] for row in conn.execute("PRAGMA table_info(counters)") if row[5]]
        kept = conn.execute("SELECT feed, state, harmonized_at FROM inbound").fetchall()
    finally:
        conn.close()
    assert applied[0] == "0002_create_outbound" and "0001_create_inbound" not in applied
    assert "harmonized_at" in columns
    assert outbound["state"] == ("TEXT", 1, "'pending'") and outbound["attempts"] == ("INTEGER", 1, "0")
    assert outbound["body"] == ("TEXT", 1, None) and outbound["next_attempt_at"] == ("REAL", 0, None)
    # 0006 dropped outbound_claim and outbound_resource (hash-keyed: a random page write per row)
    assert {"outbound_pending", "outbound_inbound", "outbound_dead"} <= indexes
    assert not {"outbound_claim", "outbound_resource"} & indexes
    assert counter_pk == ["name", "feed", "label"]
    assert kept == [("adt", "staged", None)]
