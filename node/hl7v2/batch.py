"""Split a file's bytes into HL7 v2 messages (pure; used by the file-drop connector and `edge-node send`).

Accepts one or many messages, with or without FHS/BHS/BTS/FTS batch envelopes, with `\\r`, `\\n` or
`\\r\\n` segment ends and blank lines between messages. Each message comes back with `\\r` segment
terminators (the HL7 standard) and the 1-based line of the file where it starts, so every problem can
name the file and line. Nothing is dropped silently: bytes that belong to no message become a
`FileProblem` with their line, and a BTS/FTS count that does not match is reported too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SEGMENT_TERMINATOR = b"\r"
_LINE_SPLIT = re.compile(rb"\r\n|\n|\r")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


@dataclass(frozen=True, slots=True)
class SplitMessage:
    """One message of a file: `index` counts from 1 within the file, `line` is where its MSH is."""

    index: int
    line: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class FileProblem:
    """Something in the file that is not a message (never contains the data itself)."""

    line: int
    reason: str
    payload: bytes = b""
    """The stray bytes (kept by the caller as a failed row, never logged)."""


@dataclass(slots=True)
class SplitResult:
    messages: list[SplitMessage] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)


def _segment_id(line: bytes) -> bytes:
    return line[:3]


def _declared_count(line: bytes) -> int | None:
    """BTS-1 / FTS-1: the number of messages (batches) the sender says it wrote."""
    if len(line) < 5:
        return None
    separator = line[3:4]
    parts = line.split(separator)
    try:
        return int(parts[1]) if len(parts) > 1 and parts[1].strip() else None
    except ValueError:
        return None


def split_messages(data: bytes) -> SplitResult:
    """Split `data` into messages. Never raises for any input."""
    result = SplitResult()
    current: list[bytes] = []
    current_line = 0
    stray: list[bytes] = []
    stray_line = 0
    batch_count = 0
    bts_declared: list[tuple[int, int, int]] = []  # (line, declared, counted)

    def flush_message() -> None:
        nonlocal current
        if current:
            result.messages.append(SplitMessage(
                index=len(result.messages) + 1, line=current_line,
                payload=SEGMENT_TERMINATOR.join(current) + SEGMENT_TERMINATOR))
            current = []

    def flush_stray() -> None:
        nonlocal stray
        if stray:
            result.problems.append(FileProblem(
                line=stray_line, reason=f"line {stray_line}: {len(stray)} line(s) outside any message "
                                        "(no MSH segment before them)",
                payload=SEGMENT_TERMINATOR.join(stray) + SEGMENT_TERMINATOR))
            stray = []

    lines = _LINE_SPLIT.split(data)
    for number, raw_line in enumerate(lines, start=1):
        line = raw_line.lstrip(b"\xef\xbb\xbf") if number == 1 else raw_line
        if not line.strip():
            continue
        segment = _segment_id(line)
        if segment == b"MSH":
            flush_message()
            flush_stray()
            current = [line]
            current_line = number
            batch_count += 1
        elif segment in _ENVELOPE:
            flush_message()
            flush_stray()
            if segment == b"BHS":
                batch_count = 0
            elif segment == b"BTS":
                declared = _declared_count(line)
                if declared is not None:
                    bts_declared.append((number, declared, batch_count))
        elif current:
            current.append(line)
        else:
            if not stray:
                stray_line = number
            stray.append(line)
    flush_message()
    flush_stray()
    for line_number, declared, counted in bts_declared:
        if declared != counted:
            result.problems.append(FileProblem(
                line=line_number,
                reason=f"line {line_number}: BTS-1 declares {declared} message(s), the batch holds {counted}"))
    return result
