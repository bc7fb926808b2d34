"""The pure parts of the connector: settle bookkeeping, free names in archive/error, file plans."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from connectors.filedrop.moves import free_name, move_into
from connectors.filedrop.plan import plan_file
from connectors.filedrop.settle import SettleTracker
from node.settings import FileDropFeed
from tests.filedrop.conftest import hl7_message


def _stat(size: int, mtime_ns: int = 1, inode: int = 7) -> os.stat_result:
    # (mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime, *_float_times, atime_ns, mtime_ns, ctime_ns)
    return os.stat_result((0o100644, inode, 1, 1, 0, 0, size, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime_ns, 0))


def test_a_file_is_ready_once_unchanged_for_settle_s() -> None:
    tracker = SettleTracker(1.0)
    assert tracker.observe({"a": _stat(10)}, 100.0) == ([], 101.0)
    assert tracker.observe({"a": _stat(10)}, 100.5) == ([], 101.0)
    assert tracker.observe({"a": _stat(20)}, 100.9) == ([], 101.9)  # grew: wait again
    assert tracker.observe({"a": _stat(20, mtime_ns=2)}, 101.0) == ([], 102.0)  # touched: wait again
    assert tracker.observe({"a": _stat(20, mtime_ns=2)}, 102.0) == (["a"], None)


def test_settle_0_is_ready_at_once_but_empty_files_wait() -> None:
    tracker = SettleTracker(0.0, empty_settle_s=5.0)
    assert tracker.observe({"a": _stat(10), "b": _stat(0)}, 100.0) == (["a"], 105.0)
    assert tracker.observe({"a": _stat(10), "b": _stat(0)}, 105.0) == (["a", "b"], None)


def test_ready_files_come_oldest_first_and_vanished_ones_are_forgotten() -> None:
    tracker = SettleTracker(0.0)
    listing = {"new": _stat(1, mtime_ns=3), "old": _stat(1, mtime_ns=1), "mid": _stat(1, mtime_ns=2)}
    assert tracker.observe(listing, 0.0)[0] == ["old", "mid", "new"]
    tracker.observe({}, 1.0)
    assert len(tracker) == 0


def test_deferred_files_wait_for_their_retry_time() -> None:
    tracker = SettleTracker(0.0)
    tracker.observe({"a": _stat(1)}, 0.0)
    tracker.defer("a", 5.0)
    assert tracker.observe({"a": _stat(1)}, 1.0) == ([], 5.0)
    assert tracker.observe({"a": _stat(1)}, 5.0) == (["a"], None)


def test_free_name_adds_a_timestamp_before_the_suffix(tmp_path: Path) -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert free_name(tmp_path, "x.hl7", now) == tmp_path / "x.hl7"
    (tmp_path / "x.hl7").touch()
    assert free_name(tmp_path, "x.hl7", now) == tmp_path / "x.20250102T030405.123456Z.hl7"
    (tmp_path / "x.20250102T030405.123456Z.hl7").touch()
    assert free_name(tmp_path, "x.hl7", now) == tmp_path / "x.20250102T030405.123456Z-1.hl7"
    (tmp_path / "noext").touch()
    assert free_name(tmp_path, "noext", now) == tmp_path / "noext.20250102T030405.123456Z"


def test_move_into_writes_the_reason_beside_the_moved_file(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "err").mkdir()
    source = tmp_path / "in" / "x.hl7"
    source.write_bytes(b"data")
    target = move_into(source, tmp_path / "err", "line 1: why\n")
    assert target == tmp_path / "err" / "x.hl7" and target.read_bytes() == b"data"
    assert (tmp_path / "err" / "x.hl7.reason").read_text() == "line 1: why\n"
    assert not source.exists()
    assert sorted(p.name for p in (tmp_path / "err").iterdir()) == ["x.hl7", "x.hl7.reason"]


def test_plan_names_lines_and_message_numbers(tmp_path: Path) -> None:
    feed = FileDropFeed(type="filedrop", name="f", path=tmp_path, archive=tmp_path / "a", error=tmp_path / "e")
    data = b"junk\n" + hl7_message("A1", sep="\n") + b"MSH|^~\\&|X|Y|||20240101||ADT^A01||P|2.5\n"
    plan = plan_file(feed, "in.hl7", data, 1.0)
    assert plan.messages == 2
    assert [request.source for request in plan.requests] == ["in.hl7:2", "in.hl7:5", "in.hl7:1"]
    assert plan.reason_text() == ("line 1: 1 line(s) outside any message (no MSH segment before them)\n"
                                  "line 5 (message #2): MSH-10 (message control id) is empty\n")
    assert plan_file(feed, "ok.hl7", hl7_message("B1"), 1.0).problems == []
