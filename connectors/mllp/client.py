"""A stop-and-wait MLLP client: `edge-node send`, and the benchmark's senders.

Sends each message, waits for its acknowledgement(s) (accept ACK and, when MSH-16 asks for one, the
application ACK), checks that MSA-2 echoes MSH-10, and reports one line per message.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from connectors.mllp.ack import AckCode, ParsedAck, parse_ack, wants_application_ack
from connectors.mllp.framing import Frame, MLLPFramer, frame
from node.errors import HL7HeaderError
from node.hl7v2.batch import split_messages
from node.hl7v2.header import MessageHeader, read_header, read_header_lenient

POSITIVE = {AckCode.AA, AckCode.CA}
MAX_ACK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SendOptions:
    host: str = "127.0.0.1"
    port: int = 2575
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    timeout_s: float = 30.0


def client_ssl_context(options: SendOptions) -> ssl.SSLContext | None:
    if not options.tls:
        return None
    context = ssl.create_default_context(cafile=str(options.ca) if options.ca else None)
    if options.cert is not None:
        context.load_cert_chain(options.cert, options.key)
    return context


class MLLPClient:
    """One connection; `exchange()` sends a message and returns its acknowledgements."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout_s
        self._framer = MLLPFramer(MAX_ACK_BYTES)
        self._pending: list[bytes] = []

    @classmethod
    async def connect(cls, options: SendOptions) -> MLLPClient:
        context = client_ssl_context(options)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(options.host, options.port, ssl=context,
                                    server_hostname=(options.server_name or options.host) if context else None),
            timeout=options.timeout_s)
        return cls(reader, writer, options.timeout_s)

    async def read_frame(self) -> bytes:
        """The next frame from the server. :raises ConnectionError: closed; TimeoutError: none in time."""
        async with asyncio.timeout(self._timeout):
            while not self._pending:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed by the receiver")
                for event in self._framer.feed(data):
                    if not isinstance(event, Frame):
                        raise ConnectionError("acknowledgement too large")
                    self._pending.append(event.payload)
        return self._pending.pop(0)

    async def exchange(self, payload: bytes) -> list[ParsedAck]:
        """Send one message; return its acknowledgements: the first frame, and in enhanced mode the
        application ACK that follows an accept ACK (CA/CE) when MSH-16 asks for one."""
        self._writer.write(frame(payload))
        await self._writer.drain()
        acks = [parse_ack(await self.read_frame())]
        header = _header_or_none(payload)
        first = acks[0].code
        if (header is not None and header.enhanced_mode and first in (AckCode.CA, AckCode.CE)
                and wants_application_ack(header, first == AckCode.CA)):
            acks.append(parse_ack(await self.read_frame()))
        return acks

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def _header_or_none(payload: bytes) -> MessageHeader | None:
    """The header as the receiver reads it: strictly, else leniently (an unreadable header still gets
    ACKs per its MSH-15/16, and MSA-2 echoes whatever MSH-10 holds)."""
    try:
        return read_header(payload)
    except HL7HeaderError:
        return read_header_lenient(payload)


async def send_files(options: SendOptions, files: list[Path], *, out: TextIO, err: TextIO) -> int:
    """Send every message of every file over one connection. Prints `FILE:LINE #N CONTROL-ID CODES` per
    message; returns 0 when every message got AA/CA (and its expected application ACK AA), else 1."""
    failures = 0
    batches: list[tuple[Path, list[tuple[int, int, bytes]]]] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=err)
            failures += 1
            continue
        split = split_messages(data)
        for problem in split.problems:
            print(f"{path}:{problem.line}: {problem.reason.split(': ', 1)[-1]}", file=err)
            failures += 1
        batches.append((path, [(m.line, m.index, m.payload) for m in split.messages]))
    try:
        client = await MLLPClient.connect(options)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        print(f"edge-node send: cannot connect to {options.host}:{options.port}: {exc}", file=err)
        return 1
    try:
        for path, messages in batches:
            for line, index, payload in messages:
                header = _header_or_none(payload)
                expected_id = header.control_id if header else ""
                control_id = expected_id or "?"
                try:
                    acks = await client.exchange(payload)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    print(f"{path}:{line} #{index} {control_id} NO-ACK ({exc or type(exc).__name__})", file=out)
                    return 1
                codes = " ".join(ack.code.value for ack in acks)
                ok = bool(acks) and all(a.code in POSITIVE and a.control_id == expected_id for a in acks)
                note = "" if ok or not acks or acks[0].control_id == expected_id else " (MSA-2 mismatch)"
                print(f"{path}:{line} #{index} {control_id} {codes}{note}", file=out)
                failures += 0 if ok else 1
    finally:
        await client.close()
    return 1 if failures else 0
