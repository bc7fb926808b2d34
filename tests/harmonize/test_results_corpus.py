"""Every ORU/ORM/OML/VXU/MDM/SIU message of ../shared/corpus/hl7v2 converts, or fails with a
HarmonizeError whose reason names a segment/field (no other exception). Converted bundles have no dangling
references and convert to identical JSON twice (stable ids).

Failures raised by the order/result/immunization/document mappers are all listed in BAD_DATA: each is a
genuine data problem of the sample, not a mapper gap. Failures of other mappers (e.g. PID-7 "Aug 15,
1942") and trigger events outside the supported set (MDM^T01, SIU^S13 ...) only need to name a segment.
Run with `-s` to see the counts and reasons.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from node.harmonize.context import ConvertOptions, HarmonizeError
from node.harmonize.convert import convert, dumps
from tests.harmonize.helpers import NAMES_A_SEGMENT, corpus_messages, dangling_references

pytestmark = pytest.mark.corpus

MESSAGE_CODES = frozenset({"ORU", "ORM", "OML", "VXU", "MDM", "SIU"})
OUR_SEGMENTS = frozenset({"ORC", "OBR", "OBX", "NTE", "SPM", "RXA", "RXR", "TXA", "SCH", "AIS", "AIG", "AIL",
                          "AIP", "RGS"})

BAD_DATA = {
    # the HL7 IG's MDM^T02 sample sends the placeholder "<Base64 encoded>" as ED data
    "Message.hl7_MDM_T02.hl7": "OBX-5: invalid value (ED data is not valid Base64)",
    # OIE parser fixtures: "OBX|1|foo|||bar||baz" (no observation identifier)
    "test-hl7-1636-output__ORM_O01.hl7": "OBX-3: missing required field",
    "test-hl7-missing-subcomponents-output__ORM_O01.hl7": "OBX-3: missing required field",
    "test-hl7-repetitions-input__ORM_O01.hl7": "OBX-3: missing required field",
}


def test_every_corpus_order_result_message_converts_or_fails_naming_a_segment() -> None:
    messages = corpus_messages(MESSAGE_CODES)
    assert len(messages) >= 65
    converted, kinds, reasons = 0, Counter[str](), []
    seen_bad = set()
    for path, raw, charset in messages:
        options = ConvertOptions(site_id="corpus")
        try:
            result = convert(raw, charset, options)
        except HarmonizeError as exc:
            assert NAMES_A_SEGMENT.match(exc.reason), f"{path.name}: {exc.reason}"
            kinds[exc.kind] += 1
            reasons.append(f"{path.name}: {exc.reason}")
            if exc.where[:3] in OUR_SEGMENTS:
                assert path.name in BAD_DATA, f"{path.name}: {exc.reason}"
                assert BAD_DATA[path.name] in exc.reason, f"{path.name}: {exc.reason}"
                seen_bad.add(path.name)
            continue
        converted += 1
        assert dangling_references(result) == [], path.name
        again = convert(raw, charset, options)
        assert [dumps(r) for r in again.resources] == [dumps(r) for r in result.resources], path.name
    print(f"\ncorpus ORU/ORM/OML/VXU/MDM/SIU: {len(messages)} messages, {converted} converted, "
          f"failures {dict(kinds)}")
    for reason in reasons:
        print("  ", reason)
    assert seen_bad == set(BAD_DATA)
    assert converted >= 35


def _without_birth_dates(raw: bytes, charset: str) -> bytes:
    """The message with PID-7 and PV1 removed (in memory): a few samples have birth dates like "Aug 15,
    1942" or visit dates the PID/PV1 mappers rightly reject before any order segment is read."""
    text = raw.decode(charset)
    segments = []
    for line in re.split(r"\r\n|\r|\n", text):
        if line.startswith("PV1|"):
            continue
        if line.startswith("PID|"):
            fields = line.split("|")
            if len(fields) > 7:
                fields[7] = ""
            line = "|".join(fields)
        segments.append(line)
    return "\r".join(segments).encode(charset)


def test_order_segments_of_samples_with_bad_demographics_are_exercised_too() -> None:
    converted = 0
    for path, raw, charset in corpus_messages(MESSAGE_CODES):
        try:
            result = convert(_without_birth_dates(raw, charset), charset, ConvertOptions(site_id="corpus"))
        except HarmonizeError as exc:
            assert NAMES_A_SEGMENT.match(exc.reason), f"{path.name}: {exc.reason}"
            if exc.where[:3] in OUR_SEGMENTS:
                assert BAD_DATA.get(path.name, "\x00") in exc.reason, f"{path.name}: {exc.reason}"
            else:
                assert exc.where == "MSH-9", f"{path.name}: {exc.reason}"
            continue
        converted += 1
        assert dangling_references(result) == [], path.name
    assert converted >= 41  # the 35 of the test above and the 6 samples with bad birth/visit dates
