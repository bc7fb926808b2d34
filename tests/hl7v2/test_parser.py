"""The hot-path parser: API contract, tolerance, MSH numbering, escapes, table 0357 errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from node.errors import MessageError
from node.hl7v2.escape import Encoding
from node.hl7v2.parser import (
    DATA_TYPE_ERROR,
    NULL,
    SEGMENT_SEQUENCE_ERROR,
    HL7ParseError,
    Message,
    Segment,
    parse_message,
)

ADT = (
    "MSH|^~\\&|KIS|KLINIKUM^1.2.276.0.1^ISO|EDGE|DIZ|20240315103000+0100||ADT^A01^ADT_A01|CTRL1|P|2.5.1|||AL|NE||"
    "8859/1~UNICODE UTF-8\r"
    "EVN|A01|20240315103000\r"
    "PID|1||4711^^^KIS&1.2.276.0.1.2&ISO^MR~K-99^^^KASSE^KV||Müller^Hans^Peter^^Dr.^^L~Mueller^Hans^^^^^B||19700101|M|||"
    'Hauptstr. 1^^Gießen^^35392^D||""|\r'
    "PV1|1|I|STA1^ZI 3^BETT 2^KLINIKUM||||||||||||||||F12345\r"
    "ZBE|30674176^ORBIS|202208221309||INSERT\r"
)


def parse(text: str, charset: str = "utf-8") -> Message:
    return parse_message(text.encode(charset), charset)


@pytest.fixture
def adt() -> Message:
    return parse(ADT)


# --- segments ---------------------------------------------------------------------------------------


def test_segments_in_order_with_positions(adt: Message) -> None:
    assert [s.id for s in adt.segments] == ["MSH", "EVN", "PID", "PV1", "ZBE"]
    assert [s.position for s in adt.segments] == [1, 2, 3, 4, 5]
    assert len(adt) == 5
    assert list(adt) == adt.segments


def test_first_and_all(adt: Message) -> None:
    pid = adt.first("PID")
    assert pid is not None and pid.position == 3
    assert adt.first("OBX") is None
    assert adt.all("OBX") == []
    assert adt.all("ZBE") == [adt.segments[4]]
    assert adt.msh is adt.segments[0] is adt.first("MSH")


def test_all_returns_every_repeat_in_order() -> None:
    message = parse("MSH|^~\\&|A\rOBX|1|NM\rNTE|1\rOBX|2|ST\rOBX|3|TX\r")
    assert [s.value(1) for s in message.all("OBX")] == ["1", "2", "3"]
    message.all("OBX").clear()  # a new list each time
    assert len(message.all("OBX")) == 3


def test_segment_raw_and_label(adt: Message) -> None:
    pv1 = adt.segments[3]
    assert pv1.raw.startswith("PV1|1|I|")
    assert pv1.label == "PV1 (segment 4)"
    assert repr(pv1) == "<Segment PV1 (segment 4)>"


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_segment_ends(end: str) -> None:
    message = parse(ADT.replace("\r", end))
    assert [s.id for s in message.segments] == ["MSH", "EVN", "PID", "PV1", "ZBE"]
    assert message.first("PV1").value(19) == "F12345"  # type: ignore[union-attr]


def test_mixed_segment_ends_and_blank_lines() -> None:
    message = parse("MSH|^~\\&|A\r\n\r\nPID|1\n\n  \n\t\rPV1|1\r\r\nOBX|1")
    assert [s.id for s in message.segments] == ["MSH", "PID", "PV1", "OBX"]
    assert [s.position for s in message.segments] == [1, 2, 3, 4]


def test_message_without_final_terminator() -> None:
    assert parse("MSH|^~\\&|A\rPID|1||4711").first("PID").value(3) == "4711"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbfMSH|^~\\&|A\rPID|1\r",
        b"\r\n \t\x00MSH|^~\\&|A\rPID|1\r",
        b"MSH|^~\\&|A\rPID|1\r\xef\xbb\xbf",
        b"MSH|^~\\&|A\rPID|1\r\n\x00\x00",
        b"MSH|^~\\&|A\rPID|1\x00",
        b"\x0bMSH|^~\\&|A\rPID|1\r\x1c\r",  # MLLP framing bytes left over
        b"MSH|^~\\&|A\r\xef\xbb\xbfPID|1\r  \r",
    ],
)
@pytest.mark.parametrize("charset", ["utf-8", "iso8859-1", "cp1252"])
def test_bom_nul_and_whitespace_around_the_message(raw: bytes, charset: str) -> None:
    message = parse_message(raw, charset)
    assert [s.raw for s in message.segments] == ["MSH|^~\\&|A", "PID|1"]


def test_leading_whitespace_before_a_segment_id_is_skipped() -> None:
    message = parse("MSH|^~\\&|A\r  PID|1\r\tPV1|2\r")
    assert [(s.id, s.raw) for s in message.segments[1:]] == [("PID", "PID|1"), ("PV1", "PV1|2")]


def test_trailing_spaces_are_data() -> None:
    pid = parse("MSH|^~\\&|A\rPID|1||x  \r").first("PID")
    assert pid is not None and pid.value(3) == "x  "


def test_odd_segment_ids_are_kept() -> None:
    message = parse("MSH|^~\\&|A\rZZZZ|1\rAB|2\rNOSEPARATOR\rweitere Befunde: gut|x\r|leading\r")
    assert [s.id for s in message.segments] == ["MSH", "ZZZZ", "AB", "NOSEPARATOR", "weitere Befunde: gut", ""]
    zzzz, ab, nosep, text, empty = message.segments[1:]
    assert (zzzz.value(1), ab.value(1), len(nosep), nosep.value(1), text.value(1), empty.value(1)) == (
        "1",
        "2",
        0,
        "",
        "x",
        "leading",
    )
    assert message.first("ZZZZ") is zzzz
    # Labels leave out ids that are not segment-id shaped (they may be patient text).
    assert [s.label for s in message.segments[1:]] == ["segment 2", "segment 3", "segment 4", "segment 5", "segment 6"]


def test_segment_is_truthy_even_without_fields() -> None:
    segment = parse("MSH|^~\\&|A\rZZZ\r").first("ZZZ")
    assert segment is not None
    assert len(segment) == 0
    assert bool(segment)


# --- fields, repetitions, components, subcomponents -------------------------------------------------


def test_value_defaults_read_the_first_leaf(adt: Message) -> None:
    pid = adt.first("PID")
    assert pid is not None
    assert pid.value(5) == "Müller"
    assert pid.value(3) == "4711"
    assert pid.value(7) == "19700101"


def test_value_components_subcomponents_repetitions(adt: Message) -> None:
    pid = adt.first("PID")
    assert pid is not None
    assert pid.value(5, 2) == "Hans"
    assert pid.value(5, 5) == "Dr."
    assert pid.value(5, 1, rep=2) == "Mueller"
    assert pid.value(5, 7, rep=2) == "B"
    assert pid.value(3, 4) == "KIS"
    assert pid.value(3, 4, 2) == "1.2.276.0.1.2"
    assert pid.value(3, 4, 3) == "ISO"
    assert pid.value(3, 1, rep=2) == "K-99"
    assert pid.value(11, 3) == "Gießen"


@pytest.mark.parametrize(
    ("n", "component", "sub", "rep"),
    [(40, 1, 1, 1), (5, 9, 1, 1), (5, 1, 2, 1), (3, 4, 4, 1), (5, 1, 1, 3), (2, 1, 1, 1), (5, 3, 1, 2)],
)
def test_absent_values_are_empty_strings(adt: Message, n: int, component: int, sub: int, rep: int) -> None:
    pid = adt.first("PID")
    assert pid is not None
    assert pid.value(n, component, sub, rep) == ""


def test_field_object(adt: Message) -> None:
    pid = adt.first("PID")
    assert pid is not None
    field = pid.field(3)
    assert field is pid.field(3)  # cached
    assert field.raw == "4711^^^KIS&1.2.276.0.1.2&ISO^MR~K-99^^^KASSE^KV"
    assert not field.is_empty and not field.is_null
    assert [r.raw for r in field.repetitions] == ["4711^^^KIS&1.2.276.0.1.2&ISO^MR", "K-99^^^KASSE^KV"]
    assert field.first() is field.repetitions[0]
    assert field.value(4, 2) == "1.2.276.0.1.2"
    assert field.value(1, rep=2) == "K-99"
    assert repr(field) == f"<Field {len(field.raw)} chars>"


def test_rep_object(adt: Message) -> None:
    pid = adt.first("PID")
    assert pid is not None
    rep = pid.field(3).first()
    assert rep.component(1) == "4711"
    assert rep.component(2) == ""
    assert rep.component(4) == "KIS"  # the first subcomponent
    assert rep.component(9) == ""
    assert rep.sub(4, 1) == "KIS"
    assert rep.sub(4, 2) == "1.2.276.0.1.2"
    assert rep.sub(4, 9) == ""
    assert rep.sub(9, 1) == ""
    assert rep.subcomponents(4) == ["KIS", "1.2.276.0.1.2", "ISO"]
    assert rep.subcomponents(1) == ["4711"]
    assert rep.subcomponents(2) == []
    assert rep.components() == ["4711", "", "", "KIS", "MR"]
    assert rep.component_raw(4) == "KIS&1.2.276.0.1.2&ISO"
    assert rep.components_raw() == ["4711", "", "", "KIS&1.2.276.0.1.2&ISO", "MR"]
    assert not rep.is_empty and not rep.is_null
    assert "4711" not in repr(rep)


def test_missing_field_is_an_empty_field(adt: Message) -> None:
    pv1 = adt.first("PV1")
    assert pv1 is not None
    for field in (pv1.field(99), pv1.field(5)):
        assert field.raw == ""
        assert field.is_empty and not field.is_null
        assert field.repetitions == []
        assert field.first().is_empty
        assert field.first().components() == []
        assert field.first().component(1) == ""
        assert field.value(2, 2, 2) == ""


def test_empty_repetitions_keep_their_place() -> None:
    pid = parse("MSH|^~\\&|A\rPID|1||~A1~~A3~\r").first("PID")
    assert pid is not None
    reps = pid.field(3).repetitions
    assert [r.raw for r in reps] == ["", "A1", "", "A3", ""]
    assert [r.is_empty for r in reps] == [True, False, True, False, True]
    assert pid.value(3, rep=4) == "A3"


def test_repetitions_components_and_subcomponents_everywhere() -> None:
    obx = parse("MSH|^~\\&|A\rOBX|1|&&foo^bar&bar2&^baz|a~b~c|x^y^z^extra^more\r").first("OBX")
    assert obx is not None
    assert obx.field(2).first().subcomponents(1) == ["", "", "foo"]
    assert obx.field(2).first().subcomponents(2) == ["bar", "bar2", ""]
    assert obx.value(2, 2, 2) == "bar2"
    assert [r.component(1) for r in obx.field(3).repetitions] == ["a", "b", "c"]
    assert obx.field(4).first().components() == ["x", "y", "z", "extra", "more"]


def test_explicit_null(adt: Message) -> None:
    pid = adt.first("PID")
    assert pid is not None
    assert pid.field(13).is_null
    assert pid.field(13).first().is_null
    assert pid.value(13) == NULL == '""'  # returned as sent: the converter decides
    assert not pid.field(14).is_null


def test_len_counts_fields_on_the_wire() -> None:
    message = parse("MSH|^~\\&|A|B\rPID|1||x||\rPV1\rNTE|\r")
    msh, pid, pv1, nte = message.segments
    assert (len(msh), len(pid), len(pv1), len(nte)) == (4, 5, 0, 1)
    assert pid.fields_raw() == ["1", "", "x", "", ""]
    assert [f.raw for f in pid.fields()] == ["1", "", "x", "", ""]
    assert msh.fields_raw() == ["|", "^~\\&", "A", "B"]
    assert pid.raw_field(3) == "x"
    assert pid.raw_field(6) == ""


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.value(0),
        lambda s: s.value(-1),
        lambda s: s.field(0),
        lambda s: s.raw_field(0),
        lambda s: s.value(3, 0),
        lambda s: s.value(3, 1, 0),
        lambda s: s.value(3, 1, 1, 0),
        lambda s: s.field(3).first().component(0),
        lambda s: s.field(3).first().sub(1, 0),
        lambda s: s.field(3).value(rep=-2),
    ],
)
def test_zero_or_negative_numbers_are_programming_errors(adt: Message, call: Callable[[Segment], object]) -> None:
    pid = adt.first("PID")
    assert pid is not None
    with pytest.raises(ValueError):
        call(pid)


# --- MSH ---------------------------------------------------------------------------------------------


def test_msh_numbering(adt: Message) -> None:
    msh = adt.msh
    assert msh.value(1) == "|"
    assert msh.value(2) == "^~\\&"  # literal: never split or unescaped
    assert msh.field(2).raw == "^~\\&"
    assert msh.field(2).repetitions[0].components() == ["^~\\&"]
    assert msh.field(1).first().component(1) == "|"
    assert msh.value(2, 2) == ""
    assert msh.value(3) == "KIS"
    assert msh.value(4, 2) == "1.2.276.0.1"
    assert msh.value(9, 3) == "ADT_A01"
    assert msh.value(18, rep=2) == "UNICODE UTF-8"


def test_message_properties(adt: Message) -> None:
    assert (adt.message_code, adt.trigger_event, adt.structure, adt.version) == ("ADT", "A01", "ADT_A01", "2.5.1")
    assert (adt.control_id, adt.sending_app, adt.sending_facility) == ("CTRL1", "KIS", "KLINIKUM")
    assert (adt.receiving_app, adt.receiving_facility) == ("EDGE", "DIZ")
    assert adt.timestamp == "20240315103000+0100"
    assert adt.processing_id == "P"
    assert adt.charset_declared == "8859/1"
    assert adt.encoding == Encoding("|", "^", "~", "\\", "&", "")
    assert adt.charset == "utf-8"
    assert repr(adt) == "<Message ADT^A01, 5 segments>"


def test_properties_of_a_minimal_msh() -> None:
    message = parse("MSH|^~\\&\r")
    assert (message.message_code, message.trigger_event, message.structure, message.version) == ("", "", "", "")
    assert (message.control_id, message.sending_app, message.timestamp, message.charset_declared) == ("", "", "", "")


def test_properties_strip_but_control_id_is_as_sent() -> None:
    message = parse("MSH|^~\\&|A|B|C|D|1|| ADT ^ A01 | C\\T\\1 |P| 2.5 ^DEU\r")
    assert (message.message_code, message.trigger_event, message.version) == ("ADT", "A01", "2.5")
    assert message.control_id == " C\\T\\1 "


def test_other_separators() -> None:
    message = parse("MSH#$*@!#KIS#KH#E#D#1##ADT$A04#7#P#2.4\rPID#1##4711$$$KIS!1.2!ISO*99##M@S@ller$Hans\r")
    assert message.encoding == Encoding("#", "$", "*", "@", "!", "")
    pid = message.first("PID")
    assert pid is not None
    assert (message.message_code, message.trigger_event, message.control_id) == ("ADT", "A04", "7")
    assert pid.value(3, 4, 2) == "1.2"
    assert pid.value(3, rep=2) == "99"
    assert pid.value(5) == "M$ller"
    assert message.msh.value(1) == "#" and message.msh.value(2) == "$*@!"


def test_truncation_character_v27() -> None:
    message = parse("MSH|^~\\&#|A|B|C|D|1||ADT^A01|42|P|2.7\rNTE|1||Langer Text#|ab\\P\\c\r")
    assert message.encoding.truncation == "#"
    assert message.msh.value(2) == "^~\\&#"
    nte = message.first("NTE")
    assert nte is not None
    assert nte.value(3) == "Langer Text#"  # the truncation marker is data
    assert nte.value(4) == "ab#c"


def test_doubled_escape_character_is_read_as_one() -> None:
    # `MSH|^~\\&|`: a string literal copied verbatim (in the corpus). As 5 characters it cannot be valid.
    message = parse("MSH|^~\\\\&|A|B|C|D|1||ORU^R01|59689|P|2.3\rPID|1||4711^^^KIS&1.2||M\\S\\x\r")
    assert message.encoding == Encoding("|", "^", "~", "\\", "&", "")
    assert message.msh.value(2) == "^~\\\\&"  # MSH-2 itself stays as sent
    assert (message.trigger_event, message.control_id) == ("R01", "59689")
    pid = message.first("PID")
    assert pid is not None
    assert pid.value(3, 4, 2) == "1.2"
    assert pid.value(5) == "M^x"


def test_fhs_and_bhs_are_numbered_like_msh() -> None:
    message = parse("MSH|^~\\&|A\rBHS|^~\\&|SENDER^X\r")
    bhs = message.first("BHS")
    assert bhs is not None
    assert (bhs.value(1), bhs.value(2), bhs.value(3), bhs.value(3, 2)) == ("|", "^~\\&", "SENDER", "X")


# --- escapes and charsets ----------------------------------------------------------------------------


def test_values_are_unescaped_when_read() -> None:
    message = parse("MSH|^~\\&|A\rNTE|1||Meier \\T\\ Söhne\\.br\\Zeile 2|a\\F\\b^c\\S\\d&e\\E\\f\r")
    nte = message.first("NTE")
    assert nte is not None
    assert nte.value(3) == "Meier & Söhne\nZeile 2"
    assert nte.raw_field(3) == "Meier \\T\\ Söhne\\.br\\Zeile 2"
    assert nte.field(3).raw == "Meier \\T\\ Söhne\\.br\\Zeile 2"
    assert nte.value(4) == "a|b"
    assert nte.value(4, 2) == "c^d"
    assert nte.value(4, 2, 2) == "e\\f"
    rep = nte.field(4).first()
    assert rep.components() == ["a|b", "c^d"]
    assert rep.component_raw(2) == "c\\S\\d&e\\E\\f"
    assert rep.subcomponents(2) == ["c^d", "e\\f"]


def test_escaped_separators_do_not_split() -> None:
    pid = parse("MSH|^~\\&|A\rPID|1||a\\R\\b~c\\S\\d^e\r").first("PID")
    assert pid is not None
    assert [r.component(1) for r in pid.field(3).repetitions] == ["a~b", "c^d"]


def test_umlauts_in_latin1() -> None:
    raw = "MSH|^~\\&|A|Gießen\rPID|1||||Müller^Jürgen\r".encode("iso8859-1")
    message = parse_message(raw, "iso8859-1")
    assert message.sending_facility == "Gießen"
    assert message.first("PID").value(5, 2) == "Jürgen"  # type: ignore[union-attr]


@pytest.mark.parametrize(("charset", "hex_text"), [("iso8859-1", "FC"), ("utf-8", "C3BC"), ("cp1252", "FC")])
def test_hex_escapes_use_the_message_charset(charset: str, hex_text: str) -> None:
    message = parse(f"MSH|^~\\&|A\rPID|1||||M\\X{hex_text}\\ller\r", charset)
    assert message.first("PID").value(5) == "Müller"  # type: ignore[union-attr]


def test_fields_are_split_lazily(adt: Message) -> None:
    # The contract the throughput depends on: parse_message splits segments, nothing more.
    assert all(segment._parts is None for segment in adt.segments)
    pid = adt.first("PID")
    assert pid is not None
    pid.value(5)
    assert pid._parts is not None
    assert pid._fields is None  # value() creates no Field objects
    field = pid.field(5)
    assert field._repetitions is None
    assert field.repetitions[1]._components is None


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "where"),
    [
        (b"", SEGMENT_SEQUENCE_ERROR, "MSH"),
        (b"  \r\n\x00\xef\xbb\xbf ", SEGMENT_SEQUENCE_ERROR, "MSH"),
        (b"PID|1||x\rMSH|^~\\&|A\r", SEGMENT_SEQUENCE_ERROR, "MSH"),
        (b"FHS|^~\\&|A\rMSH|^~\\&|A\r", SEGMENT_SEQUENCE_ERROR, "MSH"),
        (b"msh|^~\\&|A\r", SEGMENT_SEQUENCE_ERROR, "MSH"),
        (b"MSH", DATA_TYPE_ERROR, "MSH-1"),
        (b"MSH\rPID|1", DATA_TYPE_ERROR, "MSH-1"),
        (b"MSHA^~\\&AB", DATA_TYPE_ERROR, "MSH-1"),
        (b"MSH ^~\\& B", DATA_TYPE_ERROR, "MSH-1"),
        (b"MSH|", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH|^~\\|A", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH||A", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH|^~\\&#!|A", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH|^~^&|A", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH|^~\\A|A", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH|^~\\ |A", DATA_TYPE_ERROR, "MSH-2"),
        (b"MSH|^~&&|A", DATA_TYPE_ERROR, "MSH-2"),
    ],
)
def test_errors_carry_table_0357_codes(raw: bytes, code: int, where: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw, "utf-8")
    assert info.value.code == code
    assert where in info.value.reason
    assert info.value.reason == str(info.value)
    assert isinstance(info.value, MessageError)


def test_undecodable_bytes_name_the_field_not_the_value() -> None:
    raw = "MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||4711||Müller^Hans\r".encode("iso8859-1")
    with pytest.raises(HL7ParseError) as info:
        parse_message(raw, "utf-8")
    assert info.value.code == DATA_TYPE_ERROR
    assert info.value.reason == "message bytes do not decode as utf-8 in PID-5 (segment 2)"


def test_undecodable_bytes_in_msh() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message(b"\r\nMSH|^~\\&|A|Gie\xdfen\r", "ascii")
    assert info.value.reason == "message bytes do not decode as ascii in MSH-4 (segment 1)"


def test_undecodable_bytes_in_a_line_that_is_not_a_segment() -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message(b"MSH|^~\\&|A\rM\xfcller\r", "utf-8")
    assert info.value.reason == "message bytes do not decode as utf-8 in segment 2"


def test_unknown_codec_is_a_configuration_error() -> None:
    with pytest.raises(LookupError):
        parse_message(b"MSH|^~\\&|A\r", "no-such-codec")


def test_segment_class_is_exported() -> None:
    assert isinstance(parse(ADT).segments[1], Segment)
