"""From raw HL7 v2 bytes to a StageRequest: the light header read and charset choice shared by the
MLLP and file-drop connectors. No full parse here (that happens later, off the ACK path).

A message whose header cannot be read is still staged, as `failed` with the reason, so an operator
can see and fix it; nothing received is dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from node.errors import HL7HeaderError
from node.hl7v2.charset import resolve_charset
from node.hl7v2.header import MessageHeader, read_header, read_header_lenient
from node.model import MessageState, StageRequest
from node.settings import HL7FeedBase

LOSSLESS_CHARSET = "iso-8859-1"
"""Used to keep reading a message whose charset cannot be determined: maps every byte, loses none."""


@dataclass(frozen=True, slots=True)
class Inspected:
    """What the light read found: a header (possibly partial when `error` is set), the charset the
    message decodes with, and the first problem, if any."""

    header: MessageHeader | None
    charset: str
    error: HL7HeaderError | None


def inspect(payload: bytes, feed: HL7FeedBase) -> Inspected:
    """Read MSH and choose the charset. Never raises for any input."""
    error: HL7HeaderError | None = None
    header: MessageHeader | None
    try:
        header = read_header(payload)
    except HL7HeaderError as exc:
        error = exc
        header = read_header_lenient(payload)
    forced = None if feed.encoding == "auto" else feed.encoding
    declared = header.charset_declared if header is not None else ""
    try:
        charset = resolve_charset(declared, payload, forced=forced, fallbacks=feed.fallback_encodings)
    except HL7HeaderError as exc:
        error = error or exc
        charset = LOSSLESS_CHARSET
    return Inspected(header, charset, error)


def stage_request(feed_name: str, payload: bytes, inspected: Inspected, *, received_at: float,
                  ack: bytes | None = None, source: str | None = None,
                  extra_error: str | None = None) -> StageRequest:
    """The StageRequest for one message: `staged` if its header was read, else `failed` with the reason."""
    header = inspected.header
    reason = inspected.error.reason if inspected.error is not None else extra_error
    return StageRequest(
        feed=feed_name,
        raw=payload,
        sha256=hashlib.sha256(payload).digest(),
        received_at=received_at,
        control_id=header.control_id if header else "",
        sending_app=header.sending_app if header else "",
        sending_facility=header.sending_facility if header else "",
        message_type=header.message_type if header else "",
        version=header.version if header else "",
        charset=inspected.charset,
        state=MessageState.FAILED if reason else MessageState.STAGED,
        error=reason,
        ack=ack,
        source=source,
    )
