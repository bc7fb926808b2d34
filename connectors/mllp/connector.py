"""The MLLP listener: asyncio server, one read loop per connection, ACK only after commit.

Layers: `framing` (bytes ↔ frames) → `hl7_intake` (MSH read, charset) → `ack` (ACK bytes) → the Sink
(group commit). This module only does sockets: accept (allow-list, connection cap, TLS), read, frame,
stage, write the ACK, close idle connections, stop gracefully.

Per connection, frames are handled strictly in order, one at a time (MLLP is stop-and-wait; a sender
that pipelines still gets its ACKs in order). Across connections, commits share fsyncs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import time
from datetime import UTC, datetime

from connectors.base import Sink
from connectors.hl7_intake import Inspected, inspect, stage_request
from connectors.mllp.ack import (
    AckCode,
    build_ack,
    choose_codes,
    new_ack_control_id,
    wants_accept_ack,
    wants_application_ack,
)
from connectors.mllp.framing import Frame, MLLPFramer, frame
from node.errors import ConnectorError, StoreError, StoreFullError
from node.hl7v2.header import MessageHeader, read_header_lenient
from node.metrics import FeedMetrics
from node.settings import MLLPFeed

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
ERR_APPLICATION_INTERNAL = 207
"""HL7 table 0357: application internal error (store full or failing, frame too large)."""

_ACK_ID_BYTES = 10
"""Random bytes per ACK control id: 20 hex characters, as `ack.new_ack_control_id` makes them."""
_ACK_ID_POOL = 256
"""ACK control ids drawn from the OS at once."""
_AA = (AckCode.AA.value,)


class _AckTime(datetime):
    """A timezone-aware datetime that formats each strftime pattern once.

    MSH-7 of an ACK has second precision, so one instance serves every ACK built within one wall-clock
    second (see `_AckClock`): the same text as a fresh `datetime.now().astimezone()` per ACK, without
    the ~3 µs of `now()`/`astimezone()`/`strftime()` per message on the event loop.
    """

    __slots__ = ("_formatted",)

    def strftime(self, fmt: str) -> str:
        formatted: dict[str, str] = self._formatted
        text = formatted.get(fmt)
        if text is None:
            text = formatted[fmt] = super().strftime(fmt)
        return text


class _AckClock:
    """The `now` and the fresh control ids of the ACKs one connector builds (event-loop thread only).

    Control ids are random bytes from `os.urandom`, exactly as `ack.new_ack_control_id` (`secrets`)
    draws them, but fetched for many ACKs at once: one system call per 256 ACKs instead of one per ACK
    (each also hands the GIL to the store writer thread and back).
    """

    __slots__ = ("_ids", "_ids_at", "_now", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._now: _AckTime | None = None
        self._ids = b""
        self._ids_at = 0

    def now(self) -> datetime:
        """The current local time, timezone-aware, to the second."""
        second = time.time_ns() // 1_000_000_000
        if second != self._second or self._now is None:
            local = datetime.fromtimestamp(second, UTC).astimezone()
            now = _AckTime(local.year, local.month, local.day, local.hour, local.minute, local.second, 0,
                           local.tzinfo, fold=local.fold)
            now._formatted = {}
            self._now, self._second = now, second
        return self._now

    def control_id(self) -> str:
        """A fresh ACK control id: 20 lower-case hex characters (80 random bits)."""
        at = self._ids_at
        if at + _ACK_ID_BYTES > len(self._ids):
            self._ids, at = os.urandom(_ACK_ID_BYTES * _ACK_ID_POOL), 0
        self._ids_at = at + _ACK_ID_BYTES
        return self._ids[at:at + _ACK_ID_BYTES].hex()


def build_server_ssl_context(feed: MLLPFeed) -> ssl.SSLContext | None:
    """TLS 1.2+ server context for the feed, with client verification when `tls_client_ca` is set."""
    if not feed.tls_enabled:
        return None
    from node.settings import credential_path

    assert feed.tls_cert is not None and feed.tls_key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = feed.tls_key_password.get_secret_value() if feed.tls_key_password else None
    try:
        context.load_cert_chain(credential_path(feed.tls_cert), credential_path(feed.tls_key), password)
        if feed.tls_client_ca is not None:
            context.load_verify_locations(cafile=str(credential_path(feed.tls_client_ca)))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConnectorError(f"feed {feed.name}: cannot load TLS certificate/key: {exc}") from None
    return context


class _Connection:
    __slots__ = ("busy", "closing", "last_activity", "writer")

    def __init__(self, writer: asyncio.StreamWriter, now: float) -> None:
        self.writer = writer
        self.last_activity = now
        self.busy = False
        self.closing = False


class MLLPConnector:
    """One `type = "mllp"` feed."""

    def __init__(self, feed: MLLPFeed, sink: Sink, metrics: FeedMetrics) -> None:
        self.name = feed.name
        self._feed = feed
        self._sink = sink
        self._metrics = metrics
        self._allow = list(feed.allow)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self._clock = _AckClock()
        self.port: int | None = None

    def describe(self) -> str:
        scheme = "mllps" if self._feed.tls_enabled else "mllp"
        return f"{self.name}={scheme}://{self._feed.host}:{self.port}"

    async def start(self) -> None:
        # TLS is started per connection in _serve (not by the server), after the allow-list check, so a
        # refused address costs no handshake and a failed handshake is logged and counted.
        self._tls = build_server_ssl_context(self._feed)
        try:
            self._server = await asyncio.start_server(
                self._serve, self._feed.host, self._feed.port, reuse_address=True, limit=READ_CHUNK)
        except OSError as exc:
            raise ConnectorError(
                f"feed {self.name}: cannot listen on {self._feed.host}:{self._feed.port}: {exc.strerror}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep_idle())

    async def stop(self) -> None:
        """Stop accepting; connections idle in a read are closed, busy ones finish their message
        (commit + ACK) and then close."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task, conn in list(self._connections.items()):
            conn.closing = True
            if not conn.busy:
                task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # -- connections -------------------------------------------------------------------------------

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        peer = writer.get_extra_info("peername")
        try:
            address = ipaddress.ip_address(peer[0].split("%")[0]) if peer else None
        except ValueError:
            address = None
        if address is not None and address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address is None or not any(address in network for network in self._allow):
            return "address not allowed"
        if len(self._connections) >= self._feed.max_connections:
            return "too many connections"
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = self._refusal(writer)
        peer = writer.get_extra_info("peername")
        if refusal is not None:
            log.warning("feed %s: refused connection from %s: %s", self.name, peer and peer[0], refusal)
            self._metrics.refused(refusal)
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None and not await self._handshake(writer, peer):
            return
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(writer, time.monotonic())
        self._connections[task] = conn
        self._metrics.connections.inc()
        try:
            await self._read_loop(reader, conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            self._metrics.connections.dec()
            del self._connections[task]
            writer.close()

    async def _handshake(self, writer: asyncio.StreamWriter, peer: tuple[str, int] | None) -> bool:
        """TLS server handshake, bounded by idle_timeout_s. A failure (no or untrusted client
        certificate, wrong protocol, plain TCP to a TLS port, timeout) is logged with the peer address
        and the TLS reason, counted as a refusal, and the connection closed."""
        assert self._tls is not None
        try:
            await writer.start_tls(self._tls, ssl_handshake_timeout=self._feed.idle_timeout_s)
            return True
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.warning("feed %s: TLS handshake with %s failed: %s", self.name, peer and peer[0], reason)
            self._metrics.refused("tls handshake failed")
            writer.transport.abort()
            return False

    async def _read_loop(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        framer = MLLPFramer(self._feed.max_message_bytes)
        while not conn.closing:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            conn.last_activity = time.monotonic()
            junk_before = framer.junk_bytes
            events = framer.feed(data)
            if framer.junk_bytes != junk_before:
                self._metrics.junk_bytes(framer.junk_bytes - junk_before)
            for event in events:
                if isinstance(event, Frame):
                    conn.busy = True
                    try:
                        answer, codes = await self._handle(event.payload)
                    finally:
                        conn.busy = False
                    if answer:
                        conn.writer.write(answer)
                    # Bookkeeping after the write: it overlaps with the sender reading its ACK.
                    self._count_acks(answer, codes)
                    if answer:
                        await conn.writer.drain()
                    conn.last_activity = time.monotonic()
                else:
                    await self._reject_oversize(event.head, conn)
                    return

    async def _sweep_idle(self) -> None:
        """Close connections silent for longer than `idle_timeout_s` (idle or half-open peers)."""
        timeout = self._feed.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            limit = time.monotonic() - timeout
            for task, conn in list(self._connections.items()):
                if not conn.busy and conn.last_activity < limit:
                    log.info("feed %s: closing idle connection", self.name)
                    task.cancel()

    # -- messages ----------------------------------------------------------------------------------

    async def _handle(self, payload: bytes) -> tuple[bytes, tuple[str, ...] | None]:
        """Stage one message; the wire bytes to answer with (possibly empty when the sender asked for no
        acknowledgement) and the MSA-1 codes still to count for them (None: read them from the bytes)."""
        self._metrics.received()
        inspected = inspect(payload, self._feed)
        answer, codes = self._answer_for(inspected)
        request = stage_request(self.name, payload, inspected, received_at=time.time(), ack=answer)
        try:
            outcome = await self._sink.stage(request)
        except StoreError as exc:
            reason = "message store full" if isinstance(exc, StoreFullError) else "message store unavailable"
            return self._reject(inspected.header, inspected.charset, reason), ()  # counted by _reject
        stored = outcome.ack
        if outcome.duplicate:
            self._metrics.duplicate()
        if stored is answer:  # the ACK built above (not a duplicate's stored one): its codes are known
            return answer, codes
        return stored or b"", None

    def _answer_for(self, inspected: Inspected) -> tuple[bytes, tuple[str, ...]]:
        """The ACK frame(s) to send if the commit succeeds: accept ACK and/or application ACK as
        MSH-15/16 ask (original mode: one AA/AE); and their MSA-1 codes, in order."""
        header = inspected.header
        if inspected.error is None and header is not None and not (header.accept_ack_type
                                                                    or header.app_ack_type):
            # Original mode, header read: one AA (the general path below gives the same, slower).
            clock = self._clock
            return frame(build_ack(header, AckCode.AA, ack_control_id=clock.control_id(), now=clock.now(),
                                   charset=inspected.charset)), _AA
        success = inspected.error is None
        ok, error, _reject = choose_codes(header) if header else (AckCode.AA, AckCode.AE, AckCode.AR)
        now = self._clock.now()
        error_code = inspected.error.code if inspected.error else None
        error_text = inspected.error.reason if inspected.error else None
        enhanced = header is not None and header.enhanced_mode
        accept = not enhanced or wants_accept_ack(header, success)
        application = enhanced and wants_application_ack(header, success)
        if not accept and not application and self._feed.ack_policy == "always":
            accept = True  # never leave an MLLP sender waiting in silence
        parts: list[bytes] = []
        codes: list[str] = []
        if accept:
            code = ok if success else error
            parts.append(frame(build_ack(header, code, error_code=error_code,
                                         error_text=error_text, ack_control_id=self._clock.control_id(),
                                         now=now, charset=inspected.charset)))
            codes.append(code.value)
        if application:
            code = AckCode.AA if success else AckCode.AE
            parts.append(frame(build_ack(header, code,
                                         error_code=error_code, error_text=error_text,
                                         ack_control_id=self._clock.control_id(), now=now,
                                         charset=inspected.charset)))
            codes.append(code.value)
        return b"".join(parts), tuple(codes)

    def _reject(self, header: MessageHeader | None, charset: str, reason: str) -> bytes:
        """AR (original mode) or CR (enhanced mode): nothing was stored; the sender keeps the message."""
        reject = choose_codes(header)[2] if header else AckCode.AR
        self._metrics.ack(reject.value)
        return frame(build_ack(header, reject, error_code=ERR_APPLICATION_INTERNAL, error_text=reason,
                               ack_control_id=new_ack_control_id(), now=datetime.now().astimezone(),
                               charset=charset))

    async def _reject_oversize(self, head: bytes, conn: _Connection) -> None:
        log.warning("feed %s: frame over max_message_bytes=%d; answering reject and closing",
                    self.name, self._feed.max_message_bytes)
        self._metrics.received()
        header = read_header_lenient(head)
        conn.writer.write(self._reject(header, "iso-8859-1", "message larger than the receiver accepts"))
        try:
            await conn.writer.drain()
        except ConnectionError:
            pass

    def _count_acks(self, wire: bytes, codes: tuple[str, ...] | None = None) -> None:
        """Count each ACK frame in `wire` by its MSA-1 code (`codes`, when known)."""
        if codes is not None:
            acks = self._metrics.acks
            for code in codes:
                acks[code]()
            return
        start = 0
        while True:
            at = wire.find(b"\rMSA", start)
            if at < 0:
                return
            code = wire[at + 5:at + 7].decode("ascii", "replace")
            if code in self._metrics.acks:
                self._metrics.ack(code)
            start = at + 7
