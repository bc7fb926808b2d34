"""PV1 → Encounter (sheet `PV1[Encounter]`), PV2 → Encounter additions (sheet `PV2[Encounter]`).

The Encounter's id is stable from its business identifier, so every message about one visit (A01, A02,
A08, A03, …) writes the same resource: the visit number PV1-19 with its assigning authority (CX-4);
without one (or with a placeholder of zeros), the prior visit number of an MRG before it (A06/A07); else
(patient, PV1-44 admit date/time). Patient-level events (A28/A31/A40) carry a PV1 only because the
structure requires one: there, only a real visit number makes an Encounter. Without any key there is no
Encounter, and the conversion notes why.

Status here is the one PV1 itself implies (PV1-45 valued → finished, else `PatientClass[EncounterStatus]`);
the trigger event may override it afterwards (node.harmonize.events).

Shared helpers for the other ADT mappers: `text_value`, `datetime_field`, `coded`, `cx_key`,
`require_patient`, `event_time`, `parse_fhir_datetime`.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

from node.harmonize.context import INVALID_VALUE, STRUCTURE, Conversion, HarmonizeError, Resource
from node.harmonize.datatypes import (
    Json,
    codeable_concept,
    fhir_datetime,
    fhir_decimal,
    identifier_from_cx,
    location_reference,
    practitioner_reference,
    repetitions,
)
from node.harmonize.segments import WalkState, mapper
from node.harmonize.vocabulary import concept
from node.hl7v2.parser import NULL, Rep, Segment

PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PATIENT_LEVEL_EVENTS = frozenset({"A28", "A31", "A40"})
"""ADT events about the patient, not a visit: their (required) PV1 makes an Encounter only when it
carries a visit number."""

# PV1 participant fields → v3-ParticipationType code and display (sheet PV1[Encounter]).
PARTICIPANT_FIELDS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
                      (17, "ADM", "admitter"), (52, "PART", "Participation"))
TEMPORARY_LOCATION = {
    # PV1-11 per sheet (its system value carries a stray leading space there, dropped here).
    "url": "http://hl7.org/fhir/StructureDefinition/subject-locationClassification",
    "valueCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/ValueSet/subject-location",
                                         "code": "temporary"}]},
}
PLANNED_START = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate"
PLANNED_END = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate"
"""PV2-8/PV2-9 (the sheet's URL for PV2-9 has a typo, `v\\5.0`; this is the cross-version extension)."""
MODE_OF_ARRIVAL = "http://hl7.org/fhir/StructureDefinition/encounter-modeOfArrival"
_HL7_TABLE_NAME = re.compile(r"^HL7(\d{4})?$", re.IGNORECASE)


# -- helpers shared by the ADT segment mappers --------------------------------------------------------

def text_value(segment: Segment, n: int, component: int = 1) -> str:
    """Field n (component) stripped; the HL7 null `""` reads as empty."""
    value = segment.value(n, component).strip()
    return "" if value == NULL else value


def is_placeholder(value: str) -> bool:
    """A value of only zeros ("00000000", "0000000000000"): senders' way of saying 'none' in date and
    number fields; it identifies nothing and is no date, so it is treated as not valued."""
    return bool(value) and set(value) <= {"0"}


def datetime_field(conv: Conversion, segment: Segment, n: int, component: int = 1) -> str | None:
    """A DTM/TS/DT field as FHIR dateTime (offset from the feed's zone when absent), None when empty.
    :raises HarmonizeError: naming segment and field (never the value) when it is not a date/time."""
    text = text_value(segment, n, component)
    if not text or is_placeholder(text):
        return None
    try:
        return fhir_datetime(text, conv.options.timezone)
    except ValueError:
        raise HarmonizeError(f"{segment.label} {segment.id}-{n}", INVALID_VALUE, "not a date/time") from None


def coded(conv: Conversion, rep: Rep, table: str | None) -> Json | None:
    """CWE[CodeableConcept] with the field's v2-to-FHIR concept map `table`: as
    `datatypes.codeable_concept`, but a code whose coding system is named just "HL7" or "HL7nnnn" (the
    field's own HL7 table, as many senders write it) is looked up in the concept map too."""
    if rep.is_empty or rep.is_null:
        return None
    if table is not None and _HL7_TABLE_NAME.match(rep.component(3).strip()):
        mapped = concept(table, rep.component(1).strip())
        if mapped is not None:
            result: Json = {"coding": [mapped]}
            text = rep.component(9).strip() or rep.component(2).strip()
            if text:
                result["text"] = text
            return result
    return codeable_concept(conv, rep, table=table)


def coded_list(conv: Conversion, segment: Segment, n: int, table: str | None) -> list[Json]:
    return [cc for rep in repetitions(segment.field(n)) if (cc := coded(conv, rep, table))]


def cx_key(rep: Rep) -> tuple[str, str] | None:
    """(value, assigning authority) of a CX as id parts, None when empty or a placeholder of zeros."""
    value = rep.component(1).strip()
    if not value or rep.is_null or is_placeholder(value):
        return None
    return value, rep.sub(4, 2).strip() or rep.sub(4, 1).strip()


def trigger_of(conv: Conversion) -> str:
    return conv.message.trigger_event.upper().split("_", 1)[0]


def parse_fhir_datetime(value: str, zone: ZoneInfo) -> datetime | None:
    """The first instant of a FHIR dateTime (any precision; a value without an offset is in `zone`),
    None when it is not one."""
    padded = value
    if len(value) == 4:
        padded = value + "-01-01"
    elif len(value) == 7:
        padded = value + "-01"
    try:
        moment = datetime.fromisoformat(padded)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def event_time(conv: Conversion) -> datetime | None:
    """When the message's event happened: EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7.
    A value that is no date/time is skipped here (the EVN is not mapped to a resource)."""
    evn = conv.message.first("EVN")
    candidates = [evn.value(6), evn.value(2)] if evn is not None else []
    candidates.append(conv.message.timestamp)
    for text in candidates:
        text = text.strip()
        if not text or text == NULL or is_placeholder(text):
            continue
        try:
            value = fhir_datetime(text, conv.options.timezone)
        except ValueError:
            continue
        moment = parse_fhir_datetime(value, conv.options.timezone) if value else None
        if moment is not None:
            return moment
    return None


def require_patient(conv: Conversion, segment: Segment) -> dict[str, str]:
    """The Patient reference every ADT resource needs. :raises HarmonizeError: no PID before."""
    ref = conv.patient_ref()
    if ref is None:
        raise HarmonizeError(segment.label, STRUCTURE, f"{segment.id[:3]} without a PID before it")
    return ref


# -- PV1 ----------------------------------------------------------------------------------------------

def encounter_key(conv: Conversion, segment: Segment, state: WalkState) -> tuple[str, ...] | None:
    """The business key behind the Encounter's id (see the module docstring), or None."""
    visit = cx_key(segment.field(19).first())
    if visit is not None:
        return ("visit", *visit)
    prior = state.extra.get("prior_visit")
    if prior:
        return ("visit", *prior)
    if conv.message.message_code.upper() == "ADT" and trigger_of(conv) in PATIENT_LEVEL_EVENTS:
        return None
    admit = datetime_field(conv, segment, 44)
    if admit and conv.patient_id:
        return ("admit", conv.patient_id, admit)
    return None


@mapper("PV1")
def map_pv1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    key = encounter_key(conv, segment, state)
    if key is None:
        conv.notes.append(f"{segment.label}: no visit number (PV1-19) or admit date/time (PV1-44): no Encounter")
        return
    subject = require_patient(conv, segment)
    encounter_id = conv.id_for("Encounter", *key)
    encounter: Resource = {"resourceType": "Encounter", "id": encounter_id}
    identifiers = _visit_identifiers(conv, segment)
    if identifiers:
        encounter["identifier"] = identifiers
    class_code = text_value(segment, 2).upper()
    encounter["status"] = _pv1_status(conv, segment, class_code)
    encounter["class"] = _encounter_class(conv, segment)
    types = coded_list(conv, segment, 4, "AdmissionType")
    if types:
        encounter["type"] = types
    service = coded(conv, segment.field(10).first(), "HospitalService")
    if service:
        encounter["serviceType"] = service
    encounter["subject"] = subject
    participants = _participants(conv, segment)
    if participants:
        encounter["participant"] = participants
    period = {}
    start, end = datetime_field(conv, segment, 44), datetime_field(conv, segment, 45)
    if start:
        period["start"] = start
    if end:
        period["end"] = end
    if period:
        encounter["period"] = period
    hospitalization = _hospitalization(conv, segment)
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    locations = _locations(conv, segment, class_code)
    if locations:
        encounter["location"] = locations
    conv.put(encounter)
    conv.encounter_id = encounter_id
    state.extra["last_resource"] = ("Encounter", encounter_id)


def _visit_identifiers(conv: Conversion, segment: Segment) -> list[Json]:
    """PV1-19 (type VN "visit number", assigned by the sheet) and PV1-50 (alternate visit id)."""
    result = []
    visit = segment.field(19).first()
    if cx_key(visit) is not None:
        identifier = identifier_from_cx(conv, visit)
        if identifier:
            identifier["type"] = {"coding": [{"system": V2_0203, "code": "VN"}], "text": "visit number"}
            result.append(identifier)
    for rep in repetitions(segment.field(50)):
        identifier = identifier_from_cx(conv, rep)
        if identifier and identifier not in result:
            result.append(identifier)
    return result


def _pv1_status(conv: Conversion, segment: Segment, class_code: str) -> str:
    """PV1-45 valued → finished (sheet), else PatientClass[EncounterStatus]; a class the map does not
    know (e.g. the German NS/TS) → unknown (Encounter.status is required)."""
    if datetime_field(conv, segment, 45):
        return "finished"
    mapped = concept("PatientClass[EncounterStatus]", class_code) if class_code else None
    return mapped["code"] if mapped else "unknown"


def _encounter_class(conv: Conversion, segment: Segment) -> Json:
    """PV1-2 via PatientClass[EncounterClass] as a Coding (system, code, display). A local class (e.g.
    NS/TS) stays a local coding unless the feed's terminology map maps it (the mapped coding then comes
    first). An empty PV1-2 is class U (unknown): Encounter.class is required in R4."""
    cc = coded(conv, segment.field(2).first(), "PatientClass[EncounterClass]")
    if cc and cc.get("coding"):
        first: Json = cc["coding"][0]
        return first
    unknown = concept("PatientClass[EncounterClass]", "U")
    assert unknown is not None
    return unknown


def _participants(conv: Conversion, segment: Segment) -> list[Json]:
    result = []
    for n, code, display in PARTICIPANT_FIELDS:
        for rep in repetitions(segment.field(n)):
            individual = practitioner_reference(conv, rep)
            if individual is None:
                continue
            participant = {"type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": code, "display": display}]}],
                           "individual": individual}
            if participant not in result:
                result.append(participant)
    return result


