"""A really full disk under a running node: AR (never AA) while full, AA again once space returns.

The store lives on a small tmpfs mounted for the test (needs root or CAP_SYS_ADMIN; otherwise the test
is skipped with the reason). A filler file takes every free block, then messages are sent one by one
over MLLP. Two moments are tested, because SQLite in WAL mode needs new space at two places:

- `wal_growth`: a young store, the WAL far below the checkpoint threshold: each commit appends frames
  to the WAL, which must grow -> SQLITE_FULL at the WAL write.
- `checkpoint`: the WAL is brought just below the node's checkpoint threshold (node.store.checkpoint:
  a background thread checkpoints once the WAL file is past DEFAULT_THRESHOLD_BYTES) and space is left
  for it to cross the threshold only. The commit that crosses it succeeds (its frames are in the WAL);
  the checkpointer's next run must grow the database file and fails (logged, retried). The WAL cannot
  be restarted, so the next commit has to grow it -> SQLITE_FULL. Messages AA'd after the failed
  checkpoint must survive, and once space returns the next checkpoint writes every page to the file.

Whatever SQLite does, the node must never answer AA for a message that is not committed. On tmpfs both
moments give SQLITE_FULL; should SQLite report an I/O error instead, the node treats it as fatal (exit
74): the test then checks exit status 74 and that every AA'd message is in the store after a restart with
free space.

A third place needs space: the `-shm` wal-index grows by a 32 KiB region when the WAL passes 4062
frames (only possible while a reader keeps the WAL from being reset). That one fails with
SQLITE_IOERR_SHMSIZE, an I/O error: see the last test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node.errors import EX_IOERR
from node.store.checkpoint import DEFAULT_THRESHOLD_BYTES
from tests.conftest import wait_until
from tests.node_process import REPO, NodeProcess, mllp_only_config

from .test_durability_support import (
    BlockingMLLPClient,
    adt_message,
    assert_acked_stored_once,
    close_pipes,
    fill_file_system,
    free_bytes,
    http_status,
    mounted_tmpfs,
    stored_rows,
)

PAGE = 4096
FRAME = 24 + PAGE
"""A WAL frame: 24-byte header + one page (the store uses SQLite's default 4096-byte pages)."""
WAL_HEADER = 32
CHECKPOINT_FRAMES = (DEFAULT_THRESHOLD_BYTES - WAL_HEADER) // FRAME + 1
"""The first WAL length (frames) past the checkpointer's threshold."""
MAX_MESSAGES = 400
"""Safety cap for every "send until" loop."""


def wal_frames(store: Path) -> int:
    wal = store.with_name(store.name + "-wal")
    return max(0, (wal.stat().st_size - WAL_HEADER) // FRAME) if wal.exists() else 0


def fill_leaving_room_for_wal(store: Path, filler: Path, frames: int) -> None:
    """Fill the file system, then free exactly the pages the WAL needs to grow to `frames` frames
    (tmpfs allocates whole pages; the WAL's last page may already be partly used)."""
    fill_file_system(filler)
    wal = store.with_name(store.name + "-wal").stat().st_size
    pages = -(-(WAL_HEADER + frames * FRAME) // PAGE) - -(-wal // PAGE)
    assert pages > 0
    os.truncate(filler, filler.stat().st_size - pages * PAGE)


class Session:
    """One stop-and-wait connection plus the record of what the node answered, per control id."""

    def __init__(self, port: int) -> None:
        self.client = BlockingMLLPClient(port, timeout=10.0)
        self.acked: dict[str, bytes] = {}
        self.rejected: dict[str, bytes] = {}
        self.seq = 0

    def send(self, control_id: str, raw: bytes) -> str:
        ack = self.client.exchange(raw)
        assert ack.control_id == control_id, ack
        if ack.code == "AA":
            self.acked[control_id] = raw
            self.rejected.pop(control_id, None)
        elif ack.code == "AR":
            assert ack.error_code == 207, f"AR without ERR 207: {ack}"
            assert control_id not in self.acked, f"{control_id}: AR after AA"
            self.rejected[control_id] = raw
        else:
            pytest.fail(f"unexpected ACK {ack}")
        return ack.code

    def send_new(self) -> str:
        self.seq += 1
        return self.send(*adt_message("FULL", self.seq))


@pytest.mark.parametrize(("moment", "size"), [("wal_growth", "4m"), ("checkpoint", "8m")])
def test_full_disk_gives_ar_never_unsafe_aa_and_recovers(tmp_path: Path, moment: str, size: str) -> None:
    with mounted_tmpfs(tmp_path / "mnt", size) as mnt:
        if isinstance(mnt, str):
            pytest.skip(mnt)
        _full_disk_scenario(tmp_path, mnt, moment)


def _full_disk_scenario(workdir: Path, mnt: Path, moment: str) -> None:
    store = mnt / "node.db"
    filler = mnt / "filler"
    config = mllp_only_config(str(store))
    node = NodeProcess(workdir, config)
    session: Session | None = None
    try:
        session = Session(node.ports["mllp"])
        metrics = node.ports["metrics"]
        for _ in range(5):
            assert session.send_new() == "AA"
        if moment == "checkpoint":
            # Bring the WAL close to the checkpoint threshold, then leave room for ~8 more frames.
            while wal_frames(store) < CHECKPOINT_FRAMES - 40:
                assert session.send_new() == "AA"
                assert session.seq < MAX_MESSAGES
            # Room for the commit that crosses the threshold (at most 8 frames), not for the checkpoint.
            fill_leaving_room_for_wal(store, filler, CHECKPOINT_FRAMES + 8)
            db_size_when_full = store.stat().st_size
        else:
            fill_file_system(filler)
        print(f"\n[{moment}] disk full: filler {filler.stat().st_size} B, free {free_bytes(mnt)} B, "
              f"WAL {wal_frames(store)} frames, db {store.stat().st_size} B")

        # Send new messages until the answer turns to AR (a little slack may still take some).
        frames_before: list[int] = []
        try:
            while True:
                frames_before.append(wal_frames(store))
                if session.send_new() == "AR":
                    break
                assert session.seq < MAX_MESSAGES, "the node never answered AR on a full disk"
        except OSError:
            pass  # the node closed the connection: only the I/O error path does that
        # The node logs what SQLite said: SQLITE_FULL (keeps running) or an I/O error (exits with 74).
        wait_until(lambda: "SQLITE_FULL" in node.log or "I/O error" in node.log)
        if "I/O error" in node.log:
            _io_error_path(node, workdir, config, store, filler, session.acked, moment)
            return
        print(f"[{moment}] AA while filling the last space: {len(frames_before) - 1}, "
              f"first AR at WAL {frames_before[-1]} frames")
        db_size_at_first_ar = store.stat().st_size
        if moment == "checkpoint":
            # The WAL crossed the threshold with an AA'd commit, so the checkpointer ran; had it completed,
            # the next commit would have restarted the WAL and reused its space. It had to grow the WAL
            # instead: the checkpoint failed for lack of space (logged; the thread retries).
            assert frames_before[-1] >= CHECKPOINT_FRAMES
            print(f"[{moment}] the failed checkpoint wrote the database file from {db_size_when_full} B "
                  f"to {db_size_at_first_ar} B only")

        # While full: more new messages and a resend are all refused, the node stays up and healthy.
        for _ in range(3):
            assert session.send_new() == "AR"
        first_rejected = next(iter(session.rejected))
        assert session.send(first_rejected, session.rejected[first_rejected]) == "AR"
        assert node.proc.poll() is None
        assert http_status(metrics, "/healthz") == 200
        assert http_status(metrics, "/readyz") == 200
        assert http_status(metrics, "/metrics") == 200  # monitoring works while the disk is full
        rows = stored_rows(store)
        assert not set(rows) & set(session.rejected), "an AR'd message was stored"
        assert set(session.acked) <= set(rows), "an AA'd message is not in the store while full"
        rejected = dict(session.rejected)

        # Space comes back: the same messages are accepted, by the same process, no restart.
        filler.unlink()
        for control_id, raw in rejected.items():
            assert session.send(control_id, raw) == "AA"
        for _ in range(3):
            assert session.send_new() == "AA"
        if moment == "checkpoint":  # the checkpointer's next run completes: every page reaches the file
            wait_until(lambda: store.stat().st_size > db_size_at_first_ar)
        assert not session.rejected
        assert node.proc.poll() is None
        assert http_status(metrics, "/healthz") == 200
        print(f"[{moment}] {len(rejected)} AR'd messages resent and accepted without restart; "
              f"{len(session.acked)} AA in all")

        session.client.close()
        assert node.stop() == 0, node.log
        rows = assert_acked_stored_once(store, session.acked)
        assert set(rows) == set(session.acked)
    finally:
        if session is not None:
            session.client.close()
        node.kill()
        close_pipes(node)


def _io_error_path(node: NodeProcess, workdir: Path, config: str, store: Path, filler: Path,
                   acked: dict[str, bytes], moment: str) -> None:
    """SQLite reported an I/O error, not SQLITE_FULL: the node must exit with EX_IOERR, and every AA'd
    message must be in the store once it is opened again with free space."""
    status = node.wait_exit(15)
    close_pipes(node)
    print(f"[{moment}] FINDING: full disk made the node exit with status {status} (I/O error path)")
    assert status == EX_IOERR, node.log
    filler.unlink()
    again = NodeProcess(workdir, config)
    try:
        assert again.stop() == 0
    finally:
        again.kill()
        close_pipes(again)
    assert_acked_stored_once(store, acked)


WAL_INDEX_FIRST_REGION_FRAMES = 4062
"""Frames the first 32 KiB region of the `-shm` wal-index covers (SQLite's HASHTABLE_NPAGE_ONE); the
frame after it needs the next region, i.e. the -shm file must grow."""


def test_full_disk_when_the_wal_index_must_grow_is_fatal_and_loses_no_aa(tmp_path: Path) -> None:
    """The one full-disk case where SQLite reports an I/O error, not SQLITE_FULL.

    A long read transaction (here: a plain read-only connection, as the status CLI, a TUI or a backup
    would hold) keeps the checkpoints from resetting the WAL, so the WAL grows past the frames the
    first wal-index region covers. The commit that crosses that line writes and fsyncs its frames,
    then must grow the `-shm` file: on a full disk that is SQLITE_IOERR_SHMSIZE. The node takes it as
    fatal: AR to the sender, exit EX_IOERR. The node cannot start again while the disk is full (opening
    the store fails); once space returns it starts, every AA'd message is there, and the sender's resend
    of the AR'd message is answered AA, with exactly one row.
    """
    with mounted_tmpfs(tmp_path / "mnt", "24m") as mnt:
        if isinstance(mnt, str):
            pytest.skip(mnt)
        store = mnt / "node.db"
        filler = mnt / "filler"
        config = mllp_only_config(str(store))
        node = NodeProcess(tmp_path, config)
        session: Session | None = None
        snapshot: sqlite3.Connection | None = None
        try:
            session = Session(node.ports["mllp"])
            for _ in range(3):
                assert session.send_new() == "AA"
            snapshot = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, isolation_level=None)
            snapshot.execute("BEGIN")
            assert snapshot.execute("SELECT count(*) FROM inbound").fetchone() == (3,)
            while wal_frames(store) < WAL_INDEX_FIRST_REGION_FRAMES - 20:
                assert session.send_new() == "AA"
                assert session.seq < 2000
            # Room for the commit that crosses the region boundary (at most 7 frames); what is left after
            # it (at most 7 pages) is less than the 8 pages of a new 32 KiB -shm region.
            fill_leaving_room_for_wal(store, filler, WAL_INDEX_FIRST_REGION_FRAMES + 7)

            unanswered: tuple[str, bytes] | None = None
            try:
                while True:
                    session.seq += 1
                    unanswered = adt_message("FULL", session.seq)
                    code = session.send(*unanswered)
                    if code != "AA":
                        break
                    unanswered = None
                    assert session.seq < 2100, "the WAL crossed the wal-index region without an error"
            except OSError:
                pass  # closed without an ACK: also allowed, as long as it is not an AA
            assert unanswered is not None
            answer = "AR" if unanswered[0] in session.rejected else "no ACK"
            status = node.wait_exit(15)
            close_pipes(node)
            assert status == EX_IOERR, node.log
            assert "SQLITE_IOERR_SHMSIZE" in node.log, node.log
            print(f"\n[wal-index growth] WAL at {wal_frames(store)} frames: {unanswered[0]} got {answer}; "
                  f"node exited {status}")
            snapshot.rollback()
            snapshot.close()
            snapshot = None
            session.client.close()
            acked = dict(session.acked)

            # While the disk is still full the node cannot open its store (systemd would retry).
            env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
            started = subprocess.run([sys.executable, "-m", "node", "run", "--config", str(node.config)],
                                     cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                                     text=True, timeout=10)
            assert started.returncode != 0
            assert "edge-node ready" not in started.stderr
            print(f"[wal-index growth] restart on the full disk: exit {started.returncode}: "
                  f"{started.stderr.strip().splitlines()[-1]}")

            # Space returns: the node starts, the AA'd messages are there, the resend is answered AA.
            filler.unlink()
            node = NodeProcess(tmp_path, config)
            committed_anyway = unanswered[0] in stored_rows(store)
            session = Session(node.ports["mllp"])
            assert session.send(*unanswered) == "AA"
            acked.update(session.acked)
            session.client.close()
            assert node.stop() == 0, node.log
            rows = assert_acked_stored_once(store, acked)
            assert set(rows) == set(acked)
            fate = ("committed anyway: its frames were fsynced before the -shm growth failed"
                    if committed_anyway else "not committed")
            print(f"[wal-index growth] after the restart: {len(acked)} AA'd messages, each stored once; "
                  f"the message answered {answer} was {fate}")
        finally:
            if snapshot is not None:
                snapshot.close()
            if session is not None:
                session.client.close()
            node.kill()
            close_pipes(node)
