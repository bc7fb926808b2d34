"""The listener's byte-level behaviour over real sockets: frames over max_message_bytes are rejected and
the connection dropped without reading the rest; junk between frames is skipped and counted."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from connectors.mllp.ack import AckCode, parse_ack
from connectors.mllp.framing import END_BLOCK, START_BLOCK, Frame, MLLPFramer, frame
from tests.mllp.conftest import StartNode, hl7_message

LIMIT = 4096
MIB = 1024 * 1024


def big_message_start(control_id: str, size: int) -> bytes:
    """START_BLOCK and the first `size` bytes of a message with a readable MSH and a huge OBX."""
    head = hl7_message(control_id, extra="OBX|1|TX|TEXT||")
    return START_BLOCK + head + b"x" * (size - len(head))


async def test_frame_over_max_message_bytes_gets_ar_207_and_the_connection_is_closed(
        running_node: StartNode) -> None:
    node = await running_node(max_message_bytes=LIMIT)
    bystander = await node.client()  # a connection open before, and still served after
    connection = await node.raw()
    body = big_message_start("BIG-1", MIB)

    # The first piece crosses the limit: the answer must come before the frame is complete.
    await connection.send(body[: LIMIT + 1024])
    ack = await connection.read_ack()
    assert (ack.code, ack.control_id, ack.error_code) == (AckCode.AR, "BIG-1", 207)
    assert await connection.read_eof() == b""  # then the server closes: no further byte

    refused_write = False
    try:
        for start in range(LIMIT + 1024, len(body), 64 * 1024):
            await connection.send(body[start:start + 64 * 1024])
            await asyncio.sleep(0)  # let the transport see the peer's reset
    except ConnectionError:
        refused_write = True
    assert refused_write, "the rest of the 1 MiB frame was accepted by a closed connection"

    assert node.counts() == {}
    assert node.metric("edge_node_acks_total", code="AR") == 1
    assert [a.code for a in await bystander.exchange(hl7_message("AFTER-1"))] == [AckCode.AA]
    fresh = await node.client()
    assert [a.code for a in await fresh.exchange(hl7_message("AFTER-2"))] == [AckCode.AA]
    assert node.counts() == {"staged": 2}


def blast_unterminated_frame(port: int, total: int) -> tuple[int, bytes, BaseException | None]:
    """Blocking: send an MLLP frame that never ends, `total` bytes, 1 MiB per send. Returns the bytes
    the kernel accepted before the connection broke, what the server answered, and the error."""
    sent = 0
    error: BaseException | None = None
    chunk = b"y" * MIB
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(big_message_start("HUGE-1", MIB))
            sent = MIB
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except (ConnectionError, TimeoutError) as exc:
            error = exc
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except (ConnectionError, TimeoutError):
            pass
    return sent, received, error


async def test_endless_frame_is_cut_off_soon_after_the_limit_instead_of_being_read(
        running_node: StartNode) -> None:
    node = await running_node(max_message_bytes=LIMIT)
    total = 64 * MIB

    started = time.monotonic()
    sent, received, error = await asyncio.to_thread(blast_unterminated_frame, node.port, total)
    elapsed = time.monotonic() - started

    # A reset, not a stall (TimeoutError: the server stopped reading but kept the socket) and not
    # 64 MiB swallowed (the server read and dropped everything instead of hanging up).
    assert isinstance(error, ConnectionError), f"{sent} bytes sent, then {error!r}"
    assert sent < 16 * MIB  # kernel socket buffers, not the node, held whatever went through
    assert elapsed < 5
    frames = [e for e in MLLPFramer(MIB).feed(received) if isinstance(e, Frame)]
    assert [parse_ack(f.payload).code for f in frames] in ([], [AckCode.AR])  # a reset may eat the AR
    assert node.counts() == {}
    assert node.metric("edge_node_messages_received_total") == 1
    assert node.metric("edge_node_acks_total", code="AR") == 1
    client = await node.client()
    assert [a.code for a in await client.exchange(hl7_message("AFTER-1"))] == [AckCode.AA]


async def test_junk_between_frames_is_skipped_and_counted(running_node: StartNode) -> None:
    node = await running_node()
    connection = await node.raw()
    rng = random.Random(20240102)
    noise = bytes(b for b in rng.randbytes(500) if b != START_BLOCK[0])
    junk = [b"\r\n\r\n", noise, b"\r\n" + END_BLOCK + b"garbage\n", b"\x00\xff\xfe", b"\n"]

    stream = (junk[0] + frame(hl7_message("JUNK-1")) + junk[1] + frame(hl7_message("JUNK-2")) + junk[2]
              + frame(hl7_message("JUNK-3")) + junk[3])
    for start in range(0, len(stream), 37):  # arbitrary chunk boundaries, also inside frames
        await connection.send(stream[start:start + 37])
    acks = [await connection.read_ack() for _ in range(3)]
    await connection.send(junk[4])
    [last] = await connection.exchange(hl7_message("JUNK-4"))

    assert [(a.code, a.control_id) for a in [*acks, last]] == [
        (AckCode.AA, "JUNK-1"), (AckCode.AA, "JUNK-2"), (AckCode.AA, "JUNK-3"), (AckCode.AA, "JUNK-4")]
    assert [row.raw for row in node.rows()] == [hl7_message(f"JUNK-{n}") for n in range(1, 5)]
    assert node.metric("edge_node_mllp_junk_bytes_total") == sum(len(j) for j in junk)
