"""MLLP end-to-end helpers: a real in-process node (build_node + startup/shutdown) on 127.0.0.1 port 0
with a real SQLite store in tmp_path, raw MLLP connections over real sockets, and message builders.
No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.mllp.ack import ParsedAck, parse_ack
from connectors.mllp.client import MLLPClient, SendOptions
from connectors.mllp.connector import MLLPConnector
from connectors.mllp.framing import Frame, MLLPFramer, frame
from node.app import build_node
from node.settings import NodeSettings
from node.store.queries import StoredMessage
from node.store.reader import StoreReader
from node.supervisor import Node
from tests.conftest import eventually as eventually  # re-exported: the MLLP tests import it from here
from tests.node_process import NodeProcess, mllp_only_config

FEED = "mllp"
READ_TIMEOUT = 10.0


def hl7_message(control_id: str, *, msh15: str = "", msh16: str = "", charset: str = "",
                name: str = "Doe^John", mrn: str = "", version: str = "2.5", trigger: str = "A01",
                app: str = "KIS", facility: str = "SITE", extra: str = "", encoding: str = "ascii") -> bytes:
    """A small synthetic ADT (MSH, EVN, PID; optional extra segments), segments ended by CR.
    MSH-15/16 select the acknowledgement mode, MSH-18 the declared charset."""
    msh = (f"MSH|^~\\&|{app}|{facility}|EDGE|NODE|20240102030405||ADT^{trigger}^ADT_A01|{control_id}|P|"
           f"{version}|||{msh15}|{msh16}|DE|{charset}")
    segments = [msh.rstrip("|"), f"EVN|{trigger}|20240102030405",
                f"PID|1||{mrn or control_id}^^^SITE^PI||{name}||19700101|M"]
    if extra:
        segments.append(extra)
    return ("\r".join(segments) + "\r").encode(encoding)


def msh_fields(payload: bytes) -> list[str]:
    """The MSH segment of `payload` split on `|` (index n is MSH-(n+1) for n >= 1, as in HL7)."""
    first = payload.split(b"\r", 1)[0].decode("latin-1")
    return ["MSH", "|", *first.split("|")[1:]]


class RawConnection:
    """A plain asyncio TCP (or TLS) connection speaking MLLP byte by byte, for tests that need control
    over every byte sent (junk, partial frames, pipelining) and want to see every frame received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._framer = MLLPFramer(16 * 1024 * 1024)
        self._pending: list[bytes] = []

    @classmethod
    async def open(cls, port: int, **kwargs: Any) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **kwargs)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_message(self, payload: bytes) -> None:
        await self.send(frame(payload))

    async def read_frame(self, timeout: float = READ_TIMEOUT) -> bytes:
        """The next MLLP frame's payload; fails on EOF or timeout."""
        async with asyncio.timeout(timeout):
            while not self._pending:
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError("connection closed while waiting for a frame")
                for event in self._framer.feed(data):
                    assert isinstance(event, Frame)
                    self._pending.append(event.payload)
        return self._pending.pop(0)

    async def read_ack(self, timeout: float = READ_TIMEOUT) -> ParsedAck:
        return parse_ack(await self.read_frame(timeout))

    async def exchange(self, payload: bytes, frames: int = 1) -> list[ParsedAck]:
        """Send one message and read exactly `frames` ACK frames."""
        await self.send_message(payload)
        return [await self.read_ack() for _ in range(frames)]

    async def read_eof(self, timeout: float = READ_TIMEOUT) -> bytes:
        """Everything the server sends until it closes the connection (EOF or reset)."""
        received = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    return received
                if not data:
                    return received
                received += data

    @property
    def pending_frames(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class BlockingConnection:
    """A blocking MLLP connection (plain socket) for tests against `edge-node run` subprocesses."""

    def __init__(self, port: int, timeout: float = READ_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._framer = MLLPFramer(16 * 1024 * 1024)
        self._pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        """The next frame's payload. :raises ConnectionError: the server closed the connection."""
        while not self._pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the server")
            self._pending += [e.payload for e in self._framer.feed(data) if isinstance(e, Frame)]
        return self._pending.pop(0)

    def exchange(self, payload: bytes, frames: int = 1) -> list[ParsedAck]:
        self.send(frame(payload))
        return [parse_ack(self.read_frame()) for _ in range(frames)]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class RunningNode:
    """An in-process node started with `build_node(settings)` + `startup()`."""

    node: Node
    settings: NodeSettings
    registry: CollectorRegistry
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def connector(self) -> MLLPConnector:
        connector = self.node.connectors[0]
        assert isinstance(connector, MLLPConnector)
        return connector

    @property
    def port(self) -> int:
        assert self.connector.port is not None
        return self.connector.port

    @property
    def db(self) -> Path:
        return self.settings.store.path

    def rows(self, **filters: Any) -> list[StoredMessage]:
        with StoreReader(self.db) as reader:
            return reader.messages(FEED, limit=1_000_000, **filters)

    def counts(self) -> dict[str, int]:
        """state -> rows of the mllp feed."""
        with StoreReader(self.db) as reader:
            return {state: n for (feed, state), n in reader.counts().items() if feed == FEED}

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the node's registry (0 when absent); `feed` defaults to the MLLP feed."""
        if name.startswith(("edge_node_messages", "edge_node_acks", "edge_node_mllp")):
            labels = {"feed": FEED, **labels}
        return self.registry.get_sample_value(name, labels) or 0.0

    async def raw(self, **kwargs: Any) -> RawConnection:
        connection = await RawConnection.open(self.port, **kwargs)
        self._closers.append(connection.close)
        return connection

    async def client(self, **options: Any) -> MLLPClient:
        """The project's own asyncio MLLP client (connectors/mllp/client.py)."""
        client = await MLLPClient.connect(SendOptions(port=self.port, timeout_s=READ_TIMEOUT, **options))
        self._closers.append(client.close)
        return client

    async def close_clients(self) -> None:
        for close in reversed(self._closers):
            await close()
        self._closers.clear()


StartNode = Callable[..., Awaitable[RunningNode]]


@contextlib.contextmanager
def mllp_node_process(workdir: Path, config_text: str | None = None) -> Iterator[NodeProcess]:
    """A real `edge-node run` subprocess (default: tests.node_process.mllp_only_config()); killed if still
    running on exit, and its stderr pipe closed (NodeProcess leaves it open: a ResourceWarning)."""
    node = NodeProcess(workdir, config_text if config_text is not None else mllp_only_config())
    try:
        yield node
    finally:
        if node.proc.poll() is None:
            node.kill()
        node._reader.join(5)
        if node.proc.stderr is not None and not node._reader.is_alive():
            node.proc.stderr.close()


def node_settings(tmp_path: Path, *, metrics: bool = False, **feed: Any) -> NodeSettings:
    """Settings of a node with one MLLP feed `mllp` on 127.0.0.1:0 and its store in tmp_path."""
    return NodeSettings(
        node={"site_id": "test-site", "shutdown_timeout_s": 10},
        store={"path": tmp_path / "node.db", "min_free_bytes": 0},  # not about disk space (CI disks are small)
        metrics={"enabled": metrics, "port": 0},
        harmonize={"enabled": False},  # intake tests see their rows `staged`
        feeds=[{"name": FEED, "type": "mllp", "host": "127.0.0.1", "port": 0, **feed}],
    )


@pytest.fixture
async def running_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    """`node = await running_node(**feed_overrides)`: a started in-process node; stopped at teardown
    (clients opened through it are closed first)."""
    started: list[RunningNode] = []

    async def start(*, settings: NodeSettings | None = None, **feed: Any) -> RunningNode:
        settings = settings or node_settings(tmp_path, **feed)
        registry = CollectorRegistry()
        node = build_node(settings, registry)
        await node.startup()
        running = RunningNode(node, settings, registry)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close_clients()
        await running.node.shutdown()
