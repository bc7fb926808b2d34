"""MDM^T02 → DocumentReference and SIU^S12 → Appointment.

Expected values by hand from: segments TXA[DocumentReference], OBX[DocumentReference],
NTE[DocumentReference], SCH[Appointment], AIS/AIL/AIP[Appointment], NTE[Appointment-Comment],
PID[Appointment]; data types ED[Attachment], TQ[Appointment]; concept maps DocumentConfidentialityStatus,
FillerStatusCodes[Appointment], AppointmentReasonCodes, AppointmentTypeCodes; messages MDM_T02 and
SIU_S12. Where the module documents a deviation from a sheet (text content type, TXA-17/TXA-19 codes),
the test says so.
"""

from __future__ import annotations

import pytest

from node.harmonize.context import INVALID_VALUE, MISSING_FIELD, HarmonizeError
from tests.harmonize.helpers import dangling_references, of_type, one, resolve, segment
from tests.harmonize.test_results_helpers import PID, SITE, SNOMED, decoded, message, patient_ref, run, sid

MDM = "MDM^T02^MDM_T02"
SIU = "SIU^S12^SIU_S12"
TEXT = "text/plain; charset=UTF-8"
EVN = "EVN|T02|20240115090000"
PV1 = segment("PV1", {1: "1", 2: "I", 3: "STATION1^^^KLINIK", 19: "V1001^^^KLINIK^VN"})
ORC = segment("ORC", {1: "NW", 2: "PL8001^HIS", 3: "FL8001^RIS", 5: "CM"})
OBR = segment("OBR", {1: "1", 2: "PL8001^HIS", 3: "FL8001^RIS", 4: "18748-4^Diagnostic imaging study^LN"})


def txa(**fields: str) -> str:
    base = {1: "1", 2: "DS^Discharge summary^L", 3: "TX", 4: "20240115083000", 6: "20240115084500",
            9: "D123^Arzt^Anton^^^Dr.^^^KLINIK^L", 10: "D124^Ober^Olga^^^Dr.^^^KLINIK^L", 12: "DOC-4711^KIS",
            16: "arztbrief_4711.txt", 17: "AU", 18: "R", 19: "AV", 25: "Entlassbrief"}
    base.update({int(k[1:]): v for k, v in fields.items()})
    return segment("TXA", base)


def text_obx(set_id: str, value_type: str, value: str) -> str:
    return segment("OBX", {1: set_id, 2: value_type, 3: "18842-5^Discharge summary^LN", 5: value, 11: "F"})


def discharge_letter(txa_segment: str | None = None, *content: str) -> bytes:
    body = content or (text_obx("1", "TX", "Entlassbrief für Berta Beispiel"),
                       text_obx("2", "TX", "Diagnose: keine"),
                       text_obx("3", "FT", "Therapie:\\.br\\Ruhe"))
    return message(MDM, EVN, PID, PV1, ORC, OBR, txa_segment or txa(), *body)


def test_document_reference_from_txa() -> None:
    result = run(discharge_letter())
    document = one(result, "DocumentReference")
    naming = f"https://{SITE}.edge-node.invalid/fhir/NamingSystem"
    assert document["id"] == sid("DocumentReference", "TXA-12", "DOC-4711", "KIS")  # TXA-12
    assert document["masterIdentifier"] == {"value": "DOC-4711", "system": f"{naming}/KIS"}
    assert document["identifier"] == [{"value": "arztbrief_4711.txt"}]  # TXA-16
    assert document["status"] == "current"  # TXA-19 AV
    assert document["docStatus"] == "final"  # TXA-17 AU (authenticated)
    assert document["type"]["coding"][0]["code"] == "DS"
    assert document["date"] == "2024-01-15T08:45:00+01:00"  # TXA-6 origination date/time, an instant
    assert document["securityLabel"] == [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0272",
                                                      "code": "R", "display": "Restricted"}]}]
    assert document["description"] == "Entlassbrief"  # TXA-25
    assert document["subject"] == patient_ref()
    assert resolve(result, document["author"][0])["identifier"][0]["value"] == "D123"  # TXA-9
    assert resolve(result, document["authenticator"])["identifier"][0]["value"] == "D124"  # TXA-10
    request = one(result, "ServiceRequest")
    assert document["context"]["related"] == [{"reference": f"ServiceRequest/{request['id']}"}]  # MDM_T02
    assert resolve(result, document["context"]["encounter"][0])["resourceType"] == "Encounter"
    assert dangling_references(result) == []


