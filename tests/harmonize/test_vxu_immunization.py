"""VXU^V04 → Immunization (+ Organization, Practitioner, Observations).

Expected values by hand from: segments RXA[Immunization], RXR[Immunization], ORC[Immunization]; concept
maps CompletionStatus, RouteOfAdministration; data types CWE[Quantity], CWE[Organization],
XCN[Practitioner]; message VXU_V04 (OBX after RXA: Observation.partOf the Immunization; OBX before the
ORDER group: patient observations).
"""

from __future__ import annotations

import pytest

from node.harmonize.context import INVALID_VALUE, MISSING_FIELD, HarmonizeError
from tests.harmonize.helpers import dangling_references, of_type, one, resolve, segment
from tests.harmonize.test_results_helpers import LOINC, PID, UCUM, by_code, message, patient_ref, run, sid

VXU = "VXU^V04^VXU_V04"
CVX = "http://hl7.org/fhir/sid/cvx"
V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"
ORC = segment("ORC", {1: "RE", 2: "IZ-PL1^EHR", 3: "IZ-FL1^EHR", 9: "20240110100000",
                      12: "D200^Impf^Ina^^^Dr.^^^KLINIK^L"})


def rxa(**fields: str) -> str:
    """An RXA: dose 1, given 2024-01-10, CVX 140; keyword `f<n>` sets or overrides RXA-n."""
    base = {1: "0", 2: "1", 3: "20240110103000", 5: "140^Influenza, seasonal, injectable^CVX", 6: "0.5",
            7: "mL^milliliter^UCUM", 9: "00^New immunization record^NIP001", 10: "N300^Pflege^Paula^^^^^^KLINIK",
            15: "LOT42", 16: "20241231", 17: "SKB^GlaxoSmithKline^MVX", 20: "CP", 21: "A"}
    base.update({int(k[1:]): v for k, v in fields.items()})
    return segment("RXA", base)


RXR = segment("RXR", {1: "IM^Intramuscular^HL70162", 2: "LD^Left Deltoid^HL70163"})


def vaccination(*segments: str) -> bytes:
    return message(VXU, PID, *segments)


def test_administered_immunization() -> None:
    result = run(vaccination(ORC, rxa(), RXR))
    immunization = one(result, "Immunization")
    assert immunization["id"] == sid("Immunization", "FILL", "IZ-FL1", "EHR")  # ORC-3 filler number
    assert immunization["status"] == "completed"  # RXA-20 CP (CompletionStatus)
    assert immunization["vaccineCode"] == {"coding": [{"system": CVX, "code": "140",
                                                       "display": "Influenza, seasonal, injectable"}],
                                           "text": "Influenza, seasonal, injectable"}
    assert immunization["patient"] == patient_ref()
    assert immunization["occurrenceDateTime"] == "2024-01-10T10:30:00+01:00"  # RXA-3
    assert immunization["recorded"] == "2024-01-10T10:00:00+01:00"  # ORC-9 (ORC[Immunization])
    assert immunization["doseQuantity"] == {"value": 0.5, "unit": "milliliter", "system": UCUM, "code": "mL"}
    assert immunization["lotNumber"] == "LOT42"
    assert immunization["expirationDate"] == "2024-12-31"
    assert immunization["primarySource"] is True  # RXA-9 NIP001 00: new record
    assert [i["type"]["coding"][0]["code"] for i in immunization["identifier"]] == ["PLAC", "FILL"]
    assert dangling_references(result) == []


def test_manufacturer_and_performers() -> None:
    result = run(vaccination(ORC, rxa(), RXR))
    immunization = one(result, "Immunization")
    manufacturer = resolve(result, immunization["manufacturer"])
    # CWE[Organization]: identifier CWE-1 with system CWE-3, name CWE-2
    assert manufacturer["identifier"] == [{"value": "SKB", "system": "http://terminology.hl7.org/CodeSystem/MVX"}]
    assert manufacturer["name"] == "GlaxoSmithKline"
    functions = [p["function"]["coding"][0] for p in immunization["performer"]]
    assert functions == [{"system": V2_0443, "code": "AP"}, {"system": V2_0443, "code": "OP"}]
    administering = resolve(result, immunization["performer"][0]["actor"])
    assert administering["identifier"][0]["value"] == "N300"  # RXA-10
    ordering = resolve(result, immunization["performer"][1]["actor"])
    assert ordering["identifier"][0]["value"] == "D200"  # ORC-12


