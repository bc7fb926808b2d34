"""DG1 → Condition (sheets `DG1[Condition]`, `DG1[Encounter]`), PR1 → Procedure (`PR1[Procedure]`), AL1 →
AllergyIntolerance (`AL1[AllergyIntolerance]`), IN1 → Coverage + payor Organization (`IN1[Coverage]`), and
MRG (merge information: no resource of its own; A40 is handled in node.harmonize.events).

These segments describe the message's patient (and its visit, when the PV1 made an Encounter), so each
needs the PID before it. They do not change `state.extra["last_resource"]`: Z-segments of ADT messages
(ORBIS ZBE movements, ZNG newborn data) describe the visit, so they stay attached to the Encounter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from node.harmonize.context import (
    INVALID_VALUE,
    MISSING_FIELD,
    Conversion,
    HarmonizeError,
    Resource,
)
from node.harmonize.datatypes import (
    Json,
    address,
    contact_point,
    fhir_decimal,
    human_name,
    identifier_from_cx,
    identifier_from_ei,
    practitioner_reference,
    repetitions,
    system_uri,
)
from node.harmonize.segments import WalkState, mapper
from node.harmonize.segments.encounter import (
    coded,
    coded_list,
    cx_key,
    datetime_field,
    event_time,
    parse_fhir_datetime,
    require_patient,
    text_value,
    trigger_of,
)
from node.harmonize.segments.patient import PATIENT_ID_TYPES, patient_key
from node.harmonize.vocabulary import concept
from node.hl7v2.parser import Rep, Segment

CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ASSERTED_DATE = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
SUBSCRIBER_ID = "http://hl7.org/fhir/5.0/StructureDefinition/extension-subscriberId"
SNOMED = "http://snomed.info/sct"
V2_0052 = "http://terminology.hl7.org/CodeSystem/v2-0052"
POSITIVE_INT_MAX = 2**31 - 1
DIAGNOSIS_TYPES_0052 = {"A": "Admitting", "W": "Working", "F": "Final"}
SELF = {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "ONESELF"}


def _scope(conv: Conversion) -> str:
    """The encounter (else the patient) a clinical statement of this message belongs to: part of the
    ids of Conditions and Procedures, which a diagnosis/procedure code alone does not identify."""
    return conv.encounter_id or conv.patient_id or ""


def _code_key(rep: Rep) -> tuple[str, str]:
    """(code, coding system name) of a CWE as id parts; the text when no code is sent."""
    code = rep.component(1).strip()
    return (code, rep.component(3).strip().upper()) if code else (rep.component(2).strip(), "text")


def _ei_key(rep: Rep) -> tuple[str, str] | None:
    value = rep.component(1).strip()
    if not value or rep.is_null:
        return None
    return value, rep.component(3).strip() or rep.component(2).strip()


# -- DG1 → Condition --------------------------------------------------------------------------------

@mapper("DG1")
def map_dg1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """DG1 → Condition, and (in the context of an Encounter) an Encounter.diagnosis entry.

    id: the DG1-20 diagnosis identifier within the encounter/patient (the sheet warns it may need the
    visit to be unique); a DG1-20 that a DG1 with another code in the same message already used (seen in
    ORBIS feeds) falls back to (encounter/patient, DG1-3 code, DG1-6 type, DG1-1 set id).
    """
    subject = require_patient(conv, segment)
    code_rep = segment.field(3).first()
    code = coded(conv, code_rep, None)
    description = text_value(segment, 4)  # DG1-4 (deprecated) → code.text
    if description:
        code = code or {}
        code.setdefault("text", description)
    if not code:
        conv.unmapped_segment(segment)  # nothing says what the diagnosis is
        return
    condition_id = _condition_id(conv, segment, code_rep, code)
    condition: Resource = {"resourceType": "Condition", "id": condition_id}
    identifier = identifier_from_ei(conv, segment.field(20).first())
    if identifier:
        condition["identifier"] = [identifier]
    deleted = text_value(segment, 21).upper() == "D"  # DG1-21 action code D → entered-in-error (sheet)
    if deleted:
        condition["verificationStatus"] = {"coding": [{"system": CONDITION_VER_STATUS, "code": "entered-in-error"}]}
    condition["category"] = [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                          "display": "Encounter Diagnosis"}]}]
    condition["code"] = code
    condition["subject"] = subject
    encounter = conv.encounter_ref()
    if encounter:
        condition["encounter"] = encounter
    onset = datetime_field(conv, segment, 5)
    if onset:
        condition["onsetDateTime"] = onset
    asserted = datetime_field(conv, segment, 19)
    if asserted:
        condition["extension"] = [{"url": ASSERTED_DATE, "valueDateTime": asserted}]
    recorded = asserted or onset  # DG1-19 per sheet; DG1-5 (diagnosis date/time) when it is missing
    if recorded:
        condition["recordedDate"] = recorded
    asserter = practitioner_reference(conv, segment.field(16).first())
    if asserter:
        condition["asserter"] = asserter
    conv.put(condition)
    if encounter and not deleted:
        _add_diagnosis(conv, segment, condition_id)


def _condition_id(conv: Conversion, segment: Segment, code_rep: Rep, code: Json) -> str:
    identifier = _ei_key(segment.field(20).first())
    if identifier is not None:
        candidate = conv.id_for("Condition", _scope(conv), "DG1-20", *identifier)
        existing = conv.get("Condition", candidate)
        if existing is None or existing.get("code") == code:
            return candidate
        conv.notes.append(f"{segment.label}: DG1-20 reused for another diagnosis; id from code and type")
    return conv.id_for("Condition", _scope(conv), *_code_key(code_rep), text_value(segment, 6).upper(),
                       text_value(segment, 1))


def _add_diagnosis(conv: Conversion, segment: Segment, condition_id: str) -> None:
    """Encounter.diagnosis: condition, use from DG1-6 (DiagnosisType), rank from DG1-15 (a positive
    integer; ORBIS sub-ranks like "2.1" and 0 = "not ranked" (table 0359) give no rank)."""
    assert conv.encounter_id is not None
    entry: Json = {"condition": conv.ref("Condition", condition_id)}
    use = _diagnosis_use(conv, segment.field(6).first())
    if use:
        entry["use"] = use
    rank = text_value(segment, 15)
    if rank.isdigit() and 0 < int(rank) <= POSITIVE_INT_MAX:
        entry["rank"] = int(rank)
    conv.put({"resourceType": "Encounter", "id": conv.encounter_id, "diagnosis": [entry]})


def _diagnosis_use(conv: Conversion, rep: Rep) -> Json | None:
    """DiagnosisType maps only A (admitting → AD); W/F (table 0052) have no FHIR target and stay v2-0052
    codings; site-specific types (e.g. ORBIS "Aufn."/"Entl.") stay local codings."""
    code = rep.component(1).strip()
    if code.upper() in DIAGNOSIS_TYPES_0052 and not rep.component(3).strip():
        mapped = concept("DiagnosisType", code.upper())
        coding = mapped or {"system": V2_0052, "code": code.upper(), "display": DIAGNOSIS_TYPES_0052[code.upper()]}
        return {"coding": [coding]}
    return coded(conv, rep, "DiagnosisType")


# -- PR1 → Procedure --------------------------------------------------------------------------------

@mapper("PR1")
def map_pr1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """PR1 → Procedure. id: PR1-19 identifier within the encounter/patient, else (encounter/patient,
    PR1-3 code, PR1-5 date/time).

    status: the sheet leaves it to the message context ("unknown" when unclear). A PR1 with a procedure
    date/time no later than the message's event time reports a performed procedure → completed; else
    unknown (e.g. a procedure planned with a pre-admission).
    """
    subject = require_patient(conv, segment)
    code_rep = segment.field(3).first()
    code = coded(conv, code_rep, None)
    description = text_value(segment, 4)  # PR1-4 → code.text when PR1-3.9 is not valued
    if description and not code_rep.component(9).strip():
        code = code or {}
        code["text"] = description
    if not code:
        conv.unmapped_segment(segment)
        return
    performed = datetime_field(conv, segment, 5)
    identifier_key = _ei_key(segment.field(19).first())
    if identifier_key is not None:
        procedure_id = conv.id_for("Procedure", _scope(conv), "PR1-19", *identifier_key)
    else:
        procedure_id = conv.id_for("Procedure", _scope(conv), *_code_key(code_rep), performed or "")
    procedure: Resource = {"resourceType": "Procedure", "id": procedure_id}
    identifier = identifier_from_ei(conv, segment.field(19).first())
    if identifier:
        procedure["identifier"] = [identifier]
    procedure["status"] = "completed" if performed and _not_after_event(conv, performed) else "unknown"
    category = coded(conv, segment.field(6).first(), None)
    if category:
        procedure["category"] = category
    procedure["code"] = code
    procedure["subject"] = subject
    encounter = conv.encounter_ref()
    if encounter:
        procedure["encounter"] = encounter
    if performed:
        _performed(segment, procedure, performed)
    performers = []
    # PR1-8 anesthesiologist (SNOMED 88189002), PR1-11 surgeon (304292004), PR1-12 procedure
    # practitioner (no function: the sheet gives none).
    for n, function in ((8, "88189002"), (11, "304292004"), (12, None)):
        for rep in repetitions(segment.field(n)):
            actor = practitioner_reference(conv, rep)
            if actor is None:
                continue
            performer: Json = {"actor": actor}
            if function:
                performer["function"] = {"coding": [{"system": SNOMED, "code": function}]}
            performers.append(performer)
    if performers:
        procedure["performer"] = performers
    reasons = coded_list(conv, segment, 15, None)
    if reasons:
        procedure["reasonCode"] = reasons
    conv.put(procedure)


def _performed(segment: Segment, procedure: Resource, performed: str) -> None:
    """PR1-5 → performedDateTime; with PR1-7 (minutes) and PR1-5 precise to the minute →
    performedPeriod start/end (end = start + minutes)."""
    minutes = text_value(segment, 7)
    if minutes and len(performed) >= 16:
        try:
            duration = fhir_decimal(minutes)
            if duration is not None and duration >= 0:
                start = datetime.fromisoformat(performed)
                end = (start + timedelta(minutes=duration)).isoformat(timespec="seconds")
                procedure["performedPeriod"] = {"start": performed, "end": end}
                return
        except (ValueError, OverflowError):
            raise HarmonizeError(f"{segment.label} PR1-7", INVALID_VALUE, "not a number of minutes") from None
    procedure["performedDateTime"] = performed


def _not_after_event(conv: Conversion, value: str) -> bool:
    """Whether the FHIR dateTime `value` lies at or before the message's event time (EVN-6, EVN-2, MSH-7);
    True when the message has no usable event time (the PR1 then is a record of the past)."""
    reference = event_time(conv)
    moment = parse_fhir_datetime(value, conv.options.timezone)
    return reference is None or moment is None or moment <= reference


# -- AL1 → AllergyIntolerance ------------------------------------------------------------------------

@mapper("AL1")
def map_al1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """AL1 → AllergyIntolerance, id (patient, AL1-3 code). clinicalStatus active (sheet; ait-1);
    the sheet maps no verificationStatus, so none is set."""
    patient = require_patient(conv, segment)
    code_rep = segment.field(3).first()
    code = coded(conv, code_rep, None)
    if not code:
        conv.unmapped_segment(segment)
        return
    allergy: Resource = {"resourceType": "AllergyIntolerance",
                         "id": conv.id_for("AllergyIntolerance", conv.patient_id or "", *_code_key(code_rep))}
    allergy["clinicalStatus"] = {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]}
    kind = text_value(segment, 2).upper()
    if kind:
        allergy_type = concept("AllergyType", kind)
        if allergy_type:
            allergy["type"] = allergy_type["code"]
        category = concept("AllergenType[AllergyIntoleranceCategory]", kind)
        if category:
            allergy["category"] = [category["code"]]
    severity = text_value(segment, 4).upper()
    criticality = concept("AllergySeverity[AllergyIntolerance.criticality]", severity) if severity else None
    if criticality:
        allergy["criticality"] = criticality["code"]
    allergy["code"] = code
    allergy["patient"] = patient
    onset = datetime_field(conv, segment, 6)
    if onset:
        allergy["onsetDateTime"] = onset
    manifestations = [{"text": rep.component(1).strip()} for rep in repetitions(segment.field(5))
                      if rep.component(1).strip()]
    if manifestations:  # reaction.manifestation is required: no reaction (and no severity) without AL1-5
        reaction: Json = {"manifestation": manifestations}
        reaction_severity = (concept("AllergySeverity[AllergyIntolerance.reaction.severity]", severity)
                             if severity else None)
        if reaction_severity:
            reaction["severity"] = reaction_severity["code"]
        allergy["reaction"] = [reaction]
    conv.put(allergy)


# -- IN1 → Coverage -----------------------------------------------------------------------------------

@mapper("IN1")
def map_in1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """IN1 → Coverage with its payor Organization (IN1-3 company id, IN1-4 name, IN1-5 address, IN1-7
    phone). id (patient, company, policy: IN1-49 insured's id, else IN1-36 policy number, else IN1-2
    plan). A Coverage needs a payor (R4: 1..*): an IN1 naming no insurer is counted as unmapped."""
    beneficiary = require_patient(conv, segment)
    payor = _payor(conv, segment)
    if payor is None:
        conv.unmapped_segment(segment)
        return
    insured_id = segment.field(49).first()
    subscriber_id = insured_id.component(1).strip() or text_value(segment, 36)
    policy = subscriber_id or text_value(segment, 2)
    coverage: Resource = {"resourceType": "Coverage",
                          "id": conv.id_for("Coverage", conv.patient_id or "", payor["reference"], policy)}
    identifier = _plan_identifier(conv, segment.field(2).first())
    if identifier:
        coverage["identifier"] = [identifier]
    coverage["status"] = "active"
    plan_type = coded(conv, segment.field(15).first(), None)  # PlanId map: no v2 source codes
    if plan_type:
        coverage["type"] = plan_type
    relationship = coded(conv, segment.field(17).first(), "Relationship")
    subscriber = _subscriber(conv, segment, relationship, beneficiary)
    if subscriber:
        coverage["subscriber"] = subscriber
    if subscriber_id:
        coverage["subscriberId"] = subscriber_id  # R4 string; the sheet's R5 extension keeps the Identifier
    insured = identifier_from_cx(conv, insured_id)
    if insured:
        coverage["extension"] = [{"url": SUBSCRIBER_ID, "valueIdentifier": insured}]
    coverage["beneficiary"] = beneficiary
    if relationship:
        coverage["relationship"] = relationship
    period = {}
    for key, n in (("start", 12), ("end", 13)):
        value = datetime_field(conv, segment, n)
        if value:
            period[key] = value
    if period:
        coverage["period"] = period
    coverage["payor"] = [payor]
    conv.put(coverage)


def _payor(conv: Conversion, segment: Segment) -> dict[str, str] | None:
    """The insurer: an Organization with a stable id from the first IN1-3 (company id + authority),
    else from its IN1-4 name."""
    ids = [rep for rep in repetitions(segment.field(3)) if cx_key(rep) is not None]
    name = segment.field(4).first().component(1).strip()
    if not ids and not name:
        return None
    first = cx_key(ids[0]) if ids else None
    key = ("id", *first) if first else ("name", name)
    organization: Resource = {"resourceType": "Organization", "id": conv.id_for("Organization", *key)}
    identifiers = [i for rep in ids if (i := identifier_from_cx(conv, rep))]
    if identifiers:
        organization["identifier"] = identifiers
    if name:
        organization["name"] = name
    telecom = [t for rep in repetitions(segment.field(7)) if (t := contact_point(conv, rep))]
    if telecom:
        organization["telecom"] = telecom
    addresses = [a for rep in repetitions(segment.field(5)) if (a := address(conv, rep))]
    if addresses:
        organization["address"] = addresses
    return conv.put(organization)


def _plan_identifier(conv: Conversion, rep: Rep) -> Json | None:
    """IN1-2 health plan id (CWE[Identifier]): value CWE-1, system from CWE-3."""
    value = rep.component(1).strip()
    if not value or rep.is_null:
        return None
    identifier: Json = {"value": value}
    if rep.component(3).strip():
        identifier["system"] = system_uri(conv, rep.component(3))[0]
    return identifier


def _subscriber(conv: Conversion, segment: Segment, relationship: Json | None,
                beneficiary: dict[str, str]) -> dict[str, str] | None:
    """IN1-16: the patient when IN1-17 says self (SEL, or a local code the site maps to ONESELF), else a
    RelatedPerson (name IN1-16, birth date IN1-18, address IN1-19, relationship IN1-17)."""
    codings = relationship.get("coding", []) if relationship else []
    if any(c.get("system") == SELF["system"] and c.get("code") == SELF["code"] for c in codings):
        return beneficiary
    names = [n for rep in repetitions(segment.field(16)) if (n := human_name(conv, rep))]
    if not names:
        return None
    birth = datetime_field(conv, segment, 18)
    person: Resource = {"resourceType": "RelatedPerson",
                        "id": conv.id_for("RelatedPerson", conv.patient_id or "", "IN1-16",
                                          names[0].get("family", ""), *names[0].get("given", []), birth or "")}
    person["patient"] = beneficiary
    if relationship:
        person["relationship"] = [relationship]
    person["name"] = names
    if birth:
        person["birthDate"] = birth[:10]
    addresses = [a for rep in repetitions(segment.field(19)) if (a := address(conv, rep))]
    if addresses:
        person["address"] = addresses
    return conv.put(person)


# -- MRG ----------------------------------------------------------------------------------------------

def prior_patient_key(segment: Segment) -> tuple[str, str] | None:
    """The identifier behind the prior patient's stable id, chosen as for PID (so it is the id the prior
    patient's own messages produced): MRG-1 (a repetition of type MR/PI/PT/PN first, else the first) as
    PID-3, else MRG-4 (prior patient id) as PID-2, else MRG-2 (prior alternate id) as PID-4."""
    reps = [rep for rep in repetitions(segment.field(1)) if rep.component(1).strip()]
    for rep in reps:
        if rep.component(5).strip().upper() in PATIENT_ID_TYPES:
            return patient_key(rep)
    if reps:
        return patient_key(reps[0])
    for n in (4, 2):
        for rep in repetitions(segment.field(n)):
            if rep.component(1).strip():
                return patient_key(rep)
    return None


def prior_identifiers(conv: Conversion, segment: Segment) -> list[Json]:
    """MRG-1, MRG-4, MRG-2 as Identifiers (what is known about the prior patient record)."""
    result: list[Json] = []
    for n in (1, 4, 2):
        for rep in repetitions(segment.field(n)):
            identifier = identifier_from_cx(conv, rep)
            if identifier and identifier not in result:
                result.append(identifier)
    return result


@mapper("MRG")
def map_mrg(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """MRG makes no resource (the MRG[Account] sheet's Account is not produced). It records the prior
    identifiers: state.extra["merge_from"] = [(value, authority), …] of MRG-1 and MRG-4, and
    state.extra["prior_visit"] = (value, authority) of MRG-5 (else MRG-6), which the PV1 after it uses
    when PV1-19 is empty (A06/A07). The A40 merge itself is done by node.harmonize.events."""
    keys = [patient_key(rep) for n in (1, 4) for rep in repetitions(segment.field(n)) if rep.component(1).strip()]
    state.extra.setdefault("merge_from", []).extend(k for k in keys if k not in state.extra["merge_from"])
    for n in (5, 6):
        visit = cx_key(segment.field(n).first())
        if visit is not None:
            state.extra["prior_visit"] = visit
            break
    if trigger_of(conv) == "A40" and prior_patient_key(segment) is None:
        raise HarmonizeError(f"{segment.label} MRG-1", MISSING_FIELD, "no prior patient identifier")
