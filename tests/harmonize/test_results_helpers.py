"""Helpers for the order/result/immunization/document/appointment conversion tests (synthetic messages and
their conversion, stable ids; look-up and reference checks are in tests.harmonize.helpers) and tests of the
helpers themselves.

Expectations in test_results_*, test_orders_*, test_vxu_* and test_mdm_siu_* are written by hand from
the v2-to-FHIR mapping tables (../shared/reference/v2-to-fhir/mappings: segment, data type and concept
map sheets), never copied from converter output. All names and numbers are synthetic.
"""

from __future__ import annotations

import base64
from typing import Any

from node.harmonize.convert import ConversionResult
from node.harmonize.ids import stable_id
from node.harmonize.terminology import Terminology
from tests.harmonize.helpers import convert_utf8, of_type, references, segment

SITE = "results-test"
MSH_TIME = "20240115090000"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def message(message_type: str, *segments: str, control_id: str = "CTRL0001", version: str = "2.5.1") -> bytes:
    """A message of `message_type` (e.g. "ORU^R01^ORU_R01") from a synthetic lab/HIS, then `segments`."""
    msh = f"MSH|^~\\&|LABSYS|LABOR|EDGE|DIZ|{MSH_TIME}||{message_type}|{control_id}|P|{version}|||||DE||DE"
    return "\r".join([msh, *segments]).encode("utf-8") + b"\r"


PATIENT_ID = ("P1001", "1.2.276.0.76.4.8")
PID = segment("PID", {1: "1", 3: "P1001^^^KLINIK&1.2.276.0.76.4.8&ISO^MR", 5: "Beispiel^Berta",
                      7: "19700101", 8: "F"})


def run(raw: bytes, *, terminology: Terminology | None = None, site_id: str = SITE) -> ConversionResult:
    return convert_utf8(raw, site_id=site_id, terminology=terminology or Terminology())


def sid(resource_type: str, *parts: str) -> str:
    """The stable id the converter gives a resource identified by `parts` (node.harmonize.ids)."""
    return stable_id(SITE, resource_type, *parts)


def patient_ref() -> dict[str, str]:
    return {"reference": f"Patient/{sid('Patient', *PATIENT_ID)}"}


def by_code(result: ConversionResult, code: str) -> dict[str, Any]:
    """The Observation whose code has a coding with `code`."""
    found = [o for o in of_type(result, "Observation")
             if any(c.get("code") == code for c in o["code"].get("coding", []))]
    assert len(found) == 1, f"{len(found)} Observations with code {code}"
    return found[0]


def decoded(attachment: dict[str, Any]) -> str:
    return base64.b64decode(attachment["data"]).decode("utf-8")


# -- the helpers themselves ---------------------------------------------------------------------------

def test_segment_places_fields_by_number() -> None:
    assert segment("OBX", {2: "NM", 5: "7"}) == "OBX||NM|||7"


def test_references_finds_nested_references() -> None:
    resource = {"a": {"reference": "X/1"}, "b": [{"c": {"reference": "Y/2"}}], "reference": "Z/3"}
    assert sorted(references(resource)) == ["X/1", "Y/2", "Z/3"]