def test_route_and_site_from_rxr() -> None:
    immunization = one(run(vaccination(ORC, rxa(), RXR)), "Immunization")
    # RouteOfAdministration: IM → v3 IM; the v2-0162 coding as sent stays
    assert immunization["route"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration", "code": "IM",
         "display": "Injection, intramuscular"},
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0162", "code": "IM", "display": "Intramuscular"}]
    assert immunization["site"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0163", "code": "LD", "display": "Left Deltoid"}]


@pytest.mark.parametrize(("rxa20", "status", "subpotent"), [
    ("CP", "completed", False), ("RE", "not-done", False), ("NA", "not-done", False), ("PA", "completed", True),
    ("", "completed", False),  # sheet: "IF NOT VALUED" → completed
])
def test_completion_status(rxa20: str, status: str, subpotent: bool) -> None:
    immunization = one(run(vaccination(ORC, rxa(f20=rxa20))), "Immunization")
    assert immunization["status"] == status
    assert immunization.get("isSubpotent", False) is subpotent


def test_refusal_reason_and_deletion() -> None:
    refused = one(run(vaccination(ORC, rxa(f6="999", f7="", f18="00^Parental decision^NIP002", f20="RE"))),
                  "Immunization")
    assert refused["status"] == "not-done"
    assert refused["statusReason"]["coding"][0]["code"] == "00"  # RXA-18
    assert "doseQuantity" not in refused  # RXA-6 999: amount unknown
    deleted = one(run(vaccination(ORC, rxa(f21="D"))), "Immunization")
    assert deleted["status"] == "entered-in-error"  # RXA-21 D


def test_historical_record_is_not_primary_source() -> None:
    immunization = one(run(vaccination(ORC, rxa(f9="01^Historical information - source unspecified^NIP001"))),
                       "Immunization")
    assert immunization["primarySource"] is False
    assert immunization["reportOrigin"]["coding"][0]["code"] == "01"


def test_unknown_completion_status_fails() -> None:
    with pytest.raises(HarmonizeError) as caught:
        run(vaccination(ORC, rxa(f20="XX")))
    assert caught.value.where == "RXA (segment 4) RXA-20"
    assert caught.value.kind == INVALID_VALUE


def test_missing_vaccine_code_fails() -> None:
    with pytest.raises(HarmonizeError) as caught:
        run(vaccination(ORC, rxa(f5="")))
    assert caught.value.where == "RXA (segment 4) RXA-5"
    assert caught.value.kind == MISSING_FIELD


def test_observations_of_the_vaccination() -> None:
    funding = segment("OBX", {1: "1", 2: "CE", 3: "64994-7^Vaccine funding program eligibility category^LN",
                              4: "1", 5: "V01^Not VFC eligible^HL70064", 11: "F", 14: "20240110"})
    vis = segment("OBX", {1: "2", 2: "DT", 3: "29769-7^Date vaccine information statement presented^LN",
                          4: "2", 5: "20240110", 11: "F"})
    person = segment("OBX", {1: "1", 2: "CE", 3: "59784-9^Disease with presumed immunity^LN",
                             5: "38907003^Varicella^SCT", 11: "F"})
    result = run(vaccination(person, ORC, rxa(), RXR, funding, vis))
    immunization = one(result, "Immunization")
    part_of = [{"reference": f"Immunization/{immunization['id']}"}]
    assert by_code(result, "64994-7")["partOf"] == part_of
    assert by_code(result, "64994-7")["valueCodeableConcept"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0064", "code": "V01", "display": "Not VFC eligible"}]
    assert by_code(result, "29769-7")["valueDateTime"] == "2024-01-10"
    assert by_code(result, "29769-7")["partOf"] == part_of
    immunity = by_code(result, "59784-9")  # PERSON_OBSERVATION, before the ORDER group
    assert "partOf" not in immunity
    assert immunity["subject"] == patient_ref()
    assert immunity["code"]["coding"][0]["system"] == LOINC
    assert dangling_references(result) == []


def test_several_vaccinations_without_order_numbers() -> None:
    # ids from (patient, RXA-5, RXA-3) when there is no ORC filler number
    first = rxa(f3="20230110")
    second = rxa(f3="20240110", f5="08^Hep B, adolescent or pediatric^CVX")
    result = run(vaccination(first, RXR, second))
    immunizations = of_type(result, "Immunization")
    assert [i["id"] for i in immunizations] == [
        sid("Immunization", sid("Patient", "P1001", "1.2.276.0.76.4.8"), "140", "CVX", "20230110"),
        sid("Immunization", sid("Patient", "P1001", "1.2.276.0.76.4.8"), "08", "CVX", "20240110")]
    assert "route" in immunizations[0] and "route" not in immunizations[1]  # RXR belongs to the RXA before


def test_immunization_without_patient_fails() -> None:
    with pytest.raises(HarmonizeError) as caught:
        run(message(VXU, ORC, rxa()))
    assert caught.value.kind == MISSING_FIELD
