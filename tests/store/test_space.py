"""Disk-space admission (node.store.space.SpaceGuard) alone and in the GroupCommitWriter: the cap and the
low-water mark refuse whole batches before anything is written, measurements are rate-limited (never one
per message), a failed commit measures again, non-intake writes (`call`) go on, recovery is automatic.

Free space and clocks are injected here; tests/e2e/test_store_cap.py does the same with real files and a
real tmpfs."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from types import SimpleNamespace

import pytest

from node.errors import StoreFullError
from node.store.space import CAP, LOW_SPACE, SpaceGuard
from node.store.store import Store
from node.store.writer import GroupCommitWriter
from tests.store.conftest import MakeRequest

MiB = 1024 * 1024


class FakeDisk:
    """Injected statvfs, database size and clock; counts the statvfs calls."""

    def __init__(self, free: int = 100 * MiB, store: int = MiB) -> None:
        self.free = free
        self.store = store
        self.now = 1000.0
        self.statvfs_calls = 0
        self.fail = False

    def statvfs(self, _path: str) -> SimpleNamespace:
        self.statvfs_calls += 1
        if self.fail:
            raise OSError(5, "Input/output error")
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096)

    def guard(self, path: Path, **options: object) -> SpaceGuard:
        return SpaceGuard(path, statvfs=self.statvfs, measure_store=lambda _p: self.store,  # type: ignore[arg-type]
                          clock=lambda: self.now, **options)  # type: ignore[arg-type]


def test_the_cap_and_the_low_water_mark_refuse_with_a_reason(tmp_path: Path) -> None:
    disk = FakeDisk(free=100 * MiB, store=MiB)
    guard = disk.guard(tmp_path / "s.db", max_bytes=2 * MiB, min_free_bytes=10 * MiB)
    guard.admit(3)  # below both limits

    disk.store = 2 * MiB  # at the cap: refused
    guard.invalidate()
    with pytest.raises(StoreFullError, match=r"store cap reached: database \+ WAL 2\.0 MiB >= \[store\] max_bytes"):
        guard.admit(3)
    assert guard.status().reasons == (CAP,)

    disk.free = 9 * MiB  # both
    guard.invalidate()
    with pytest.raises(StoreFullError, match=r"cap reached.*; low disk space: 9\.0 MiB free < \[store\] min_free"):
        guard.admit(2)
    assert guard.status().reasons == (CAP, LOW_SPACE)
    assert guard.refused() == {CAP: 5, LOW_SPACE: 2}

    disk.store, disk.free = MiB, 10 * MiB  # exactly at the mark: admitted (refused only below it)
    guard.invalidate()
    guard.admit()
    assert not guard.status().refusing and guard.status().describe() is None


def test_no_limits_never_refuse_and_an_unreadable_file_system_does_not_refuse(tmp_path: Path) -> None:
    disk = FakeDisk(free=0, store=10**12)
    unlimited = disk.guard(tmp_path / "s.db")  # no cap, min_free_bytes 0
    assert not unlimited.enabled
    unlimited.admit()
    disk.fail = True
    guarded = disk.guard(tmp_path / "s.db", min_free_bytes=MiB)
    guarded.admit()  # statvfs failed: unknown free space is not a reason to refuse every sender
    assert guarded.status().free_bytes is None


def test_measurements_are_rate_limited_not_per_batch(tmp_path: Path) -> None:
    disk = FakeDisk()
    guard = disk.guard(tmp_path / "s.db", max_bytes=50 * MiB, min_free_bytes=MiB,
                       refresh_s=0.5, refresh_commits=64, refresh_bytes=256 * 1024)
    for _ in range(63):  # 63 small batches within 0.5 s: one measurement
        guard.admit(10)
        guard.committed(1000)
    assert disk.statvfs_calls == 1
    guard.admit()
    guard.committed(1000)  # the 64th commit
    guard.admit()
    assert disk.statvfs_calls == 2  # ... every 64 commits
    guard.committed(300 * 1024)  # ... or after 256 KiB of payload
    guard.admit()
    assert disk.statvfs_calls == 3
    disk.now += 0.5  # ... or after 0.5 s
    guard.admit()
    assert disk.statvfs_calls == 4
    guard.invalidate()  # ... or at once after a failed commit or a retention run
    guard.admit()
    assert disk.statvfs_calls == 5
    guard.status()  # a scrape within 0.5 s reuses the measurement
    assert disk.statvfs_calls == 5


def test_recovery_is_noticed_by_the_next_measurement(tmp_path: Path) -> None:
    disk = FakeDisk(free=MiB)
    guard = disk.guard(tmp_path / "s.db", min_free_bytes=8 * MiB)
    with pytest.raises(StoreFullError):
        guard.admit()
    disk.free = 20 * MiB
    with pytest.raises(StoreFullError):  # within 0.5 s of the last measurement: still refused
        guard.admit()
    disk.now += 0.5
    guard.admit()  # measured again: space is back


# -- in the writer ------------------------------------------------------------------------------------


def stage_all(writer: GroupCommitWriter, requests: list) -> list[concurrent.futures.Future]:
    return [writer.submit(request) for request in requests]


def test_the_writer_refuses_whole_batches_writes_nothing_and_keeps_running_calls(
        tmp_path: Path, make_request: MakeRequest) -> None:
    db = tmp_path / "store.db"
    disk = FakeDisk(free=100 * MiB)
    guard = disk.guard(db, min_free_bytes=8 * MiB)
    failures: list[BaseException] = []
    writer = GroupCommitWriter(db, space_guard=guard, on_commit_failure=failures.append)
    writer.start()
    try:
        assert writer.submit(make_request("BEFORE")).result(5).duplicate is False
        disk.free = 7 * MiB
        guard.invalidate()

        futures = stage_all(writer, [make_request(f"LOW-{n}") for n in range(20)])
        for future in futures:
            with pytest.raises(StoreFullError, match="low disk space"):
                future.result(5)
        # Not a commit failure: nothing reached SQLite (edge_node_store_refused_total counts these).
        assert failures == []
        assert guard.refused() == {CAP: 0, LOW_SPACE: 20}
        commits_while_refusing = writer.commits

        # Everything that is not intake goes on: e.g. a harmonize/push state change, through call().
        def push_state_change(store: Store) -> int:
            conn = store._connection()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO outbound (inbound_id, resource_type, resource_id, partition_key, body, "
                         "state, created_at, updated_at) VALUES (1, 'Patient', 'p1', 'p', '{}', 'pushed', 1, 1)")
            conn.execute("COMMIT")
            return int(conn.execute("SELECT count(*) FROM outbound").fetchone()[0])

        assert writer.call(push_state_change).result(5) == 1
        assert writer.call(lambda store: [m.control_id for m in store.messages()]).result(5) == ["BEFORE"]
        assert writer.commits == commits_while_refusing

        disk.free = 9 * MiB  # space is back: admitted again at the next measurement, no restart
        disk.now += 0.5
        assert writer.submit(make_request("AFTER")).result(5).duplicate is False
        assert writer.call(lambda store: [m.control_id for m in store.messages()]).result(5) == ["BEFORE", "AFTER"]
    finally:
        writer.stop()


def test_a_failed_commit_makes_the_guard_measure_again(tmp_path: Path, make_request: MakeRequest) -> None:
    db = tmp_path / "store.db"
    disk = FakeDisk()
    guard = disk.guard(db, min_free_bytes=MiB)
    writer = GroupCommitWriter(db, space_guard=guard)
    writer.start()
    try:
        writer.submit(make_request()).result(5)
        measured = disk.statvfs_calls
        writer.set_max_bytes(1)  # SQLite's own SQLITE_FULL at the next commit
        with pytest.raises(StoreFullError):
            writer.submit(make_request(raw=b"MSH|" + b"x" * 50_000)).result(5)
        assert disk.statvfs_calls == measured  # the batch was admitted with the last measurement
        writer.set_max_bytes(None)
        writer.submit(make_request()).result(5)
        assert disk.statvfs_calls == measured + 1  # ... and the failure made the next batch measure
    finally:
        writer.stop()