def _hospitalization(conv: Conversion, segment: Segment) -> Json:
    result: Json = {}
    pre_admission = identifier_from_cx(conv, segment.field(5).first())
    if pre_admission:
        result["preAdmissionIdentifier"] = pre_admission
    # PV1-14: table 0023 has no suggested values, so the sheet gives no vocabulary map.
    # DischargeDisposition (PV1-36) has no v2 source codes (table 0112 is user-defined): stays as sent
    # (the feed's terminology map applies).
    for key, n, table in (("admitSource", 14, None), ("reAdmission", 13, "ReadmissionIndicator"),
                          ("dischargeDisposition", 36, None)):
        value = coded(conv, segment.field(n).first(), table)
        if value:
            result[key] = value
    # VIPIndicator (PV1-16) is not among the shipped maps and DietType (PV1-38) neither: as sent.
    for key, n, table in (("specialArrangement", 15, "AmbulatoryStatus"), ("specialCourtesy", 16, None),
                          ("dietPreference", 38, None)):
        values = coded_list(conv, segment, n, table)
        if values:
            result[key] = values
    return result


def _locations(conv: Conversion, segment: Segment, class_code: str) -> list[Json]:
    """PV1-3 current (active; planned for a preadmit, class P), PV1-6 prior (completed), PV1-11
    temporary (active, classified temporary), PV1-42 pending (reserved). PV1-40 bed status goes to the
    PV1-3 Location's operationalStatus when PV1-3 names a room or bed."""
    result: list[Json] = []
    for n, status in ((3, "planned" if class_code == "P" else "active"), (6, "completed"), (11, "active"),
                      (42, "reserved")):
        ref = location_reference(conv, segment.field(n).first())
        if ref is None:
            continue
        entry: Json = {"location": ref, "status": status}
        if n == 11:
            entry["extension"] = [TEMPORARY_LOCATION]
        if n == 3:
            _bed_status(conv, segment, ref)
        if entry not in result:
            result.append(entry)
    return result


