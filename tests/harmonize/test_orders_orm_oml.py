"""ORM^O01 and OML^O21 → ServiceRequest (+ Specimen, supporting Observations).

Expected values by hand from: segments ORC[ServiceRequest], OBR[ServiceRequest], NTE[ServiceRequest],
SPM[Specimen]; concept maps OrderControlCode[ServiceRequest.status], OrderStatus, ExtendedPriorityCodes,
SpecimenCollectionMethod, YesNoIndicator[AvailabilityStatus]; data types XCN[Practitioner], CQ[Quantity],
DR[Period]; messages ORM_O01 (OBX → ServiceRequest.supportingInfo) and OML_O21 (SPM →
ServiceRequest.specimen).
"""

from __future__ import annotations

import pytest

from node.harmonize.context import MISSING_FIELD, HarmonizeError
from tests.harmonize.helpers import dangling_references, of_type, one, resolve, segment
from tests.harmonize.test_results_helpers import (
    LOINC,
    PID,
    SITE,
    SNOMED,
    UCUM,
    V2_0203,
    by_code,
    message,
    patient_ref,
    run,
    sid,
)

ORM = "ORM^O01^ORM_O01"
OML = "OML^O21^OML_O21"
PV1 = segment("PV1", {1: "1", 2: "I", 3: "STATION1^^^KLINIK", 19: "V1001^^^KLINIK^VN"})


def orc(control: str, status: str = "", **fields: str) -> str:
    extra = {int(k[1:]): v for k, v in fields.items()}
    return segment("ORC", {1: control, 5: status, **extra})


def new_order() -> bytes:
    return message(ORM, PID, PV1,
                   orc("NW", f2="PL5001^HIS", f4="GRP77^HIS", f9="20240115101500",
                       f12="D123^Arzt^Anton^^^Dr.^^^KLINIK^L"),
                   segment("OBR", {1: "1", 2: "PL5001^HIS", 4: "24326-1^Electrolytes panel^LN", 5: "S",
                                   6: "20240115120000", 16: "D999^Anders^Otto"}),
                   "NTE|1||Bitte nüchtern abnehmen",
                   segment("OBX", {1: "1", 2: "ST", 3: "Q1^Patient nüchtern?^L", 5: "ja", 11: "F"}))


