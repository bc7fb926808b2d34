"""Connection handling over real sockets: idle and half-open connections are closed, the allow list and
the connection cap refuse peers without sending a byte."""

from __future__ import annotations

import time

from connectors.mllp.ack import AckCode
from connectors.mllp.framing import START_BLOCK
from tests.mllp.conftest import StartNode, eventually, hl7_message

IDLE = 0.5


async def test_idle_connection_is_closed_by_the_server_after_idle_timeout(running_node: StartNode) -> None:
    node = await running_node(idle_timeout_s=IDLE)
    connection = await node.raw()
    opened = time.monotonic()

    received = await connection.read_eof(timeout=5)

    closed_after = time.monotonic() - opened
    assert received == b""
    assert IDLE * 0.9 <= closed_after < 2.0
    await eventually(lambda: node.metric("edge_node_mllp_connections") == 0)


async def test_half_open_connection_with_a_partial_frame_is_closed_and_nothing_is_stored(
        running_node: StartNode) -> None:
    node = await running_node(idle_timeout_s=IDLE)
    connection = await node.raw()
    await connection.send(START_BLOCK + hl7_message("HALF-1")[:40])
    sent = time.monotonic()

    received = await connection.read_eof(timeout=5)

    assert received == b""
    assert IDLE * 0.9 <= time.monotonic() - sent < 2.0
    assert node.counts() == {}


async def test_busy_connection_is_not_closed_while_it_keeps_sending(running_node: StartNode) -> None:
    node = await running_node(idle_timeout_s=IDLE)
    client = await node.client()
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < 2 * IDLE:  # far longer than the idle timeout, never idle
        [ack] = await client.exchange(hl7_message(f"BUSY-{sent}"))
        assert ack.code == AckCode.AA
        sent += 1
    assert node.counts() == {"staged": sent}


async def test_peer_outside_the_allow_list_is_refused_without_a_byte_and_counted(
        running_node: StartNode) -> None:
    node = await running_node(allow=["10.0.0.0/8"])
    connection = await node.raw()  # the TCP connect succeeds: the refusal is the node's, not the kernel's

    assert await connection.read_eof() == b""
    assert node.metric("edge_node_mllp_connections_refused_total", reason="address not allowed") == 1
    assert node.metric("edge_node_messages_received_total") == 0


async def test_connection_beyond_max_connections_is_closed_and_a_freed_slot_is_reused(
        running_node: StartNode) -> None:
    node = await running_node(max_connections=2)
    first, second = await node.raw(), await node.raw()
    for n, connection in enumerate((first, second)):  # both are being served
        [ack] = await connection.exchange(hl7_message(f"CAP-{n}"))
        assert ack.code == AckCode.AA

    third = await node.raw()
    assert await third.read_eof() == b""
    assert node.metric("edge_node_mllp_connections_refused_total", reason="too many connections") == 1
    assert node.metric("edge_node_mllp_connections") == 2

    await first.close()
    await eventually(lambda: node.metric("edge_node_mllp_connections") == 1)
    fourth = await node.raw()
    [ack] = await fourth.exchange(hl7_message("CAP-4"))
    assert ack.code == AckCode.AA
