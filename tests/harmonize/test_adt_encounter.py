"""PV1/PV2 → Encounter and the ADT trigger events (sheets PV1[Encounter], PV2[Encounter], MSH[Encounter],
concept maps PatientClass[EncounterClass], PatientClass[EncounterStatus], Event[EncounterStatus],
HospitalService; FHIR R4 Encounter where the tables are silent — see node/harmonize/events.py)."""

from __future__ import annotations

from node.harmonize.events import Z_SEGMENT_EXTENSION
from tests.harmonize.helpers import assert_references_resolve, of_type, one, resolve, segment
from tests.harmonize.test_adt_helpers import PID, message, pv1, run

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
VISIT = "V1001^^^KLINIKUM^VN"
WARD = "STA1^Zi12^B2^KLINIKUM"
DOCTOR = "D123^Schmidt^Anna^^^Dr.^^^KLINIKUM"

# Sheet PatientClass[EncounterClass]: I → IMP, O → AMB, E → EMER (v3-ActCode, with the sheet's display).
IMP = {"system": ACT_CODE, "code": "IMP", "display": "inpatient encounter"}
AMB = {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"}
EMER = {"system": ACT_CODE, "code": "EMER", "display": "emergency"}


def admission(event: str = "A01", **fields: str) -> bytes:
    pv1_fields = {"f2": "I", "f3": WARD, "f7": DOCTOR, "f10": "MED", "f19": VISIT, "f44": "20240115083000",
                  **fields}
    return message(event, PID, pv1(**{k: v for k, v in pv1_fields.items() if v is not None}))


def test_a01_inpatient_admission_winter_time():
    result = run(admission("A01"))
    encounter = one(result, "Encounter")
    assert encounter["class"] == IMP
    assert encounter["status"] == "in-progress"  # Event[EncounterStatus] A01
    assert encounter["period"] == {"start": "2024-01-15T08:30:00+01:00"}  # Europe/Berlin, CET
    patient = one(result, "Patient")
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    # PV1-19 → identifier with type VN "visit number" (v2-0203), system from CX-4
    assert encounter["identifier"] == [{
        "value": "V1001", "system": "https://uk-test.edge-node.invalid/fhir/NamingSystem/KLINIKUM",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}],
                 "text": "visit number"}}]
    # PV1-10 MED → HospitalService: service-type 382 "Medical Services"
    assert encounter["serviceType"] == {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "382", "display": "Medical Services"}]}
    assert result.unmapped_segments == {}
    assert_references_resolve(result)


def test_a01_summer_time_offset_and_explicit_offset():
    summer = one(run(admission("A01", f44="20240715083000")), "Encounter")
    assert summer["period"]["start"] == "2024-07-15T08:30:00+02:00"  # CEST
    explicit = one(run(admission("A01", f44="202407150830+0000")), "Encounter")
    assert explicit["period"]["start"] == "2024-07-15T08:30:00+00:00"  # an offset sent is kept


def test_pv1_3_locations_chain_from_bed_to_facility():
    result = run(admission("A01"))
    encounter = one(result, "Encounter")
    assert len(encounter["location"]) == 1
    assert encounter["location"][0]["status"] == "active"  # PV1-2 is not P
    bed = resolve(result, encounter["location"][0]["location"])  # the most granular: PL-3 bed
    assert bed["identifier"] == [{"value": "B2"}]
    assert bed["mode"] == "instance"
    assert bed["physicalType"] == {"coding": [{"system": PHYSICAL_TYPE, "code": "bd"}]}
    room = resolve(result, bed["partOf"])
    assert room["identifier"] == [{"value": "Zi12"}]
    assert room["physicalType"]["coding"][0]["code"] == "ro"
    ward = resolve(result, room["partOf"])  # point of care: no physical type in the sheet
    assert ward["identifier"] == [{"value": "STA1"}]
    assert "physicalType" not in ward
    facility = resolve(result, ward["partOf"])
    assert facility["identifier"] == [{"value": "KLINIKUM"}]
    assert facility["physicalType"]["coding"][0]["code"] == "si"
    assert "partOf" not in facility
    assert len(of_type(result, "Location")) == 4


