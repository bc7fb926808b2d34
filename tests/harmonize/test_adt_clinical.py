"""DG1 → Condition (+ Encounter.diagnosis), PR1 → Procedure, AL1 → AllergyIntolerance, IN1 → Coverage with
Organization, NK1 → RelatedPerson, PD1 → Patient.generalPractitioner. Expected values from the sheets
DG1[Condition], DG1[Encounter], PR1[Procedure], AL1[AllergyIntolerance], IN1[Coverage], NK1[RelatedPerson],
PD1[Patient] and the concept maps DiagnosisType, AllergenType, AllergyType, AllergySeverity, Relationship."""

from __future__ import annotations

import pytest

from node.harmonize.context import HarmonizeError
from tests.harmonize.helpers import assert_references_resolve, of_type, one, resolve, segment
from tests.harmonize.test_adt_helpers import PID, message, pv1, run

VISIT_PV1 = pv1(f2="I", f3="STA1^Zi12^B2^KLINIKUM", f19="V1001^^^KLINIKUM^VN", f44="20240115083000")
ICD10GM = "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
OPS = "http://fhir.de/CodeSystem/bfarm/ops"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def a01(*segments: str) -> bytes:
    return message("A01", PID, VISIT_PV1, *segments)


# -- DG1 ----------------------------------------------------------------------------------------------

DG1_ADMIT = segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM", 5: "20240115080000", 6: "A",
                            15: "1", 20: "D-77^KIS"})
DG1_LOCAL_TYPE = segment("DG1", {1: "2", 3: "E11.90^Diabetes mellitus, Typ 2^I10", 6: "Entl.", 15: "2.1"})


def test_dg1_icd10gm_condition_and_encounter_diagnosis():
    result = run(a01(DG1_ADMIT, DG1_LOCAL_TYPE))
    encounter = one(result, "Encounter")
    patient = one(result, "Patient")
    appendicitis, diabetes = of_type(result, "Condition")
    # code as sent: the coding system name I10GM → the BfArM ICD-10-GM URI; display and text from CWE-2
    assert appendicitis["code"] == {"coding": [{"system": ICD10GM, "code": "K35.30", "display": "Akute Appendizitis"}],
                                    "text": "Akute Appendizitis"}
    assert appendicitis["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert appendicitis["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert appendicitis["category"] == [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis",
        "display": "Encounter Diagnosis"}]}]
    assert appendicitis["onsetDateTime"] == "2024-01-15T08:00:00+01:00"  # DG1-5
    assert appendicitis["recordedDate"] == "2024-01-15T08:00:00+01:00"  # no DG1-19: DG1-5
    assert appendicitis["identifier"] == [{"value": "D-77",
                                           "system": "https://uk-test.edge-node.invalid/fhir/NamingSystem/KIS"}]
    assert "verificationStatus" not in appendicitis
    # I10 stays plain ICD-10 (kept as sent; the MII profile decides about GM)
    assert diabetes["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
    first, second = encounter["diagnosis"]
    # DiagnosisType: A → AD "Admission Diagnosis" (diagnosis-role); DG1-15 1 → rank 1
    assert first == {"condition": {"reference": f"Condition/{appendicitis['id']}"},
                     "use": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                                         "code": "AD", "display": "Admission Diagnosis"}]},
                     "rank": 1}
    # a site's own type stays a local coding; an ORBIS sub-rank "2.1" is no positiveInt: no rank
    assert second["condition"] == {"reference": f"Condition/{diabetes['id']}"}
    assert second["use"]["coding"][0]["code"] == "Entl."
    assert "rank" not in second
    assert_references_resolve(result)


def test_dg1_final_type_has_no_fhir_target_and_keeps_v2_0052():
    result = run(a01(segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM", 6: "F"})))
    use = one(result, "Encounter")["diagnosis"][0]["use"]
    assert use == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": "F",
                               "display": "Final"}]}


def test_dg1_action_code_delete_marks_entered_in_error_and_no_encounter_diagnosis():
    result = run(a01(segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM", 6: "A", 21: "D"})))
    condition = one(result, "Condition")
    assert condition["verificationStatus"] == {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}]}
    assert "diagnosis" not in one(result, "Encounter")


def test_dg1_ids_stable_and_reused_dg1_20_does_not_merge_two_diagnoses():
    again = run(a01(DG1_ADMIT, DG1_LOCAL_TYPE))
    assert [c["id"] for c in of_type(again, "Condition")] == [c["id"] for c in of_type(run(a01(DG1_ADMIT,
                                                                                               DG1_LOCAL_TYPE)),
                                                                                          "Condition")]
    reused = segment("DG1", {1: "2", 3: "E11.90^Diabetes mellitus, Typ 2^I10", 6: "A", 20: "D-77^KIS"})
    result = run(a01(DG1_ADMIT, reused))
    conditions = of_type(result, "Condition")
    assert len(conditions) == 2
    assert [len(c["code"]["coding"]) for c in conditions] == [1, 1]


