"""Store: staging, dedup, rows kept in every state, the disk cap. Real SQLite files, no fakes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from node.errors import StoreClosedError, StoreFullError
from node.model import MessageState
from node.store.connect import open_connection
from node.store.store import Store, StoredMessage

from .conftest import MakeRequest, build_request


def test_stage_one_and_read_it_back(store: Store, make_request: MakeRequest) -> None:
    request = make_request("C1")
    [outcome] = store.stage_batch([request])
    assert not outcome.duplicate
    assert outcome.ack == request.ack
    row = store.get(outcome.message_id)
    assert isinstance(row, StoredMessage)
    assert row.id == outcome.message_id
    assert (row.feed, row.control_id, row.sending_app, row.sending_facility) == ("adt", "C1", "LAB", "WARD")
    assert (row.message_type, row.version, row.charset) == ("ADT^A01", "2.5", "ASCII")
    assert row.raw == request.raw
    assert row.size == len(request.raw)
    assert row.sha256 == request.sha256
    assert row.state is MessageState.STAGED
    assert row.error is None
    assert row.ack == request.ack
    assert row.source == request.source
    assert row.received_at == request.received_at
    assert row.updated_at > 0
    assert store.get(outcome.message_id + 1) is None
    assert store.counts() == {("adt", "staged"): 1}


def test_stored_message_repr_has_no_payload(store: Store, make_request: MakeRequest) -> None:
    [outcome] = store.stage_batch([make_request(raw=b"MSH|^~\\&|PAYLOAD-MARKER\r")])
    row = store.get(outcome.message_id)
    assert row is not None
    assert "PAYLOAD-MARKER" not in repr(row)
    assert "MSA" not in repr(row)


def test_empty_batch_is_a_no_op(store: Store) -> None:
    assert store.stage_batch([]) == []


def test_one_thousand_resends_store_one_row_and_replay_the_first_ack(
    store: Store, make_request: MakeRequest
) -> None:
    first = make_request("RESENT", ack=b"ACK-SENT-FIRST")
    [original] = store.stage_batch([first])
    outcomes = []
    for i in range(1000):  # each resend in its own transaction, with a newly built ACK
        resend = dataclasses.replace(first, ack=f"ACK-BUILT-FOR-RESEND-{i}".encode(), received_at=2e9 + i)
        outcomes.extend(store.stage_batch([resend]))
    assert all(o.duplicate for o in outcomes)
    assert {o.message_id for o in outcomes} == {original.message_id}
    assert [o.ack for o in outcomes] == [b"ACK-SENT-FIRST"] * 1000
    assert store.counts() == {("adt", "staged"): 1}


def test_duplicates_inside_one_batch(store: Store, make_request: MakeRequest) -> None:
    request = make_request("SAME", ack=b"ACK-1")
    other = make_request("OTHER")
    outcomes = store.stage_batch([request, dataclasses.replace(request, ack=b"ACK-2"), other, request])
    assert [o.duplicate for o in outcomes] == [False, True, False, True]
    assert outcomes[1].message_id == outcomes[3].message_id == outcomes[0].message_id
    assert outcomes[1].ack == outcomes[3].ack == b"ACK-1"
    assert outcomes[2].message_id != outcomes[0].message_id
    assert store.counts() == {("adt", "staged"): 2}


def test_dedup_key_parts_each_make_a_new_message(store: Store, make_request: MakeRequest) -> None:
    base = make_request("K")
    changed_payload = base.raw + b"PID|1\r"
    variants = [
        base,
        dataclasses.replace(base, feed="lab"),
        dataclasses.replace(base, sending_app="OTHERAPP"),
        dataclasses.replace(base, sending_facility="OTHERFAC"),
        dataclasses.replace(base, control_id="K2"),
        dataclasses.replace(base, raw=changed_payload, sha256=hashlib.sha256(changed_payload).digest()),
    ]
    outcomes = store.stage_batch(variants)
    assert not any(o.duplicate for o in outcomes)
    assert len({o.message_id for o in outcomes}) == len(variants)


def test_failed_rows_are_kept_with_their_reason(store: Store, make_request: MakeRequest) -> None:
    failed = make_request("", state=MessageState.FAILED, error="MSH-9 missing", ack=b"AR")
    ok = make_request("OK1")
    skipped = make_request("SK1", feed="lab", state=MessageState.SKIPPED)
    outcomes = store.stage_batch([failed, ok, skipped])
    row = store.get(outcomes[0].message_id)
    assert row is not None
    assert row.state is MessageState.FAILED
    assert row.error == "MSH-9 missing"
    assert row.raw == failed.raw
    assert store.counts() == {("adt", "failed"): 1, ("adt", "staged"): 1, ("lab", "skipped"): 1}
    assert [m.id for m in store.messages(state=MessageState.FAILED)] == [outcomes[0].message_id]


def test_messages_filters_and_pages_in_id_order(store: Store, make_request: MakeRequest) -> None:
    outcomes = store.stage_batch([make_request(feed="adt" if i % 2 else "lab") for i in range(10)])
    ids = [o.message_id for o in outcomes]
    assert [m.id for m in store.messages()] == ids
    assert [m.id for m in store.messages("adt")] == ids[1::2]
    assert [m.id for m in store.messages("lab", limit=2)] == ids[0:4:2]
    assert [m.id for m in store.messages(after_id=ids[6])] == ids[7:]
    assert store.messages("nope") == []


def test_closed_store_raises_store_closed_error(db_path: Path, make_request: MakeRequest) -> None:
    store = Store.open(db_path)
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        store.stage_batch([make_request()])
    with pytest.raises(StoreClosedError):
        store.counts()


def test_integrity_check_and_database_bytes(store: Store, make_request: MakeRequest, db_path: Path) -> None:
    store.stage_batch([make_request(raw=b"X" * 10_000) for _ in range(20)])
    assert store.integrity_check() == "ok"
    wal = Path(f"{db_path}-wal")
    assert wal.exists()
    assert store.database_bytes() == db_path.stat().st_size + wal.stat().st_size
    assert store.database_bytes() > 200_000


def _page_bytes(db_path: Path) -> tuple[int, int]:
    conn = open_connection(db_path, readonly=True)
    try:
        return conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()


def test_disk_cap_fails_the_whole_batch_then_works_when_raised(
    store: Store, make_request: MakeRequest, db_path: Path
) -> None:
    pages, page_size = _page_bytes(db_path)
    store.set_max_bytes((pages + 4) * page_size)
    [small] = store.stage_batch([make_request("SMALL")])  # fits under the cap
    marker = b"SECRET-PAYLOAD-"
    big_batch = [make_request(f"BIG{i}", raw=marker + bytes(3000)) for i in range(30)]
    with pytest.raises(StoreFullError) as caught:
        store.stage_batch(big_batch)
    assert "SECRET" not in str(caught.value)
    assert store.counts() == {("adt", "staged"): 1}  # nothing of the failed batch, not even its first rows
    assert [m.id for m in store.messages()] == [small.message_id]

    store.set_max_bytes(None)
    outcomes = store.stage_batch(big_batch)
    assert not any(o.duplicate for o in outcomes)
    assert store.counts() == {("adt", "staged"): 31}
    assert store.integrity_check() == "ok"


def test_cap_below_current_size_allows_no_growth(store: Store, make_request: MakeRequest) -> None:
    store.stage_batch([make_request()])
    store.set_max_bytes(0)
    with pytest.raises(StoreFullError):
        store.stage_batch([build_request(raw=bytes(50_000))])
    store.set_max_bytes(10 * 1024 * 1024)
    store.stage_batch([build_request(raw=bytes(50_000))])
    assert sum(store.counts().values()) == 2
