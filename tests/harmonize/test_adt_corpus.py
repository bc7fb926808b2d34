"""Every ADT message of ../shared/corpus/hl7v2 converts, or fails with a HarmonizeError whose reason names
a segment/field (no other exception); converted bundles have no dangling references."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from node.harmonize.context import UNSUPPORTED_MESSAGE, ConvertOptions, HarmonizeError
from node.harmonize.convert import convert
from node.hl7v2.charset import resolve_charset
from node.hl7v2.parser import HL7ParseError, parse_message
from tests.conftest import corpus_dir
from tests.harmonize.test_adt_helpers import dangling_references

pytestmark = pytest.mark.corpus

NAMES_A_SEGMENT = re.compile(r"^(MSH-9|[A-Z][A-Z0-9]{2}( \(segment \d+\))?( [A-Z][A-Z0-9]{2}-\d+)?): ")


def adt_messages() -> list[tuple[Path, bytes, str]]:
    found = []
    for path in sorted(corpus_dir("hl7v2").rglob("*.hl7")):
        raw = path.read_bytes()
        try:
            head = parse_message(raw, "latin-1")  # decodes any bytes: enough to read MSH-9/MSH-18
        except HL7ParseError:
            continue
        if head.message_code.upper() != "ADT":
            continue
        charset = resolve_charset(head.charset_declared, raw, forced=None, fallbacks=["utf-8", "iso-8859-1"])
        found.append((path, raw, charset))
    return found


@pytest.mark.parametrize("z_segments", ["ignore", "extension"])
def test_every_corpus_adt_message_converts_or_fails_naming_a_segment(z_segments):
    messages = adt_messages()
    assert len(messages) >= 90
    converted, failures = 0, Counter[str]()
    for path, raw, charset in messages:
        try:
            result = convert(raw, charset, ConvertOptions(site_id="corpus", z_segments=z_segments))
        except HarmonizeError as exc:
            assert NAMES_A_SEGMENT.match(exc.reason), f"{path.name}: {exc.reason}"
            failures[exc.kind] += 1
            # the only failures are trigger events outside SUPPORTED_EVENTS (A09, A10, A14…, A60)
            assert exc.kind == UNSUPPORTED_MESSAGE, f"{path.name}: {exc.reason}"
            continue
        converted += 1
        assert dangling_references(result.bundle()) == [], path.name
        assert result.partition_key
    print(f"corpus ADT: {converted} converted, failures {dict(failures)}")
    assert converted >= 70
