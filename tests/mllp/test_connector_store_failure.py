"""A store that cannot commit never yields a positive ACK: the real writer's disk cap
(`GroupCommitWriter.set_max_bytes`, SQLite's own SQLITE_FULL) makes commits fail; the sender gets a
reject with ERR 207, nothing is stored, and once space is back the same message is accepted."""

from __future__ import annotations

import asyncio

import pytest

from connectors.mllp.ack import AckCode
from node.model import MessageState
from tests.mllp.conftest import StartNode, hl7_message

BIG_OBX = "OBX|1|TX|NOTE||" + "Befund " * 10_000  # ~70 KB: needs new pages whatever is free


@pytest.mark.parametrize(("msh15", "msh16", "reject", "accepted"),
                         [("", "", AckCode.AR, [AckCode.AA]), ("AL", "AL", AckCode.CR, [AckCode.CA, AckCode.AA])],
                         ids=["original", "enhanced"])
async def test_full_store_answers_reject_207_stores_nothing_and_accepts_once_space_is_back(
        running_node: StartNode, msh15: str, msh16: str, reject: AckCode, accepted: list[AckCode]) -> None:
    node = await running_node()
    connection = await node.raw()
    [first] = await connection.exchange(hl7_message("BEFORE-1"))
    assert first.code == AckCode.AA
    await asyncio.to_thread(node.node.writer.set_max_bytes, 1)  # cap at the current size: nothing fits
    payload = hl7_message("FULL-1", msh15=msh15, msh16=msh16, extra=BIG_OBX)

    [ack] = await connection.exchange(payload)  # exactly one frame: no commit, no application ACK

    assert (ack.code, ack.control_id, ack.error_code) == (reject, "FULL-1", 207)
    assert [row.control_id for row in node.rows()] == ["BEFORE-1"]
    assert node.metric("edge_node_store_commit_failures_total", reason="full") == 1
    assert node.metric("edge_node_acks_total", code=reject.value) == 1
    assert node.node.health_problem() is None  # full is retryable, not fatal: the node keeps running

    await asyncio.to_thread(node.node.writer.set_max_bytes, None)
    again = await connection.exchange(payload, frames=len(accepted))
    [probe] = await connection.exchange(hl7_message("PROBE"))  # nothing else was pending

    assert [(a.code, a.control_id) for a in again] == [(code, "FULL-1") for code in accepted]
    assert probe.control_id == "PROBE"
    rows = node.rows()
    assert [(row.control_id, row.state) for row in rows] == [
        ("BEFORE-1", MessageState.STAGED), ("FULL-1", MessageState.STAGED), ("PROBE", MessageState.STAGED)]
    assert rows[1].raw == payload
    assert node.metric("edge_node_messages_duplicate_total") == 0  # the rejected try left no row behind
