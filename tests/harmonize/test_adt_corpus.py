"""Every ADT message of ../shared/corpus/hl7v2 converts, or fails with a HarmonizeError whose reason names
a segment/field (no other exception); converted bundles have no dangling references."""

from __future__ import annotations

from collections import Counter

import pytest

from node.harmonize.context import UNSUPPORTED_MESSAGE, ConvertOptions, HarmonizeError
from node.harmonize.convert import convert
from tests.harmonize.helpers import NAMES_A_SEGMENT, corpus_messages, dangling_references

pytestmark = pytest.mark.corpus

@pytest.mark.parametrize("z_segments", ["ignore", "extension"])
def test_every_corpus_adt_message_converts_or_fails_naming_a_segment(z_segments):
    messages = corpus_messages({"ADT"})
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
        assert dangling_references(result) == [], path.name
        assert result.partition_key
    print(f"corpus ADT: {converted} converted, failures {dict(failures)}")
    assert converted >= 70
