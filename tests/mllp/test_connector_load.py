"""Many messages per connection, many connections at once, and resends: real sockets, real store."""

from __future__ import annotations

import asyncio

from connectors.mllp.ack import AckCode
from connectors.mllp.framing import frame
from node.model import MessageState
from tests.mllp.conftest import StartNode, hl7_message

CONNECTIONS = 8
PER_CONNECTION = 50
RESENDS = 1000


async def test_eight_concurrent_connections_of_fifty_messages_all_get_aa_and_share_fsyncs(
        running_node: StartNode) -> None:
    node = await running_node()
    clients = [await node.client() for _ in range(CONNECTIONS)]

    async def sender(index: int) -> list[tuple[str, list[AckCode], list[str]]]:
        results = []
        for n in range(PER_CONNECTION):
            control_id = f"C{index}-{n:03d}"
            acks = await clients[index].exchange(hl7_message(control_id))
            results.append((control_id, [a.code for a in acks], [a.control_id for a in acks]))
        return results

    per_client = await asyncio.gather(*(sender(i) for i in range(CONNECTIONS)))

    for results in per_client:
        for control_id, codes, echoed in results:
            assert codes == [AckCode.AA]
            assert echoed == [control_id]
    rows = node.rows()
    assert len(rows) == CONNECTIONS * PER_CONNECTION
    assert {row.control_id for row in rows} == {f"C{i}-{n:03d}" for i in range(CONNECTIONS)
                                                for n in range(PER_CONNECTION)}
    assert all(row.state == MessageState.STAGED for row in rows)
    # Group commit: concurrent connections shared transactions (and fsyncs).
    assert 0 < node.node.writer.commits < CONNECTIONS * PER_CONNECTION
    assert node.metric("edge_node_acks_total", code="AA") == CONNECTIONS * PER_CONNECTION


async def test_one_message_resent_a_thousand_times_is_one_row_and_gets_the_first_ack_byte_for_byte(
        running_node: StartNode) -> None:
    node = await running_node()
    connection = await node.raw()
    payload = hl7_message("RESEND-1")

    answers = []
    for _ in range(RESENDS):
        await connection.send_message(payload)
        answers.append(await connection.read_frame())

    first = answers[0]
    assert first.split(b"\r")[1] == b"MSA|AA|RESEND-1"
    assert all(answer == first for answer in answers)  # same ACK control id and timestamp too
    rows = node.rows()
    assert len(rows) == 1
    assert rows[0].raw == payload
    assert rows[0].ack is not None and first in rows[0].ack
    assert node.metric("edge_node_messages_received_total") == RESENDS
    assert node.metric("edge_node_messages_duplicate_total") == RESENDS - 1


async def test_pipelined_messages_on_one_connection_are_acked_in_order(running_node: StartNode) -> None:
    node = await running_node()
    connection = await node.raw()
    ids = [f"PIPE-{n:02d}" for n in range(20)]

    await connection.send(b"".join(frame(hl7_message(control_id)) for control_id in ids))  # one write
    acks = [await connection.read_ack() for _ in ids]

    assert [(a.code, a.control_id) for a in acks] == [(AckCode.AA, control_id) for control_id in ids]
    assert [row.control_id for row in node.rows()] == ids
