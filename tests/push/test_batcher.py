"""node.push.batcher: bounds, whole messages, per-partition order, one resource once per Bundle, exact
Bundle sizes, and the halves of bisection. Pure functions: plain rows in, batches out."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.push.batcher import ROWS_PER_ENTRY, Batch, assemble, bundle_bytes, entry_bytes, plan, split


@dataclass(frozen=True)
class R:
    id: int
    inbound_id: int
    resource_type: str
    resource_id: str
    partition_key: str
    body: str = '{"resourceType":"X"}'
    created_at: float = 0.0

    @property
    def size(self) -> int:
        return len(self.body.encode("utf-8"))

    @property
    def fingerprint(self) -> str:
        return self.body


class Rows:
    """Builds rows message by message: ids and inbound ids ascend like the store's."""

    def __init__(self) -> None:
        self.rows: list[R] = []
        self._inbound = 0

    def msg(self, partition: str, *keys: str, body: str | None = None) -> int:
        """A message of `partition` with one resource per "Type/id" key."""
        self._inbound += 1
        for key in keys:
            kind, rid = key.split("/")
            content = body if body is not None else json.dumps({"resourceType": kind, "id": rid, "m": self._inbound})
            self.rows.append(R(len(self.rows) + 1, self._inbound, kind, rid, partition, content))
        return self._inbound


def keys(batch: Batch) -> list[str]:
    return [f"{e.row.resource_type}/{e.row.resource_id}@{e.row.inbound_id}" for e in batch.entries]


def bodies(rows: list[R]) -> dict[int, str]:
    return {row.id: row.body for row in rows}


# -- bounds and whole messages ----------------------------------------------------------------------------


def test_batches_are_closed_at_max_entries_and_hold_whole_messages() -> None:
    rows = Rows()
    for n in range(5):
        rows.msg(f"p{n}", f"Patient/p{n}", f"Encounter/e{n}")
    batches = assemble(rows.rows, max_entries=5, max_bytes=1 << 20, max_batches=10)
    assert [len(b.entries) for b in batches] == [4, 4, 2]  # a third message would make 6 entries
    assert [b.full for b in batches] == [True, True, False]  # only the last one may be partial
    for batch in batches:
        assert all(len({r.inbound_id for r in batch.rows if r.inbound_id == m}) == 1 for m in batch.messages)
        for message in batch.messages:  # every row of each message is in the same batch
            assert [r for r in rows.rows if r.inbound_id == message] == [
                r for r in batch.rows if r.inbound_id == message]


def test_batches_are_closed_at_max_bytes() -> None:
    rows = Rows()
    for n in range(6):
        rows.msg(f"p{n}", f"Patient/p{n}", body="x" * 100)
    bound = plan(rows.rows[:1]).bytes + 2 * (entry_bytes(rows.rows[0]) + 1)  # exactly three entries
    batches = assemble(rows.rows, max_entries=100, max_bytes=bound, max_batches=10)
    assert [len(b.entries) for b in batches] == [3, 3]
    assert [b.bytes for b in batches] == [bound, bound] and all(b.full for b in batches)


def test_a_message_larger_than_the_bounds_travels_alone() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1")
    rows.msg("p2", *[f"Observation/o{n}" for n in range(12)])
    rows.msg("p3", "Patient/p3")
    batches = assemble(rows.rows, max_entries=5, max_bytes=1 << 20, max_batches=10)
    assert [len(b.entries) for b in batches] == [1, 12, 1]
    assert batches[1].full and batches[1].messages == (2,)


def test_rows_per_batch_are_bounded_even_when_versions_collapse() -> None:
    rows = Rows()
    for _ in range(3 * ROWS_PER_ENTRY):
        rows.msg("p1", "Patient/p1")
    batches = assemble(rows.rows, max_entries=2, max_bytes=1 << 20, max_batches=10)
    assert len(batches[0].rows) == 2 * ROWS_PER_ENTRY and len(batches[0].entries) == 1
    assert len(batches) == 1  # the rest of p1 waits: its partition is in this round's first batch