def test_text_observations_are_one_plain_text_attachment() -> None:
    document = one(run(discharge_letter()), "DocumentReference")
    assert len(document["content"]) == 1
    attachment = document["content"][0]["attachment"]
    # the sheet's "application/text" / "text/hl7v2" are no registered media types; the text is unescaped
    assert attachment["contentType"] == TEXT
    assert decoded(attachment) == "Entlassbrief für Berta Beispiel\nDiagnose: keine\nTherapie:\nRuhe"
    assert of_type(run(discharge_letter()), "Observation") == []  # the OBX are content, not Observations


def test_ed_content_is_an_attachment() -> None:
    pdf = segment("OBX", {1: "1", 2: "ED", 3: "PDF^Befund^L", 5: "^AP^PDF^Base64^JVBERi0xLjQK", 11: "F"})
    document = one(run(discharge_letter(None, pdf)), "DocumentReference")
    # ED[Attachment]: contentType from ED-2 (AP = application) and ED-3, data ED-5 (already Base64)
    assert document["content"] == [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQK"}}]


def test_invalid_base64_fails_naming_obx5() -> None:
    pdf = segment("OBX", {1: "1", 2: "ED", 3: "PDF^Befund^L", 5: "^AP^PDF^Base64^<Base64 encoded>", 11: "F"})
    with pytest.raises(HarmonizeError) as caught:
        run(discharge_letter(None, pdf))
    assert caught.value.where == "OBX (segment 8) OBX-5"
    assert caught.value.kind == INVALID_VALUE


def test_nte_after_document_observation_is_content() -> None:
    document = one(run(discharge_letter(None, text_obx("1", "TX", "Text"), "NTE|1||Anmerkung")),
                   "DocumentReference")
    assert [decoded(c["attachment"]) for c in document["content"]] == ["Text", "Anmerkung"]


def test_document_without_content_fails() -> None:
    uid = segment("OBX", {1: "1", 2: "HD", 3: "113014^DICOM Study^DCM", 5: "1.2.3.4.5", 11: "F"})
    with pytest.raises(HarmonizeError) as caught:
        run(discharge_letter(None, uid))
    assert caught.value.where == "OBX"
    assert caught.value.kind == MISSING_FIELD


@pytest.mark.parametrize(("txa17", "txa19", "doc_status", "status"), [
    ("IP", "AV", "preliminary", "current"),
    ("LA", "OB", "final", "superseded"),  # TXA-19 OB: obsolete (FHIR: superseded)
    ("DO", "CA", "preliminary", "entered-in-error"),
    ("AU", "", "final", "current"),  # sheet: status "current" IF TXA-19 NOT VALUED
])
def test_document_statuses(txa17: str, txa19: str, doc_status: str, status: str) -> None:
    document = one(run(discharge_letter(txa(f17=txa17, f19=txa19))), "DocumentReference")
    assert (document["docStatus"], document["status"]) == (doc_status, status)


def test_origination_time_without_seconds_goes_to_the_date_extension() -> None:
    # TXA-6 → date (instant) needs seconds; the sheet's extension-date keeps a coarser value
    document = one(run(discharge_letter(txa(f6="202401150845"))), "DocumentReference")
    assert "date" not in document
    assert document["extension"] == [{"url": "http://hl7.org/fhir/6.0/StructureDefinition/extension-date",
                                      "valueDateTime": "2024-01-15T08:45:00+01:00"}]


def test_document_without_unique_number_has_a_stable_id() -> None:
    first = one(run(discharge_letter(txa(f12=""))), "DocumentReference")
    again = one(run(discharge_letter(txa(f12=""))), "DocumentReference")
    assert first["id"] == again["id"] == sid("DocumentReference", sid("Patient", "P1001", "1.2.276.0.76.4.8"),
                                             "DS", "L", "20240115083000")


# -- SIU^S12 -------------------------------------------------------------------------------------------

def sch(**fields: str) -> str:
    base = {1: "APPT-P1^HIS", 2: "APPT-F1^RIS", 7: "ROUTINE", 8: "Normal^Routine^HL70277", 9: "30",
            10: "min", 11: "^^30^20240120090000^20240120093000", 25: "Booked"}
    base.update({int(k[1:]): v for k, v in fields.items()})
    return segment("SCH", base)


def booking(schedule: str | None = None, status: str = "Booked") -> bytes:
    return message(SIU, schedule or sch(), "NTE|1||Bitte 15 Minuten früher kommen", PID, "RGS|1|A",
                   segment("AIS", {1: "1", 2: "A", 3: "71651007^Mammography^SCT", 4: "20240120090000",
                                   7: "30", 8: "min", 10: status}),
                   segment("AIL", {1: "1", 2: "A", 3: "RAD^R101^^KLINIK", 6: "20240120090000", 9: "30",
                                   10: "min", 12: status}),
                   segment("AIP", {1: "1", 2: "A", 3: "D500^Radiologe^Rita^^^Dr.^^^KLINIK^L",
                                   4: "RAD^Radiologist^L", 6: "20240120090000", 9: "30", 10: "min", 12: status}))


def test_appointment_from_sch() -> None:
    result = run(booking())
    appointment = one(result, "Appointment")
    assert appointment["id"] == sid("Appointment", "FILL", "APPT-F1", "RIS")  # SCH-2 filler appointment id
    assert appointment["status"] == "booked"  # SCH-25 Booked (FillerStatusCodes[Appointment])
    assert appointment["reasonCode"] == [{"coding": [{"system": SNOMED, "code": "3780001",
                                                      "display": "Routine patient disposition, no follow-up planned"}]}]
    assert appointment["appointmentType"]["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/v2-0277",
                                                         "code": "Normal", "display": "Routine"}]
    assert appointment["minutesDuration"] == 30  # SCH-9/SCH-10
    assert appointment["start"] == "2024-01-20T09:00:00+01:00"  # SCH-11 TQ-4
    assert appointment["end"] == "2024-01-20T09:30:00+01:00"  # SCH-11 TQ-5
    assert appointment["comment"] == "Bitte 15 Minuten früher kommen"  # NTE after SCH
    assert appointment["serviceType"] == [{"coding": [{"system": SNOMED, "code": "71651007",
                                                       "display": "Mammography"}], "text": "Mammography"}]  # AIS-3
    assert dangling_references(result) == []