def test_participants_become_practitioners_with_v3_participation_types():
    result = run(admission("A01", f8="R9^Weber^Klaus^^^Dr.^^^KLINIKUM", f17=DOCTOR))
    encounter = one(result, "Encounter")
    codes = [p["type"][0]["coding"][0] for p in encounter["participant"]]
    assert codes == [{"system": PARTICIPATION, "code": "ATND", "display": "attender"},
                     {"system": PARTICIPATION, "code": "REF", "display": "referrer"},
                     {"system": PARTICIPATION, "code": "ADM", "display": "admitter"}]
    attending = resolve(result, encounter["participant"][0]["individual"])
    assert attending["name"] == [{"family": "Schmidt", "given": ["Anna"], "prefix": ["Dr."]}]
    assert attending["identifier"][0]["value"] == "D123"
    # the same XCN (PV1-7 and PV1-17) is the same Practitioner
    assert encounter["participant"][2]["individual"] == encounter["participant"][0]["individual"]
    assert len(of_type(result, "Practitioner")) == 2


def test_german_department_code_stays_a_local_coding():
    encounter = one(run(admission("A01", f10="1500^Allgemeine Chirurgie^FA")), "Encounter")
    assert encounter["serviceType"] == {
        "coding": [{"system": "https://uk-test.edge-node.invalid/fhir/CodeSystem/FA", "code": "1500",
                    "display": "Allgemeine Chirurgie"}],
        "text": "Allgemeine Chirurgie"}


def test_a03_discharge_finishes_with_period_end_and_disposition():
    encounter = one(run(admission("A03", f36="01^Behandlung regulär beendet^L",
                                  f45="20240120113000")), "Encounter")
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2024-01-15T08:30:00+01:00", "end": "2024-01-20T11:30:00+01:00"}
    disposition = encounter["hospitalization"]["dischargeDisposition"]
    assert disposition["coding"][0]["code"] == "01"  # DischargeDisposition has no v2 codes: as sent


def test_a04_outpatient_visit_that_began_is_in_progress():
    # admit 08:30 lies before the event (EVN-2 = MSH-7 = 09:00): the patient has arrived (FHIR in-progress)
    encounter = one(run(admission("A04", f2="O", f44="20240115083000")), "Encounter")
    assert encounter["class"] == AMB
    assert encounter["status"] == "in-progress"


def test_a04_with_future_admit_time_or_inpatient_class_stays_planned():
    future = one(run(admission("A04", f2="O", f44="20240220083000")), "Encounter")
    assert future["status"] == "planned"  # Event[EncounterStatus] A04
    inpatient = one(run(admission("A04", f2="I")), "Encounter")
    assert inpatient["status"] == "planned"
    emergency = one(run(admission("A04", f2="E")), "Encounter")
    assert emergency["class"] == EMER
    assert emergency["status"] == "in-progress"


def test_a05_preadmit_is_planned_with_planned_location():
    encounter = one(run(admission("A05", f2="P", f44="20240201080000")), "Encounter")
    assert encounter["status"] == "planned"
    assert encounter["class"] == {"system": ACT_CODE, "code": "PRENC", "display": "pre-admission"}
    assert encounter["location"][0]["status"] == "planned"  # PV1-3 when PV1-2 is P


def test_a08_update_writes_the_a01_encounter_and_keeps_its_status():
    admitted = one(run(admission("A01")), "Encounter")
    updated = one(run(admission("A08", f3="STA2^Zi7^B1^KLINIKUM")), "Encounter")
    assert updated["id"] == admitted["id"]  # PUT Encounter/<same id> overwrites
    assert updated["status"] == "in-progress"  # from PV1 (class I, no PV1-45), not the map's "unknown"
    assert updated["location"][0]["location"] != admitted["location"][0]["location"]
    discharged_update = one(run(admission("A08", f45="20240120113000")), "Encounter")
    assert discharged_update["status"] == "finished"  # PV1-45 valued (sheet)


def test_a11_cancel_admit():
    encounter = one(run(admission("A11")), "Encounter")
    assert encounter["status"] == "cancelled"
    assert encounter["id"] == one(run(admission("A01")), "Encounter")["id"]


def test_a13_cancel_discharge_reopens_without_end():
    encounter = one(run(admission("A13", f36="01^Behandlung regulär beendet^L", f45="20240120113000")),
                    "Encounter")
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2024-01-15T08:30:00+01:00"}
    assert "dischargeDisposition" not in encounter.get("hospitalization", {})