def test_max_batches_bounds_the_round() -> None:
    rows = Rows()
    for n in range(10):
        rows.msg(f"p{n}", f"Patient/p{n}")
    batches = assemble(rows.rows, max_entries=2, max_bytes=1 << 20, max_batches=2)
    assert [len(b.entries) for b in batches] == [2, 2]
    assert [m for b in batches for m in b.messages] == [1, 2, 3, 4]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        assemble([], max_entries=0, max_bytes=1, max_batches=1)
    assert assemble([], max_entries=1, max_bytes=1, max_batches=1) == []


# -- order ------------------------------------------------------------------------------------------------


def test_one_partition_goes_into_one_batch_per_round_and_nothing_newer_overtakes() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", "Encounter/e1")          # 1
    rows.msg("p2", "Patient/p2", "Encounter/e2")          # 2
    rows.msg("p1", "Observation/o1", "Observation/o2")    # 3: does not fit the first batch any more
    rows.msg("p3", "Patient/p3")                          # 4
    rows.msg("p1", "Observation/o3")                      # 5: p1 is blocked this round
    batches = assemble(rows.rows, max_entries=4, max_bytes=1 << 20, max_batches=5)
    assert [b.messages for b in batches] == [(1, 2), (4,)]
    assert all("p1" not in b.partitions for b in batches[1:])


def test_rows_come_out_in_message_order_whatever_order_they_came_in() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", "Encounter/e1")
    rows.msg("p1", "Observation/o1")
    shuffled = list(reversed(rows.rows))
    [batch] = assemble(shuffled, max_entries=10, max_bytes=1 << 20)
    assert [r.id for r in batch.rows] == [1, 2, 3]
    assert keys(batch) == ["Patient/p1@1", "Encounter/e1@1", "Observation/o1@2"]


def test_the_oldest_row_decides_when_a_partial_batch_is_due() -> None:
    early = R(1, 1, "Patient", "p1", "p1", created_at=100.0)
    late = R(2, 2, "Patient", "p2", "p2", created_at=105.0)
    [batch] = assemble([late, early], max_entries=10, max_bytes=1 << 20)
    assert not batch.full and batch.oldest_created_at == 100.0


# -- the same resource twice ------------------------------------------------------------------------------


def test_versions_of_one_resource_collapse_to_the_newest_at_the_first_versions_place() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", "Encounter/e1")   # 1
    rows.msg("p1", "Patient/p1", "Encounter/e2")   # 2
    rows.msg("p1", "Patient/p1")                   # 3
    [batch] = assemble(rows.rows, max_entries=10, max_bytes=1 << 20)
    assert keys(batch) == ["Patient/p1@3", "Encounter/e1@1", "Encounter/e2@2"]
    assert [(old.id, new.id) for old, new in batch.superseded] == [(1, 5), (3, 5)]
    assert len(batch.rows) == 5 and batch.counts == {"Encounter": 2, "Patient": 1}
    sent = json.loads(bundle_bytes(batch, bodies(rows.rows)))
    urls = [entry["request"]["url"] for entry in sent["entry"]]
    assert len(urls) == len(set(urls)) == 3
    assert sent["entry"][0]["resource"]["m"] == 3  # the newest version is the one sent


def test_a_resource_shared_by_two_patients_is_sent_once_as_the_newest_version() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", "Organization/org")
    rows.msg("p2", "Patient/p2", "Organization/org")
    [batch] = assemble(rows.rows, max_entries=10, max_bytes=1 << 20)
    assert keys(batch) == ["Patient/p1@1", "Organization/org@2", "Patient/p2@2"]


def test_collapsed_versions_count_once_against_the_entry_bound() -> None:
    rows = Rows()
    for _ in range(4):
        rows.msg("p1", "Patient/p1", "Encounter/e1")
    [batch] = assemble(rows.rows, max_entries=2, max_bytes=1 << 20)
    assert len(batch.entries) == 2 and len(batch.rows) == 8


# -- one resource in several partitions ------------------------------------------------------------------


