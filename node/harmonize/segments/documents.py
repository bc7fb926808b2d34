"""Documents and appointments: TXA (+ the OBX/NTE after it) → DocumentReference (sheets TXA[DocumentReference],
OBX[DocumentReference], NTE[DocumentReference]; message sheet MDM_T02), SCH/AIS/AIG/AIL/AIP/NTE →
Appointment (sheets SCH[Appointment], AIS/AIG/AIL/AIP[Appointment], NTE[Appointment-Comment]; message
sheet SIU_S12).

DocumentReference id: TXA-12 unique document number (EI value + authority), else (patient, TXA-2 type,
TXA-4 activity date/time). The OBX segments after the TXA carry the content (orders.map_obx hands them
here): TX/FT/ST lines become ONE text attachment (a document sent as one OBX per line is one text;
repetitions and lines are joined with line feeds, as the sheet says for repeated FT/TX), ED → one
attachment per repetition (ED[Attachment]), RP → an attachment with its url. Other value types (HD,
CE ...) are no document content: counted as unmapped segments.

Text content type: the sheet writes "application/text" (TX) and "text/hl7v2" (FT). Neither is a
registered media type (R4 Attachment.contentType is bound to BCP 13), and the text stored here is
already unescaped (`\\.br\\` → line feed), i.e. no longer HL7 formatted text: it is stored as
"text/plain; charset=UTF-8", Base64 of its UTF-8 bytes.

Appointment id: SCH-2 filler appointment id, else SCH-1 placer appointment id. The patient participant
(PID comes after SCH in SIU_S12) is added when the message is complete (an event finisher registered
below), as are the checks a FHIR Appointment needs (at least one participant; start and end together).
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta

from node.harmonize import events
from node.harmonize.context import INVALID_VALUE, MISSING_FIELD, Conversion, HarmonizeError, Resource
from node.harmonize.datatypes import (
    Json,
    codeable_concept,
    fhir_datetime,
    fhir_decimal,
    fhir_instant,
    identifier_from_ei,
    location_reference,
    practitioner_reference,
    repetitions,
    system_uri,
)
from node.harmonize.segments import WalkState, mapper
from node.harmonize.segments.orders import (
    attachment_from_ed,
    attachment_from_rp,
    checked,
    coded_key,
    datetime_of,
    ei_key,
    field_text,
    instant_of,
    message_code,
    order_key,
    referenced,
    rep_text,
    set_note_target,
    table_concept,
    typed_identifier,
)
from node.harmonize.vocabulary import concept
from node.hl7v2.parser import Rep, Segment

TEXT_CONTENT_TYPE = "text/plain; charset=UTF-8"
TEXT_VALUE_TYPES = frozenset({"TX", "FT", "ST"})
"""ST is not in the OBX[DocumentReference] sheet; it is document text like TX (the IG's MDM sample sends
a line as ST), so it is not dropped."""
DATE_EXTENSION = "http://hl7.org/fhir/6.0/StructureDefinition/extension-date"

# TXA-17 document completion status (table 0271) → DocumentReference.docStatus (composition-status).
# The sheet maps TXA-17 with ID[code] and no concept map, but v2 codes are no FHIR codes; by the FHIR
# definitions: authenticated/legally authenticated = final, the stages before = preliminary.
DOC_STATUS = {"AU": "final", "LA": "final", "DI": "preliminary", "DO": "preliminary", "IN": "preliminary",
              "IP": "preliminary", "PA": "preliminary"}
# TXA-19 availability (table 0273) → DocumentReference.status. Sheet: AV → current (and current when
# empty); for CA/OB/UN it gives only the alternate-codes extension, no status value. By the FHIR
# definitions: OB (obsolete) = superseded, CA (canceled) = entered-in-error, UN (unavailable) = current.
DOCUMENT_STATUS = {"AV": "current", "OB": "superseded", "CA": "entered-in-error", "UN": "current"}

# Appointment status → participant status (Appointment.participant.status is required; the AI* sheets
# map the filler status code there without a concept map). By the FHIR definitions.
PARTICIPANT_STATUS = {"booked": "accepted", "arrived": "accepted", "fulfilled": "accepted",
                      "checked-in": "accepted", "cancelled": "declined", "noshow": "declined",
                      "entered-in-error": "declined", "pending": "tentative", "waitlist": "tentative",
                      "proposed": "tentative"}
MAX_POSITIVE_INT = 2_147_483_647
DURATION_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
                  "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
                  "days": 86400}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# -- TXA → DocumentReference ------------------------------------------------------------------------

@mapper("TXA")
def map_txa(segment: Segment, conv: Conversion, state: WalkState) -> None:
    if message_code(conv) != "MDM":
        conv.unmapped_segment(segment)  # ORU ORDER_DOCUMENT: the ORU_R01 sheet leaves it for FHIR R5
        return
    number = ei_key(segment.field(12).first())
    if number:
        document_id = conv.id_for("DocumentReference", "TXA-12", *number)
    else:
        kind = coded_key(segment.field(2).first())
        activity = segment.value(4).strip()
        if conv.patient_id is None or not (kind[0] or activity):
            raise HarmonizeError(f"{segment.label} TXA-12", MISSING_FIELD, "no unique document number")
        document_id = conv.id_for("DocumentReference", conv.patient_id, *kind, activity)
    availability = segment.value(19).strip().upper()
    status = DOCUMENT_STATUS.get(availability, "current")
    if availability and availability not in DOCUMENT_STATUS:
        conv.unmapped_code("HL70273")
    document: Resource = {"resourceType": "DocumentReference", "id": document_id, "status": status}
    master = identifier_from_ei(conv, segment.field(12).first())
    if master:
        document["masterIdentifier"] = master
    file_name = segment.value(16).strip()
    if file_name:
        document["identifier"] = [{"value": file_name}]
    completion = segment.value(17).strip().upper()
    if completion:
        if completion in DOC_STATUS:
            document["docStatus"] = DOC_STATUS[completion]
        else:
            conv.unmapped_code("HL70271")
    kind_concept = codeable_concept(conv, segment.field(2).first())
    if kind_concept:
        document["type"] = kind_concept
    subject = conv.patient_ref()
    if subject:
        document["subject"] = subject
    # date: TXA-6 origination date/time (sheet), else TXA-4 activity date/time; an instant needs a time
    # of day, a date-only value goes to the sheet's extension instead.
    for n in (6, 4):
        if segment.value(n).strip():
            instant = instant_of(conv, segment, n)
            if instant:
                document["date"] = instant
            else:
                document["extension"] = [{"url": DATE_EXTENSION, "valueDateTime": datetime_of(conv, segment, n)}]
            break
    authors = [r for rep in repetitions(segment.field(9))
               if (r := referenced(conv, segment, practitioner_reference, rep))]
    if authors:
        document["author"] = authors
    authenticator = referenced(conv, segment, practitioner_reference, segment.field(10).first())
    if authenticator:
        document["authenticator"] = authenticator
    confidentiality = segment.value(18).strip().upper()
    if confidentiality:
        label = concept("DocumentConfidentialityStatus", confidentiality)
        if label:
            document["securityLabel"] = [{"coding": [label]}]
        else:
            conv.unmapped_code("HL70272")
    title = field_text(conv, segment, 25, " ")
    if title.strip():
        document["description"] = title
    context: Json = {}
    encounter = conv.encounter_ref()
    if encounter:
        context["encounter"] = [encounter]
    if state.order_id:  # MDM_T02: context.related = the ServiceRequest of the COMMON_ORDER
        context["related"] = [conv.ref("ServiceRequest", state.order_id)]
    if context:
        document["context"] = context
    document["content"] = []
    conv.put(checked(segment, document))
    state.document_id = document_id
    state.extra["document_text"] = None
    state.extra["obx_handler"] = _document_obx
    state.extra["last_resource"] = ("DocumentReference", document_id)
    set_note_target(state, segment, None)


def _document_obx(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """OBX[DocumentReference]: OBX-5 → DocumentReference.content."""
    document = conv.get("DocumentReference", state.document_id or "")
    if document is None:
        conv.unmapped_segment(segment)
        return
    value_type = segment.value(2).strip().upper()
    reps = repetitions(segment.field(5))
    contents: list[Json] = document["content"]
    where = f"{segment.label} OBX-5"
    if value_type in TEXT_VALUE_TYPES:
        text: Json | None = state.extra.get("document_text")
        lines = [rep_text(conv, rep) for rep in reps] or [""]  # an empty text OBX is an empty line
        if text is None:
            text = state.extra["document_text"] = {"lines": [], "attachment": {"contentType": TEXT_CONTENT_TYPE}}
            contents.append({"attachment": text["attachment"]})
        text["lines"].extend(lines)
        text["attachment"]["data"] = _b64("\n".join(text["lines"]))
    elif value_type == "ED":
        for rep in reps:
            attachment = attachment_from_ed(conv, rep, where)
            if attachment is None:
                conv.notes.append("OBX-5 ED without data not mapped")
                continue
            contents.append(checked(segment, {"attachment": attachment}))
    elif value_type == "RP":
        for rep in reps:
            attachment = attachment_from_rp(rep)
            if attachment:
                contents.append(checked(segment, {"attachment": attachment}))
    else:
        conv.unmapped_segment(segment)
    set_note_target(state, segment, _document_note)


def _document_note(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """NTE[DocumentReference]: NTE-3 → a content attachment of its own (text)."""
    document = conv.get("DocumentReference", state.document_id or "")
    text = field_text(conv, segment, 3)
    if document is not None and text.strip():
        document["content"].append({"attachment": {"contentType": TEXT_CONTENT_TYPE, "data": _b64(text)}})


def _finish_documents(conv: Conversion) -> None:
    for resource in conv.resources.values():
        if resource["resourceType"] == "DocumentReference" and not resource.get("content"):
            raise HarmonizeError("OBX", MISSING_FIELD,
                                 "no document content after TXA (OBX-5 of type TX, FT, ST, ED or RP)")


# -- SCH/AIS/AIG/AIL/AIP → Appointment -----------------------------------------------------------------

def _appointment_status(conv: Conversion, rep: Rep) -> str | None:
    """FillerStatusCodes[Appointment] (table 0278, codes like "Booked"; case is not significant here)."""
    code = rep.component(1).strip()
    if not code:
        return None
    mapped = concept("FillerStatusCodes[Appointment]", code) or concept(
        "FillerStatusCodes[Appointment]", code.capitalize())
    if mapped:
        return str(mapped["code"])
    conv.unmapped_code("HL70278")
    return None


def _period(conv: Conversion, segment: Segment, start_field: int, duration_field: int, units_field: int) -> Json:
    """Participant period from an AI* start date/time and duration (+ units): the sheets' "start +
    duration" end."""
    start = instant_of(conv, segment, start_field, minutes=True)
    if not start:
        return {}
    period: Json = {"start": start}
    end = _add_duration(segment, start, segment.value(duration_field), segment.value(units_field))
    if end:
        period["end"] = end
    return period


