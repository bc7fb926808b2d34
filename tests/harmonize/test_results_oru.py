"""ORU^R01 → DiagnosticReport, Observation, ServiceRequest, Specimen.

Expected values are taken by hand from the mapping tables: segments OBR[DiagnosticReport],
ORC[ServiceRequest], OBX[Observation], OBX[Observation-Component], NTE[Observation], SPM[Specimen]; data
types NM[Quantity], CWE[Quantity], SN[Quantity]/SN[Range]/SN[Ratio], CWE[CodeableConcept], DTM; concept
maps ResultStatus[Non-Queries], ObservationResultStatusCodesInterpretation, InterpretationCodes,
DiagnosticServiceSectionID, SpecimenType; message ORU_R01.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.harmonize.context import INVALID_VALUE, MISSING_FIELD, HarmonizeError
from node.harmonize.convert import dumps
from node.harmonize.terminology import Terminology
from tests.harmonize.helpers import dangling_references, of_type, one, resolve, segment
from tests.harmonize.test_results_helpers import (
    LOINC,
    PID,
    SITE,
    SNOMED,
    UCUM,
    V2_0203,
    V3_INTERPRETATION,
    by_code,
    message,
    patient_ref,
    run,
    sid,
)

ORU = "ORU^R01^ORU_R01"
LOCAL = f"https://{SITE}.edge-node.invalid/fhir/CodeSystem"
ORC = segment("ORC", {1: "RE", 2: "PL1001^HIS", 3: "FL2002^LAB", 5: "CM", 9: "20240115080000",
                      12: "D123^Arzt^Anton^^^Dr.^^^KLINIK^L"})
OBR = segment("OBR", {1: "1", 2: "PL1001^HIS", 3: "FL2002^LAB",
                      4: "24326-1^Electrolytes panel - Serum or Plasma^LN", 7: "20240115073000",
                      22: "20240115083015", 24: "CH", 25: "F"})


def obx(set_id: str, value_type: str, code: str, value: str, **fields: str) -> str:
    """An OBX; keyword `f<n>` sets OBX-n (f6 units, f7 reference range, f8 interpretation, f11 status)."""
    extra = {int(k[1:]): v for k, v in fields.items()}
    return segment("OBX", {1: set_id, 2: value_type, 3: code, 5: value, 11: "F", **extra})


# -- 1. NM with UCUM units, reference ranges, interpretation H/L/N -------------------------------------

def electrolytes() -> bytes:
    return message(ORU, PID, ORC, OBR,
                   obx("1", "NM", "2951-2^Sodium [Moles/volume] in Serum or Plasma^LN", "152",
                       f6="mmol/L^millimole per liter^UCUM", f7="135-145", f8="H", f14="20240115073500"),
                   obx("2", "NM", "2823-3^Potassium [Moles/volume] in Serum or Plasma^LN", "3.1",
                       f6="mmol/L^^UCUM", f7="3.5-5.0", f8="L"),
                   obx("3", "NM", "1988-5^C reactive protein [Mass/volume] in Serum or Plasma^LN", "4",
                       f6="mg/L^^UCUM", f7="<5", f8="N"),
                   obx("4", "NM", "2345-7^Glucose [Mass/volume] in Serum or Plasma^LN", "12",
                       f6="mmol/L^^UCUM", f7=">10", f8="N"))


def test_nm_value_with_ucum_unit_reference_range_and_high_interpretation() -> None:
    result = run(electrolytes())
    sodium = by_code(result, "2951-2")
    mmol = {"unit": "millimole per liter", "system": UCUM, "code": "mmol/L"}  # CWE[Quantity]: unit CWE-2
    assert sodium["status"] == "final"  # OBX-11 F (ObservationResultStatusCodesInterpretation)
    assert sodium["code"] == {"coding": [{"system": LOINC, "code": "2951-2",
                                          "display": "Sodium [Moles/volume] in Serum or Plasma"}],
                              "text": "Sodium [Moles/volume] in Serum or Plasma"}
    assert sodium["valueQuantity"] == {"value": 152, **mmol}
    assert sodium["referenceRange"] == [{"text": "135-145", "low": {"value": 135, **mmol},
                                         "high": {"value": 145, **mmol}}]
    assert sodium["interpretation"] == [{"coding": [{"system": V3_INTERPRETATION, "code": "H", "display": "High"}]}]
    assert sodium["effectiveDateTime"] == "2024-01-15T07:35:00+01:00"  # OBX-14, Europe/Berlin in January
    assert sodium["issued"] == "2024-01-15T08:30:15+01:00"  # OBR-22 (release time)
    assert sodium["subject"] == patient_ref()


def test_low_normal_interpretations_and_one_sided_reference_ranges() -> None:
    result = run(electrolytes())
    potassium, crp, glucose = by_code(result, "2823-3"), by_code(result, "1988-5"), by_code(result, "2345-7")
    mmol = {"unit": "mmol/L", "system": UCUM, "code": "mmol/L"}  # CWE-2 empty: unit is CWE-1
    assert potassium["valueQuantity"] == {"value": 3.1, **mmol}
    assert potassium["referenceRange"] == [{"text": "3.5-5.0", "low": {"value": 3.5, **mmol},
                                            "high": {"value": 5.0, **mmol}}]
    assert potassium["interpretation"][0]["coding"] == [{"system": V3_INTERPRETATION, "code": "L",
                                                         "display": "Low"}]
    assert crp["referenceRange"] == [{"text": "<5", "high": {"value": 5, "unit": "mg/L", "system": UCUM,
                                                             "code": "mg/L"}}]
    assert crp["interpretation"][0]["coding"] == [{"system": V3_INTERPRETATION, "code": "N", "display": "Normal"}]
    assert glucose["referenceRange"] == [{"text": ">10", "low": {"value": 10, **mmol}}]
    assert "effectiveDateTime" in potassium and potassium["effectiveDateTime"] == "2024-01-15T07:30:00+01:00"  # OBR-7


def test_diagnostic_report_from_obr_and_orc() -> None:
    result = run(electrolytes())
    report = one(result, "DiagnosticReport")
    request = one(result, "ServiceRequest")
    assert request["id"] == sid("ServiceRequest", "FILL", "FL2002", "LAB")  # filler order number first
    assert report["status"] == "final"  # OBR-25 F (ResultStatus[Non-Queries])
    assert report["category"] == [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                               "code": "CH", "display": "Chemistry"}]}]
    assert report["code"]["coding"] == [{"system": LOINC, "code": "24326-1",
                                         "display": "Electrolytes panel - Serum or Plasma"}]
    assert report["effectiveDateTime"] == "2024-01-15T07:30:00+01:00"  # OBR-7 (OBR-8 empty)
    assert report["issued"] == "2024-01-15T08:30:15+01:00"  # OBR-22 with seconds: an instant
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]
    assert report["subject"] == patient_ref()
    assert [i["value"] for i in report["identifier"]] == ["PL1001", "FL2002"]
    assert [i["type"]["coding"][0] for i in report["identifier"]] == [
        {"system": V2_0203, "code": "PLAC"}, {"system": V2_0203, "code": "FILL"}]
    codes = [resolve(result, ref)["code"]["coding"][0]["code"] for ref in report["result"]]
    assert codes == ["2951-2", "2823-3", "1988-5", "2345-7"]  # in OBX order


def test_service_request_in_results_message() -> None:
    request = one(run(electrolytes()), "ServiceRequest")
    assert request["status"] == "completed"  # ORC-5 CM (OrderStatus)
    assert request["intent"] == "order"
    assert request["subject"] == patient_ref()
    assert "authoredOn" not in request  # ORC-9 is authoredOn only "IF ORC.1 IS NW"
    practitioner = resolve(run(electrolytes()), request["requester"])
    assert practitioner["name"] == [{"use": "official", "family": "Arzt", "given": ["Anton"], "prefix": ["Dr."]}]
    assert practitioner["identifier"][0]["value"] == "D123"


@pytest.mark.parametrize("obr22", ["20240115", "202401150830"])
def test_issued_only_with_seconds_precision(obr22: str) -> None:
    # OBR-22 → issued (instant): a coarser value would claim a precision the sender did not give
    obr = OBR.replace("20240115083015", obr22)
    result = run(message(ORU, PID, ORC, obr, obx("1", "ST", "X1^Befund^L", "neg")))
    assert "issued" not in one(result, "DiagnosticReport")
    assert "issued" not in by_code(result, "X1")


# -- 2. value types ----------------------------------------------------------------------------------

def value_types() -> bytes:
    return message(ORU, PID, ORC, OBR,
                   obx("1", "ST", "V-ST^String^L", "positiv"),
                   obx("2", "TX", "V-TX^Text^L", "Befund unauffällig"),
                   obx("3", "FT", "V-FT^Formatted^L", "Zeile 1\\.br\\Zeile 2"),
                   obx("4", "CE", "V-CE^Coded^L", "260385009^Negative^SCT"),
                   obx("5", "CWE", "V-CWE^Coded with exceptions^L", "10828004^Positive^SCT^POS^positiv^L"),
                   obx("6", "SN", "V-SN1^Comparator^L", "<^5", f6="mg/L^^UCUM"),
                   obx("7", "SN", "V-SN2^Range^L", "^1^-^5", f6="mg/L^^UCUM"),
                   obx("8", "SN", "V-SN3^Ratio^L", "^1^:^128"),
                   obx("9", "DT", "V-DT^Date^L", "20240110"),
                   obx("10", "TS", "V-TS1^Timestamp with zone^L", "20240110123000+0200"),
                   obx("11", "TS", "V-TS2^Timestamp without zone^L", "20240710123000"),
                   obx("12", "TM", "V-TM^Time^L", "1430"))


def test_string_types() -> None:
    result = run(value_types())
    assert by_code(result, "V-ST")["valueString"] == "positiv"
    assert by_code(result, "V-TX")["valueString"] == "Befund unauffällig"
    assert by_code(result, "V-FT")["valueString"] == "Zeile 1\nZeile 2"  # FT \.br\ is a line break


def test_coded_types() -> None:
    result = run(value_types())
    assert by_code(result, "V-CE")["valueCodeableConcept"] == {
        "coding": [{"system": SNOMED, "code": "260385009", "display": "Negative"}], "text": "Negative"}
    assert by_code(result, "V-CWE")["valueCodeableConcept"] == {
        "coding": [{"system": SNOMED, "code": "10828004", "display": "Positive"},
                   {"system": f"{LOCAL}/local", "code": "POS", "display": "positiv"}],
        "text": "Positive"}


def test_sn_comparator_range_and_ratio() -> None:
    result = run(value_types())
    mg = {"unit": "mg/L", "system": UCUM, "code": "mg/L"}
    original = "http://hl7.org/fhir/StructureDefinition/originalText"
    # SN[Quantity]: comparator SN.1, value SN.2; no originalText (SN.3/SN.4 not valued)
    assert by_code(result, "V-SN1")["valueQuantity"] == {"value": 5, "comparator": "<", **mg}
    # SN[Range] ("-"): low SN.2, high SN.4, units OBX-6 on both; originalText "If SN.1 OR SN.3 VALUED"
    assert by_code(result, "V-SN2")["valueRange"] == {
        "extension": [{"url": original, "valueString": "1 - 5"}],
        "low": {"value": 1, **mg}, "high": {"value": 5, **mg}}
    # SN[Ratio] (":"): numerator SN.2, denominator SN.4
    assert by_code(result, "V-SN3")["valueRatio"] == {
        "extension": [{"url": original, "valueString": "1 : 128"}],
        "numerator": {"value": 1}, "denominator": {"value": 128}}


def test_date_time_types() -> None:
    result = run(value_types())
    assert by_code(result, "V-DT")["valueDateTime"] == "2024-01-10"
    assert by_code(result, "V-TS1")["valueDateTime"] == "2024-01-10T12:30:00+02:00"  # the offset sent
    assert by_code(result, "V-TS2")["valueDateTime"] == "2024-07-10T12:30:00+02:00"  # feed zone, summer
    assert by_code(result, "V-TM")["valueTime"] == "14:30:00"


def test_whole_value_types_message_is_valid_and_self_contained() -> None:
    result = run(value_types())
    assert len(of_type(result, "Observation")) == 12
    assert dangling_references(result) == []
    assert result.unmapped_codes["L"] == 13  # 12 local OBX-3 codes + the local alternate of the CWE value


def test_nm_that_is_not_a_number_fails_naming_obx5() -> None:
    raw = message(ORU, PID, ORC, OBR, obx("1", "NM", "2951-2^Sodium^LN", "pos"))
    with pytest.raises(HarmonizeError) as caught:
        run(raw)
    assert caught.value.where == "OBX (segment 5) OBX-5"
    assert caught.value.kind == INVALID_VALUE
    assert "pos" not in caught.value.reason  # never the value


def test_nm_with_a_leading_comparator_is_read_as_sn_quantity() -> None:
    result = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "1988-5^CRP^LN", "<0.5", f6="mg/L^^UCUM")))
    assert by_code(result, "1988-5")["valueQuantity"] == {"value": 0.5, "comparator": "<", "unit": "mg/L",
                                                          "system": UCUM, "code": "mg/L"}


def test_repeated_nm_keeps_first_value_and_the_others_as_note() -> None:
    result = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "CMG^CMV IgG^L", "0.1~negativ", f6="AU/ml")))
    observation = by_code(result, "CMG")
    assert observation["valueQuantity"] == {"value": 0.1, "unit": "AU/ml"}  # no UCUM coding: text only
    assert observation["note"] == [{"text": "OBX-5 repetition 2: negativ"}]
    assert result.unmapped_codes["unit"] == 1


def test_repeated_cwe_becomes_components() -> None:
    # OBX[Observation-Component]: component[each].code = OBX-3, component[each].valueCodeableConcept
    organisms = "3092008^Staph aureus^SCT~112283007^E coli^SCT"
    result = run(message(ORU, PID, ORC, OBR, obx("1", "CWE", "600-7^Bacteria identified^LN", organisms)))
    observation = by_code(result, "600-7")
    assert "valueCodeableConcept" not in observation
    assert [c["code"] for c in observation["component"]] == [observation["code"]] * 2
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in observation["component"]] == [
        "3092008", "112283007"]


@pytest.mark.parametrize(("obx11", "status"), [
    ("F", "final"), ("C", "corrected"), ("P", "preliminary"), ("D", "entered-in-error"),
    ("W", "entered-in-error"), ("X", "cancelled"), ("A", "amended"),
    ("R", "preliminary"), ("I", "registered"),  # not in the map: FHIR observation-status definitions
])
def test_observation_status(obx11: str, status: str) -> None:
    result = run(message(ORU, PID, ORC, OBR, obx("1", "ST", "S1^Status^L", "x", f11=obx11)))
    assert by_code(result, "S1")["status"] == status


def test_unknown_observation_status_is_unknown_and_counted() -> None:
    result = run(message(ORU, PID, ORC, OBR, obx("1", "ST", "S1^Status^L", "x", f11="Q")))
    assert by_code(result, "S1")["status"] == "unknown"
    assert result.unmapped_codes["HL70085"] == 1


@pytest.mark.parametrize(("obr25", "status"), [
    ("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("X", "cancelled"), ("I", "registered"),
    ("R", "partial"), ("A", "partial"), ("", "unknown"),
])
def test_report_status(obr25: str, status: str) -> None:
    obr = segment("OBR", {1: "1", 3: "FL2002^LAB", 4: "24326-1^Electrolytes^LN", 25: obr25})
    assert one(run(message(ORU, PID, obr, obx("1", "ST", "S1^x^L", "x"))), "DiagnosticReport")["status"] == status


def test_obr_without_service_code_gets_data_absent_reason() -> None:
    obr = segment("OBR", {1: "1", 2: "20190417_5555", 7: "20190417111000", 25: "F"})
    report = one(run(message(ORU, PID, obr, obx("1", "NM", "APTT^aPTT^L", "31", f6="s"))), "DiagnosticReport")
    assert report["code"] == {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                             "valueCode": "unknown"}]}


def test_observation_without_identifier_fails_naming_obx3() -> None:
    with pytest.raises(HarmonizeError) as caught:
        run(message(ORU, PID, ORC, OBR, obx("1", "ST", "", "x")))
    assert caught.value.where == "OBX (segment 5) OBX-3"
    assert caught.value.kind == MISSING_FIELD


# -- 3. notes, specimen, structure -------------------------------------------------------------------

def test_nte_after_obx_is_observation_note_and_after_obr_service_request_note() -> None:
    raw = message(ORU, PID, ORC, OBR, "NTE|1||Probe lipämisch",
                  obx("1", "ST", "X1^Befund^L", "neg"), "NTE|1||Kommentar\\.br\\zweite Zeile",
                  "NTE|2||noch einer||D123^Arzt^Anton|20240115090000")
    result = run(raw)
    assert one(result, "ServiceRequest")["note"] == [{"text": "Probe lipämisch"}]
    notes = by_code(result, "X1")["note"]
    assert notes[0] == {"text": "Kommentar\nzweite Zeile"}  # NTE-3 is FT
    assert notes[1]["text"] == "noch einer"
    assert notes[1]["time"] == "2024-01-15T09:00:00+01:00"  # NTE-6
    assert resolve(result, notes[1]["authorReference"])["resourceType"] == "Practitioner"  # NTE-5


def test_nte_after_pid_is_not_attached_to_an_order() -> None:
    result = run(message(ORU, PID, "NTE|1||Patientennotiz", ORC, OBR, obx("1", "ST", "X1^Befund^L", "neg")))
    assert "note" not in one(result, "ServiceRequest")
    assert result.unmapped_segments["NTE"] == 1


def test_spm_links_report_and_observations() -> None:
    spm = segment("SPM", {1: "1", 2: "SP123&HIS^SPF1&LAB", 4: "BLD", 17: "20240115070000", 18: "20240115071500"})
    result = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "2951-2^Sodium^LN", "140", f6="mmol/L^^UCUM"), spm))
    specimen = one(result, "Specimen")
    assert specimen["id"] == sid("Specimen", "FILL", "SPF1", "LAB")  # SPM-2 filler assigned id
    assert specimen["type"] == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0487",
                                            "code": "BLD", "display": "Whole blood"}]}  # SpecimenType
    assert specimen["collection"] == {"collectedDateTime": "2024-01-15T07:00:00+01:00"}  # SPM-17.2 empty
    assert specimen["receivedTime"] == "2024-01-15T07:15:00+01:00"
    assert specimen["subject"] == patient_ref()
    reference = {"reference": f"Specimen/{specimen['id']}"}
    assert one(result, "DiagnosticReport")["specimen"] == [reference]
    assert by_code(result, "2951-2")["specimen"] == reference


def test_obx_after_spm_is_about_the_specimen() -> None:
    spm = segment("SPM", {1: "1", 2: "SP9", 4: "SER"})
    result = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "2951-2^Sodium^LN", "140"), spm,
                         obx("1", "NM", "SPVOL^Specimen volume^L", "5", f6="mL^^UCUM")))
    volume = by_code(result, "SPVOL")
    specimen_ref = {"reference": f"Specimen/{one(result, 'Specimen')['id']}"}
    assert volume["focus"] == [specimen_ref]  # ORU_R01 SPECIMEN_OBSERVATION: focus = Specimen
    assert {"reference": f"Observation/{volume['id']}"} not in one(result, "DiagnosticReport")["result"]


def test_patient_observation_before_any_order() -> None:
    result = run(message(ORU, PID, obx("1", "NM", "8302-2^Body height^LN", "172", f6="cm^^UCUM"), ORC, OBR,
                         obx("1", "ST", "X1^Befund^L", "neg")))
    height = by_code(result, "8302-2")
    assert height["subject"] == patient_ref()
    assert {"reference": f"Observation/{height['id']}"} not in one(result, "DiagnosticReport")["result"]


def test_order_document_group_is_counted_not_mapped() -> None:
    # ORU_R01 ORDER_DOCUMENT (ORC, OBX, TXA before the OBR): "will be addressed with FHIR R5"
    txa = segment("TXA", {1: "1", 2: "DS", 12: "DOC1"})
    result = run(message(ORU, PID, ORC, obx("1", "TX", "DOC^Document^L", "text"), txa, OBR,
                         obx("1", "ST", "X1^Befund^L", "neg")))
    assert result.unmapped_segments["OBX"] == 1
    assert result.unmapped_segments["TXA"] == 1
    assert len(of_type(result, "Observation")) == 1
    assert of_type(result, "DocumentReference") == []


def test_several_obr_with_one_order_number() -> None:
    # One order number, two OBR with different services (set ids restart). ServiceRequest.code is 0..1,
    # so each service is a request of its own (both carry the placer number), each report is basedOn its
    # request, and the results get distinct ids.
    obr1 = segment("OBR", {1: "1", 2: "ORD7", 4: "CBC^Blutbild^L", 25: "F"})
    obr2 = segment("OBR", {1: "2", 2: "ORD7", 4: "ELEK^Elektrolyte^L", 25: "P"})
    result = run(message(ORU, PID, obr1, obx("1", "NM", "HB^Hb^L", "13"), obr2, obx("1", "NM", "NA^Na^L", "140")))
    requests = of_type(result, "ServiceRequest")
    assert [r["code"]["coding"][0]["code"] for r in requests] == ["CBC", "ELEK"]
    assert all(r["identifier"][0]["value"] == "ORD7" for r in requests)
    reports = of_type(result, "DiagnosticReport")
    assert [r["status"] for r in reports] == ["final", "preliminary"]
    assert [r["basedOn"] for r in reports] == [[{"reference": f"ServiceRequest/{r['id']}"}] for r in requests]
    assert [len(r["result"]) for r in reports] == [1, 1]
    assert by_code(result, "HB")["id"] != by_code(result, "NA")["id"]


def test_several_obr_without_service_code_share_the_order() -> None:
    # a SWISSLAB-style feed: one placer number, OBR-4 empty in every OBR: one request, one report each
    obr1 = segment("OBR", {1: "1", 2: "ORD8", 25: "F"})
    obr2 = segment("OBR", {1: "2", 2: "ORD8", 25: "F"})
    result = run(message(ORU, PID, obr1, obx("1", "NM", "HB^Hb^L", "13"), obr2, obx("1", "NM", "HB^Hb^L", "12")))
    assert len(of_type(result, "ServiceRequest")) == 1
    assert len(of_type(result, "DiagnosticReport")) == 2
    assert len(of_type(result, "Observation")) == 2  # same code and set id, but under another OBR


# -- 4. terminology, stable ids, references -------------------------------------------------------------

def test_terminology_map_puts_loinc_and_ucum_first_and_keeps_local(tmp_path: Path) -> None:
    csv_file = tmp_path / "lab.csv"
    csv_file.write_text("source_system,source_code,target_system,target_code,target_display\n"
                        "SWISSLAB,NA,LN,2951-2,Sodium [Moles/volume] in Serum or Plasma\n"
                        "unit,mmol/l,UCUM,mmol/L,\n", encoding="utf-8")
    terminology = Terminology.load([csv_file])
    raw = message(ORU, PID, ORC, OBR, obx("1", "NM", "NA^Natrium^SWISSLAB", "140", f6="mmol/l"),
                  obx("2", "NM", "K^Kalium^SWISSLAB", "4.1", f6="mmol/l"))
    result = run(raw, terminology=terminology)
    sodium = by_code(result, "NA")
    assert sodium["code"]["coding"] == [
        {"system": LOINC, "code": "2951-2", "display": "Sodium [Moles/volume] in Serum or Plasma"},
        {"system": f"{LOCAL}/SWISSLAB", "code": "NA", "display": "Natrium"}]
    assert sodium["valueQuantity"] == {"value": 140, "unit": "mmol/l", "system": UCUM, "code": "mmol/L"}
    assert result.unmapped_codes["SWISSLAB"] == 1  # K is not in the map
    assert result.unmapped_codes["unit"] == 0


def test_references_resolve_inside_the_bundle() -> None:
    spm = segment("SPM", {1: "1", 2: "SP123", 4: "BLD"})
    result = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "2951-2^Sodium^LN", "140"), "NTE|1||x||D9^Doc^Tor",
                         spm))
    assert dangling_references(result) == []


def test_reconverting_and_resending_give_identical_json() -> None:
    first = [dumps(r) for r in run(electrolytes()).resources]
    again = [dumps(r) for r in run(electrolytes()).resources]
    resent = message(ORU, PID, ORC, OBR, *electrolytes().decode().split("\r")[4:-1], control_id="CTRL9999")
    assert first == again
    assert [dumps(r) for r in run(resent).resources] == first  # ids from business keys, not MSH-10


def test_corrected_result_replaces_the_preliminary_one() -> None:
    preliminary = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "2951-2^Sodium^LN", "150", f11="P")))
    corrected = run(message(ORU, PID, ORC, OBR, obx("1", "NM", "2951-2^Sodium^LN", "140", f11="C"),
                            control_id="CTRL0002"))
    assert by_code(preliminary, "2951-2")["id"] == by_code(corrected, "2951-2")["id"]
    assert by_code(corrected, "2951-2")["status"] == "corrected"