def test_appointment_participants() -> None:
    result = run(booking())
    participants = one(result, "Appointment")["participant"]
    period = {"start": "2024-01-20T09:00:00+01:00", "end": "2024-01-20T09:30:00+01:00"}  # start + duration
    assert participants[0] == {"actor": patient_ref(), "status": "accepted"}  # PID[Appointment]
    location, practitioner = participants[1], participants[2]
    assert resolve(result, location["actor"])["resourceType"] == "Location"  # AIL-3
    assert (location["status"], location["period"]) == ("accepted", period)
    assert resolve(result, practitioner["actor"])["identifier"][0]["value"] == "D500"  # AIP-3
    assert practitioner["type"][0]["coding"][0]["code"] == "RAD"  # AIP-4
    assert (practitioner["status"], practitioner["period"]) == ("accepted", period)


def test_cancelled_appointment_takes_its_time_from_the_resources() -> None:
    appointment = one(run(booking(sch(f11="", f25="Cancelled"), status="Cancelled")), "Appointment")
    assert appointment["status"] == "cancelled"
    assert (appointment["start"], appointment["end"]) == ("2024-01-20T09:00:00+01:00", "2024-01-20T09:30:00+01:00")
    assert {p["status"] for p in appointment["participant"][1:]} == {"declined"}


def test_unknown_filler_status_defaults_to_booked_and_is_counted() -> None:
    result = run(booking(sch(f25="Scheduled"), status=""))
    assert one(result, "Appointment")["status"] == "booked"  # SIU^S12: notification of a new booking
    assert result.unmapped_codes["HL70278"] == 1


def test_appointment_without_id_fails() -> None:
    with pytest.raises(HarmonizeError) as caught:
        run(booking(sch(f1="", f2="")))
    assert caught.value.where == "SCH (segment 2) SCH-2"
    assert caught.value.kind == MISSING_FIELD
