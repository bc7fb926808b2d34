"""kill -9 in the middle of a big file, restart: every message exactly once, the file archived.

Runs the real `edge-node run` (python -m node) with a config holding only a file-drop feed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.errors import StoreError
from node.model import MessageState
from node.store.reader import StoreReader
from tests.conftest import REPO, wait_until
from tests.filedrop.conftest import hl7_file

pytestmark = pytest.mark.slow

MESSAGES = 5000


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "edge-node.toml"
    config.write_text(f"""\
[store]
path = "{tmp_path / 'store.db'}"
min_free_bytes = 0

[metrics]
enabled = false

[harmonize]
enabled = false

[[feeds]]
name = "drop"
type = "filedrop"
path = "{tmp_path / 'inbox'}"
archive = "{tmp_path / 'archive'}"
error = "{tmp_path / 'error'}"
settle_s = 0
poll_interval_s = 0.5
""")
    return config


def _start(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_NODE_")} | env
    with open(log, "ab") as stderr:
        return subprocess.Popen([sys.executable, "-m", "node", "run", "--config", str(config)],
                                cwd=REPO, env=environ, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def _rows(db: Path) -> int:
    try:
        with StoreReader(db) as reader:
            return sum(reader.counts().values())
    except StoreError:  # not created yet
        return 0


def test_sigkill_mid_file_then_restart_stages_every_message_once(tmp_path: Path) -> None:
    config, db, log = _config(tmp_path), tmp_path / "store.db", tmp_path / "node.log"
    inbox, archive = tmp_path / "inbox", tmp_path / "archive"
    inbox.mkdir()
    (inbox / "big.hl7").write_bytes(hl7_file(MESSAGES, prefix="K"))

    # One message per transaction makes the first run slow enough to be killed in the middle.
    first = _start(config, log, EDGE_NODE_STORE__MAX_BATCH="1")
    try:
        wait_until(lambda: _rows(db) >= MESSAGES // 10 or first.poll() is not None, timeout=30, interval=0.005)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    committed = _rows(db)
    assert 0 < committed < MESSAGES, f"the first run was not killed mid-file ({committed} rows)"
    assert (inbox / "big.hl7").exists()
    assert not archive.exists() or not any(archive.iterdir())

    second = _start(config, log)
    try:
        wait_until(lambda: (archive / "big.hl7").exists() or second.poll() is not None, timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()

    assert not (inbox / "big.hl7").exists()
    with StoreReader(db) as reader:
        rows = reader.messages("drop", limit=2 * MESSAGES)
    assert len(rows) == MESSAGES
    assert sorted(row.control_id for row in rows) == [f"K{i:06d}" for i in range(1, MESSAGES + 1)]
    assert all(row.state is MessageState.STAGED for row in rows)
    text = log.read_text()
    assert (f"big.hl7: {MESSAGES} message(s), {MESSAGES - committed} new row(s), "
            f"{committed} duplicate(s), 0 problem(s)") in text
    assert "Doe" not in text  # no message contents in the logs