def _add_duration(segment: Segment, start: str, amount: str, unit: str) -> str | None:
    try:
        value = fhir_decimal(amount)
    except ValueError:
        raise HarmonizeError(f"{segment.label}", INVALID_VALUE, "duration is not a number") from None
    seconds = DURATION_UNITS.get(unit.strip().lower() or "min")
    if value is None or seconds is None or value < 0:
        return None
    try:
        end = datetime.fromisoformat(start) + timedelta(seconds=float(value) * seconds)
    except OverflowError:
        raise HarmonizeError(f"{segment.label}", INVALID_VALUE, "duration out of range") from None
    return end.isoformat(timespec="seconds")


def _current_appointment(conv: Conversion, state: WalkState) -> Resource | None:
    appointment_id = state.extra.get("appointment_id")
    return conv.get("Appointment", appointment_id) if appointment_id else None


def _participant_status(conv: Conversion, rep: Rep, appointment: Resource) -> str:
    status = _appointment_status(conv, rep) if not rep.is_empty else None
    # no filler status on the resource: the resource takes part as the appointment does (S12: booked)
    return PARTICIPANT_STATUS.get(status or appointment.get("status", "booked"), "accepted")


def _comment_writer(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """NTE[Appointment-Comment]: the sheet's R5 note extension; R4 has Appointment.comment (string) for
    exactly this, so the NTE texts go there, several NTEs joined with line feeds (as the sheet says)."""
    appointment = _current_appointment(conv, state)
    text = field_text(conv, segment, 3)
    if appointment is None or not text.strip():
        return
    appointment["comment"] = f"{appointment['comment']}\n{text}" if appointment.get("comment") else text


@mapper("SCH")
def map_sch(segment: Segment, conv: Conversion, state: WalkState) -> None:
    if message_code(conv) != "SIU":
        conv.unmapped_segment(segment)
        return
    key = order_key(segment.field(2).first(), segment.field(1).first())  # SCH-2 filler, else SCH-1 placer
    if key is None:
        raise HarmonizeError(f"{segment.label} SCH-2", MISSING_FIELD, "no filler or placer appointment id")
    appointment_id = conv.id_for("Appointment", *key)
    status = _appointment_status(conv, segment.field(25).first())
    state.extra["appointment_status_given"] = status is not None
    # SIU^S12 is the notification of a new booking: without a (known) filler status it is booked.
    appointment: Resource = {"resourceType": "Appointment", "id": appointment_id, "status": status or "booked"}
    identifiers = [i for i in (typed_identifier(conv, segment.field(1).first(), "PLAC"),
                               typed_identifier(conv, segment.field(2).first(), "FILL")) if i]
    if identifiers:
        appointment["identifier"] = identifiers
    reason_rep, type_rep = segment.field(7).first(), segment.field(8).first()
    if reason_rep.component(3).strip().upper() == "HL70277":  # sheet: SCH-7 from table 0277 is a type
        appointment_type = table_concept(conv, reason_rep, "AppointmentTypeCodes", "HL70277")
    else:
        reason = table_concept(conv, reason_rep, "AppointmentReasonCodes", "HL70276")
        if reason:
            appointment["reasonCode"] = [reason]
        appointment_type = table_concept(conv, type_rep, "AppointmentTypeCodes", "HL70277")
    if appointment_type:
        appointment["appointmentType"] = appointment_type
    minutes = _minutes(segment)
    if minutes:
        appointment["minutesDuration"] = minutes
    timing = segment.field(11).first()  # TQ[Appointment]: start TQ-4, end TQ-5 (minute precision suffices)
    start, end = (_schedule_instant(conv, segment, timing.sub(i, 1)) for i in (4, 5))
    if start:
        appointment["start"] = start
    if end:
        appointment["end"] = end
    based_on = [{"type": "ServiceRequest", "identifier": i}
                for i in (typed_identifier(conv, segment.field(26).first(), "PLAC"),
                          typed_identifier(conv, segment.field(27).first(), "FILL")) if i]
    if based_on:
        appointment["basedOn"] = based_on
    appointment["participant"] = []
    conv.put(checked(segment, appointment))
    state.extra["appointment_id"] = appointment_id
    state.extra["last_resource"] = ("Appointment", appointment_id)
    set_note_target(state, segment, _comment_writer)


def _schedule_instant(conv: Conversion, segment: Segment, value: str) -> str | None:
    """A TQ start/end → instant when precise to the minute (a scheduled "09:30" is 09:30:00), else None."""
    try:
        if re.match(r"^\s*\d{12}", value):
            return fhir_instant(value, conv.options.timezone)
        fhir_datetime(value, conv.options.timezone)  # a date only: no instant, but still a valid date
    except ValueError as exc:
        raise HarmonizeError(f"{segment.label} SCH-11", INVALID_VALUE, str(exc)) from None
    return None


def _minutes(segment: Segment) -> int | None:
    """SCH-9 duration with SCH-10 units → minutesDuration (positiveInt; only whole minutes)."""
    try:
        value = fhir_decimal(segment.value(9))
    except ValueError:
        raise HarmonizeError(f"{segment.label} SCH-9", INVALID_VALUE, "not a number") from None
    seconds = DURATION_UNITS.get(segment.value(10).strip().lower() or "min")
    if value is None or seconds is None:
        return None
    minutes = float(value) * seconds / 60
    if minutes > MAX_POSITIVE_INT:
        raise HarmonizeError(f"{segment.label} SCH-9", INVALID_VALUE, "duration out of range")
    return int(minutes) if minutes >= 1 and minutes == int(minutes) else None


def _segment_appointment(segment: Segment, conv: Conversion, state: WalkState) -> Resource | None:
    """The Appointment an AI* segment belongs to (its SCH's); None, the segment counted as unmapped,
    when there is none."""
    appointment = _current_appointment(conv, state)
    if appointment is None:
        conv.unmapped_segment(segment)
    return appointment


def _add_participant(segment: Segment, conv: Conversion, state: WalkState, appointment: Resource, *,
                     kind: Json | None, actor: Json | None, status_field: int, period: Json) -> None:
    """AIG/AIL/AIP[Appointment]: a participant (type `kind`, `actor`, status from field `status_field`,
    `period`), checked and added to the appointment once. NTEs after the segment have no target."""
    participant: Json = {}
    if kind:
        participant["type"] = [kind]
    if actor:
        participant["actor"] = actor
    participant["status"] = _participant_status(conv, segment.field(status_field).first(), appointment)
    if period:
        participant["period"] = period
    checked(segment, participant)
    if participant not in appointment["participant"]:
        appointment["participant"].append(participant)
    set_note_target(state, segment, None)


def _take_start(appointment: Resource, period: Json) -> None:
    """Appointment.start/end from the first AI* segment with a start, when SCH-11 gave none."""
    if period.get("start") and "start" not in appointment:
        appointment["start"] = period["start"]
        if period.get("end"):
            appointment["end"] = period["end"]


@mapper("AIS")
def map_ais(segment: Segment, conv: Conversion, state: WalkState) -> None:
    appointment = _segment_appointment(segment, conv, state)
    if appointment is None:
        return
    service = codeable_concept(conv, segment.field(3).first())
    if service:
        checked(segment, service)
        items = appointment.setdefault("serviceType", [])
        if service not in items:
            items.append(service)
    status = _appointment_status(conv, segment.field(10).first())
    if status and not state.extra.get("appointment_status_given"):
        appointment["status"] = status
        state.extra["appointment_status_given"] = True
    _take_start(appointment, _period(conv, segment, 4, 7, 8))
    set_note_target(state, segment, _comment_writer)  # SIU_S12: NTE after AIS → Appointment comment


@mapper("AIG")
def map_aig(segment: Segment, conv: Conversion, state: WalkState) -> None:
    appointment = _segment_appointment(segment, conv, state)
    if appointment is None:
        return
    rep = segment.field(3).first()
    actor: Json = {}
    code = rep.component(1).strip()
    if code:
        identifier: Json = {"value": code}
        if rep.component(3).strip():
            identifier["system"] = system_uri(conv, rep.component(3))[0]
        actor["identifier"] = identifier
    if rep.component(2).strip():
        actor["display"] = rep.component(2).strip()
    kind = codeable_concept(conv, segment.field(4).first())
    if not actor and not kind:
        return
    period = _period(conv, segment, 8, 11, 12)
    _take_start(appointment, period)
    # actor: a logical reference (AIG-3 identifies the resource, no resource made)
    _add_participant(segment, conv, state, appointment, kind=kind, actor=actor, status_field=14, period=period)


@mapper("AIL")
def map_ail(segment: Segment, conv: Conversion, state: WalkState) -> None:
    appointment = _segment_appointment(segment, conv, state)
    if appointment is None:
        return
    location = referenced(conv, segment, location_reference, segment.field(3).first())
    period = _period(conv, segment, 6, 9, 10)
    _take_start(appointment, period)
    if location is None:
        return
    _add_participant(segment, conv, state, appointment, kind=None, actor=location, status_field=12, period=period)


@mapper("AIP")
def map_aip(segment: Segment, conv: Conversion, state: WalkState) -> None:
    appointment = _segment_appointment(segment, conv, state)
    if appointment is None:
        return
    practitioner = referenced(conv, segment, practitioner_reference, segment.field(3).first())
    kind = codeable_concept(conv, segment.field(4).first())
    period = _period(conv, segment, 6, 9, 10)
    _take_start(appointment, period)
    if practitioner is None and kind is None:
        return
    _add_participant(segment, conv, state, appointment, kind=kind, actor=practitioner, status_field=12,
                     period=period)


@mapper("RGS")
def map_rgs(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """RGS (resource group header: set id and action code) carries no data of its own."""
    set_note_target(state, segment, None)


def _finish_appointments(conv: Conversion) -> None:
    """After the whole SIU message: the patient participant (PID[Appointment]: participant.actor; status
    accepted), at least one participant, and start/end together (FHIR app-2)."""
    patient = conv.patient_ref()
    for resource in conv.resources.values():
        if resource["resourceType"] != "Appointment":
            continue
        participants = resource.setdefault("participant", [])
        if patient and not any(p.get("actor") == patient for p in participants):
            participants.insert(0, {"actor": patient, "status": "accepted"})
        if not participants:
            raise HarmonizeError("PID", MISSING_FIELD, "appointment without patient or resources (participant)")
        if "start" in resource and "end" not in resource and resource.get("minutesDuration"):
            end = _add_duration_minutes(resource["start"], resource["minutesDuration"])
            if end:
                resource["end"] = end
        if ("start" in resource) != ("end" in resource):
            # FHIR app-2: start and end together or neither; a lone time is kept as requestedPeriod
            resource["requestedPeriod"] = [{k: resource.pop(k) for k in ("start", "end") if k in resource}]
            conv.notes.append("Appointment with only a start or an end: kept as requestedPeriod")


def _add_duration_minutes(start: str, minutes: int) -> str | None:
    try:
        return (datetime.fromisoformat(start) + timedelta(minutes=minutes)).isoformat(timespec="seconds")
    except OverflowError:
        return None  # start + SCH-9 beyond year 9999: no end (the start goes to requestedPeriod)


# -- event finishers ---------------------------------------------------------------------------------

def _chain(code: str, trigger: str, finisher) -> None:  # type: ignore[no-untyped-def]
    """Run `finisher(conv)` after whatever handler events already has for (code, trigger)."""
    previous = events.EVENT_HANDLERS.get((code, trigger)) or events.EVENT_HANDLERS.get((code, "*"))

    def handler(event_trigger: str, conv: Conversion) -> None:
        if previous is not None:
            previous(event_trigger, conv)  # type: ignore[operator]
        finisher(conv)

    events.EVENT_HANDLERS[(code, trigger)] = handler


_chain("MDM", "T02", _finish_documents)
_chain("SIU", "S12", _finish_appointments)
