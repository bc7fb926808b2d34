"""ACK construction and parsing: modes, ERR forms, escaping, and MSA-2 always echoing MSH-10."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mllp.ack import (
    AckCode,
    ParsedAck,
    build_ack,
    choose_codes,
    escape,
    new_ack_control_id,
    parse_ack,
    wants_accept_ack,
    wants_application_ack,
)
from node.errors import HL7HeaderError
from node.hl7v2.header import MessageHeader, read_header

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
NOW = datetime(2024, 3, 15, 10, 30, 5, tzinfo=timezone(timedelta(hours=1)))


def header_of(msh: str) -> MessageHeader:
    return read_header(msh.encode("latin-1") + b"\rPID|1\r")


def segments(ack: bytes) -> list[str]:
    assert ack.endswith(b"\r")
    return ack.decode("latin-1").split("\r")[:-1]


V25 = header_of("MSH|^~\\&|KIS|KLINIKUM^1.2.3^ISO|EDGE|DIZ|20240315103000||ADT^A01^ADT_A01|CTRL1|P|2.5")


def test_aa_in_original_mode() -> None:
    ack = build_ack(V25, AckCode.AA, ack_control_id="ACK1", now=NOW, charset="ascii")
    assert segments(ack) == [
        "MSH|^~\\&|EDGE|DIZ|KIS|KLINIKUM^1.2.3^ISO|20240315103005+0100||ACK^A01^ACK|ACK1|P|2.5",
        "MSA|AA|CTRL1",
    ]


def test_ae_v25_has_err3_and_severity() -> None:
    ack = build_ack(V25, AckCode.AE, error_code=101, error_text="MSH-10 (message control id) is empty",
                    ack_control_id="ACK2", now=NOW, charset="ascii")
    assert segments(ack)[1:] == [
        "MSA|AE|CTRL1|MSH-10 (message control id) is empty",
        "ERR|||101^MSH-10 (message control id) is empty^HL70357|E",
    ]


def test_error_field_fills_err2_location() -> None:
    ack = build_ack(V25, AckCode.AE, error_code=101, ack_control_id="A", now=NOW, charset="ascii",
                    error_field=10)
    assert segments(ack)[2] == "ERR||MSH^1^10|101^Required field missing^HL70357|E"


def test_ar_defaults_to_207_and_its_table_text() -> None:
    ack = build_ack(V25, AckCode.AR, ack_control_id="A", now=NOW, charset="ascii")
    assert segments(ack)[1:] == ["MSA|AR|CTRL1|Application internal error",
                                 "ERR|||207^Application internal error^HL70357|E"]


@pytest.mark.parametrize("version", ["2.2", "2.3", "2.3.1", "2.4"])
def test_err_before_v25_is_eld_in_err1(version: str) -> None:
    header = header_of(f"MSH|^~\\&|A|B|C|D|1||ORU^R01|9|P|{version}")
    ack = build_ack(header, AckCode.AE, error_code=102, error_text="bad", ack_control_id="X", now=NOW,
                    charset="ascii")
    assert segments(ack)[2] == "ERR|^^^102&bad&HL70357"
    ack = build_ack(header, AckCode.AE, error_code=102, error_text="bad", ack_control_id="X", now=NOW,
                    charset="ascii", error_field=9)
    assert segments(ack)[2] == "ERR|MSH^1^9^102&bad&HL70357"


@pytest.mark.parametrize("version", ["2.5", "2.5.1", "2.6", "2.8", "2.9"])
def test_err_from_v25_uses_err3(version: str) -> None:
    header = header_of(f"MSH|^~\\&|A|B|C|D|1||ORU^R01|9|P|{version}")
    ack = build_ack(header, AckCode.AE, error_code=102, ack_control_id="X", now=NOW, charset="ascii")
    assert segments(ack)[2].startswith("ERR|||102^")


def test_enhanced_mode_codes_and_charset_echo() -> None:
    header = read_header((FIXTURES / "adt_a04_v25_enhanced.hl7").read_bytes())
    success, error, reject = choose_codes(header)
    assert (success, error, reject) == (AckCode.CA, AckCode.CE, AckCode.CR)
    msh = segments(build_ack(header, success, ack_control_id="Z", now=NOW, charset="iso8859-15"))[0]
    assert msh.split("|")[8] == "ACK^A04^ACK"
    assert msh.endswith("|2.5||||||8859/15")


def test_original_mode_codes() -> None:
    assert choose_codes(V25) == (AckCode.AA, AckCode.AE, AckCode.AR)
    assert choose_codes(None) == (AckCode.AA, AckCode.AE, AckCode.AR)


def test_ack_without_header_uses_defaults() -> None:
    ack = build_ack(None, AckCode.AR, error_code=100, error_text="first segment is not MSH",
                    ack_control_id="N1", now=NOW.astimezone(UTC), charset="ascii")
    assert segments(ack) == [
        "MSH|^~\\&|||||20240315093005+0000||ACK|N1|P|2.5",
        "MSA|AR||first segment is not MSH",
        "ERR|||100^first segment is not MSH^HL70357|E",
    ]


def test_ack_uses_the_message_separators_and_escapes_texts() -> None:
    header = header_of("MSH#$*@!#A#B#C#D#1##ADT$A04#7#T#2.5")
    ack = build_ack(header, AckCode.AE, error_code=199, error_text="a#b$c*d@e!f", ack_control_id="Q",
                    now=NOW, charset="ascii")
    lines = segments(ack)
    assert lines[0] == "MSH#$*@!#C#D#A#B#20240315103005+0100##ACK$A04$ACK#Q#T#2.5"
    assert lines[1] == "MSA#AE#7#a@F@b@S@c@R@d@E@e@T@f"
    assert lines[2] == "ERR###199$a@F@b@S@c@R@d@E@e@T@f$HL70357#E"


def test_escape_all_delimiters_and_line_breaks() -> None:
    assert escape("a|b^c~d\\e&f\rg\nh", "|", "^~\\&") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f g h"
    assert escape("x#y", "|", "^~\\&#") == "x\\P\\y"


def test_msa_text_is_cut_to_80_without_splitting_an_escape() -> None:
    text = "x" * 79 + "|" + "tail"
    ack = build_ack(V25, AckCode.AE, error_text=text, ack_control_id="A", now=NOW, charset="ascii")
    msa = segments(ack)[1].split("|", 3)[3]
    assert msa == "x" * 79 + "\\F\\"
    assert segments(ack)[2].endswith("\\F\\tail^HL70357|E")


def test_original_bytes_of_msh_fields_are_kept_and_own_text_uses_charset() -> None:
    raw = "MSH|^~\\&|KIS|Gießen|EDGE|DIZ|1||ADT^A01|Ü1|P|2.5\r".encode()
    header = read_header(raw)
    ack = build_ack(header, AckCode.AE, error_text="Prüfung", ack_control_id="A", now=NOW, charset="utf-8")
    text = ack.decode("utf-8")
    assert "|KIS|Gießen|" in text
    assert "MSA|AE|Ü1|Prüfung" in text
    latin = build_ack(header, AckCode.AE, error_text="Prüfung", ack_control_id="A", now=NOW,
                      charset="iso8859-1")
    assert "Prüfung".encode("latin-1") in latin


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError):
        build_ack(V25, AckCode.AA, ack_control_id="A", now=datetime(2024, 1, 1), charset="ascii")


def test_error_details_on_success_are_refused() -> None:
    with pytest.raises(ValueError):
        build_ack(V25, AckCode.CA, error_code=100, ack_control_id="A", now=NOW, charset="ascii")


def test_control_ids_are_short_and_unique() -> None:
    ids = {new_ack_control_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 20 and i.isalnum() for i in ids)


# --- acknowledgement conditions (table 0155) ----------------------------------------------------


def with_ack_types(msh15: str, msh16: str) -> MessageHeader:
    return header_of(f"MSH|^~\\&|A|B|C|D|1||ADT^A01|9|P|2.5|||{msh15}|{msh16}")


@pytest.mark.parametrize(
    ("value", "on_success", "on_error"),
    [("AL", True, True), ("NE", False, False), ("ER", False, True), ("SU", True, False),
     ("al", True, True), ("", True, True), ("123", True, True)],
)
def test_table_0155_conditions(value: str, on_success: bool, on_error: bool) -> None:
    accept = with_ack_types(value, "NE" if not value else "")
    assert (wants_accept_ack(accept, True), wants_accept_ack(accept, False)) == (on_success, on_error)
    app = with_ack_types("NE" if not value else "", value)
    assert (wants_application_ack(app, True), wants_application_ack(app, False)) == (on_success, on_error)


def test_original_mode_always_one_ack_and_no_application_ack() -> None:
    for header in (V25, None):
        assert wants_accept_ack(header, True) and wants_accept_ack(header, False)
        assert not wants_application_ack(header, True) and not wants_application_ack(header, False)


# --- parse_ack ----------------------------------------------------------------------------------


def test_parse_ack_round_trip_v25_and_v23() -> None:
    for version in ("2.5", "2.3"):
        header = header_of(f"MSH|^~\\&|A|B|C|D|1||ADT^A01|C-{version}|P|{version}")
        ack = build_ack(header, AckCode.AE, error_code=101, error_text="t", ack_control_id="X", now=NOW,
                        charset="ascii")
        assert parse_ack(ack) == ParsedAck(AckCode.AE, f"C-{version}", 101, "t")
    ok = build_ack(V25, AckCode.AA, ack_control_id="X", now=NOW, charset="ascii")
    assert parse_ack(ok) == ParsedAck(AckCode.AA, "CTRL1", None, "")


def test_parse_ack_accepts_lf_segment_ends() -> None:
    assert parse_ack(b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.5\nMSA|CA|77\n").code is AckCode.CA


def test_parse_ack_errors() -> None:
    with pytest.raises(HL7HeaderError) as info:
        parse_ack(b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.5\r")
    assert info.value.code == 100
    with pytest.raises(HL7HeaderError) as info:
        parse_ack(b"MSH|^~\\&|A|B|C|D|1||ACK|1|P|2.5\rMSA|XX|1\r")
    assert info.value.code == 103


# --- property: every ACK echoes MSH-10 ----------------------------------------------------------

control_ids = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="|\r\n"), min_size=1, max_size=40
).filter(lambda s: s.strip() and not s.isspace())


@settings(max_examples=300)
@given(control_ids, st.sampled_from(list(AckCode)), st.sampled_from(["2.3", "2.5", "2.8"]),
       st.sampled_from(["", "AL", "NE"]), st.text(max_size=30))
def test_every_ack_echoes_msh10(control_id: str, code: AckCode, version: str, msh15: str, text: str) -> None:
    raw = f"MSH|^~\\&|A|B|C|D|1||ADT^A01|{control_id}|P|{version}|||{msh15}\rPID|1\r".encode("latin-1")
    header = read_header(raw)
    assert header.control_id == control_id
    error = {} if code.is_success else {"error_code": 207, "error_text": text or None}
    ack = build_ack(header, code, ack_control_id=new_ack_control_id(), now=NOW, charset="utf-8", **error)
    parsed = parse_ack(ack)
    assert parsed.control_id == control_id
    assert parsed.code is code
    assert parsed.error_code == (None if code.is_success else 207)
    assert len(segments(ack)) == (2 if code.is_success else 3)
