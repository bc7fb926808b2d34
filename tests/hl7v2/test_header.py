"""The light MSH read: fields, tolerance, table 0357 errors, and every corpus message."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from node.errors import HL7HeaderError
from node.hl7v2.header import MessageHeader, read_header, read_header_lenient

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "hl7v2"

ADT = (
    b"MSH|^~\\&|KIS|KLINIKUM^1.2.3^ISO|EDGE|DIZ|20240315103000||ADT^A01^ADT_A01|CTRL1|P|2.5^DEU|||AL|NE||"
    b"8859/1~UNICODE UTF-8\rPID|1||4711||M\xfcller^Hans\r"
)


def test_reads_all_fields() -> None:
    header = read_header(ADT)
    assert header == MessageHeader(
        field_separator="|",
        encoding_characters="^~\\&",
        sending_app="KIS",
        sending_facility="KLINIKUM^1.2.3^ISO",
        receiving_app="EDGE",
        receiving_facility="DIZ",
        timestamp="20240315103000",
        message_type="ADT^A01^ADT_A01",
        message_code="ADT",
        trigger_event="A01",
        control_id="CTRL1",
        processing_id="P",
        version="2.5",
        accept_ack_type="AL",
        app_ack_type="NE",
        charset_declared="8859/1",
    )
    assert header.enhanced_mode
    assert (header.component_separator, header.repetition_separator, header.escape_character,
            header.subcomponent_separator) == ("^", "~", "\\", "&")


def test_header_is_frozen() -> None:
    header = read_header(ADT)
    with pytest.raises(AttributeError):
        header.control_id = "x"  # type: ignore[misc]


def test_original_mode_without_msh15_msh16() -> None:
    header = read_header(b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|9|P|2.3\r")
    assert not header.enhanced_mode
    assert header.trigger_event == "R01"
    assert header.charset_declared == ""
    assert header.accept_ack_type == header.app_ack_type == ""


def test_whitespace_only_msh15_is_not_enhanced_mode() -> None:
    assert not read_header(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|9|P|2.3||| \r").enhanced_mode


def test_message_type_without_trigger() -> None:
    header = read_header(b"MSH|^~\\&|A|B|C|D|1||ACK|9|P|2.5\r")
    assert (header.message_code, header.trigger_event) == ("ACK", "")


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n"])
def test_segment_ends(end: bytes) -> None:
    header = read_header(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|42|P|2.5" + end + b"PID|1" + end)
    assert header.control_id == "42"
    assert header.version == "2.5"


def test_message_without_segment_terminator() -> None:
    assert read_header(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|42|P|2.5").version == "2.5"


@pytest.mark.parametrize("lead", [b"\xef\xbb\xbf", b"\r\n", b"  \n", b"\xef\xbb\xbf\r\n"])
def test_leading_whitespace_and_bom(lead: bytes) -> None:
    assert read_header(lead + b"MSH|^~\\&|A|B|C|D|1||ADT^A01|42|P|2.5\r").control_id == "42"


def test_other_separators() -> None:
    header = read_header(b"MSH#$*@!#A#B#C#D#1##ADT$A04#7#P#2.4\r")
    assert (header.field_separator, header.encoding_characters) == ("#", "$*@!")
    assert (header.message_code, header.trigger_event, header.control_id) == ("ADT", "A04", "7")


def test_truncation_character_v27() -> None:
    header = read_header(b"MSH|^~\\&#|A|B|C|D|1||ADT^A01|42|P|2.7\r")
    assert header.encoding_characters == "^~\\&#"


def test_non_ascii_values_are_latin1_and_lossless() -> None:
    raw = "Gießen".encode()
    header = read_header(b"MSH|^~\\&|A|" + raw + b"|C|D|1||ADT^A01|42|P|2.5\r")
    assert header.sending_facility.encode("latin-1") == raw


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (b"PID|1||x\rMSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\r", 100, "MSH"),
        (b"", 100, "MSH"),
        (b"FHS|^~\\&|A\r", 100, "MSH"),
        (b"MSH|^~\\&|A|B|C|D|1|||1|P|2.5\r", 101, "MSH-9"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5\r", 101, "MSH-10"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|  |P|2.5\r", 101, "MSH-10"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|\r", 101, "MSH-12"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1\r", 101, "MSH-12"),
        (b"MSH|^~\r", 102, "MSH"),
        (b"MSH|^~\\|A|B|C|D|1||ADT^A01|1|P|2.5\r", 102, "MSH-2"),
        (b"MSH|^~\\\\&|A|B|C|D|1||ADT^A01|1|P|2.5\r", 102, "MSH-2"),
        (b"MSH|^~|&|A|B|C|D|1||ADT^A01|1|P|2.5\r", 102, "MSH-2"),
        (b"MSHA^~\\&AxAxCxDx1xxADT^A01x1xPx2.5\r", 102, "MSH-1"),
    ],
)
def test_errors_carry_table_0357_codes(payload: bytes, code: int, field: str) -> None:
    with pytest.raises(HL7HeaderError) as info:
        read_header(payload)
    assert info.value.code == code
    assert field in info.value.reason


def test_error_reason_names_field_not_value() -> None:
    with pytest.raises(HL7HeaderError) as info:
        read_header("MSH|^~\\&|Müller|B|C|D|1||ADT^A01||P|2.5\r".encode())
    assert info.value.reason == "MSH-10 (message control id) is empty"
    assert "Müller" not in str(info.value)


def test_lenient_returns_none_without_msh() -> None:
    assert read_header_lenient(b"PID|1\rPV1|1\r") is None
    assert read_header_lenient(b"") is None


def test_lenient_reads_what_it_can() -> None:
    header = read_header_lenient(b"MSH|^~\\&|A|B|C|D|1||ADT^A01||P\r")
    assert header is not None
    assert (header.sending_app, header.message_type, header.control_id, header.version) == (
        "A", "ADT^A01", "", "")


def test_lenient_finds_msh_after_batch_header() -> None:
    header = read_header_lenient(b"FHS|^~\\&|X\r\nBHS|^~\\&|X\r\nMSH|^~\\&|A|B|C|D|1||ADT^A01|77|P|2.5\r\n")
    assert header is not None and header.control_id == "77"


def test_lenient_replaces_bad_encoding_characters() -> None:
    header = read_header_lenient(b"MSH|^~\\\\&|A|B|C|D|1||ADT^A01|5|P|2.3\r")
    assert header is not None
    assert header.encoding_characters == "^~\\&"
    assert (header.control_id, header.trigger_event) == ("5", "A01")


def test_lenient_with_unusable_field_separator() -> None:
    header = read_header_lenient(b"MSHX")
    assert header is not None
    assert (header.field_separator, header.encoding_characters, header.control_id) == ("|", "^~\\&", "")


@pytest.mark.parametrize(
    ("name", "control_id", "charset", "enhanced"),
    [
        ("adt_a01_v25_utf8.hl7", "ADT0001", "UNICODE UTF-8", False),
        ("adt_a01_v25_latin1.hl7", "ADT0002", "8859/1", False),
        ("oru_r01_v251.hl7", "LAB0001", "", False),
        ("adt_a04_v25_enhanced.hl7", "ADT0003", "8859/15", True),
    ],
)
def test_fixtures_read(name: str, control_id: str, charset: str, enhanced: bool) -> None:
    header = read_header((FIXTURES / name).read_bytes())
    assert (header.control_id, header.charset_declared) == (control_id, charset)
    assert header.enhanced_mode is enhanced


def test_batch_fixture_messages_read() -> None:
    lines = (FIXTURES / "batch_adt_crlf.hl7").read_bytes().split(b"\r\n")
    headers = [read_header(line) for line in lines if line.startswith(b"MSH")]
    assert [h.control_id for h in headers] == ["BATCH0001-1", "BATCH0001-2", "BATCH0001-3"]
    assert [h.trigger_event for h in headers] == ["A01", "A08", "A03"]


def test_batch_fixture_first_segment_is_not_msh() -> None:
    with pytest.raises(HL7HeaderError) as info:
        read_header((FIXTURES / "batch_adt_crlf.hl7").read_bytes())
    assert info.value.code == 100


# --- the shared corpus --------------------------------------------------------------------------

EXPECTED_CORPUS_FAILURES = {
    # `MSH|^~\\&|`: a doubled escape character in MSH-2 (escape == subcomponent separator).
    "diz-unimr-marburg/hl7-to-kafka__hl7v2-mllp-sample__ORU_R01.hl7": 102,
}


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"HL7 v2 corpus not available at {CORPUS.resolve()} (clone without ../shared)")
    return sorted(CORPUS.glob("*/*.hl7"))


@pytest.mark.corpus
def test_every_corpus_message_header_reads() -> None:
    files = corpus_files()
    assert len(files) == 200
    failures: Counter[tuple[int, str]] = Counter()
    unexpected = []
    for path in files:
        name = path.relative_to(CORPUS).as_posix()
        raw = path.read_bytes()
        try:
            header = read_header(raw)
        except HL7HeaderError as error:
            failures[(error.code, error.reason)] += 1
            if EXPECTED_CORPUS_FAILURES.get(name) != error.code:
                unexpected.append((name, error.code, error.reason))
            lenient = read_header_lenient(raw)
            assert lenient is not None and lenient.control_id
            continue
        assert name not in EXPECTED_CORPUS_FAILURES
        assert header.message_code and header.control_id and header.version[:1] == "2"
        assert read_header_lenient(raw) == header
    assert unexpected == []
    assert sum(failures.values()) == len(EXPECTED_CORPUS_FAILURES)
