"""Plain data passed between connectors, the store and later stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class MessageState(StrEnum):
    """The state of an inbound message row. `staged` is where every accepted message starts."""

    STAGED = "staged"
    """Committed to disk, waiting for harmonization."""
    FAILED = "failed"
    """Kept with its reason for an operator (unreadable header, conversion failure)."""
    HARMONIZED = "harmonized"
    """Converted to outbound resources."""
    SKIPPED = "skipped"
    """A message type the feed is configured to ignore."""


@dataclass(frozen=True, slots=True)
class StageRequest:
    """One inbound message to commit, with everything the store keeps about it.

    `ack` is the exact wire bytes to send (and to replay to a resend) once the row is committed;
    connectors without ACKs (file drop) pass None.
    """

    feed: str
    raw: bytes = field(repr=False)
    sha256: bytes
    received_at: float
    control_id: str
    sending_app: str
    sending_facility: str
    message_type: str
    version: str
    charset: str
    state: MessageState = MessageState.STAGED
    error: str | None = None
    ack: bytes | None = field(default=None, repr=False)
    source: str | None = None

    @property
    def dedup_key(self) -> tuple[str, str, str, str, bytes]:
        """(feed, MSH-3, MSH-4, MSH-10, payload sha256): equal keys are the same message resent."""
        return (self.feed, self.sending_app, self.sending_facility, self.control_id, self.sha256)


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What the store did with one StageRequest.

    `duplicate` is True when a row with the same dedup key already existed: then `message_id` and
    `ack` are those of the stored row (the ACK sent the first time, byte for byte).
    """

    message_id: int
    duplicate: bool
    ack: bytes | None = field(repr=False)
