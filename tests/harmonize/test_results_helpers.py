"""Helpers for the order/result/immunization/document/appointment conversion tests (synthetic messages,
resource look-up, reference check) and tests of the helpers themselves.

Expectations in test_results_*, test_orders_*, test_vxu_* and test_mdm_siu_* are written by hand from
the v2-to-FHIR mapping tables (../shared/reference/v2-to-fhir/mappings: segment, data type and concept
map sheets), never copied from converter output. All names and numbers are synthetic.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from node.harmonize.context import ConvertOptions
from node.harmonize.convert import ConversionResult, convert
from node.harmonize.ids import stable_id
from node.harmonize.terminology import Terminology

SITE = "results-test"
MSH_TIME = "20240115090000"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def segment(segment_id: str, fields: dict[int, str]) -> str:
    """One segment with the given fields by HL7 number (1-based), the others empty."""
    size = max(fields) if fields else 0
    return "|".join([segment_id, *(fields.get(n, "") for n in range(1, size + 1))])


def message(message_type: str, *segments: str, control_id: str = "CTRL0001", version: str = "2.5.1") -> bytes:
    """A message of `message_type` (e.g. "ORU^R01^ORU_R01") from a synthetic lab/HIS, then `segments`."""
    msh = f"MSH|^~\\&|LABSYS|LABOR|EDGE|DIZ|{MSH_TIME}||{message_type}|{control_id}|P|{version}|||||DE||DE"
    return "\r".join([msh, *segments]).encode("utf-8") + b"\r"


PATIENT_ID = ("P1001", "1.2.276.0.76.4.8")
PID = segment("PID", {1: "1", 3: "P1001^^^KLINIK&1.2.276.0.76.4.8&ISO^MR", 5: "Beispiel^Berta",
                      7: "19700101", 8: "F"})


def run(raw: bytes, *, terminology: Terminology | None = None, site_id: str = SITE) -> ConversionResult:
    options = ConvertOptions(site_id=site_id, terminology=terminology or Terminology())
    return convert(raw, "utf-8", options)


def sid(resource_type: str, *parts: str) -> str:
    """The stable id the converter gives a resource identified by `parts` (node.harmonize.ids)."""
    return stable_id(SITE, resource_type, *parts)


def patient_ref() -> dict[str, str]:
    return {"reference": f"Patient/{sid('Patient', *PATIENT_ID)}"}


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


def by_code(result: ConversionResult, code: str) -> dict[str, Any]:
    """The Observation whose code has a coding with `code`."""
    found = [o for o in of_type(result, "Observation")
             if any(c.get("code") == code for c in o["code"].get("coding", []))]
    assert len(found) == 1, f"{len(found)} Observations with code {code}"
    return found[0]


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


def dangling_references(result: ConversionResult) -> list[str]:
    """References in the result's transaction bundle that no entry (request.url Type/id) provides."""
    bundle = result.bundle()
    urls = {entry["request"]["url"] for entry in bundle["entry"]}
    return sorted({ref for entry in bundle["entry"] for ref in references(entry["resource"]) if ref not in urls})


def decoded(attachment: dict[str, Any]) -> str:
    return base64.b64decode(attachment["data"]).decode("utf-8")


# -- the helpers themselves ---------------------------------------------------------------------------

def test_segment_places_fields_by_number() -> None:
    assert segment("OBX", {2: "NM", 5: "7"}) == "OBX||NM|||7"


def test_references_finds_nested_references() -> None:
    resource = {"a": {"reference": "X/1"}, "b": [{"c": {"reference": "Y/2"}}], "reference": "Z/3"}
    assert sorted(references(resource)) == ["X/1", "Y/2", "Z/3"]
