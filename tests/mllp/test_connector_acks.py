"""Which acknowledgements the listener sends: original and enhanced mode (MSH-15/16, table 0155) under
both ack policies, and error ACKs for unreadable headers. Each case is followed by an original-mode
probe message on the same connection: the frame after the expected ACKs must be the probe's AA, so a
surplus (or missing) ACK shows up."""

from __future__ import annotations

import pytest

from connectors.mllp.ack import AckCode
from node.model import MessageState
from tests.mllp.conftest import RawConnection, StartNode, hl7_message

CA, AA, AE = AckCode.CA, AckCode.AA, AckCode.AE


async def assert_probe_answered_next(connection: RawConnection, name: str = "PROBE") -> None:
    """The next frame on `connection` is the AA of a fresh probe message: nothing else is pending."""
    await connection.send_message(hl7_message(name))
    ack = await connection.read_ack()
    assert (ack.code, ack.control_id) == (AA, name)
    assert connection.pending_frames == 0


@pytest.mark.parametrize(
    ("msh15", "msh16", "policy", "expected"),
    [
        ("", "", "always", [AA]),
        ("AL", "AL", "always", [CA, AA]),
        ("AL", "NE", "always", [CA]),
        ("NE", "AL", "always", [AA]),
        ("NE", "NE", "always", [CA]),
        ("NE", "NE", "msh", []),
        ("ER", "ER", "always", [CA]),
        ("ER", "ER", "msh", []),
        ("SU", "SU", "msh", [CA, AA]),
        ("AL", "AL", "msh", [CA, AA]),
    ],
    ids=["original", "AL-AL", "AL-NE", "NE-AL", "NE-NE-always", "NE-NE-msh", "ER-ER-always", "ER-ER-msh",
         "SU-SU-msh", "AL-AL-msh"],
)
async def test_enhanced_mode_answers_what_msh15_and_msh16_ask_for(
        running_node: StartNode, msh15: str, msh16: str, policy: str, expected: list[AckCode]) -> None:
    node = await running_node(ack_policy=policy)
    connection = await node.raw()

    await connection.send_message(hl7_message("ENH-1", msh15=msh15, msh16=msh16))
    acks = [await connection.read_ack() for _ in expected]

    assert [a.code for a in acks] == expected
    assert all(a.control_id == "ENH-1" and a.error_code is None for a in acks)
    await assert_probe_answered_next(connection)  # also: the connection still works after silence
    row = node.rows()[0]
    assert (row.control_id, row.state, row.error) == ("ENH-1", MessageState.STAGED, None)


async def test_message_without_msh10_gets_ae_101_and_is_kept_as_failed_with_the_reason(
        running_node: StartNode) -> None:
    node = await running_node()
    connection = await node.raw()
    payload = hl7_message("")

    [ack] = await connection.exchange(payload)

    assert (ack.code, ack.control_id, ack.error_code) == (AE, "", 101)
    assert "MSH-10" in ack.text
    await assert_probe_answered_next(connection)
    [row, _probe] = node.rows()
    assert row.raw == payload
    assert row.state == MessageState.FAILED
    assert row.error is not None and "MSH-10" in row.error
    assert node.metric("edge_node_acks_total", code="AE") == 1


async def test_message_whose_first_segment_is_not_msh_gets_ae_100_and_is_kept_as_failed(
        running_node: StartNode) -> None:
    node = await running_node()
    connection = await node.raw()
    payload = b"PID|1||12345^^^SITE^PI||Doe^John\rPV1|1|I\r"

    [ack] = await connection.exchange(payload)

    assert (ack.code, ack.error_code) == (AE, 100)
    await assert_probe_answered_next(connection)
    [row, _probe] = node.rows()
    assert row.raw == payload
    assert row.state == MessageState.FAILED
    assert row.error is not None and "MSH" in row.error


async def test_enhanced_mode_message_with_unreadable_header_gets_ce_then_ae(running_node: StartNode) -> None:
    node = await running_node()
    connection = await node.raw()
    payload = hl7_message("", msh15="AL", msh16="AL")

    acks = await connection.exchange(payload, frames=2)

    assert [(a.code, a.error_code) for a in acks] == [(AckCode.CE, 101), (AE, 101)]
    await assert_probe_answered_next(connection)
    assert node.counts() == {"failed": 1, "staged": 1}
