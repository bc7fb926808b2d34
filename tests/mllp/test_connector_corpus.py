"""The whole HL7 v2 corpus (../shared/corpus/hl7v2, 200 messages) sent by a third-party client
(python-hl7's blocking `hl7.client.MLLPClient`) to a real in-process node: every message gets the
ACK(s) its MSH-15/16 ask for, echoing its MSH-10, and is stored byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

import hl7.client
import pytest

from connectors.mllp.ack import AckCode, ParsedAck, parse_ack
from connectors.mllp.framing import Frame, MLLPFramer
from node.model import MessageState
from tests.conftest import corpus_dir
from tests.mllp.conftest import StartNode, msh_fields

pytestmark = pytest.mark.corpus

BAD_HEADER = "hl7-to-kafka__hl7v2-mllp-sample__ORU_R01.hl7"
"""The one corpus message whose MSH cannot be read strictly (MSH-2 is ``^~\\\\&``)."""
EXPECTED_COUNT = 200


def table_0155(value: str, success: bool) -> bool:
    """HL7 table 0155, written out independently of the product: NE never, ER on error only, SU on
    success only; AL, empty or unknown values: always."""
    value = value.strip().upper()
    return {"NE": False, "ER": not success, "SU": success}.get(value, True)


def expected_codes(payload: bytes, success: bool) -> list[AckCode]:
    """The ACK codes a message must get with ack_policy "always"."""
    fields = msh_fields(payload) + [""] * 20
    msh15, msh16 = fields[15].strip(), fields[16].strip()
    if not msh15 and not msh16:
        return [AckCode.AA if success else AckCode.AE]
    codes = []
    if table_0155(msh15, success):
        codes.append(AckCode.CA if success else AckCode.CE)
    if table_0155(msh16, success):
        codes.append(AckCode.AA if success else AckCode.AE)
    return codes or [AckCode.CA if success else AckCode.CE]


@dataclass
class Answer:
    path: Path
    payload: bytes
    acks: list[ParsedAck]


def send_all_with_python_hl7(port: int, files: list[Path], expected: dict[Path, int]) -> list[Answer]:
    """Blocking: one python-hl7 connection, every file in turn. python-hl7's `send_message` does ONE
    `recv(4096)`, so a second ACK frame (enhanced mode) or a split frame may still be in flight: keep
    reading from its socket until the expected number of frames is in."""
    answers = []
    framer = MLLPFramer(1024 * 1024)
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        client.socket.settimeout(10)
        for path in files:
            payload = path.read_bytes()
            frames = [e.payload for e in framer.feed(client.send_message(payload)) if isinstance(e, Frame)]
            while len(frames) < expected[path]:
                data = client.socket.recv(4096)
                assert data, f"{path.name}: connection closed after {len(frames)} ACK frame(s)"
                frames += [e.payload for e in framer.feed(data) if isinstance(e, Frame)]
            answers.append(Answer(path, payload, [parse_ack(f) for f in frames]))
    return answers


async def test_every_corpus_message_sent_by_python_hl7_is_acked_and_stored_byte_exact(
        running_node: StartNode) -> None:
    root = corpus_dir("hl7v2")
    files = sorted(root.rglob("*.hl7"))
    assert len(files) == EXPECTED_COUNT
    assert sum(1 for f in files if f.name == BAD_HEADER) == 1
    expected = {f: expected_codes(f.read_bytes(), success=f.name != BAD_HEADER) for f in files}
    node = await running_node()

    answers = await asyncio.to_thread(send_all_with_python_hl7, node.port, files,
                                      {f: len(codes) for f, codes in expected.items()})

    # The next frame after a message's expected ACKs is the next message's: a surplus frame would have
    # shown up there as a wrong code or MSA-2.
    for answer in answers:
        control_id = msh_fields(answer.payload)[10]
        assert [a.code for a in answer.acks] == expected[answer.path], answer.path.name
        assert all(a.control_id == control_id for a in answer.acks), answer.path.name
    bad = next(a for a in answers if a.path.name == BAD_HEADER)
    assert bad.acks[0].error_code == 102  # table 0357: data type error (MSH-2)

    rows = {row.sha256: row for row in node.rows()}
    assert len(rows) == EXPECTED_COUNT
    for answer in answers:
        row = rows[hashlib.sha256(answer.payload).digest()]
        assert row.raw == answer.payload, answer.path.name
        assert row.control_id == msh_fields(answer.payload)[10]
        if answer.path.name == BAD_HEADER:
            assert row.state == MessageState.FAILED
            assert row.error and "MSH-2" in row.error
        else:
            assert row.state == MessageState.STAGED, answer.path.name
            assert row.error is None
    assert node.metric("edge_node_messages_received_total") == EXPECTED_COUNT
