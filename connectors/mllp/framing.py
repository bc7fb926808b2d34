"""MLLP framing: pure bytes <-> blocks. No asyncio, no I/O, no HL7.

A block on the wire is ``<START_BLOCK> payload <END_BLOCK><CARRIAGE_RETURN>`` (HL7 v2 Appendix C.4.2).
`frame()` builds one; `MLLPFramer` recovers payloads from a byte stream cut into arbitrary chunks.

The framer is lenient where senders are sloppy and strict where memory is at stake:

* bytes outside a block (junk between blocks, stray CR/LF, a stray END_BLOCK) are skipped and
  counted in `MLLPFramer.junk_bytes`;
* the CR after END_BLOCK is consumed when present (also when it arrives in the next chunk) and
  tolerated when missing;
* a START_BLOCK inside an open block means that block lost its end: the partial block is dropped
  (counted as junk) and the new block starts;
* a block larger than `max_frame_bytes` yields an `OversizeFrame` with its first `head_bytes` (enough
  to read the MSH and answer AR/CR) and the rest of it is skipped without being held, so memory stays
  bounded by `max_frame_bytes` plus one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

START_BLOCK: Final = b"\x0b"
"""VT: opens a block."""
END_BLOCK: Final = b"\x1c"
"""FS: closes a block."""
CARRIAGE_RETURN: Final = b"\x0d"
"""CR: follows END_BLOCK."""

_CR: Final = 0x0D

# Framer states. Plain ints: compared on every chunk, so cheaper than an Enum.
_OUTSIDE: Final = 0
"""Between blocks: looking for START_BLOCK."""
_IN_FRAME: Final = 1
"""Inside a block of at most max_frame_bytes: collecting its payload."""
_DISCARDING: Final = 2
"""Inside a block already reported as oversize: skipping to its END_BLOCK."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete block's payload (without START_BLOCK, END_BLOCK and CR)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizeFrame:
    """A block longer than the framer's limit. `head` is its first `head_bytes` bytes (typically the MSH,
    so the caller can still answer AR/CR); the rest was skipped, never held in memory."""

    head: bytes


def frame(payload: bytes) -> bytes:
    """Wrap `payload` in one MLLP block.

    :raises ValueError: if `payload` contains START_BLOCK or END_BLOCK (the block could not be
        recovered by the receiver).
    """
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("MLLP payload must not contain START_BLOCK (0x0B) or END_BLOCK (0x1C)")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class MLLPFramer:
    """Incremental MLLP de-framer for one connection.

    Feed it chunks in arrival order; it returns the blocks completed by each chunk. It never raises on
    any input: every byte is either part of a returned frame, skipped as junk, or skipped as the tail of
    an oversize block. Not thread-safe (one framer per connection).

    :param max_frame_bytes: the largest payload accepted (payload bytes, framing excluded). A larger block
        yields an `OversizeFrame` as soon as it crosses the limit.
    :param head_bytes: how many leading payload bytes an `OversizeFrame` carries; capped at
        `max_frame_bytes` (no more has necessarily arrived when the limit is crossed).
    :raises ValueError: if `max_frame_bytes` < 1 or `head_bytes` < 0.
    """

    __slots__ = ("_buf", "_expect_cr", "_head_bytes", "_max", "_state", "junk_bytes")

    def __init__(self, max_frame_bytes: int, head_bytes: int = 4096) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        if head_bytes < 0:
            raise ValueError("head_bytes must not be negative")
        self._max = max_frame_bytes
        self._head_bytes = min(head_bytes, max_frame_bytes)
        self._buf = bytearray()
        self._state = _OUTSIDE
        self._expect_cr = False
        self.junk_bytes = 0
        """Bytes skipped outside any block, including partial blocks that lost their END_BLOCK."""

    @property
    def pending_bytes(self) -> int:
        """Payload bytes of an incomplete block held in memory (never more than max_frame_bytes)."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        """True while a block is open (also while skipping an oversize one): data is missing at EOF."""
        return self._state != _OUTSIDE

    def feed(self, data: bytes) -> list[Frame | OversizeFrame]:
        """Consume one chunk; return the blocks it completed, in stream order."""
        out: list[Frame | OversizeFrame] = []
        n = len(data)
        pos = 0
        if self._expect_cr and n:
            # The previous chunk ended right after END_BLOCK: its CR may start this one.
            self._expect_cr = False
            if data[0] == _CR:
                pos = 1
        while pos < n:
            if self._state == _OUTSIDE:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.junk_bytes += n - pos
                    break
                self.junk_bytes += start - pos
                pos = start + 1
                self._state = _IN_FRAME
                continue
            end = data.find(END_BLOCK, pos)
            limit = n if end < 0 else end
            restart = data.find(START_BLOCK, pos, limit)
            if restart >= 0:
                # The open block lost its END_BLOCK: drop it (with its START_BLOCK) and begin anew.
                if self._state == _IN_FRAME:
                    self.junk_bytes += 1 + len(self._buf) + (restart - pos)
                    self._buf.clear()
                self._state = _IN_FRAME
                pos = restart + 1
                continue
            if self._state == _DISCARDING:
                if end < 0:
                    break
                pos = self._close(data, end)
                continue
            if len(self._buf) + (limit - pos) > self._max:
                out.append(OversizeFrame(self._head(data, pos, limit)))
                self._buf.clear()
                if end < 0:
                    self._state = _DISCARDING
                    break
                pos = self._close(data, end)
                continue
            if end < 0:
                self._buf += memoryview(data)[pos:]
                break
            if self._buf:
                self._buf += memoryview(data)[pos:end]
                payload = bytes(self._buf)
                self._buf.clear()
            else:
                payload = data[pos:end]
            out.append(Frame(payload))
            pos = self._close(data, end)
        return out

    def _close(self, data: bytes, end: int) -> int:
        """Leave the block whose END_BLOCK is at `end`; return where scanning resumes (after its CR)."""
        self._state = _OUTSIDE
        pos = end + 1
        if pos < len(data):
            if data[pos] == _CR:
                pos += 1
        else:
            self._expect_cr = True
        return pos

    def _head(self, data: bytes, pos: int, limit: int) -> bytes:
        """The first head_bytes of the block being dropped: held bytes first, then this chunk's."""
        held = len(self._buf)
        if held >= self._head_bytes:
            return bytes(self._buf[: self._head_bytes])
        return bytes(self._buf) + data[pos : min(limit, pos + self._head_bytes - held)]