def test_a_resource_shared_with_equal_contents_does_not_serialise_the_batches() -> None:
    rows = Rows()
    station = '{"resourceType":"Location","id":"ward"}'
    rows.msg("p1", "Patient/p1")
    rows.msg("p1", "Location/ward", body=station)
    rows.msg("p2", "Patient/p2")
    rows.msg("p2", "Location/ward", body=station)
    batches = assemble(rows.rows, max_entries=2, max_bytes=1 << 20, max_batches=2)
    assert [b.messages for b in batches] == [(1, 2), (3, 4)]  # both go at once: central ends the same


def test_a_later_version_with_other_contents_never_goes_in_a_concurrent_batch() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", "Encounter/e1")       # 1: the encounter under its old patient
    rows.msg("p2", "Patient/p2")                       # 2
    rows.msg("p2", "Encounter/e1", "Observation/o1")   # 3: merged: the same encounter, newer contents
    rows.msg("p3", "Patient/p3")                       # 4
    batches = assemble(rows.rows, max_entries=2, max_bytes=1 << 20, max_batches=3)
    assert [b.messages for b in batches] == [(1,), (2, 4)]  # 3 waits for batch 1, and p2 after it
    [together] = assemble(rows.rows, max_entries=10, max_bytes=1 << 20)
    assert keys(together)[:2] == ["Patient/p1@1", "Encounter/e1@3"]  # in one batch: the newest is sent


def test_rows_in_flight_hold_back_later_versions_with_other_contents_only() -> None:
    rows = Rows()
    rows.msg("p1", "Encounter/e1", body='{"v":1}')  # in flight (p1 busy): a blocker
    rows.msg("p2", "Encounter/e1", body='{"v":2}')
    rows.msg("p3", "Encounter/e2", body='{"v":1}')
    rows.msg("p4", "Encounter/e2", body='{"v":1}')
    blockers = [rows.rows[0], rows.rows[2]]
    candidates = [rows.rows[1], rows.rows[3]]
    [batch] = assemble(candidates, max_entries=10, max_bytes=1 << 20, blockers=blockers)
    assert batch.messages == (4,)  # e1 v2 waits for v1; e2 with equal contents may go
    early = R(9, 0, "Encounter", "e1", "p9", body='{"v":0}')  # a blocker AFTER the candidate is no reason
    [batch] = assemble([early], max_entries=10, max_bytes=1 << 20, blockers=[rows.rows[1]])
    assert batch.messages == (0,)


# -- bytes ------------------------------------------------------------------------------------------------


def test_batch_bytes_is_the_exact_length_of_the_bundle_with_non_ascii_bodies() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", body='{"resourceType":"Patient","id":"p1","name":[{"family":"Müller-Lüdenscheidt"}]}')
    rows.msg("p2", "Patient/p2")
    rows.msg("p1", "Patient/p1", body='{"resourceType":"Patient","id":"p1","name":[{"family":"Ørsted ✓"}]}')
    [batch] = assemble(rows.rows, max_entries=10, max_bytes=1 << 20)
    payload = bundle_bytes(batch, bodies(rows.rows))
    assert len(payload) == batch.bytes
    assert json.loads(payload)["entry"][0]["resource"]["name"][0]["family"] == "Ørsted ✓"
    assert plan([]).bytes == len(bundle_bytes(plan([]), {}))


def test_a_missing_body_is_an_error_not_an_empty_entry() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1")
    with pytest.raises(KeyError):
        bundle_bytes(plan(rows.rows), {})


# -- bisection --------------------------------------------------------------------------------------------


def test_split_halves_by_message_then_by_entries_then_stops() -> None:
    rows = Rows()
    rows.msg("p1", "Patient/p1", "Encounter/e1")
    rows.msg("p2", "Patient/p2")
    rows.msg("p1", "Patient/p1", "Observation/o1")
    halves = split(plan(rows.rows))
    assert halves is not None
    assert [sorted({r.inbound_id for r in half}) for half in halves] == [[1], [2, 3]]
    single = split(plan([r for r in rows.rows if r.inbound_id == 1]))
    assert single is not None and [[f"{r.resource_type}/{r.resource_id}" for r in h] for h in single] == [
        ["Patient/p1"], ["Encounter/e1"]]
    assert split(plan(rows.rows[:1])) is None


