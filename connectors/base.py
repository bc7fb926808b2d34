"""What a connector is, and the one thing it may write to: a Sink.

A connector gets only its own feed settings, a Sink and its feed's metrics. It never sees the whole
configuration, the store or other connectors.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from node.model import StageOutcome, StageRequest


class Sink(Protocol):
    """Durable intake: a StageOutcome means the message is committed (fsynced) to disk.

    :raises StoreFullError: out of space; nothing was stored (answer AR/CR, keep the data with the sender).
    :raises StoreIOError, StoreClosedError: the store cannot write; nothing was stored.
    """

    async def stage(self, request: StageRequest) -> StageOutcome: ...

    def submit(self, request: StageRequest) -> Future[StageOutcome]: ...


class Connector(Protocol):
    """A feed adapter with a start/stop lifecycle."""

    name: str

    async def start(self) -> None:
        """Bind or start watching. :raises ConnectorError: if that is impossible."""

    async def stop(self) -> None:
        """Stop accepting new input and finish what is in flight (each in-flight message is either
        committed and acknowledged, or not acknowledged at all)."""

    def describe(self) -> str:
        """A one-line summary for logs and systemd STATUS (address or directory; no data)."""
