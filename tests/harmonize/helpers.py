"""Helpers shared by the conversion tests of every message family (ADT, orders/results, MII profile,
corpus runs): building segments, converting, looking resources up, checking that references resolve,
and reading the HL7 v2 corpus. The family-specific message builders live in test_adt_helpers and
test_results_helpers."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from node.harmonize.context import ConvertOptions
from node.harmonize.convert import ConversionResult, convert
from node.hl7v2.charset import resolve_charset
from node.hl7v2.parser import HL7ParseError, parse_message
from tests.conftest import corpus_dir

NAMES_A_SEGMENT = re.compile(r"^(MSH-9|[A-Z][A-Z0-9]{2}( \(segment \d+\))?( [A-Z][A-Z0-9]{2}-\d+)?): ")
"""What a HarmonizeError reason starts with: the segment (and field) it names."""


def segment(segment_id: str, fields: dict[int, str]) -> str:
    """One segment with the given fields by HL7 number (1-based), the others empty."""
    size = max(fields) if fields else 0
    return "|".join([segment_id, *(fields.get(n, "") for n in range(1, size + 1))])


def convert_utf8(raw: bytes, **options: Any) -> ConversionResult:
    """`raw` (UTF-8) converted with ConvertOptions(**options)."""
    return convert(raw, "utf-8", ConvertOptions(**options))


def of_type(result: ConversionResult, resource_type: str) -> list[dict[str, Any]]:
    return [r for r in result.resources if r["resourceType"] == resource_type]


def one(result: ConversionResult, resource_type: str) -> dict[str, Any]:
    found = of_type(result, resource_type)
    assert len(found) == 1, f"{len(found)} {resource_type} resources"
    return found[0]


def resolve(result: ConversionResult, reference: dict[str, str]) -> dict[str, Any]:
    resource_type, resource_id = reference["reference"].split("/", 1)
    for resource in result.resources:
        if resource["resourceType"] == resource_type and resource["id"] == resource_id:
            return resource
    raise AssertionError(f"unresolved {reference['reference']}")


def references(value: Any) -> Iterator[str]:
    """Every Reference.reference inside a resource (any depth)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def bundle_dangling_references(bundle: dict[str, Any]) -> list[str]:
    """References in a transaction bundle that no entry's request.url (Type/id) provides."""
    urls = {entry["request"]["url"] for entry in bundle["entry"]}
    return sorted({ref for entry in bundle["entry"] for ref in references(entry["resource"]) if ref not in urls})


def dangling_references(result: ConversionResult) -> list[str]:
    """References in the result's transaction bundle that no entry (request.url Type/id) provides."""
    return bundle_dangling_references(result.bundle())


def assert_references_resolve(result: ConversionResult) -> None:
    assert dangling_references(result) == []


def corpus_messages(message_codes: Collection[str]) -> list[tuple[Path, bytes, str]]:
    """(path, raw bytes, charset) of every message in ../shared/corpus/hl7v2 whose MSH-9 message code is
    one of `message_codes` (e.g. {"ADT"}), in path order; files that do not parse are left out."""
    found = []
    for path in sorted(corpus_dir("hl7v2").rglob("*.hl7")):
        raw = path.read_bytes()
        try:
            head = parse_message(raw, "latin-1")  # decodes any bytes: enough to read MSH-9/MSH-18
        except HL7ParseError:
            continue
        if head.message_code.upper() not in message_codes:
            continue
        charset = resolve_charset(head.charset_declared, raw, forced=None, fallbacks=["utf-8", "iso-8859-1"])
        found.append((path, raw, charset))
    return found
