"""Umlauts over MLLP: the bytes are stored exactly as received, the stored charset decodes them to the
right text, and the ACK echoes MSH-18."""

from __future__ import annotations

import pytest

from connectors.mllp.ack import AckCode, parse_ack
from tests.conftest import FIXTURES, corpus_dir
from tests.mllp.conftest import StartNode, msh_fields


@pytest.mark.parametrize(("fixture", "declared"), [("adt_a01_v25_latin1.hl7", "8859/1"),
                                                   ("adt_a01_v25_utf8.hl7", "UNICODE UTF-8")])
async def test_umlauts_round_trip_and_the_ack_echoes_msh18(running_node: StartNode, fixture: str,
                                                           declared: str) -> None:
    payload = (FIXTURES / "hl7" / fixture).read_bytes()
    assert msh_fields(payload)[18] == declared
    node = await running_node()
    connection = await node.raw()

    await connection.send_message(payload)
    ack_bytes = await connection.read_frame()

    ack = parse_ack(ack_bytes)
    assert (ack.code, ack.control_id) == (AckCode.AA, msh_fields(payload)[10])
    assert msh_fields(ack_bytes)[18] == declared
    [row] = node.rows()
    assert row.raw == payload
    assert "Müller" in row.raw.decode(row.charset)


@pytest.mark.corpus
async def test_real_latin1_without_msh18_and_its_utf8_twin_decode_to_the_same_text(
        running_node: StartNode) -> None:
    folder = corpus_dir("hl7v2", "diz-unimr-marburg")
    latin1 = (folder / "hl7-to-kafka__hl7v2-oru-r01-sample__ORU_R01.hl7").read_bytes()
    utf8 = (folder / "hl7-to-kafka__hl7v2-oru-r01-sample_utf8__ORU_R01.hl7").read_bytes()
    assert latin1 != utf8 and b"\xfc" in latin1 and "ü".encode() in utf8
    node = await running_node()
    connection = await node.raw()

    for payload in (latin1, utf8):  # MSH-15 AL, MSH-16 NE: one commit ACK each
        await connection.send_message(payload)
        ack_bytes = await connection.read_frame()
        assert parse_ack(ack_bytes).code == AckCode.CA
        assert msh_fields(ack_bytes)[18:19] == msh_fields(payload)[18:19]

    rows = node.rows()
    assert [row.raw for row in rows] == [latin1, utf8]
    texts = [row.raw.decode(row.charset) for row in rows]
    assert "Müstermann" in texts[0]
    # Identical apart from MSH (MSH-17/18 are only in the twin).
    assert texts[0].split("\r", 1)[1] == texts[1].split("\r", 1)[1]
