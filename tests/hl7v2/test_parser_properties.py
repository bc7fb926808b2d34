"""Hypothesis properties of the parser: built messages round-trip, and no input raises anything but
HL7ParseError (the parser is fed untrusted bytes)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.hl7v2.escape import Encoding, escape
from node.hl7v2.parser import HL7ParseError, Message, parse_message

SEPARATORS = "|^~\\&#!@$*+%/:;=?"
CHARSETS = ["utf-8", "iso8859-1", "cp1252", "ascii", "iso8859-15", "gb18030"]

Subs = list[str]
Comps = list[Subs]
Reps = list[Comps]
Fields = list[Reps]


@dataclass
class Built:
    encoding: Encoding
    charset: str
    raw: bytes
    segments: list[tuple[str, Fields]]
    """(id, fields); for MSH the fields start at MSH-3."""


@st.composite
def encodings(draw: st.DrawFn) -> Encoding:
    chars = draw(st.permutations(SEPARATORS))
    truncation = chars[5] if draw(st.booleans()) else ""
    return Encoding(chars[0], chars[1], chars[2], chars[3], chars[4], truncation)


def values(charset: str) -> st.SearchStrategy[str]:
    codec = "latin-1" if charset == "iso8859-1" else "utf-8"
    return st.text(
        alphabet=st.one_of(
            st.sampled_from([*SEPARATORS, "\r", "\n", " ", "\t", '"']),
            # NUL and BOM are excluded: at the very end of a message they are dropped as junk.
            st.characters(codec=codec, exclude_characters="\x00\ufeff"),
        ),
        max_size=6,
    )


def nested(value: st.SearchStrategy[str]) -> st.SearchStrategy[Fields]:
    subs = st.lists(value, min_size=1, max_size=3)
    comps = st.lists(subs, min_size=1, max_size=3)
    reps = st.lists(comps, min_size=1, max_size=3)
    return st.lists(reps, max_size=6)


SEGMENT_IDS = st.from_regex(r"[A-Z][A-Z0-9]{1,3}", fullmatch=True).filter(lambda s: s not in ("MSH", "FHS", "BHS"))


@st.composite
def messages(draw: st.DrawFn) -> Built:
    charset = draw(st.sampled_from(["utf-8", "iso8859-1"]))
    encoding = draw(encodings())
    value = values(charset)
    segments = [("MSH", draw(nested(value)))]
    segments += draw(st.lists(st.tuples(SEGMENT_IDS, nested(value)), max_size=5))
    terminator = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    lines = []
    for index, (segment_id, fields) in enumerate(segments):
        texts = [
            encoding.repetition.join(
                encoding.component.join(
                    encoding.subcomponent.join(escape(sub, encoding) for sub in comp) for comp in rep
                )
                for rep in reps
            )
            for reps in fields
        ]
        if index == 0:
            texts = [encoding.characters, *texts]
        lines.append(segment_id + "".join(encoding.field + text for text in texts))
    raw = (terminator.join(lines) + (terminator if draw(st.booleans()) else "")).encode(charset)
    if raw.endswith(b"\xef\xbb\xbf"):
        # Latin-1 "ï»¿" at the very end are the UTF-8 BOM's bytes, which the parser drops as junk.
        raw += terminator.encode()
    return Built(encoding, charset, raw, segments)


@given(built=messages())
def test_built_messages_round_trip(built: Built) -> None:
    message = parse_message(built.raw, built.charset)
    assert message.encoding == built.encoding
    assert [s.id for s in message.segments] == [segment_id for segment_id, _ in built.segments]
    for segment, (_, fields) in zip(message.segments, built.segments, strict=True):
        first = 3 if segment.id == "MSH" else 1
        assert len(segment) == len(fields) + first - 1
        for n, reps in enumerate(fields, start=first):
            field = segment.field(n)
            if reps == [[[""]]]:
                assert field.is_empty and field.repetitions == []
            else:
                assert len(field.repetitions) == len(reps)
            for r, comps in enumerate(reps, start=1):
                rep = field.repetitions[r - 1] if field.repetitions else field.first()
                if len(comps) > 1 or len(comps[0]) > 1 or comps[0][0]:
                    assert len(rep.components()) == len(comps)
                for c, subs in enumerate(comps, start=1):
                    assert rep.component(c) == subs[0]
                    assert rep.subcomponents(c) == (subs if subs != [""] else [])
                    for s, text in enumerate(subs, start=1):
                        assert segment.value(n, c, s, r) == text
                        assert field.value(c, s, r) == text
                        assert rep.sub(c, s) == text
                assert rep.component(len(comps) + 1) == ""
            assert segment.value(n, 1, 1, len(reps) + 1) == ""
        assert segment.value(len(segment) + 1) == ""


def exercise(message: Message) -> None:
    """Read everything a converter (or a viewer) could read."""
    for attribute in (
        "message_code",
        "trigger_event",
        "structure",
        "version",
        "control_id",
        "sending_app",
        "sending_facility",
        "receiving_app",
        "receiving_facility",
        "timestamp",
        "processing_id",
        "charset_declared",
    ):
        assert isinstance(getattr(message, attribute), str)
    repr(message)
    for segment in message.segments:
        assert message.first(segment.id) is not None
        assert segment in message.all(segment.id)
        repr(segment)
        assert segment.label
        for n in range(1, len(segment) + 2):
            field = segment.field(n)
            assert field.raw == segment.raw_field(n)
            field.is_null  # noqa: B018
            for c in range(1, 4):
                for s in range(1, 3):
                    for r in range(1, 3):
                        assert isinstance(segment.value(n, c, s, r), str)
            for rep in [*field.repetitions, field.first()]:
                repr(rep)
                rep.components()
                rep.components_raw()
                for c in range(1, len(rep.components_raw()) + 2):
                    rep.subcomponents(c)
                    rep.sub(c, 2)
                    rep.component_raw(c)


def parse_or_reject(raw: bytes, charset: str) -> None:
    try:
        message = parse_message(raw, charset)
    except HL7ParseError as error:
        assert error.code in (100, 102)
        return
    exercise(message)


FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(raw=st.binary(max_size=300), charset=st.sampled_from(CHARSETS))
def test_arbitrary_bytes_raise_only_hl7_parse_error(raw: bytes, charset: str) -> None:
    parse_or_reject(raw, charset)


HL7ISH = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "MSH",
                "PID",
                "OBX",
                "|",
                "^",
                "~",
                "\\",
                "&",
                "#",
                "\r",
                "\n",
                "\r\n",
                " ",
                "\t",
                "\\F\\",
                "\\X",
                "\\.sp",
                "\\.br\\",
                "\\Z",
                "\\C",
                "\\M",
                "\\H\\",
                "\\P\\",
                '""',
                "\ufeff",
                "\x00",
                "\x1c",
                "\x0b",
                "ü",
                "1",
                "A",
                "9999999999",
            ]
        ),
        st.text(max_size=4),
    ),
    max_size=60,
).map("".join)


@FUZZ
@given(
    prefix=st.sampled_from(["MSH|^~\\&|", "MSH|^~\\&#|", "MSH|^~\\\\&|", "MSH#$*@!#", "\ufeffMSH|^~\\&", "", "MSH"]),
    body=HL7ISH,
    charset=st.sampled_from(CHARSETS),
)
def test_hl7_like_text_raises_only_hl7_parse_error(prefix: str, body: str, charset: str) -> None:
    parse_or_reject((prefix + body).encode("utf-8", "surrogatepass"), charset)


@FUZZ
@given(built=messages(), data=st.data())
def test_mutated_messages_raise_only_hl7_parse_error(built: Built, data: st.DataObject) -> None:
    raw = bytearray(built.raw)
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        index = data.draw(st.integers(0, len(raw) - 1))
        operation = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if operation == "flip":
            raw[index] = data.draw(st.integers(0, 255))
        elif operation == "delete":
            del raw[index]
        else:
            raw[index:index] = data.draw(st.sampled_from([b"\r", b"\n", b"|", b"^", b"\\", b"\xff", b"\xc3"]))
    parse_or_reject(bytes(raw), data.draw(st.sampled_from(CHARSETS)))