def test_a02_transfer_current_location_active_prior_completed():
    result = run(admission("A02", f3="STA2^Zi7^B1^KLINIKUM", f6=WARD))
    encounter = one(result, "Encounter")
    assert encounter["status"] == "in-progress"
    current, prior = encounter["location"]
    assert current["status"] == "active"
    assert resolve(result, current["location"])["identifier"] == [{"value": "B1"}]
    assert prior["status"] == "completed"
    assert resolve(result, prior["location"])["identifier"] == [{"value": "B2"}]
    assert_references_resolve(result)


def test_a12_cancel_transfer_keeps_pv1_3_and_drops_the_cancelled_target():
    # HL7 v2: PV1-3 of an A12 is the location before the transfer; PV1-6 here is the cancelled target.
    result = run(admission("A12", f3=WARD, f6="STA2^Zi7^B1^KLINIKUM"))
    encounter = one(result, "Encounter")
    assert [entry["status"] for entry in encounter["location"]] == ["active"]
    assert resolve(result, encounter["location"][0]["location"])["identifier"] == [{"value": "B2"}]
    assert encounter["status"] == "in-progress"
    assert_references_resolve(result)


def test_a06_outpatient_becomes_inpatient_same_visit():
    registered = one(run(admission("A04", f2="O")), "Encounter")
    changed = one(run(admission("A06", f2="I")), "Encounter")
    assert changed["id"] == registered["id"]
    assert changed["class"] == IMP
    assert changed["status"] == "in-progress"


def test_a07_with_prior_visit_in_mrg_and_empty_pv1_19_keeps_the_visit():
    registered = one(run(admission("A01")), "Encounter")
    mrg = segment("MRG", {1: "4711^^^KLINIKUM^PI", 5: VISIT})
    raw = message("A07", PID, mrg, pv1(f2="O", f3=WARD, f44="20240115083000"))
    changed = one(run(raw), "Encounter")
    assert changed["id"] == registered["id"]
    assert changed["class"] == AMB


def test_pv2_reason_expected_discharge_and_length_of_stay():
    pv2 = segment("PV2", {3: "01^KH-Behandlung, vollstationär^301", 9: "20240125", 11: "10"})
    raw = message("A01", PID, pv1(f2="I", f19=VISIT, f44="20240115083000"), pv2)
    encounter = one(run(raw), "Encounter")
    assert encounter["reasonCode"][0]["coding"][0]["code"] == "01"
    assert {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate",
            "valueDateTime": "2024-01-25"} in encounter["extension"]
    assert encounter["length"] == {"value": 10, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}


def test_without_visit_number_the_admit_time_identifies_the_visit():
    first = one(run(admission("A01", f19="")), "Encounter")
    again = one(run(admission("A03", f19="", f45="20240120113000")), "Encounter")
    assert first["id"] == again["id"]
    zeros = one(run(admission("A01", f19="00000000")), "Encounter")  # a placeholder, not a visit number
    assert zeros["id"] == first["id"]


def test_without_visit_number_and_admit_time_no_encounter():
    result = run(admission("A01", f19="", f44=""))
    assert of_type(result, "Encounter") == []
    assert of_type(result, "Patient")
    assert_references_resolve(result)


def test_zbe_attached_to_encounter_as_extension():
    zbe = "ZBE|30674176^ORBIS|20240115083000||INSERT"
    raw = message("A01", PID, pv1(f2="I", f19=VISIT, f44="20240115083000"),
                  segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM", 6: "A"}), zbe)
    kept = run(raw, z_segments="extension")
    encounter = one(kept, "Encounter")
    assert {"url": Z_SEGMENT_EXTENSION, "valueString": zbe} in encounter["extension"]
    assert "extension" not in one(kept, "Condition")
    assert kept.unmapped_segments == {}
    ignored = run(raw, z_segments="ignore")
    assert "extension" not in one(ignored, "Encounter")
    assert ignored.unmapped_segments == {"ZBE": 1}


def test_ids_are_stable_across_conversions_and_differ_per_site():
    raw = admission("A01", f7=DOCTOR)
    first, second = run(raw), run(raw)
    assert [(r["resourceType"], r["id"]) for r in first.resources] == \
        [(r["resourceType"], r["id"]) for r in second.resources]
    assert first.bundle() == second.bundle()
    other = run(raw, site_id="uk-other")
    ids = {r["id"] for r in first.resources}
    assert ids.isdisjoint(r["id"] for r in other.resources)
    assert len(other.resources) == len(first.resources)
