"""An I/O error at COMMIT (a failed fsync) in a running node: AR, /healthz 503, exit EX_IOERR, no AA lost.

In-process: the node is wired by the real `build_node` from a real config file, with the real MLLP
connector on a real socket and a real SQLite file; the only difference is the writer's store factory,
which opens a real Store whose COMMIT raises sqlite3.OperationalError("disk I/O error") once the test
arms it, after `fail_after` messages were answered AA. That Store's close() waits for the
test, so the window between "the writer went fatal" and "the node shuts down" can be observed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import node.app as node_app
from node.app import build_node
from node.errors import EX_IOERR, StoreIOError
from node.settings import load_settings
from node.store.checkpoint import BACKSTOP_PAGES
from node.store.store import Store
from node.store.writer import GroupCommitWriter
from tests.node_process import mllp_only_config

from .test_durability_support import (
    END_BLOCK,
    START_BLOCK,
    Ack,
    adt_message,
    assert_acked_stored_once,
    http_status,
    read_ack,
)

WAIT = 10.0


class Faults:
    """Shared by the test and the Store the writer thread opens."""

    def __init__(self, fail_after: int) -> None:
        self.fail_after = fail_after
        self.armed = threading.Event()
        """Set by the test: from now on every COMMIT fails (the node's own writes, e.g. the push
        worker's bookkeeping, commit through the same Store, so commits are not counted)."""
        self.failed = threading.Event()
        self.closing = threading.Event()
        self.release_close = threading.Event()

    def open(self, path: Path) -> Store:
        store = FailingStore.open(path, wal_autocheckpoint=BACKSTOP_PAGES)  # as the node opens it
        store.faults = self
        return store


class FailingStore(Store):
    """A real Store: COMMIT fails like a failed fsync once `faults.armed` is set; once it has
    failed, close() waits until the test releases it."""

    faults: Faults

    def _commit(self) -> None:
        if self.faults.armed.is_set():
            self.faults.failed.set()
            raise sqlite3.OperationalError("disk I/O error")
        super()._commit()

    def close(self) -> None:
        if self.faults.failed.is_set():
            self.faults.closing.set()
            self.faults.release_close.wait(WAIT)
        super().close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> Ack:
    """Stop-and-wait over an asyncio stream (the node runs in this event loop: no blocking I/O here)."""
    writer.write(START_BLOCK + raw + END_BLOCK + b"\r")
    await writer.drain()
    block = await reader.readuntil(END_BLOCK)
    assert await reader.readexactly(1) == b"\r"
    return read_ack(block[block.index(START_BLOCK) + 1:-1])


async def test_io_error_at_commit_answers_ar_turns_unhealthy_and_exits_74(tmp_path: Path, monkeypatch) -> None:
    faults = Faults(fail_after=5)
    monkeypatch.setattr(node_app, "GroupCommitWriter",
                        lambda *args, **kwargs: GroupCommitWriter(*args, **{**kwargs, "store_factory": faults.open}))
    store = tmp_path / "node.db"
    config = tmp_path / "config.toml"
    config.write_text(mllp_only_config(str(store)), encoding="utf-8")
    node = build_node(load_settings(config))
    loop = asyncio.get_running_loop()

    async def status(path: str) -> int:
        assert node.endpoint is not None and node.endpoint.port is not None
        return await loop.run_in_executor(None, http_status, node.endpoint.port, path)

    await node.startup()
    run = asyncio.create_task(node.run())
    reader, writer = await asyncio.open_connection("127.0.0.1", node.connectors[0].port)
    streams = [(reader, writer)]
    acked: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(15):
            assert await status("/healthz") == 200
            for seq in range(1, faults.fail_after + 1):
                control_id, raw = adt_message("IOERR", seq)
                assert await exchange(reader, writer, raw) == Ack("AA", control_id, None)
                acked[control_id] = raw

            faults.armed.set()
            # The next commit fails with an I/O error. Three senders at once: whether their messages
            # share the failing batch or were queued behind it, each gets AR, never AA.
            others = [await asyncio.open_connection("127.0.0.1", node.connectors[0].port) for _ in range(2)]
            streams.extend(others)
            failing = [adt_message(f"IOERR{n}", faults.fail_after + 1) for n in range(3)]
            answers = await asyncio.gather(*(exchange(r, w, raw) for (r, w), (_, raw)
                                             in zip([(reader, writer), *others], failing, strict=True)))
            assert answers == [Ack("AR", control_id, 207) for control_id, _ in failing]
            assert faults.failed.is_set()

            # The writer is fatal (held in Store.close by the test): unhealthy, unready, refusing.
            assert await loop.run_in_executor(None, faults.closing.wait, WAIT)
            assert isinstance(node.writer.fatal_error, StoreIOError)
            assert await status("/healthz") == 503
            assert await status("/readyz") == 503
            control_id, raw = adt_message("IOERR", faults.fail_after + 2)
            assert await exchange(reader, writer, raw) == Ack("AR", control_id, 207)
            assert not run.done()

            # Released, the node shuts down by itself with EX_IOERR.
            faults.release_close.set()
            assert await run == EX_IOERR
            assert await reader.read() == b""  # the node closed the connection on its way out
    finally:
        faults.release_close.set()
        for _, stream in streams:
            stream.close()
        if not run.done():
            node.request_stop()
        await asyncio.gather(run, return_exceptions=True)

    rows = assert_acked_stored_once(store, acked)
    assert set(rows) == set(acked), "a message answered AR is in the store"
    assert not set(rows) & {control_id for control_id, _ in failing}