def test_new_order_service_request() -> None:
    result = run(new_order())
    request = one(result, "ServiceRequest")
    assert request["id"] == sid("ServiceRequest", "PLAC", "PL5001", "HIS")  # no filler number: placer
    assert request["status"] == "active"  # ORC-1 NW (OrderControlCode[ServiceRequest.status]), ORC-5 empty
    assert request["intent"] == "order"
    assert request["identifier"] == [{"value": "PL5001",
                                      "system": f"https://{SITE}.edge-node.invalid/fhir/NamingSystem/HIS",
                                      "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}}]
    assert request["requisition"]["value"] == "GRP77"
    assert request["requisition"]["type"] == {"coding": [{"system": V2_0203, "code": "PGN"}]}
    assert request["authoredOn"] == "2024-01-15T10:15:00+01:00"  # ORC-9 with ORC-1 NW
    assert request["code"] == {"coding": [{"system": LOINC, "code": "24326-1", "display": "Electrolytes panel"}],
                               "text": "Electrolytes panel"}
    assert request["priority"] == "stat"  # OBR-5 S (ExtendedPriorityCodes)
    assert request["occurrenceDateTime"] == "2024-01-15T12:00:00+01:00"  # OBR-6
    assert request["subject"] == patient_ref()
    assert request["note"] == [{"text": "Bitte nüchtern abnehmen"}]
    assert resolve(result, request["encounter"])["resourceType"] == "Encounter"


def test_requester_is_the_ordering_provider_from_orc12() -> None:
    result = run(new_order())
    practitioner = resolve(result, one(result, "ServiceRequest")["requester"])
    # XCN[Practitioner]: identifier XCN-1 (system from XCN-9), name XCN-2..6, use from XCN-10 (NameType L)
    assert practitioner["identifier"][0]["value"] == "D123"
    assert practitioner["identifier"][0]["system"] == f"https://{SITE}.edge-node.invalid/fhir/NamingSystem/KLINIK"
    assert practitioner["name"] == [{"use": "official", "family": "Arzt", "given": ["Anton"], "prefix": ["Dr."]}]
    # OBR-16 only "IF ORC-12 NOT VALUED": no second practitioner
    assert len(of_type(result, "Practitioner")) == 1


def test_order_observation_is_supporting_info() -> None:
    result = run(new_order())
    question = by_code(result, "Q1")
    assert one(result, "ServiceRequest")["supportingInfo"] == [{"reference": f"Observation/{question['id']}"}]
    assert question["valueString"] == "ja"
    assert of_type(result, "DiagnosticReport") == []  # an order message has no reports
    assert dangling_references(result) == []


@pytest.mark.parametrize(("control", "order_status", "expected"), [
    ("NW", "", "active"), ("OK", "", "active"), ("HD", "", "active"), ("OH", "", "on-hold"),
    ("DC", "", "revoked"), ("CR", "", "revoked"), ("FU", "", "completed"),
    ("CA", "", "active"),  # the table maps "cancel order request" to active (the order is not cancelled yet)
    ("SC", "CM", "completed"), ("SC", "IP", "active"), ("SC", "HD", "on-hold"), ("SC", "CA", "revoked"),
    ("SC", "DC", "revoked"), ("SC", "ER", "entered-in-error"),  # ORC-5 (OrderStatus) wins over ORC-1
    ("RE", "", "unknown"),  # not a status code: neither map has it
])
def test_request_status(control: str, order_status: str, expected: str) -> None:
    raw = message(ORM, PID, orc(control, order_status, f2="PL1^HIS"), segment("OBR", {1: "1", 2: "PL1^HIS"}))
    assert one(run(raw), "ServiceRequest")["status"] == expected


def test_unknown_order_status_is_counted() -> None:
    result = run(message(ORM, PID, orc("SC", "ZZ", f2="PL1^HIS"), segment("OBR", {1: "1", 2: "PL1^HIS"})))
    assert one(result, "ServiceRequest")["status"] == "unknown"
    assert result.unmapped_codes["HL70038"] == 1


def test_orc_without_numbers_merges_into_the_obr_request() -> None:
    raw = message(ORM, PID, orc("NW", f12="D123^Arzt^Anton"),
                  segment("OBR", {1: "1", 2: "PL6001^HIS", 4: "GLU^Glucose^L"}))
    request = one(run(raw), "ServiceRequest")
    assert request["id"] == sid("ServiceRequest", "PLAC", "PL6001", "HIS")
    assert request["status"] == "active"  # from the ORC
    assert "requester" in request
    assert [i["value"] for i in request["identifier"]] == ["PL6001"]


def test_orc_and_obr_with_the_same_number_are_one_request() -> None:
    raw = message(ORM, PID, orc("NW", f2="PL1^HIS", f3="FL1^LAB"),
                  segment("OBR", {1: "1", 2: "PL1^HIS", 3: "FL1^LAB", 4: "GLU^Glucose^L"}))
    request = one(run(raw), "ServiceRequest")
    assert request["id"] == sid("ServiceRequest", "FILL", "FL1", "LAB")
    assert [i["type"]["coding"][0]["code"] for i in request["identifier"]] == ["PLAC", "FILL"]


def test_reflex_order_intent() -> None:
    raw = message(ORM, PID, orc("NW", f2="PL1^HIS"), segment("OBR", {1: "1", 2: "PL1^HIS", 11: "G"}))
    assert one(run(raw), "ServiceRequest")["intent"] == "reflex-order"  # OBR-11 G


def test_order_without_patient_fails_naming_the_segment() -> None:
    with pytest.raises(HarmonizeError) as caught:
        run(message(ORM, orc("NW", f2="PL1^HIS"), segment("OBR", {1: "1", 2: "PL1^HIS"})))
    assert caught.value.where == "ORC (segment 2)"
    assert caught.value.kind == MISSING_FIELD


def lab_order() -> bytes:
    spm = segment("SPM", {1: "1", 2: "SPP1&HIS^SPF1&LAB", 4: "119297000^Blood specimen^SCT",
                          7: "VENIP^Venipuncture^HL70488", 12: "5^mL&milliliter&UCUM",
                          17: "20240115073000^20240115073500", 18: "20240115080000", 20: "Y"})
    return message(OML, PID,
                   orc("NW", "SC", f2="PL7001^HIS", f3="FL7001^LAB"),
                   segment("OBR", {1: "1", 2: "PL7001^HIS", 3: "FL7001^LAB",
                                   4: "57021-8^CBC W Auto Differential panel - Blood^LN"}),
                   segment("OBX", {1: "1", 2: "NM", 3: "29463-7^Body weight^LN", 5: "70", 6: "kg^^UCUM", 11: "F"}),
                   spm,
                   segment("OBX", {1: "1", 2: "NM", 3: "SPVOL^Specimen volume^L", 5: "5", 6: "mL^^UCUM", 11: "F"}))


def test_lab_order_with_specimen() -> None:
    result = run(lab_order())
    specimen = one(result, "Specimen")
    request = one(result, "ServiceRequest")
    assert request["status"] == "active"  # ORC-5 SC (OrderStatus)
    assert specimen["id"] == sid("Specimen", "FILL", "SPF1", "LAB")
    assert [(i["value"], i["type"]["coding"][0]["code"]) for i in specimen["identifier"]] == [
        ("SPP1", "PLAC"), ("SPF1", "FILL")]
    assert specimen["type"] == {"coding": [{"system": SNOMED, "code": "119297000", "display": "Blood specimen"}],
                                "text": "Blood specimen"}
    assert specimen["collection"] == {
        "collectedPeriod": {"start": "2024-01-15T07:30:00+01:00", "end": "2024-01-15T07:35:00+01:00"},  # SPM-17.2
        "method": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0488", "code": "VENIP",
                               "display": "Venipuncture"}], "text": "Venipuncture"},
        "quantity": {"value": 5, "unit": "milliliter", "system": UCUM, "code": "mL"},  # CQ[Quantity]
    }
    assert specimen["receivedTime"] == "2024-01-15T08:00:00+01:00"
    assert specimen["status"] == "available"  # SPM-20 Y (YesNoIndicator[AvailabilityStatus])
    assert specimen["subject"] == patient_ref()
    assert request["specimen"] == [{"reference": f"Specimen/{specimen['id']}"}]  # OML_O21


def test_lab_order_observations() -> None:
    result = run(lab_order())
    request = one(result, "ServiceRequest")
    weight, volume = by_code(result, "29463-7"), by_code(result, "SPVOL")
    assert request["supportingInfo"] == [{"reference": f"Observation/{weight['id']}"}]
    assert volume["focus"] == [{"reference": f"Specimen/{one(result, 'Specimen')['id']}"}]
    assert dangling_references(result) == []