def _bed_status(conv: Conversion, segment: Segment, ref: Json) -> None:
    code = text_value(segment, 40)
    pl = segment.field(3).first()
    if not code or not (pl.component(2).strip() or pl.component(3).strip()):
        return
    status = concept("BedStatus", code)
    if status is None:
        conv.unmapped_code("HL70116")
        return
    location = conv.get("Location", ref["reference"].split("/", 1)[1])
    if location is not None:
        location["operationalStatus"] = status


# -- PV2 ----------------------------------------------------------------------------------------------

@mapper("PV2")
def map_pv2(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """PV2 adds to the Encounter of the PV1 before it (none → the segment is counted as unmapped)."""
    if conv.encounter_id is None:
        conv.unmapped_segment(segment)
        return
    additions: Resource = {"resourceType": "Encounter", "id": conv.encounter_id}
    pending = location_reference(conv, segment.field(1).first())
    if pending is not None:
        additions["location"] = [{"location": pending, "status": "planned"}]
    reasons = coded_list(conv, segment, 3, None)  # PV2-3: no associated table (sheet)
    if reasons:
        additions["reasonCode"] = reasons
    extensions = []
    for n, url in ((8, PLANNED_START), (9, PLANNED_END)):
        value = datetime_field(conv, segment, n)
        if value:
            extensions.append({"url": url, "valueDateTime": value})
    arrival = coded(conv, segment.field(38).first(), "ModeOfArrivalCode")
    if arrival and arrival.get("coding"):
        extensions.append({"url": MODE_OF_ARRIVAL, "valueCoding": arrival["coding"][0]})
    if extensions:
        additions["extension"] = extensions
    length = _length_of_stay(segment)
    if length:
        additions["length"] = length
    referrers = []
    for rep in repetitions(segment.field(13)):
        individual = practitioner_reference(conv, rep)
        if individual is not None:
            referrers.append({"type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "REF",
                                                    "display": "referrer"}]}], "individual": individual})
    if referrers:
        additions["participant"] = referrers
    priority = coded(conv, segment.field(25).first(), "EncounterPriority")
    if priority:
        additions["priority"] = priority
    conv.put(additions)


def _length_of_stay(segment: Segment) -> Json | None:
    """PV2-11 (NM[Quantity-LengthOfStay]): a positive number of days as a UCUM Duration."""
    text = text_value(segment, 11)
    if not text:
        return None
    try:
        days = fhir_decimal(text)
    except ValueError:
        raise HarmonizeError(f"{segment.label} PV2-11", INVALID_VALUE, "not a number") from None
    if days is None or days <= 0:
        return None
    return {"value": days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
