"""Trigger-event semantics applied after all segments are mapped, and Z-segment handling.

The segment mappers describe what a message says; the trigger event says what happened: an A03
finishes the encounter, an A11 cancels the admission, an A40 merges two patients (see the v2-to-FHIR
`Event[EncounterStatus]` concept map, the `MSH[Encounter]` sheet — Encounter.status from MSH-9 — and the
ADT message sheets).

ADT decisions (where the tables are silent or would lose information):

* Encounter.status: `Event[EncounterStatus]` for A01, A02 (in-progress), A03 (finished), A05 (planned),
  A11 (cancelled), A13 (in-progress).
* A04 "register a patient": the map says planned. HL7 v2 defines A04 as "the patient has arrived or
  checked in" as an outpatient or in the emergency department, and FHIR R4 defines in-progress as "the
  Encounter has begun and the patient is present". So an A04 for an outpatient/emergency visit (class AMB
  or EMER) whose admit time PV1-44 is not after the event time (EVN-6, else EVN-2, else MSH-7 — the
  message's own clock, not the converter's, so a re-conversion gives the same result) is in-progress; a
  registration with PV1-45 (discharge) is finished; anything else (future admit time, no admit time,
  inpatient class) stays planned as mapped.
* A08 "update patient information" maps to unknown ("the transaction does not convey the status").
  Each message is a full PUT of the Encounter, so writing unknown would wipe the status an earlier A01/
  A03 established. The PV1 mapper's status (PV1-45 → finished, else from the patient class) is what the
  A08's own data says, so A08 keeps it. The same holds for A06/A07 (class change; no map entry) and A12.
* A06/A07: the class comes from PV1-2 of the message (the PV1 mapper); the visit keeps its id when PV1-19
  is unchanged, and uses the MRG-5 prior visit number when PV1-19 is empty.
* A12 cancel transfer (no A12 sheet exists): HL7 v2 says PV1-3 of an A12 "must show the location of the
  patient prior to the original transfer", so PV1-3 stays the active location. A PV1-6 in an A12 is the
  transfer's target being cancelled, not a place the patient was; R4 Encounter.location.status has no
  entered-in-error (planned | active | reserved | completed), and "completed" would claim a stay. So the
  PV1-6 entry is removed from Encounter.location; the PUT then also drops it from the stored Encounter.
* A13 cancel discharge: in-progress (map); period.end and the discharge's dischargeDisposition/
  destination are removed (the discharge did not happen).
* A28/A31: Patient only; the PV1 mapper makes an Encounter only when PV1-19 holds a visit number.
* A40 merge: per PID/MRG pair, the prior patient (id from MRG like the PID rule picks it, so it is the
  id that patient's own messages produced) becomes a Patient with active=false and link replaced-by →
  the surviving patient, which gets link replaces → prior (R4 Patient.link). One prior Patient per MRG,
  not per MRG-1 repetition: further repetitions are identifiers of the same record, not other patients.
"""

from __future__ import annotations

from collections.abc import Callable

from node.harmonize.context import Conversion, Resource
from node.harmonize.datatypes import human_name, location_reference, repetitions
from node.harmonize.segments import WalkState
from node.harmonize.segments.clinical import prior_identifiers, prior_patient_key
from node.harmonize.segments.encounter import event_time, parse_fhir_datetime
from node.harmonize.segments.patient import choose_patient_identifier, patient_id_for
from node.harmonize.vocabulary import concept
from node.hl7v2.parser import Segment

Z_SEGMENT_EXTENSION = "https://edge-node.invalid/fhir/StructureDefinition/hl7v2-z-segment"

Handler = Callable[[str, Conversion], None]
EVENT_HANDLERS: dict[tuple[str, str], Handler] = {}


def apply(code: str, trigger: str, conv: Conversion) -> None:
    """Apply the event's semantics to the resources of `conv` (registered per (code, trigger))."""
    handler = EVENT_HANDLERS.get((code, trigger)) or EVENT_HANDLERS.get((code, "*"))
    if handler is not None:
        handler(trigger, conv)


def register(code: str, *triggers: str) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        for trigger in triggers:
            if (code, trigger) in EVENT_HANDLERS:
                raise ValueError(f"event {code}^{trigger} has two handlers")
            EVENT_HANDLERS[(code, trigger)] = fn
        return fn

    return wrap


