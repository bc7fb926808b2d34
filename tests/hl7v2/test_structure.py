"""Strict structure validation and the field listing, both with hl7apy: problems, scrubbing, limits, corpus."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_field
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.hl7v2.charset import resolve_charset
from node.hl7v2.header import read_header_lenient
from node.hl7v2.structure import (
    MAX_PROBLEMS,
    _plainly_valid,
    _segment_refs,
    _Separators,
    describe_fields,
    message_tokens,
    reference_version,
    scrub_reason,
    validate_structure,
)
from tests.conftest import corpus_dir

CANARY = "Canarysurname"
CANARY_GIVEN = "Canarygiven"

MSH = "MSH|^~\\&|KIS|KLINIKUM|EDGE|DIZ|20240315103000||ADT^A01^ADT_A01|CTRL1|P|2.5|||AL|NE||8859/1"
EVN = "EVN|A01|20240315103000"
PID = (
    f"PID|1||4711^^^KLINIKUM^PI~0815^^^KASSE^SS||{CANARY}^{CANARY_GIVEN}^^^Dr.||19800101|M|||"
    "Hauptstr. 1^^Marburg^^35037^DE"
)
PV1 = "PV1|1|I|STATION1^101^1"


def adt(*segments: str, msh: str = MSH, end: str = "\r") -> bytes:
    return end.join([msh, *segments]).encode("latin-1") + end.encode()


VALID = adt(EVN, PID, PV1)


def problems_of(raw: bytes) -> list[str]:
    report = validate_structure(raw, "iso8859-1")
    assert not report.ok
    assert report.problems
    return report.problems


# --- validate_structure: what passes -----------------------------------------------------------------


def test_valid_adt_a01_v25_passes_strict() -> None:
    report = validate_structure(VALID, "iso8859-1")
    assert report.ok, report.problems
    assert report.problems == []
    assert (report.version, report.structure) == ("2.5", "ADT_A01")
    assert report.reason == ""


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_any_segment_separator_is_accepted(end: str) -> None:
    assert validate_structure(adt(EVN, PID, PV1, end=end), "iso8859-1").ok


def test_umlauts_in_utf8_and_latin1_pass() -> None:
    pid = PID.replace(CANARY, "Müller")
    assert validate_structure(adt(EVN, pid, PV1), "iso8859-1").ok
    assert validate_structure("\r".join([MSH, EVN, pid, PV1]).encode("utf-8"), "utf-8").ok


def test_trailing_z_segments_are_removed_and_named_in_the_notes() -> None:
    report = validate_structure(adt(EVN, PID, PV1, f"ZBE|1|{CANARY}^x", "ZNG|2"), "iso8859-1")
    assert report.ok, report.problems
    assert report.notes == [
        "Z-segment ZBE (segment 5) not validated: site-defined",
        "Z-segment ZNG (segment 6) not validated: site-defined",
    ]


def test_a_z_segment_in_the_middle_is_tolerated_too() -> None:
    # IHE PAM places ZBE right after PV1; segments after it must still be placed and checked.
    report = validate_structure(adt(EVN, PID, PV1, "ZBE|1", "DG1|1||I10^Hypertonie^I10-2019|||A"), "iso8859-1")
    assert report.ok, report.problems
    assert report.notes == ["Z-segment ZBE (segment 5) not validated: site-defined"]


def test_structure_is_inferred_from_the_event_when_msh_9_3_is_empty() -> None:
    report = validate_structure(adt(EVN, PID, PV1, msh=MSH.replace("ADT^A01^ADT_A01", "ADT^A04")), "iso8859-1")
    assert report.ok, report.problems
    assert report.structure == "ADT_A01"
    assert report.notes == ["message structure ADT_A01 inferred from ADT^A04 (MSH-9.3 empty)"]


def test_explicit_null_is_valid_in_any_field() -> None:
    pid = PID.replace("19800101", '""')
    assert validate_structure(adt(EVN, pid, PV1), "iso8859-1").ok


def test_obx_5_is_checked_as_the_type_obx_2_names() -> None:
    msh = MSH.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    obr = "OBR|1|||GLU^Glucose^L"
    assert validate_structure(adt(PID, obr, "OBX|1|NM|GLU^Glucose^L||5.4|mmol/L|||||F", msh=msh), "utf-8").ok
    problems = problems_of(adt(PID, obr, f"OBX|1|NM|GLU^Glucose^L||{CANARY}|mmol/L|||||F", msh=msh))
    assert problems == [
        "OBX-5 (segment 4): invalid NM value (hl7apy: value is not an HL7 valid NM value)",
    ]


# --- validate_structure: what fails, and how it is named ----------------------------------------------


def test_missing_required_segment_is_named() -> None:
    assert problems_of(adt(EVN, PID)) == ["ADT_A01: required segment PV1 missing"]


def test_invalid_date_in_pid_7_names_the_field() -> None:
    problems = problems_of(adt(EVN, PID.replace("19800101", "19801301"), PV1))
    assert problems == ["PID-7.1 (segment 3): invalid DTM value (hl7apy: value is not an HL7 valid date value)"]


def test_non_numeric_value_in_an_nm_field_names_the_field() -> None:
    msh = MSH.replace("|2.5|", "|2.5|seven|")  # MSH-13 sequence number, NM
    assert problems_of(adt(EVN, PID, PV1, msh=msh)) == [
        "MSH-13 (segment 1): invalid NM value (hl7apy: value is not an HL7 valid NM value)"
    ]


def test_every_problem_is_listed_not_only_the_first() -> None:
    pid = PID.replace("PID|1|", "PID|1~2|").replace("19800101", "1980")  # "1980" is a valid DTM
    pv1 = "PV1|1|I^X|STATION1^101^1"
    problems = problems_of(adt(EVN, pid, pv1, "PV1|2|I"))
    assert problems == [
        "PID-1 (segment 3): 2 repetitions, at most 1 allowed",
        "PV1-2 (segment 4): components in a field of primitive type IS (hl7apy: Cannot add <Component IS (None) "
        "of type IS>: max limit (1) reached for <Field PV1_2 (PATIENT_CLASS) of type IS>)",
        "PV1 (segment 5): more than 1 in ADT_A01",
    ]


def test_required_field_and_undefined_field_and_component_are_named() -> None:
    pid = f"PID|1||||{CANARY}" + "^" * 15 + "x"
    pv1 = PV1 + "|" * 60 + "x"
    assert problems_of(adt(EVN, pid, pv1)) == [
        "PID-3 (segment 3): required field missing",
        "PID-5.16 (segment 3): component not defined for XPN in HL7 2.5 (hl7apy: Invalid name for Component: XPN_16)",
        "PV1-63 (segment 4): field not defined for PV1 in HL7 2.5",
    ]


def test_segment_out_of_order_and_segment_hl7apy_would_drop_are_reported() -> None:
    problems = problems_of(adt(EVN, PV1, PID, "OBR|1|||GLU"))
    assert problems == [
        "OBR (segment 5): not allowed in ADT_A01 (hl7apy cannot place it)",
        "PID (segment 4): out of order in ADT_A01: must come before PV1 (segment 3)",
    ]


def test_unknown_segment_is_named() -> None:
    assert problems_of(adt(EVN, PID, PV1, "XYZ|1")) == ["segment 5: unknown segment XYZ in HL7 2.5"]


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("2.9", "HL7 version 2.9 is not supported by strict validation (supported: 2.1, 2.2, 2.3, 2.3.1, 2.4, "
                "2.5, 2.5.1, 2.6, 2.7, 2.8, 2.8.1, 2.8.2)"),
        ("", "MSH-12 (version) is missing or not a version number (strict validation supports 2.1, 2.2, 2.3, "
             "2.3.1, 2.4, 2.5, 2.5.1, 2.6, 2.7, 2.8, 2.8.1, 2.8.2)"),
        (CANARY, "MSH-12 (version) is missing or not a version number (strict validation supports 2.1, 2.2, "
                 "2.3, 2.3.1, 2.4, 2.5, 2.5.1, 2.6, 2.7, 2.8, 2.8.1, 2.8.2)"),
    ],
)
def test_unsupported_version_gives_a_clear_reason(version: str, reason: str) -> None:
    report = validate_structure(adt(EVN, PID, PV1, msh=MSH.replace("|2.5|", f"|{version}|")), "iso8859-1")
    assert not report.ok
    assert report.problems == [reason]


def test_unknown_message_structure_is_named() -> None:
    problems = problems_of(adt(EVN, PID, PV1, msh=MSH.replace("ADT^A01^ADT_A01", "ADT^A04^ADT_A04")))
    assert problems[0] == "MSH-9.3: message structure ADT_A04 is not defined in HL7 2.5"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not an HL7 v2 message: it does not start with an MSH segment"),
        (b"PID|1||4711\r", "not an HL7 v2 message: it does not start with an MSH segment"),
        (b"\xff\xfe\x00garbage", "message bytes do not decode as utf-8"),
        (b"MSH|^~\\\\|A|B\r", "MSH-2: invalid encoding characters (hl7apy: Invalid encoding chars: Found duplicate "
                              "encoding chars)"),
    ],
)
def test_non_messages_fail_with_a_reason(raw: bytes, reason: str) -> None:
    report = validate_structure(raw.replace(b"|B\r", b"|B|C|D|1||ADT^A01|1|P|2.5\r"), "utf-8")
    assert not report.ok
    assert report.problems == [reason]


# --- scrubbing: no value ever reaches a problem -------------------------------------------------------

BROKEN_WITH_CANARY = {
    "date": adt(EVN, PID.replace("19800101", f"1980{CANARY}"), PV1),
    "date offset": adt(EVN, PID.replace("19800101", "19800101+99" + CANARY), PV1),
    "length": adt(EVN, PID, PV1.replace("STATION1", CANARY * 3)),
    "primitive with components": adt(EVN, PID, PV1.replace("PV1|1|I|", f"PV1|1|{CANARY}^{CANARY_GIVEN}|")),
    "subcomponents": adt(EVN, PID.replace(f"^{CANARY_GIVEN}^", f"^{CANARY_GIVEN}&{CANARY}^"), PV1),
    "undefined component": adt(EVN, PID.replace("^Dr.", "^Dr." + "^" * 12 + CANARY), PV1),
    "numeric set id": adt(EVN, PID.replace("PID|1|", f"PID|{CANARY}|"), PV1),
    "sequence number": adt(EVN, PID, PV1, msh=MSH.replace("|2.5|", f"|2.5|{CANARY}|")),
    "structure": adt(EVN, PID, PV1, msh=MSH.replace("ADT_A01", CANARY)),
    "segment id": adt(EVN, PID, PV1, CANARY + "|x"),
    "all at once": adt(EVN.replace("A01", CANARY), PID.replace("19800101", CANARY), PV1.replace("I", CANARY)),
}


@pytest.mark.parametrize("raw", BROKEN_WITH_CANARY.values(), ids=BROKEN_WITH_CANARY.keys())
def test_problems_never_contain_canary_values(raw: bytes) -> None:
    report = validate_structure(raw, "iso8859-1")
    assert not report.ok
    text = " ".join(report.problems + report.notes).lower()
    for canary in (CANARY, CANARY_GIVEN, "canary", "surname", "Hauptstr", "Marburg", "4711"):
        assert canary.lower() not in text, text


def test_table_values_are_not_checked() -> None:
    # hl7apy only warns about values missing from HL7 tables (and its warnings quote the value).
    assert validate_structure(adt(EVN, PID.replace("|M|", "|Q|"), PV1), "iso8859-1").ok


@pytest.mark.parametrize(
    ("reason", "scrubbed"),
    [
        (f"{CANARY} is not an HL7 valid date value", "value is not an HL7 valid date value"),
        (f"1980{CANARY}01 is not an HL7 valid NM value", "value is not an HL7 valid NM value"),
        (f"The value {CANARY} exceed the max length: 20", "The value … exceed the max length: 20"),
        (f"The value {CANARY} {CANARY_GIVEN} exceed the max length: 20", "The value … exceed the max length: 20"),
        (f"Value {CANARY}^x not in table HL70001 in element PID.PID_8", "Value … not in table HL70001 in element "
                                                                      "PID.PID_8"),
        (f"time data '{CANARY}' does not match format '%Y'", "time data … does not match format …"),
        (f'unexpected "{CANARY}"', "unexpected …"),
        (f"Invalid date offset: +{CANARY}", "Invalid date offset …"),
        (f"value: {CANARY}", "value …"),
        (f"Invalid value for TN data {CANARY}", "Invalid value for TN data …"),
    ],
)
def test_scrubber_removes_values(reason: str, scrubbed: str) -> None:
    tokens = message_tokens(f"PID|1||4711||{CANARY}^{CANARY_GIVEN}\r")
    assert scrub_reason(reason, tokens) == scrubbed


def test_scrubber_removes_message_values_as_whole_words_only() -> None:
    tokens = message_tokens(f"MSH|^~\\&|A\rPV1|1|PV1^{CANARY}\r")
    assert "PV1" in tokens  # a value, not the segment ID
    assert scrub_reason(f"<Field PV1_2 (PATIENT_CLASS)> got PV1 and {CANARY}", tokens) == (
        "<Field PV1_2 (PATIENT_CLASS)> got … and …"
    )


# --- limits: size, complexity, time -------------------------------------------------------------------


def test_too_large_messages_fail_unparsed() -> None:
    assert validate_structure(VALID, "utf-8", max_bytes=100).problems == [
        f"message too large for strict validation ({len(VALID)} bytes, limit 100)"
    ]
    report = validate_structure(VALID, "utf-8", max_elements=10)
    assert report.problems[0].startswith("message too large for strict validation (4 segments,")


def test_the_time_limit_stops_validation_and_fails_the_message() -> None:
    started = time.monotonic()
    report = validate_structure(adt(EVN, PID, PV1, *["NK1|1|Doe^Jane"] * 2000), "utf-8", time_limit=0.05)
    assert time.monotonic() - started < 1.0
    assert not report.ok
    assert report.problems[-1] == "message: strict validation stopped at its time limit, the rest is unchecked"


def test_problems_are_capped_and_counted() -> None:
    report = validate_structure(adt(EVN, PID, PV1, *[f"DG1|{n}" for n in range(30)]), "utf-8")
    assert len(report.problems) == MAX_PROBLEMS + 1
    assert re.fullmatch(r"\.\.\. and \d+ more problems", report.problems[-1])


def test_a_huge_field_is_not_given_to_hl7apy() -> None:
    report = validate_structure(adt(EVN, PID.replace("Dr.", "x&" * 600), PV1), "utf-8")
    assert report.problems == ["PID-5 (segment 3): too many components to check (not parsed)"]


# --- never raises: garbage and mutations --------------------------------------------------------------

_HL7_BYTES = st.sampled_from([b"|", b"^", b"~", b"&", b"\\", b"\r", b"\n", b"MSH", b"PID", b"Z", b"\x00", b"\xff"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_bytes_never_raise(raw: bytes) -> None:
    report = validate_structure(raw, "utf-8")
    assert report.ok is False
    assert isinstance(describe_fields(raw, "utf-8"), list)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 5), _HL7_BYTES), max_size=6))
def test_mutated_messages_never_raise(edits: list[tuple[int, int, bytes]]) -> None:
    raw = VALID
    for at, cut, insert in edits:
        raw = raw[:at] + insert + raw[at + cut :]
    report = validate_structure(raw, "iso8859-1")
    assert report.ok or report.problems
    assert all("\r" not in problem and "\n" not in problem for problem in report.problems)
    describe_fields(raw, "iso8859-1")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["PID_1", "PID_3", "PID_5", "PID_7", "PID_8", "MSH_13", "PV1_3", "EVN_2"]),
    st.text(alphabet="0123456789AZaz .+-^&\"", max_size=24),
)
def test_the_fast_path_accepts_nothing_hl7apy_rejects(field_name: str, text: str) -> None:
    segment, _, number = field_name.partition("_")
    ref = _segment_refs("2.5", segment)[int(number)]  # type: ignore[index]
    if _plainly_valid(text, ref, "2.5", _Separators()):
        parse_field(text, ref.name, "2.5", None, VALIDATION_LEVEL.STRICT, ref.ref)  # must not raise


# --- describe_fields ------------------------------------------------------------------------------------


def test_pid_5_is_listed_with_name_type_and_components() -> None:
    fields = {info.position: info for info in describe_fields(VALID, "iso8859-1")}
    pid5 = fields["PID-5"]
    assert (pid5.segment, pid5.segment_index, pid5.name, pid5.datatype) == ("PID", 3, "Patient Name", "XPN")
    assert pid5.value == f"{CANARY}^{CANARY_GIVEN}^^^Dr."
    assert [(c.position, c.name, c.datatype, c.value) for c in pid5.components] == [
        ("PID-5.1", "Family Name", "FN", CANARY),
        ("PID-5.2", "Given Name", "ST", CANARY_GIVEN),
        ("PID-5.5", "Prefix e.g. DR", "ST", "Dr."),
    ]


def test_repetitions_segments_and_msh_are_numbered_like_the_standard() -> None:
    fields = describe_fields(VALID, "iso8859-1")
    positions = [info.position for info in fields]
    assert positions[:3] == ["MSH-1", "MSH-2", "MSH-3"]
    assert (fields[0].value, fields[1].value, fields[1].components) == ("|", "^~\\&", ())
    by_position = {info.position: info for info in fields}
    assert by_position["MSH-9"].name == "Message Type"
    assert by_position["PID-3"].value == "4711^^^KLINIKUM^PI"
    assert by_position["PID-3[2]"].repetition == 2
    assert by_position["PID-3[2]"].name == "Patient Identifier List"
    assert [c.position for c in by_position["PID-3[2]"].components] == ["PID-3[2].1", "PID-3[2].4", "PID-3[2].5"]
    assert by_position["PID-7"].components[0].name == "Time"
    assert by_position["PID-1"].name == "Set ID PID"
    assert "PID-2" not in by_position  # empty fields are not listed


def test_z_segments_and_fields_beyond_the_standard_are_listed_without_names() -> None:
    fields = describe_fields(adt(EVN, PID, PV1 + "|" * 60 + "extra", "ZBE|1|A^B"), "iso8859-1")
    by_position = {info.position: info for info in fields}
    assert (by_position["PV1-63"].name, by_position["PV1-63"].datatype, by_position["PV1-63"].value) == (
        "", "", "extra"
    )
    zbe2 = by_position["ZBE-2"]
    assert (zbe2.segment, zbe2.segment_index, zbe2.name, zbe2.datatype) == ("ZBE", 5, "", "")
    assert [(c.position, c.name, c.value) for c in zbe2.components] == [("ZBE-2.1", "", "A"), ("ZBE-2.2", "", "B")]


def test_obx_5_takes_its_type_from_obx_2() -> None:
    msh = MSH.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    fields = describe_fields(adt(PID, "OBR|1", "OBX|1|CE|GLU||H^High^HL70078", msh=msh), "utf-8")
    obx5 = next(info for info in fields if info.position == "OBX-5")
    assert (obx5.name, obx5.datatype) == ("Observation Value", "CE")
    assert [c.name for c in obx5.components] == ["Identifier", "Text", "Name of Coding System"]


def test_versions_hl7apy_lacks_use_the_nearest_older_names() -> None:
    assert reference_version("2.5") == "2.5"
    assert reference_version("2.9") == "2.8.2"
    assert reference_version("2.0") == "2.1"
    assert reference_version("") is None
    fields = describe_fields(adt(EVN, PID, PV1, msh=MSH.replace("|2.5|", "|2.9|")), "utf-8")
    assert next(info for info in fields if info.position == "PID-5").name == "Patient Name"
    unnamed = describe_fields(adt(EVN, PID, PV1, msh=MSH.replace("|2.5|", "|V2|")), "utf-8")
    assert {info.name for info in unnamed} == {""}
    assert len(unnamed) == len(fields)


def test_latin1_umlauts_survive_the_listing() -> None:
    fields = describe_fields(adt(EVN, PID.replace(CANARY, "Müller"), PV1), "8859/1")
    assert next(info for info in fields if info.position == "PID-5").components[0].value == "Müller"


def test_lines_that_are_no_segments_are_listed_whole() -> None:
    fields = describe_fields(VALID + b"just some text\r", "utf-8")
    assert (fields[-1].segment_index, fields[-1].position, fields[-1].value) == (5, "", "just some text")


def test_describe_fields_is_fast_on_a_typical_adt() -> None:
    describe_fields(VALID, "iso8859-1")  # loads the 2.5 tables once
    best = min(_timed(lambda: describe_fields(VALID, "iso8859-1")) for _ in range(5))
    assert best < 0.05


# --- the shared corpus ----------------------------------------------------------------------------------

PASSING_CORPUS_MESSAGES = {  # a few that pass; the rest fail on hl7apy's rules (see the module docstring)
    "diz-unimr-marburg/adt-to-fhir__a02_test__ADT_A02.hl7",
    "diz-unimr-marburg/adt-to-fhir__a34_test__ADT_A34.hl7",
    "diz-unimr-marburg/adt-to-fhir__adt-example__ADT_A40__4.hl7",
}


@pytest.mark.corpus
def test_every_corpus_message_validates_and_lists_without_raising_or_leaking() -> None:
    root = corpus_dir("hl7v2")
    files = sorted(root.glob("*/*.hl7"))
    assert len(files) == 200
    kinds: Counter[str] = Counter()
    passed = set()
    for path in files:
        raw = path.read_bytes()
        charset = _charset(raw)
        report = validate_structure(raw, charset)
        assert report.ok == (not report.problems)
        text = " ".join(report.problems + report.notes)
        assert "\r" not in text and "\n" not in text
        for value in _patient_values(raw.decode(charset)):
            assert not re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text), (path.name, value, text)
        if report.ok:
            passed.add(path.relative_to(root).as_posix())
        kinds.update(_kind(problem) for problem in report.problems)
        fields = describe_fields(raw, charset)
        assert fields and fields[0].position == "MSH-1"
    assert passed >= PASSING_CORPUS_MESSAGES
    assert set(kinds) >= {"required field missing", "invalid X value", "required segment X missing"}


def _charset(raw: bytes) -> str:
    header = read_header_lenient(raw)
    declared = header.charset_declared if header else ""
    try:
        return resolve_charset(declared, raw, forced=None, fallbacks=["utf-8", "iso-8859-1"])
    except Exception:
        return "iso8859-1"


_CODE = re.compile(r"[A-Z0-9_]+|\d\.\d+(\.\d+)?")  # codes and versions: words that problem texts use


def _patient_values(text: str) -> set[str]:
    """Values of PID, NK1 and GT1 (4+ characters, not codes or versions): what must never leak."""
    values = set()
    for line in re.split(r"\r\n|\n|\r", text):
        if line[:3] in {"PID", "NK1", "GT1"}:
            values |= {v for v in re.split(r"[|^~&]", line[4:]) if len(v) >= 4 and not _CODE.fullmatch(v)}
    return values


def _kind(problem: str) -> str:
    kind = re.sub(r"\s*\(hl7apy.*", "", problem.split(": ", 1)[-1])
    return re.sub(r"\b[A-Z][A-Z0-9_]+\b|\d+(\.\d+)*", "X", kind)


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started
