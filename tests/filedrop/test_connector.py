"""The file-drop connector end to end: real directories, real store, real watchdog."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import pytest

from node.errors import ConnectorError
from node.model import MessageState
from tests.conftest import FIXTURES, wait_until
from tests.filedrop.conftest import MakeHarness, drop_copy, hl7_file, hl7_message, write_atomically

HL7 = FIXTURES / "hl7"


async def test_file_present_at_start_up_is_staged_and_archived(make_harness: MakeHarness) -> None:
    node = await make_harness(start=False)
    (node.inbox / "early.hl7").write_bytes(hl7_file(3))
    await node.start()

    wait_until(lambda: node.archived("early.hl7"))
    rows = node.rows()
    assert [row.control_id for row in rows] == ["M000001", "M000002", "M000003"]
    assert all(row.state is MessageState.STAGED for row in rows)
    assert [row.source for row in rows] == ["early.hl7:1", "early.hl7:5", "early.hl7:9"]
    assert node.received() == 3
    assert node.duplicates() == 0
    assert not (node.archive / "early.hl7.reason").exists()


async def test_file_renamed_into_place_is_picked_up_by_the_watcher(make_harness: MakeHarness) -> None:
    # A poll interval far beyond the test's timeout: only the file-system event can trigger the scan.
    node = await make_harness(poll_interval_s=60)
    wait_until(lambda: node.connector.scans >= 1)
    tmp = node.inbox / "late.hl7.tmp"
    tmp.write_bytes(hl7_file(2))
    scans = node.connector.scans
    wait_until(lambda: node.connector.scans > scans)  # the .tmp's events were seen ...
    assert tmp.exists() and node.count() == 0  # ... and the .tmp ignored

    tmp.rename(node.inbox / "late.hl7")
    wait_until(lambda: node.archived("late.hl7"), timeout=5)
    assert node.count() == 2


async def test_file_written_slowly_is_read_only_once_settled(make_harness: MakeHarness) -> None:
    node = await make_harness(settle_s=1.0, poll_interval_s=0.05)
    whole = hl7_file(4)
    half = len(whole) // 2 + 7  # inside the third message
    path = node.inbox / "slow.hl7"
    with open(path, "wb") as handle:
        handle.write(whole[:half])
        handle.flush()
        scans = node.connector.scans
        wait_until(lambda: node.connector.scans >= scans + 3)  # looked at it several times, < settle_s
        assert path.exists()
        assert node.count() == 0
        handle.write(whole[half:])

    wait_until(lambda: node.archived("slow.hl7"))
    rows = node.rows()
    assert [row.raw for row in rows] == [hl7_message(f"M{i:06d}") for i in range(1, 5)]


@pytest.mark.parametrize("count", [1, 1000])
async def test_one_and_many_messages_share_commits(make_harness: MakeHarness, count: int) -> None:
    node = await make_harness()
    commits_before = node.writer.commits
    write_atomically(node.inbox, "many.hl7", hl7_file(count))

    wait_until(lambda: node.archived("many.hl7"))
    assert node.count() == count
    assert node.received() == count
    assert node.writer.commits - commits_before <= max(1, count // 5)  # group commit batched them


async def test_fhs_bhs_batch_envelopes(make_harness: MakeHarness) -> None:
    node = await make_harness()
    drop_copy(HL7 / "filedrop_batch_fhs_bhs.hl7", node.inbox)

    wait_until(lambda: node.archived("filedrop_batch_fhs_bhs.hl7"))
    rows = node.rows()
    assert [row.control_id for row in rows] == ["FDB1", "FDB2", "FDB3"]
    assert all(row.raw.startswith(b"MSH|") and b"\n" not in row.raw for row in rows)
    assert [row.source for row in rows] == [f"filedrop_batch_fhs_bhs.hl7:{n}" for n in (3, 6, 9)]


async def test_batch_count_mismatch_sends_the_file_to_error(make_harness: MakeHarness) -> None:
    node = await make_harness()
    data = b"BHS|^~\\&|FDAPP\r" + hl7_file(2) + b"BTS|3\r"
    write_atomically(node.inbox, "short.hl7", data)

    wait_until(lambda: node.errored("short.hl7"))
    assert node.count() == 2  # both messages are staged all the same
    reason = (node.error / "short.hl7.reason").read_text()
    assert reason == "line 9: BTS-1 declares 3 message(s), the batch holds 2\n"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"], ids=["cr", "lf", "crlf"])
async def test_segment_line_ends(make_harness: MakeHarness, sep: str) -> None:
    node = await make_harness()
    write_atomically(node.inbox, "ends.hl7", hl7_file(3, sep=sep))

    wait_until(lambda: node.archived("ends.hl7"))
    assert [row.raw for row in node.rows()] == [hl7_message(f"M{i:06d}") for i in (1, 2, 3)]


async def test_junk_lines_are_kept_as_failed_rows_and_the_file_goes_to_error(
        make_harness: MakeHarness) -> None:
    node = await make_harness()
    name = "filedrop_junk_lines.hl7"
    drop_copy(HL7 / name, node.inbox)

    wait_until(lambda: node.errored(name))
    reason = (node.error / f"{name}.reason").read_text()
    assert reason.splitlines() == [
        "line 1: 2 line(s) outside any message (no MSH segment before them)",
        "line 9 (message #3): MSH-10 (message control id) is empty",
    ]
    assert "this is not hl7" not in reason and "Doe" not in reason
    rows = {row.source: row for row in node.rows()}
    assert set(rows) == {f"{name}:1", f"{name}:3", f"{name}:6", f"{name}:9"}
    assert rows[f"{name}:3"].state is MessageState.STAGED
    assert rows[f"{name}:6"].state is MessageState.STAGED
    junk = rows[f"{name}:1"]
    assert junk.state is MessageState.FAILED
    assert junk.raw == b"this is not hl7\rneither is this\r"
    assert junk.error is not None and "outside any message" in junk.error
    bad = rows[f"{name}:9"]
    assert bad.state is MessageState.FAILED and bad.error == "MSH-10 (message control id) is empty"


async def test_a_file_without_any_msh_goes_to_error(make_harness: MakeHarness) -> None:
    node = await make_harness()
    write_atomically(node.inbox, "nothing.hl7", b"\x00\xff binary garbage\r\nmore\r\n")
    write_atomically(node.inbox, "empty.hl7", b"")

    wait_until(lambda: node.errored("nothing.hl7", "empty.hl7"))
    rows = node.rows()
    assert len(rows) == 1 and rows[0].state is MessageState.FAILED
    assert rows[0].raw == b"\x00\xff binary garbage\rmore\r"
    assert (node.error / "empty.hl7.reason").read_text() == (
        "no HL7 message in the file (it holds no MSH segment)\n")
    assert (node.error / "nothing.hl7.reason").read_text().startswith("line 1: 2 line(s) outside")


async def test_the_same_file_dropped_twice_adds_no_rows(make_harness: MakeHarness) -> None:
    node = await make_harness()
    data = hl7_file(3)
    write_atomically(node.inbox, "twice.hl7", data)
    wait_until(lambda: node.archived("twice.hl7"))

    write_atomically(node.inbox, "twice.hl7", data)
    wait_until(lambda: len(node.names(node.archive)) == 2 and not (node.inbox / "twice.hl7").exists())
    assert node.count() == 3
    assert node.received() == 6
    assert node.duplicates() == 3
    first, second = node.names(node.archive)
    assert "twice.hl7" in (first, second)
    other = second if first == "twice.hl7" else first
    assert other.startswith("twice.") and other.endswith(".hl7")  # a timestamped name, nothing overwritten
    assert (node.archive / other).read_bytes() == data


@pytest.mark.parametrize(("fixture", "charset"), [
    ("filedrop_latin1_8859-1.hl7", "iso8859-1"),
    ("filedrop_utf8.hl7", "utf-8"),
])
async def test_umlauts_decode_with_the_stored_charset(make_harness: MakeHarness, fixture: str,
                                                      charset: str) -> None:
    node = await make_harness()
    drop_copy(HL7 / fixture, node.inbox)

    wait_until(lambda: node.archived(fixture))
    (row,) = node.rows()
    assert row.charset == charset
    assert "Müller^Jürgen" in row.raw.decode(row.charset)


async def test_a_file_over_the_size_limit_goes_to_error_unread(make_harness: MakeHarness) -> None:
    node = await make_harness(max_file_bytes=1000)
    write_atomically(node.inbox, "huge.hl7", hl7_file(20))

    wait_until(lambda: node.errored("huge.hl7"))
    assert node.count() == 0
    assert "more than the limit of 1000" in (node.error / "huge.hl7.reason").read_text()


async def test_ignored_names(make_harness: MakeHarness) -> None:
    node = await make_harness(pattern="*")
    (node.inbox / ".hidden").write_bytes(hl7_message("H1"))
    (node.inbox / "old.hl7.reason").write_text("line 1: whatever\n")
    (node.inbox / "subdir").mkdir()
    (node.inbox / "target.hl7").write_bytes(hl7_message("L1"))
    (node.inbox / "link.hl7").symlink_to(node.inbox / "target.hl7")
    (node.inbox / "any-name").write_bytes(hl7_message("A1"))

    wait_until(lambda: node.archived("any-name", "target.hl7"))
    assert node.names(node.inbox) == [".hidden", "link.hl7", "old.hl7.reason", "subdir"]
    assert sorted(row.control_id for row in node.rows()) == ["A1", "L1"]


async def test_store_full_leaves_the_file_and_retries_it(make_harness: MakeHarness,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    node = await make_harness(max_bytes=1, poll_interval_s=0.1)  # no new page fits
    big = [hl7_message(f"F{i:03d}", name="Doe^" + "J" * 5000) for i in range(1, 101)]  # > 1 page each
    write_atomically(node.inbox, "full.hl7", b"".join(big))

    wait_until(lambda: "full.hl7: the store cannot take messages (StoreFullError" in caplog.text)
    scans = node.connector.scans
    wait_until(lambda: node.connector.scans >= scans + 3)
    assert (node.inbox / "full.hl7").exists() and node.count() == 0
    assert not node.names(node.archive) and not node.names(node.error)

    node.writer.set_max_bytes(None)
    wait_until(lambda: node.archived("full.hl7"))
    assert node.count() == 100
    warnings = [r for r in caplog.records if r.name.startswith("connectors") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # the same reason is warned about once, not on every retry
    assert "Doe" not in caplog.text and "F001" not in caplog.text  # no message contents in logs


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
async def test_an_unreadable_file_is_retried(make_harness: MakeHarness) -> None:
    node = await make_harness(poll_interval_s=0.1)
    path = write_atomically(node.inbox, "locked.hl7", hl7_file(2))
    path.chmod(0)
    scans = node.connector.scans
    wait_until(lambda: node.connector.scans >= scans + 3)
    assert path.exists() and node.count() == 0

    path.chmod(0o644)
    wait_until(lambda: node.archived("locked.hl7"))
    assert node.count() == 2


async def test_stop_is_idempotent_and_joins(make_harness: MakeHarness) -> None:
    node = await make_harness()
    assert node.connector.describe() == f"inbox=dir:{node.inbox}"
    wait_until(lambda: node.connector.scans >= 1)
    await node.connector.stop()
    await node.connector.stop()
    alive = {thread.name for thread in threading.enumerate()}
    assert "filedrop-inbox" not in alive
    scans = node.connector.scans
    write_atomically(node.inbox, "after.hl7", hl7_file(1))
    await asyncio.sleep(0.3)  # the one fixed wait: proving that nothing happens needs some time
    assert node.connector.scans == scans
    assert (node.inbox / "after.hl7").exists()


async def test_archive_must_not_be_the_watched_directory(make_harness: MakeHarness, tmp_path: Path) -> None:
    node = await make_harness(start=False, archive=tmp_path / "inbox")
    with pytest.raises(ConnectorError, match="archive must not be the watched directory"):
        await node.start()


async def test_stop_mid_file_leaves_it_and_the_next_start_completes_it(make_harness: MakeHarness) -> None:
    node = await make_harness(max_batch=1)  # one commit per message: slow enough to stop in the middle
    write_atomically(node.inbox, "big.hl7", hl7_file(5000))
    wait_until(lambda: node.count() >= 200)
    await node.connector.stop()
    node.writer.stop()
    committed = node.count()
    assert 0 < committed < 5000
    assert (node.inbox / "big.hl7").exists()

    again = await make_harness()
    wait_until(lambda: again.archived("big.hl7"))
    assert again.count() == 5000
    assert again.duplicates() == committed


async def test_an_empty_file_is_given_time_even_with_settle_0(make_harness: MakeHarness) -> None:
    node = await make_harness(settle_s=0, poll_interval_s=3)
    wait_until(lambda: node.connector.scans >= 1)
    path = node.inbox / "created.hl7"
    with open(path, "wb") as handle:  # a writer that creates the file, then writes it in place
        scans = node.connector.scans
        wait_until(lambda: node.connector.scans > scans)  # the creation was seen ...
        assert path.exists() and not node.names(node.error)  # ... and the empty file left alone
        handle.write(hl7_file(2))

    wait_until(lambda: node.archived("created.hl7"))
    assert node.count() == 2