def test_split_of_one_message_keeps_each_entrys_versions_together() -> None:
    rows = [R(1, 1, "Patient", "p1", "p1"), R(2, 1, "Encounter", "e1", "p1"), R(3, 1, "Patient", "p1", "p1")]
    halves = split(plan(rows))
    assert halves is not None and [[r.id for r in half] for half in halves] == [[1, 3], [2]]


# -- properties -------------------------------------------------------------------------------------------


@st.composite
def row_sets(draw: st.DrawFn) -> list[R]:
    rows: list[R] = []
    for inbound in range(1, draw(st.integers(1, 25)) + 1):
        partition = f"p{draw(st.integers(0, 4))}"
        resources = draw(st.lists(st.sampled_from([f"Patient/{partition}", f"Encounter/{partition}-e1",
                                                   "Organization/shared", f"Observation/o{inbound}",
                                                   f"Observation/o{inbound}-b"]), min_size=1, max_size=4,
                                  unique=True))
        for key in resources:
            kind, rid = key.split("/")
            body = "x" * draw(st.integers(1, 60))
            rows.append(R(len(rows) + 1, inbound, kind, rid, partition, json.dumps({"v": body})))
    return rows


@given(rows=row_sets(), max_entries=st.integers(1, 8), max_bytes=st.integers(60, 900),
       max_batches=st.integers(1, 4), busy=st.sets(st.sampled_from([f"p{n}" for n in range(5)]), max_size=2))
def test_assembled_batches_keep_every_rule(rows: list[R], max_entries: int, max_bytes: int, max_batches: int,
                                           busy: set[str]) -> None:
    blockers = [row for row in rows if row.partition_key in busy]
    candidates = [row for row in rows if row.partition_key not in busy]
    batches = assemble(candidates, max_entries=max_entries, max_bytes=max_bytes, max_batches=max_batches,
                       blockers=blockers)
    rows = candidates
    assert len(batches) <= max_batches
    taken = [row for batch in batches for row in batch.rows]
    assert len(taken) == len({row.id for row in taken})
    by_message: dict[int, list[int]] = {}
    for row in rows:
        by_message.setdefault(row.inbound_id, []).append(row.id)
    owner: dict[str, int] = {}
    for index, batch in enumerate(batches):
        for message in batch.messages:  # whole messages
            assert sorted(r.id for r in batch.rows if r.inbound_id == message) == by_message[message]
        for partition in batch.partitions:  # one batch per partition per round
            assert owner.setdefault(partition, index) == index
        entry_keys = [entry.key for entry in batch.entries]
        assert len(entry_keys) == len(set(entry_keys))  # no resource twice
        for entry in batch.entries:  # the newest version is sent
            assert all((old.inbound_id, old.id) < (entry.row.inbound_id, entry.row.id) for old in entry.superseded)
        if len(batch.messages) > 1:  # bounds hold unless a single message is larger
            assert len(batch.entries) <= max_entries and batch.bytes <= max_bytes
            assert len(batch.rows) <= max_entries * ROWS_PER_ENTRY
        assert batch.bytes == len(bundle_bytes(batch, bodies(rows)))
        assert all(b.full for b in batches[:-1])
    batch_of = {row.id: index for index, batch in enumerate(batches) for row in batch.rows}
    for row in taken:  # per resource: an earlier version with other contents is in the same batch
        for other in candidates + blockers:
            if (other.resource_type, other.resource_id) == (row.resource_type, row.resource_id) and \
                    (other.inbound_id, other.id) < (row.inbound_id, row.id) and other.fingerprint != row.fingerprint:
                assert batch_of.get(other.id) == batch_of[row.id]
    for partition in {row.partition_key for row in rows}:  # per partition: a prefix, in order
        ordered = [row.id for row in sorted(rows, key=lambda r: (r.inbound_id, r.id)) if row.partition_key == partition]
        sent = [row.id for row in taken if row.partition_key == partition]
        assert sent == ordered[:len(sent)]