def test_dg1_invalid_date_names_the_field_not_the_value():
    with pytest.raises(HarmonizeError) as caught:
        run(a01(segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM", 5: "15.01.2024"})))
    assert "DG1-5" in caught.value.reason
    assert "15.01.2024" not in caught.value.reason


# -- PR1 ----------------------------------------------------------------------------------------------

def test_pr1_ops_procedure_performed_with_surgeon():
    pr1 = segment("PR1", {1: "1", 3: "5-470.11^Appendektomie, laparoskopisch^OPS", 5: "20240115093000",
                          11: "C55^Wagner^Petra^^^Dr.^^^KLINIKUM"})
    result = run(message("A03", PID, pv1(f2="I", f19="V1001^^^KLINIKUM^VN", f44="20240115083000",
                                         f45="20240120113000"), pr1, msh_time="20240120120000"))
    procedure = one(result, "Procedure")
    assert procedure["code"]["coding"] == [{"system": OPS, "code": "5-470.11",
                                           "display": "Appendektomie, laparoskopisch"}]
    assert procedure["performedDateTime"] == "2024-01-15T09:30:00+01:00"
    assert procedure["status"] == "completed"  # performed before the event
    assert procedure["subject"] == {"reference": f"Patient/{one(result, 'Patient')['id']}"}
    assert procedure["encounter"] == {"reference": f"Encounter/{one(result, 'Encounter')['id']}"}
    # PR1-11 surgeon: function SNOMED 304292004 (sheet)
    surgeon = procedure["performer"][0]
    assert surgeon["function"] == {"coding": [{"system": "http://snomed.info/sct", "code": "304292004"}]}
    assert resolve(result, surgeon["actor"])["name"] == [{"family": "Wagner", "given": ["Petra"], "prefix": ["Dr."]}]
    assert_references_resolve(result)


def test_pr1_minutes_give_a_performed_period():
    pr1 = segment("PR1", {1: "1", 3: "5-470.11^Appendektomie^OPS", 5: "202401150930", 7: "45"})
    procedure = one(run(message("A03", PID, VISIT_PV1, pr1, msh_time="20240120120000")), "Procedure")
    assert procedure["performedPeriod"] == {"start": "2024-01-15T09:30:00+01:00", "end": "2024-01-15T10:15:00+01:00"}


# -- AL1 ----------------------------------------------------------------------------------------------

def test_al1_drug_allergy():
    al1 = segment("AL1", {1: "1", 2: "DA", 3: "PEN^Penicillin^L", 4: "SV", 5: "Urtikaria", 6: "20200101"})
    result = run(a01(al1))
    allergy = one(result, "AllergyIntolerance")
    assert allergy["clinicalStatus"] == {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]}
    assert allergy["category"] == ["medication"]  # AllergenType[AllergyIntoleranceCategory] DA
    assert allergy["type"] == "allergy"  # AllergyType DA
    assert allergy["criticality"] == "high"  # AllergySeverity[…criticality] SV
    assert allergy["reaction"] == [{"manifestation": [{"text": "Urtikaria"}], "severity": "severe"}]
    assert allergy["onsetDateTime"] == "2020-01-01"
    assert allergy["code"]["coding"][0]["code"] == "PEN"
    assert allergy["patient"] == {"reference": f"Patient/{one(result, 'Patient')['id']}"}
    assert "verificationStatus" not in allergy  # the AL1 sheet maps none


def test_al1_moderate_has_no_criticality_and_id_is_per_patient_and_code():
    al1 = segment("AL1", {1: "1", 2: "FA", 3: "NUT^Erdnuss^L", 4: "MO"})
    allergy = one(run(a01(al1)), "AllergyIntolerance")
    assert "criticality" not in allergy  # MO has no target in AllergySeverity[…criticality]
    assert allergy["category"] == ["food"]
    renumbered = segment("AL1", {1: "7", 2: "FA", 3: "NUT^Erdnuss^L", 4: "MO"})
    assert one(run(a01(renumbered)), "AllergyIntolerance")["id"] == allergy["id"]


# -- IN1 ----------------------------------------------------------------------------------------------

IN1_GKV = segment("IN1", {1: "1", 3: "104940005^^^^NII", 4: "AOK Hessen", 5: "Basler Str. 2^^Bad Homburg^^61352^DE",
                          12: "20240101", 13: "20241231", 15: "GKV^gesetzlich^L", 16: "Müller^Hans",
                          17: "SEL", 36: "A123456789"})


def test_in1_coverage_with_insurer_organization():
    result = run(a01(IN1_GKV))
    coverage = one(result, "Coverage")
    patient_ref = {"reference": f"Patient/{one(result, 'Patient')['id']}"}
    assert coverage["status"] == "active"
    assert coverage["beneficiary"] == patient_ref
    assert coverage["subscriber"] == patient_ref  # IN1-17 SEL: the patient is the subscriber
    assert coverage["subscriberId"] == "A123456789"  # IN1-36 (no IN1-49)
    assert coverage["period"] == {"start": "2024-01-01", "end": "2024-12-31"}
    # Relationship: SEL → ONESELF "self" (v3-RoleCode)
    assert coverage["relationship"] == {"coding": [{"system": V3_ROLE, "code": "ONESELF", "display": "self"}]}
    assert coverage["type"]["coding"][0]["code"] == "GKV"
    insurer = resolve(result, coverage["payor"][0])
    assert insurer["resourceType"] == "Organization"
    assert insurer["name"] == "AOK Hessen"
    assert insurer["identifier"][0]["value"] == "104940005"
    assert insurer["address"] == [{"line": ["Basler Str. 2"], "city": "Bad Homburg", "postalCode": "61352",
                                   "country": "DE"}]
    assert_references_resolve(result)


def test_in1_insured_other_than_patient_is_a_related_person_and_in1_49_is_the_subscriber_id():
    in1 = segment("IN1", {1: "1", 3: "104940005^^^^NII", 4: "AOK Hessen", 16: "Müller^Erika", 17: "SPO",
                          18: "19620505", 49: "X987654321^^^AOK^NI"})
    result = run(a01(in1))
    coverage = one(result, "Coverage")
    assert coverage["subscriberId"] == "X987654321"
    assert coverage["extension"][0]["url"] == "http://hl7.org/fhir/5.0/StructureDefinition/extension-subscriberId"
    subscriber = resolve(result, coverage["subscriber"])
    assert subscriber["resourceType"] == "RelatedPerson"
    assert subscriber["name"] == [{"family": "Müller", "given": ["Erika"]}]
    assert subscriber["birthDate"] == "1962-05-05"
    assert subscriber["relationship"] == [{"coding": [{"system": V3_ROLE, "code": "SPS", "display": "spouse"}]}]
    assert_references_resolve(result)


def test_in1_without_insurer_is_counted_not_mapped():
    result = run(a01(segment("IN1", {1: "1", 36: "A123"})))
    assert of_type(result, "Coverage") == []
    assert result.unmapped_segments == {"IN1": 1}


# -- NK1, PD1 -----------------------------------------------------------------------------------------

def test_nk1_spouse_related_person():
    nk1 = segment("NK1", {1: "1", 2: "Müller^Erika", 3: "SPO", 4: "Hauptstr. 1^^Marburg^^35037^DE",
                          5: "^PRN^PH^^^06421^12345", 15: "F"})
    result = run(a01(nk1))
    person = one(result, "RelatedPerson")
    assert person["patient"] == {"reference": f"Patient/{one(result, 'Patient')['id']}"}
    assert person["name"] == [{"family": "Müller", "given": ["Erika"]}]
    assert person["relationship"] == [{"coding": [{"system": V3_ROLE, "code": "SPS", "display": "spouse"}]}]
    assert person["address"] == [{"line": ["Hauptstr. 1"], "city": "Marburg", "postalCode": "35037", "country": "DE"}]
    assert person["telecom"] == [{"system": "phone", "value": "06421 12345", "use": "home"}]
    assert person["gender"] == "female"


def test_nk1_employer_is_no_related_person():
    result = run(a01(segment("NK1", {1: "1", 2: "Stadtwerke Marburg", 3: "EMR"})))
    assert of_type(result, "RelatedPerson") == []
    assert result.unmapped_segments == {"NK1": 1}


def test_pd1_general_practitioner():
    pd1 = segment("PD1", {4: "H42^Hausarzt^Heinz^^^Dr.^^^KV"})
    result = run(message("A01", PID, pd1, VISIT_PV1))
    gp = resolve(result, one(result, "Patient")["generalPractitioner"][0])
    assert gp["resourceType"] == "Practitioner"
    assert gp["name"] == [{"family": "Hausarzt", "given": ["Heinz"], "prefix": ["Dr."]}]