def z_segment(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """A Z-segment is never fatal: ignored (and counted) per feed, or kept as an extension (its wire text)
    on the resource produced by the segment before it."""
    if conv.options.z_segments == "ignore":
        conv.unmapped_segment(segment)
        return
    target = state.extra.get("last_resource")
    resource = conv.get(*target) if target else None
    if resource is None:
        conv.unmapped_segment(segment)
        return
    resource.setdefault("extension", []).append({"url": Z_SEGMENT_EXTENSION, "valueString": segment.raw})


# -- ADT ------------------------------------------------------------------------------------------------

AMBULATORY_CLASSES = frozenset({"AMB", "EMER"})


def _encounter(conv: Conversion) -> Resource | None:
    return conv.get("Encounter", conv.encounter_id) if conv.encounter_id else None


def _mapped_status(trigger: str) -> str:
    mapped = concept("Event[EncounterStatus]", trigger)
    assert mapped is not None, trigger
    return str(mapped["code"])


@register("ADT", "A01", "A02", "A03", "A05", "A11")
def encounter_status_from_event(trigger: str, conv: Conversion) -> None:
    encounter = _encounter(conv)
    if encounter is not None:
        encounter["status"] = _mapped_status(trigger)


@register("ADT", "A04")
def register_visit(trigger: str, conv: Conversion) -> None:
    encounter = _encounter(conv)
    if encounter is None:
        return
    period = encounter.get("period", {})
    if period.get("end"):
        encounter["status"] = "finished"
        return
    encounter["status"] = _mapped_status(trigger)  # planned
    start = parse_fhir_datetime(period["start"], conv.options.timezone) if period.get("start") else None
    now = event_time(conv)
    if encounter["class"].get("code") in AMBULATORY_CLASSES and start is not None and now is not None \
            and start <= now:
        encounter["status"] = "in-progress"


@register("ADT", "A06", "A07", "A08", "A28", "A31")
def keep_pv1_status(trigger: str, conv: Conversion) -> None:
    """The PV1 mapper's status stands (see the module docstring)."""


@register("ADT", "A12")
def cancel_transfer(trigger: str, conv: Conversion) -> None:
    encounter = _encounter(conv)
    pv1 = conv.message.first("PV1")
    if encounter is None or pv1 is None:
        return
    cancelled = location_reference(conv, pv1.field(6).first())
    current = location_reference(conv, pv1.field(3).first())
    if cancelled is None or cancelled == current:
        return
    remaining = [entry for entry in encounter.get("location", []) if entry.get("location") != cancelled]
    if remaining:
        encounter["location"] = remaining
    else:
        encounter.pop("location", None)


@register("ADT", "A13")
def cancel_discharge(trigger: str, conv: Conversion) -> None:
    encounter = _encounter(conv)
    if encounter is None:
        return
    encounter["status"] = _mapped_status(trigger)  # in-progress
    period = encounter.get("period")
    if period is not None:
        period.pop("end", None)
        if not period:
            encounter.pop("period")
    hospitalization = encounter.get("hospitalization")
    if hospitalization is not None:
        hospitalization.pop("dischargeDisposition", None)
        hospitalization.pop("destination", None)
        if not hospitalization:
            encounter.pop("hospitalization")


@register("ADT", "A40")
def merge_patients(trigger: str, conv: Conversion) -> None:
    surviving_key = None
    for segment in conv.message.segments:
        if segment.id == "PID":
            surviving_key = choose_patient_identifier(segment)
        elif segment.id == "MRG" and surviving_key is not None:
            prior_key = prior_patient_key(segment)
            if prior_key is None:
                continue  # the MRG mapper already refused an A40 MRG without one
            surviving_id, prior_id = patient_id_for(conv, surviving_key), patient_id_for(conv, prior_key)
            if prior_id == surviving_id:
                conv.notes.append(f"{segment.label}: prior and surviving patient are the same: no link")
                continue
            prior: Resource = {"resourceType": "Patient", "id": prior_id, "active": False}
            identifiers = prior_identifiers(conv, segment)
            if identifiers:
                prior["identifier"] = identifiers
            names = [n for rep in repetitions(segment.field(7)) if (n := human_name(conv, rep))]
            if names:
                prior["name"] = names
            prior["link"] = [{"other": conv.ref("Patient", surviving_id), "type": "replaced-by"}]
            conv.put(prior)
            conv.put({"resourceType": "Patient", "id": surviving_id,
                      "link": [{"other": conv.ref("Patient", prior_id), "type": "replaces"}]})
