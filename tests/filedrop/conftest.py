"""A real file-drop node in tmp_path: real directories, a real GroupCommitWriter on a SQLite file, the real
connector and real metrics. No mocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.filedrop.connector import FileDropConnector
from node.metrics import NodeMetrics
from node.settings import FileDropFeed
from node.store.queries import StoredMessage
from node.store.reader import StoreReader
from node.store.writer import GroupCommitWriter

FEED = "inbox"


def hl7_message(control_id: str, *, name: str = "Doe^John", charset: str = "", sep: str = "\r",
                encoding: str = "ascii", app: str = "FDAPP") -> bytes:
    """A small synthetic ADT^A01 (three segments), each segment ended by `sep`."""
    segments = [
        f"MSH|^~\\&|{app}|FDSITE|EDGE|NODE|20240102030405||ADT^A01^ADT_A01|{control_id}|P|2.5|||||DE|{charset}",
        "EVN|A01|20240102030405",
        f"PID|1||{control_id}^^^FDSITE^PI||{name}||19700101|M",
    ]
    return (sep.join(segments) + sep).encode(encoding)


def hl7_file(count: int, *, prefix: str = "M", sep: str = "\r") -> bytes:
    """`count` messages with control ids `<prefix>000001`..., separated by blank lines."""
    return sep.join(hl7_message(f"{prefix}{i:06d}", sep=sep).decode() for i in range(1, count + 1)).encode()


def write_atomically(directory: Path, name: str, data: bytes) -> Path:
    """Write `<name>.tmp`, then rename it to `name` (the well-behaved writer)."""
    tmp = directory / f"{name}.tmp"
    tmp.write_bytes(data)
    return tmp.rename(directory / name)


def drop_copy(source: Path, directory: Path) -> Path:
    """Copy `source` into `directory` the well-behaved way (a plain copy is seen half-written, or empty,
    by a connector with settle_s=0)."""
    return write_atomically(directory, source.name, source.read_bytes())


@dataclass
class Harness:
    feed: FileDropFeed
    writer: GroupCommitWriter
    connector: FileDropConnector
    registry: CollectorRegistry
    db: Path

    @property
    def inbox(self) -> Path:
        return self.feed.path

    @property
    def archive(self) -> Path:
        return self.feed.archive

    @property
    def error(self) -> Path:
        return self.feed.error

    def rows(self) -> list[StoredMessage]:
        with StoreReader(self.db) as reader:
            return reader.messages(FEED, limit=1_000_000)

    def count(self) -> int:
        with StoreReader(self.db) as reader:
            return sum(n for (feed, _), n in reader.counts().items() if feed == FEED)

    def received(self) -> float:
        return self.registry.get_sample_value("edge_node_messages_received_total", {"feed": FEED}) or 0.0

    def duplicates(self) -> float:
        return self.registry.get_sample_value("edge_node_messages_duplicate_total", {"feed": FEED}) or 0.0

    @staticmethod
    def names(directory: Path) -> list[str]:
        return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []

    def archived(self, *names: str) -> bool:
        """True once every name in `names` is in archive/ (and gone from the inbox)."""
        return all((self.archive / n).exists() and not (self.inbox / n).exists() for n in names)

    def errored(self, *names: str) -> bool:
        """True once every name in `names` is in error/ with its .reason (and gone from the inbox)."""
        return all((self.error / n).exists() and (self.error / f"{n}.reason").exists()
                   and not (self.inbox / n).exists() for n in names)

    async def start(self) -> Harness:
        await self.connector.start()
        return self


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    """`await make_harness(start=True, max_bytes=None, max_file_bytes=None, max_batch=512, root=None,
    **feed_settings)`.

    Defaults: settle_s=0, poll_interval_s=0.2; directories and store under `root` (default tmp_path).
    The inbox exists before start (so files can be dropped first); everything started is stopped at
    teardown.
    """
    made: list[Harness] = []

    async def make(*, start: bool = True, max_bytes: int | None = None, max_file_bytes: int | None = None,
                   max_batch: int = 512, root: Path | None = None, **settings: Any) -> Harness:
        base = root or tmp_path
        values: dict[str, Any] = {"settle_s": 0, "poll_interval_s": 0.2, "path": base / "inbox",
                                  "archive": base / "archive", "error": base / "error"} | settings
        feed = FileDropFeed(type="filedrop", name=FEED, **values)
        feed.path.mkdir(parents=True, exist_ok=True)
        db = base / "store.db"
        writer = GroupCommitWriter(db, max_bytes=max_bytes, max_batch=max_batch)
        writer.start()
        registry = CollectorRegistry()
        metrics = NodeMetrics(registry).feed(FEED)
        extra = {} if max_file_bytes is None else {"max_file_bytes": max_file_bytes}
        harness = Harness(feed, writer, FileDropConnector(feed, writer, metrics, **extra), registry, db)
        made.append(harness)
        if start:
            await harness.start()
        return harness

    yield make
    # Concurrently: each stop may wait up to 0.5 s for watchdog's inotify emitter.
    await asyncio.gather(*(harness.connector.stop() for harness in made))
    for harness in made:
        harness.writer.stop()
