"""MLLP framing: unit tests and Hypothesis properties (any chunking gives the same frames)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mllp.framing import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    Frame,
    MLLPFramer,
    OversizeFrame,
    frame,
)

MSG = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1\r"


def feed_all(framer: MLLPFramer, chunks: list[bytes]) -> list[Frame | OversizeFrame]:
    out: list[Frame | OversizeFrame] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_constants_are_the_mllp_bytes() -> None:
    assert (START_BLOCK, END_BLOCK, CARRIAGE_RETURN) == (b"\x0b", b"\x1c", b"\r")


def test_frame_wraps_payload() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\r"


@pytest.mark.parametrize("bad", [b"a\x0bb", b"a\x1cb"])
def test_frame_refuses_payload_with_framing_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError):
        frame(bad)


def test_one_frame_in_one_chunk() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(frame(MSG)) == [Frame(MSG)]
    assert framer.pending_bytes == 0
    assert framer.junk_bytes == 0
    assert not framer.in_frame


def test_several_frames_in_one_chunk() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(frame(b"one") + frame(b"two") + frame(b"three")) == [
        Frame(b"one"), Frame(b"two"), Frame(b"three")]


def test_byte_by_byte() -> None:
    framer = MLLPFramer(1000)
    data = frame(MSG) * 2
    out = feed_all(framer, [data[i : i + 1] for i in range(len(data))])
    assert out == [Frame(MSG), Frame(MSG)]
    assert framer.junk_bytes == 0


def test_pending_bytes_counts_incomplete_frame() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(b"\x0bMSH|") == []
    assert framer.pending_bytes == 4
    assert framer.in_frame
    assert framer.feed(b"rest\x1c\r") == [Frame(b"MSH|rest")]
    assert framer.pending_bytes == 0


def test_junk_between_frames_is_skipped_and_counted() -> None:
    framer = MLLPFramer(1000)
    out = framer.feed(b"junk" + frame(b"a") + b"\r\n\n" + frame(b"b") + b"tail")
    assert out == [Frame(b"a"), Frame(b"b")]
    assert framer.junk_bytes == len(b"junk") + len(b"\r\n\n") + len(b"tail")


def test_stray_end_block_outside_a_frame_is_junk() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(b"\x1c\r" + frame(b"a")) == [Frame(b"a")]
    assert framer.junk_bytes == 2


def test_missing_cr_after_end_block_is_tolerated() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(b"\x0ba\x1c\x0bb\x1c") == [Frame(b"a"), Frame(b"b")]
    assert framer.junk_bytes == 0


def test_cr_in_next_chunk_is_consumed_not_junk() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(b"\x0ba\x1c") == [Frame(b"a")]
    assert framer.feed(b"") == []
    assert framer.feed(b"\r") == []
    assert framer.junk_bytes == 0
    assert framer.feed(b"\r") == []
    assert framer.junk_bytes == 1  # only one CR belongs to the frame


def test_start_block_inside_open_frame_discards_partial_frame() -> None:
    framer = MLLPFramer(1000)
    assert framer.feed(b"\x0blost") == []
    assert framer.feed(b"more\x0bgood\x1c\r") == [Frame(b"good")]
    assert framer.junk_bytes == len(b"\x0blostmore")
    assert framer.pending_bytes == 0


def test_empty_frame_is_returned() -> None:
    assert MLLPFramer(10).feed(b"\x0b\x1c\r") == [Frame(b"")]


def test_payload_may_end_with_cr() -> None:
    assert MLLPFramer(10).feed(frame(b"a\r")) == [Frame(b"a\r")]


def test_frame_at_limit_is_accepted() -> None:
    assert MLLPFramer(5).feed(frame(b"12345")) == [Frame(b"12345")]


def test_oversize_frame_in_one_chunk() -> None:
    framer = MLLPFramer(5, head_bytes=3)
    assert framer.feed(frame(b"123456") + frame(b"ok")) == [OversizeFrame(b"123"), Frame(b"ok")]
    assert framer.junk_bytes == 0


def test_oversize_frame_is_reported_early_and_not_accumulated() -> None:
    framer = MLLPFramer(100, head_bytes=10)
    assert framer.feed(b"\x0b" + b"x" * 60) == []
    assert framer.pending_bytes == 60
    assert framer.feed(b"y" * 60) == [OversizeFrame(b"x" * 10)]
    assert framer.pending_bytes == 0
    for _ in range(100):  # a huge tail: never held
        assert framer.feed(b"z" * 10_000) == []
        assert framer.pending_bytes == 0
    assert framer.in_frame
    assert framer.feed(b"z\x1c\r" + frame(b"next")) == [Frame(b"next")]
    assert framer.junk_bytes == 0


def test_oversize_head_spans_held_bytes_and_new_chunk() -> None:
    framer = MLLPFramer(6, head_bytes=5)
    assert framer.feed(b"\x0bab") == []
    assert framer.feed(b"cdefgh") == [OversizeFrame(b"abcde")]


def test_start_block_inside_oversize_frame_starts_new_frame() -> None:
    framer = MLLPFramer(4, head_bytes=2)
    assert framer.feed(b"\x0b123456") == [OversizeFrame(b"12")]
    assert framer.feed(b"78" + frame(b"ok")) == [Frame(b"ok")]


@pytest.mark.parametrize(("limit", "head"), [(0, 10), (10, -1)])
def test_invalid_settings_are_refused(limit: int, head: int) -> None:
    with pytest.raises(ValueError):
        MLLPFramer(limit, head)


# --- properties ---------------------------------------------------------------------------------

payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
junk = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@settings(max_examples=300)
@given(st.lists(st.tuples(junk, payloads), max_size=12), junk, cuts)
def test_any_chunking_gives_the_same_frames(
    items: list[tuple[bytes, bytes]], trailing: bytes, cut_points: list[int]
) -> None:
    stream = b"".join(j + frame(p) for j, p in items) + trailing
    framer = MLLPFramer(10_000)
    out = feed_all(framer, split_at(stream, cut_points))
    assert out == [Frame(p) for _, p in items]
    # frame() always writes the CR, so every junk byte (even a leading CR) is junk.
    assert framer.junk_bytes == sum(len(j) for j, _ in items) + len(trailing)
    assert framer.pending_bytes == 0


@settings(max_examples=200)
@given(st.lists(st.tuples(payloads, st.booleans()), max_size=10), st.data())
def test_one_byte_chunks_and_optional_cr(items: list[tuple[bytes, bool]], data: st.DataObject) -> None:
    stream = b"".join(START_BLOCK + p + END_BLOCK + (CARRIAGE_RETURN if cr else b"") for p, cr in items)
    framer = MLLPFramer(10_000)
    one_byte = data.draw(st.booleans())
    chunks = [stream[i : i + 1] for i in range(len(stream))] if one_byte else [stream]
    assert feed_all(framer, chunks) == [Frame(p) for p, _ in items]
    assert framer.junk_bytes == 0


@settings(max_examples=300)
@given(
    st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
             max_size=10),
    st.integers(min_value=1, max_value=120),
    st.integers(min_value=0, max_value=50),
    cuts,
)
def test_oversize_frames_and_bounded_memory(
    items: list[bytes], limit: int, head: int, cut_points: list[int]
) -> None:
    stream = b"".join(frame(p) for p in items)
    framer = MLLPFramer(limit, head_bytes=head)
    out: list[Frame | OversizeFrame] = []
    for chunk in split_at(stream, cut_points):
        out.extend(framer.feed(chunk))
        assert framer.pending_bytes <= limit
    expected = [Frame(p) if len(p) <= limit else OversizeFrame(p[: min(head, limit)]) for p in items]
    assert out == expected
    assert framer.junk_bytes == 0


@settings(max_examples=200)
@given(payloads, payloads, cuts)
def test_lost_end_block_resynchronises_on_next_start_block(
    lost: bytes, good: bytes, cut_points: list[int]
) -> None:
    stream = START_BLOCK + lost + frame(good)
    framer = MLLPFramer(10_000)
    assert feed_all(framer, split_at(stream, cut_points)) == [Frame(good)]
    assert framer.junk_bytes == 1 + len(lost)
