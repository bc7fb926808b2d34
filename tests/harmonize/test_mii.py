"""The `mii` output profile (node.harmonize.mii via profiles.apply) on synthetic German messages.

Expected profile URLs, systems and codes are copied by hand from the MII StructureDefinitions
(Person/Fall/Diagnose 2025.0.1, Labor 2026.0.0, Prozedur 2025.0.0) and the fhir.de basis profiles, not from
the converter's output. Names and numbers in the messages are made up.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from node.harmonize import mii, profiles
from node.harmonize.convert import ConversionResult
from node.harmonize.validate import validate_all
from tests.conftest import corpus_dir
from tests.harmonize.helpers import convert_utf8
from tests.harmonize.helpers import segment as seg

# -- expectations, copied from the profiles -----------------------------------------------------------

PATIENT = "https://www.medizininformatik-initiative.de/fhir/core/modul-person/StructureDefinition/Patient"
ENCOUNTER = ("https://www.medizininformatik-initiative.de/fhir/core/modul-fall/StructureDefinition/"
             "KontaktGesundheitseinrichtung")
CONDITION = "https://www.medizininformatik-initiative.de/fhir/core/modul-diagnose/StructureDefinition/Diagnose"
PROCEDURE = "https://www.medizininformatik-initiative.de/fhir/core/modul-prozedur/StructureDefinition/Procedure"
OBSERVATION = "https://www.medizininformatik-initiative.de/fhir/core/modul-labor/StructureDefinition/ObservationLab"
REPORT = "https://www.medizininformatik-initiative.de/fhir/core/modul-labor/StructureDefinition/DiagnosticReportLab"
ORDER = "https://www.medizininformatik-initiative.de/fhir/core/modul-labor/StructureDefinition/ServiceRequestLab"

ICD10GM = "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
OPS = "http://fhir.de/CodeSystem/bfarm/ops"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
KONTAKTEBENE = "http://fhir.de/CodeSystem/Kontaktebene"
MEHRFACH = "http://fhir.de/StructureDefinition/icd-10-gm-mehrfachcodierungs-kennzeichen"
SEITE = "http://fhir.de/StructureDefinition/seitenlokalisation"
SICHERHEIT = "http://fhir.de/StructureDefinition/icd-10-gm-diagnosesicherheit"


# -- synthetic messages -------------------------------------------------------------------------------

def msh(message_type: str, control_id: str, when: str) -> str:
    return "MSH|^~\\&|" + "|".join(["KIS", "KLINIKUM", "EDGE", "DIZ", when, "", message_type, control_id, "P",
                                    "2.5", "", "", "AL", "NE", "", "UNICODE UTF-8"])


ADT_A01 = "\r".join([
    msh("ADT^A01^ADT_A01", "MSG0001", "20240306080000"),
    seg("EVN", {1: "A01", 2: "20240306080000"}),
    seg("PID", {1: "1", 3: "4711^^^KLINIKUM^MR", 5: "Musterfrau^Erika^^^^^L~Gabler^Erika^^^^^M", 7: "19700101",
                8: "F", 11: "Hauptstr. 1^^Berlin^^10115^D^H"}),
    seg("PV1", {1: "1", 2: "I", 3: "STAT1^101^1^INN", 19: "F2024001^^^KLINIKUM^VN", 44: "20240305100000"}),
    # WHO ICD-10 system name (I10) from a German feed; ICD-10-GM with catalogue year and a "!" marker;
    # ICD-10-GM with the KBV Diagnosesicherheit appended (V = Verdacht auf).
    seg("DG1", {1: "1", 3: "K35.8^Akute Appendizitis^I10", 5: "20240305103000", 6: "A"}),
    seg("DG1", {1: "2", 3: "U07.1!^COVID-19, Virus nachgewiesen^icd10gm2024", 5: "20240305103000", 6: "W"}),
    seg("DG1", {1: "3", 3: "J18.9 V^Pneumonie, nicht näher bezeichnet^I10GM", 5: "20240305", 6: "W"}),
    # OPS by name; an OPS-shaped code of the generic local system with a side suffix.
    seg("PR1", {1: "1", 3: "5-470.11^Appendektomie, laparoskopisch^OPS", 5: "20240305120000"}),
    seg("PR1", {1: "2", 3: "5-812.5:R^Meniskusresektion, partiell^L", 5: "20240305150000"}),
]) + "\r"

ORU_R01 = "\r".join([
    msh("ORU^R01^ORU_R01", "MSG0002", "20240305140000"),
    seg("PID", {1: "1", 3: "4711^^^KLINIKUM^MR", 5: "Musterfrau^Erika", 7: "19700101", 8: "F"}),
    seg("PV1", {1: "1", 2: "I", 19: "F2024001^^^KLINIKUM^VN"}),
    seg("ORC", {1: "RE", 2: "ORD123^KIS", 3: "LAB456^LIS", 5: "CM"}),
    seg("OBR", {1: "1", 2: "ORD123^KIS", 3: "LAB456^LIS", 4: "58410-2^CBC panel - Blood by Automated count^LN",
                7: "20240305113000", 22: "20240305135900", 24: "HM", 25: "F"}),
    seg("OBX", {1: "1", 2: "NM", 3: "718-7^Hemoglobin [Mass/volume] in Blood^LN", 5: "13.5",
                6: "g/dL^g/dL^UCUM", 7: "12.0-16.0", 8: "N", 11: "F"}),
    seg("OBX", {1: "2", 2: "NM", 3: "6690-2^Leukocytes [#/volume] in Blood by Automated count^LN", 5: "7.2",
                6: "10*3/uL^10*3/uL^UCUM", 7: "4.0-10.0", 8: "N", 11: "F"}),
]) + "\r"


def run(message: str, profile: str) -> ConversionResult:
    return convert_utf8(message.encode("utf-8"), site_id="test-site", profile=profile)


def of_type(result: ConversionResult, resource_type: str) -> list[dict[str, Any]]:
    found = [r for r in result.resources if r["resourceType"] == resource_type]
    assert found, f"no {resource_type} in the result"
    return found


def codings(concepts: Any) -> list[dict[str, Any]]:
    if isinstance(concepts, dict):
        concepts = [concepts]
    return [c for cc in concepts or [] for c in cc.get("coding", [])]


def pairs(concepts: Any) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in codings(concepts)}


def extension_code(coding: dict[str, Any], url: str) -> str | None:
    for ext in coding.get("extension", []):
        if ext["url"] == url:
            return ext["valueCoding"]["code"]
    return None


# -- ADT^A01: Person, Fall, Diagnose, Prozedur ---------------------------------------------------------

def test_adt_a01_mii_profiles_and_codings() -> None:
    result = run(ADT_A01, "mii")
    validate_all(result.resources)  # convert() validated already; the output is plain R4

    [patient] = of_type(result, "Patient")
    assert patient["meta"]["profile"] == [PATIENT]
    maiden = [n for n in patient["name"] if n.get("use") == "maiden"]
    assert maiden == [{"use": "maiden", "family": "Gabler"}]  # slice geburtsname: given 0..0
    assert patient["address"][0]["country"] == "DE"

    [encounter] = of_type(result, "Encounter")
    assert encounter["meta"]["profile"] == [ENCOUNTER]
    assert (KONTAKTEBENE, "einrichtungskontakt") in pairs(encounter["type"])
    visit = [i for i in encounter["identifier"] if (V2_0203, "VN") in pairs(i.get("type"))]
    assert [i["value"] for i in visit] == ["F2024001"]

    conditions = {c["code"]["coding"][0]["code"]: c for c in of_type(result, "Condition")}
    assert set(conditions) == {"K35.8", "U07.1", "J18.9"}
    for condition in conditions.values():
        assert condition["meta"]["profile"] == [CONDITION]
        gm = [c for c in condition["code"]["coding"] if c["system"] == ICD10GM]
        assert len(gm) == 1  # slice icd10-gm 0..1
        assert gm[0]["version"] == "2024"  # CodingICD10GM version 1..; the year DG1-5 was recorded
        assert all(c["system"] != ICD10_WHO for c in condition["code"]["coding"])
        assert condition["recordedDate"].startswith("2024-03-05")
    assert extension_code(conditions["U07.1"]["code"]["coding"][0], MEHRFACH) == "!"
    pneumonia = conditions["J18.9"]
    assert extension_code(pneumonia["code"]["coding"][0], SICHERHEIT) == "V"
    assert pairs(pneumonia["verificationStatus"]) == {
        ("http://terminology.hl7.org/CodeSystem/condition-ver-status", "provisional")}

    procedures = {p["code"]["coding"][0]["code"]: p for p in of_type(result, "Procedure")}
    assert set(procedures) == {"5-470.11", "5-812.5"}
    for procedure in procedures.values():
        assert procedure["meta"]["profile"] == [PROCEDURE]
        [ops] = [c for c in procedure["code"]["coding"] if c["system"] == OPS]
        assert ops["version"] == "2024"
        # proc-mii-1: OPS-coded ⇒ SNOMED category; chapter 5 "Operationen" → 387713003
        assert (SNOMED, "387713003") in pairs(procedure["category"])
    assert extension_code(procedures["5-812.5"]["code"]["coding"][0], SEITE) == "R"


def test_adt_a01_base_is_unprofiled() -> None:
    result = run(ADT_A01, "base")
    assert all("profile" not in r.get("meta", {}) for r in result.resources)
    systems = {c["code"]["coding"][0]["code"]: c["code"]["coding"][0]["system"] for c in of_type(result, "Condition")}
    assert systems["K35.8"] == ICD10_WHO  # base keeps what the message says
    assert systems["J18.9 V"] == ICD10GM
    encounter = of_type(result, "Encounter")[0]
    assert (KONTAKTEBENE, "einrichtungskontakt") not in pairs(encounter.get("type"))


# -- ORU^R01: Labor ----------------------------------------------------------------------------------

def test_oru_r01_mii_lab_profiles() -> None:
    result = run(ORU_R01, "mii")
    validate_all(result.resources)

    [report] = of_type(result, "DiagnosticReport")
    assert report["meta"]["profile"] == [REPORT]
    # slice lab-category: patternCodeableConcept {LOINC 26436-6, v2-0074 LAB} in one category
    assert any({(LOINC, "26436-6"), (V2_0074, "LAB")} <= pairs(cc) for cc in report["category"])
    assert (V2_0074, "HM") in pairs(report["category"])  # OBR-24 stays
    # slice loinc-labReport 11502-2; the OBR-4 panel code stays
    assert {(LOINC, "11502-2"), (LOINC, "58410-2")} <= pairs(report["code"])

    observations = of_type(result, "Observation")
    assert {o["code"]["coding"][0]["code"] for o in observations} == {"718-7", "6690-2"}
    for observation in observations:
        assert observation["meta"]["profile"] == [OBSERVATION]
        # category.coding slices loinc-observation and observation-category, each 1..1, in every category
        for category in observation["category"]:
            assert {(LOINC, "26436-6"), (OBS_CATEGORY, "laboratory")} <= pairs(category)
        assert observation["effectiveDateTime"].startswith("2024-03-05T11:30")

    [order] = of_type(result, "ServiceRequest")
    assert (order["status"], order["intent"]) == ("completed", "order")  # fixed values in the profile
    assert order["meta"]["profile"] == [ORDER]
    assert len(order["category"]) == 1 and (OBS_CATEGORY, "laboratory") in pairs(order["category"])
    assert (LOINC, "11502-2") not in pairs(order["code"])  # the report's code was not shared into the order


def test_oru_r01_base_is_unprofiled() -> None:
    result = run(ORU_R01, "base")
    assert all("profile" not in r.get("meta", {}) for r in result.resources)
    report = of_type(result, "DiagnosticReport")[0]
    assert pairs(report["category"]) == {(V2_0074, "HM")}
    assert all("category" not in o or (OBS_CATEGORY, "laboratory") not in pairs(o["category"])
               for o in of_type(result, "Observation"))


# -- rules on hand-made resources --------------------------------------------------------------------

LOCAL = "https://site.edge-node.invalid/fhir/CodeSystem/"


def test_icd_version_from_recorded_date_and_absent_without_date() -> None:
    dated = {"resourceType": "Condition", "id": "c1", "recordedDate": "2021-11-02",
             "code": {"coding": [{"system": ICD10_WHO, "code": "I10.90"}]}}
    undated = {"resourceType": "Condition", "id": "c2", "code": {"coding": [{"system": ICD10GM, "code": "E11.9"}]}}
    profiles.apply([dated, undated], "mii")
    assert dated["code"]["coding"] == [{"system": ICD10GM, "code": "I10.90", "version": "2021"}]
    assert "version" not in undated["code"]["coding"][0]  # not invented
    assert "recordedDate" not in undated


def test_local_codes_other_than_icd_and_ops_stay() -> None:
    condition = {"resourceType": "Condition", "id": "c", "recordedDate": "2024",
                 "code": {"coding": [{"system": LOCAL + "local", "code": "K35.8"},
                                     {"system": LOCAL + "KIS-DIAG", "code": "4711"}]}}
    procedure = {"resourceType": "Procedure", "id": "p",
                 "code": {"coding": [{"system": LOCAL + "local", "code": "APPX"},
                                     {"system": "http://www.ama-assn.org/go/cpt", "code": "44970"}]}}
    before = copy.deepcopy([condition, procedure])
    profiles.apply([condition, procedure], "mii")
    assert condition["code"] == before[0]["code"]  # a local diagnosis code is not declared ICD-10-GM
    assert procedure["code"] == before[1]["code"]
    assert "category" not in procedure  # no OPS code: no SNOMED category derivable


def test_ops_year_from_system_name_and_every_chapter() -> None:
    expected = {"1-632.0": "165197003", "3-200": "363679005", "5-470.11": "387713003", "6-001.a3": "18629005",
                "8-930": "277132007", "9-984.7": "394841004"}
    for code, sct in expected.items():
        procedure = {"resourceType": "Procedure", "id": "p", "performedDateTime": "2019-05-01",
                     "code": {"coding": [{"system": LOCAL + "OPS2020", "code": code}]}}
        profiles.apply([procedure], "mii")
        assert procedure["code"]["coding"][0]["system"] == OPS
        assert procedure["code"]["coding"][0]["version"] == "2020"  # the sender's catalogue year wins
        assert pairs(procedure["category"]) == {(SNOMED, sct)}


def test_not_lab_observations_stay_unprofiled() -> None:
    vital = {"resourceType": "Observation", "id": "v", "status": "final",
             "code": {"coding": [{"system": LOINC, "code": "8302-2"}]}}
    radiology = {"resourceType": "DiagnosticReport", "id": "r", "status": "final",
                 "category": [{"coding": [{"system": V2_0074, "code": "RAD"}]}],
                 "code": {"text": "Röntgen Thorax"}, "result": [{"reference": "Observation/x"}]}
    finding = {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "Befund"}}
    vaccination = {"resourceType": "Immunization", "id": "i"}
    funding = {"resourceType": "Observation", "id": "f", "status": "final",
               "code": {"coding": [{"system": LOINC, "code": "64994-7"}]}}
    resources = [vital, radiology, finding, vaccination, funding]
    before = copy.deepcopy(resources)
    profiles.apply(resources, "mii")
    assert resources == before


def test_open_lab_order_is_not_tagged() -> None:
    order = {"resourceType": "ServiceRequest", "id": "o", "status": "active", "intent": "order",
             "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}]}
    profiles.apply([order], "mii")
    assert "meta" not in order  # ServiceRequestLab fixes status = completed


def test_report_without_obr4_loses_its_data_absent_mark() -> None:
    report = {"resourceType": "DiagnosticReport", "id": "r", "status": "final",
              "code": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                      "valueCode": "unknown"}]}}
    profiles.apply([report], "mii")
    assert report["code"] == {"coding": [{"system": LOINC, "code": "11502-2", "display": "Laboratory report"}]}


def test_apply_is_idempotent_and_base_changes_nothing() -> None:
    result = run(ADT_A01, "mii")
    again = copy.deepcopy(result.resources)
    profiles.apply(again, "mii")
    assert again == result.resources
    base = run(ORU_R01, "base")
    untouched = copy.deepcopy(base.resources)
    profiles.apply(untouched, "base")
    assert untouched == base.resources
    with pytest.raises(ValueError, match="unknown output profile"):
        profiles.apply([], "other")  # type: ignore[arg-type]


# -- against the profiles and examples in the corpus --------------------------------------------------

def _matches(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x] semantics: every element in the pattern is in the value (lists: each pattern item
    matches some value item)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_matches(item, p) for item in value) for p in pattern)
    return value == pattern


def _structure_definition(name: str) -> dict[str, Any]:
    path = corpus_dir("fhir", "mii-kds", "profiles") / f"StructureDefinition-{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _pattern(sd: dict[str, Any], element_id: str) -> Any:
    [element] = [e for e in sd["differential"]["element"] if e["id"] == element_id]
    return next(v for k, v in element.items() if k.startswith("pattern"))


@pytest.mark.corpus
def test_profile_urls_are_the_structure_definitions() -> None:
    urls = {name: _structure_definition(name)["url"] for name in (
        "mii-pr-person-patient", "mii-pr-fall-kontakt-gesundheitseinrichtung", "mii-pr-diagnose-condition",
        "mii-pr-labor-laboruntersuchung", "mii-pr-labor-laborbefund", "mii-pr-labor-laboranforderung")}
    assert urls == {
        "mii-pr-person-patient": PATIENT,
        "mii-pr-fall-kontakt-gesundheitseinrichtung": ENCOUNTER,
        "mii-pr-diagnose-condition": CONDITION,
        "mii-pr-labor-laboruntersuchung": OBSERVATION,
        "mii-pr-labor-laborbefund": REPORT,
        "mii-pr-labor-laboranforderung": ORDER,
    }
    assert profiles.PROFILE_URLS["mii"] == {
        "Patient": PATIENT, "Encounter": ENCOUNTER, "Condition": CONDITION, "Procedure": PROCEDURE,
        "Observation": OBSERVATION, "DiagnosticReport": REPORT, "ServiceRequest": ORDER}


@pytest.mark.corpus
def test_output_matches_the_slice_patterns() -> None:
    adt, oru = run(ADT_A01, "mii"), run(ORU_R01, "mii")
    encounter = of_type(adt, "Encounter")[0]
    fall = _structure_definition("mii-pr-fall-kontakt-gesundheitseinrichtung")
    assert any(_matches(t, _pattern(fall, "Encounter.type:Kontaktebene")) for t in encounter["type"])
    assert any(_matches(i, _pattern(fall, "Encounter.identifier:Aufnahmenummer")) for i in encounter["identifier"])

    diagnose = _structure_definition("mii-pr-diagnose-condition")
    icd_slice = _pattern(diagnose, "Condition.code.coding:icd10-gm")
    for condition in of_type(adt, "Condition"):
        assert sum(_matches(c, icd_slice) for c in condition["code"]["coding"]) == 1

    befund = _structure_definition("mii-pr-labor-laborbefund")
    report = of_type(oru, "DiagnosticReport")[0]
    assert any(_matches(c, _pattern(befund, "DiagnosticReport.category:lab-category")) for c in report["category"])
    assert any(_matches(c, _pattern(befund, "DiagnosticReport.code.coding:loinc-labReport"))
               for c in report["code"]["coding"])

    untersuchung = _structure_definition("mii-pr-labor-laboruntersuchung")
    for observation in of_type(oru, "Observation"):
        for category in observation["category"]:
            for slice_name in ("loinc-observation", "observation-category"):
                pattern = _pattern(untersuchung, f"Observation.category.coding:{slice_name}")
                assert sum(_matches(c, pattern) for c in category["coding"]) == 1

    anforderung = _structure_definition("mii-pr-labor-laboranforderung")
    order = of_type(oru, "ServiceRequest")[0]
    pattern = _pattern(anforderung, "ServiceRequest.category.coding:laboratory")
    assert any(_matches(c, pattern) for c in order["category"][0]["coding"])


def _example(name: str) -> dict[str, Any]:
    path = corpus_dir("fhir", "mii-kds", "examples") / name
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.corpus
def test_shapes_match_the_mii_examples() -> None:
    adt, oru = run(ADT_A01, "mii"), run(ORU_R01, "mii")

    # Condition: the ICD-10-GM coding has the example's keys, system, a year as version, and the
    # Mehrfachkodierungs-Kennzeichen extension as the example writes it.
    primary = _example("Condition-mii-exa-diagnose-mehrfachkodierung-primaercode.json")
    [example_icd] = [c for c in primary["code"]["coding"] if c["system"] == ICD10GM]
    example_marker = next(e for e in example_icd["extension"] if e["url"] == MEHRFACH)
    minimal = _example("Condition-mii-exa-diagnose-condition-minimal.json")
    [minimal_icd] = [c for c in minimal["code"]["coding"] if c["system"] == ICD10GM]
    for condition in of_type(adt, "Condition"):
        [ours] = [c for c in condition["code"]["coding"] if c["system"] == ICD10GM]
        assert set(ours) <= set(example_icd) | set(minimal_icd)
        assert len(ours["version"]) == len(minimal_icd["version"]) == 4 and ours["version"].isdigit()
        for ext in ours.get("extension", []):
            if ext["url"] == MEHRFACH:
                assert ext["valueCoding"]["system"] == example_marker["valueCoding"]["system"]
        assert condition["meta"]["profile"][0] == minimal["meta"]["profile"][0].split("|")[0]

    # Encounter: the example's Kontaktebene coding and VN identifier type.
    example = _example("Encounter-mii-exa-fall-kontakt-gesundheitseinrichtung-1.json")
    encounter = of_type(adt, "Encounter")[0]
    assert pairs(example["type"]) <= pairs(encounter["type"])
    assert pairs(example["identifier"][0]["type"]) <= pairs([i.get("type", {}) for i in encounter["identifier"]])
    assert encounter["meta"]["profile"][0] == example["meta"]["profile"][0].split("|")[0]

    # Lab: the example report's category and code codings, the example observation's lab categories.
    example_report = _example("DiagnosticReport-mii-exa-labor-laborbefund.json")
    report = of_type(oru, "DiagnosticReport")[0]
    assert any(pairs(example_report["category"]) <= pairs(cc) for cc in report["category"])
    assert pairs(example_report["code"]) <= pairs(report["code"])
    assert report["meta"]["profile"][0] == example_report["meta"]["profile"][0].split("|")[0]
    example_observation = _example("Observation-mii-exa-labor-laborwert.json")
    lab_pairs = {p for p in pairs(example_observation["category"]) if p[0] in (LOINC, OBS_CATEGORY)}
    for observation in of_type(oru, "Observation"):
        assert lab_pairs <= pairs(observation["category"])
        assert observation["meta"]["profile"][0] == example_observation["meta"]["profile"][0].split("|")[0]

    example_patient = _example("Patient-mii-exa-person-patient-minimal.json")
    assert of_type(adt, "Patient")[0]["meta"]["profile"][0] == example_patient["meta"]["profile"][0].split("|")[0]


def test_module_documents_what_it_cannot_fill() -> None:
    doc = mii.__doc__ or ""
    assert "can't fill" in doc
    for element in ("Condition.recordedDate", "Procedure.performed[x]", "Observation.identifier:analyseBefundCode",
                    "Encounter.identifier:Aufnahmenummer.system"):
        assert element in doc
