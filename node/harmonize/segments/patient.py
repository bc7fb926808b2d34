"""PID → Patient (sheet `PID[Patient]`), PD1 → Patient (sheet `PD1[Patient]`), NK1 → RelatedPerson
(sheet `NK1[RelatedPerson]`)."""

from __future__ import annotations

from node.harmonize.context import INVALID_VALUE, MISSING_FIELD, STRUCTURE, Conversion, HarmonizeError, Resource
from node.harmonize.datatypes import (
    address,
    code_from_table,
    codeable_concept,
    contact_point,
    fhir_date,
    fhir_datetime,
    human_name,
    identifier_from_cx,
    organization_reference,
    practitioner_reference,
    repetitions,
)
from node.harmonize.segments import WalkState, mapper
from node.hl7v2.parser import Rep, Segment

PATIENT_ID_TYPES = ("MR", "PI", "PT", "PN")
"""CX-5 identifier types preferred for the patient's stable id (medical record / patient internal)."""


def patient_key(rep: Rep) -> tuple[str, str]:
    """(id value, assigning authority) of one CX: the business identifier behind the Patient's id."""
    authority = rep.sub(4, 2).strip() or rep.sub(4, 1).strip()
    return rep.component(1).strip(), authority


def choose_patient_identifier(segment: Segment) -> tuple[str, str] | None:
    """The CX that identifies the patient: PID-3 (a repetition of type MR/PI/PT/PN first, else the
    first), else PID-2 (external id, v2.3), else PID-4 (alternate id)."""
    reps = [rep for rep in repetitions(segment.field(3)) if rep.component(1).strip()]
    for rep in reps:
        if rep.component(5).strip().upper() in PATIENT_ID_TYPES:
            return patient_key(rep)
    if reps:
        return patient_key(reps[0])
    for n in (2, 4):
        for rep in repetitions(segment.field(n)):
            if rep.component(1).strip():
                return patient_key(rep)
    return None


def patient_id_for(conv: Conversion, key: tuple[str, str]) -> str:
    return conv.id_for("Patient", *key)


@mapper("PID")
def map_pid(segment: Segment, conv: Conversion, state: WalkState) -> None:
    key = choose_patient_identifier(segment)
    if key is None:
        raise HarmonizeError(f"{segment.label} PID-3", MISSING_FIELD, "no patient identifier")
    patient_id = patient_id_for(conv, key)
    conv.patient_id = patient_id
    # A PID starts a new patient group (A40, multi-patient ORU): the visit of a previous group is not
    # this patient's, so later segments must not reference it until a PV1 of this group sets one.
    conv.encounter_id = None
    state.extra.pop("prior_visit", None)
    patient: Resource = {"resourceType": "Patient", "id": patient_id}
    identifiers = []
    for n in (3, 2, 4):  # PID-3 identifier[2] first: it is the list of record; PID-2/4 are older forms
        for rep in repetitions(segment.field(n)):
            identifier = identifier_from_cx(conv, rep)
            if identifier and identifier not in identifiers:
                identifiers.append(identifier)
    if identifiers:
        patient["identifier"] = identifiers
    names = [name for rep in repetitions(segment.field(5)) if (name := human_name(conv, rep))]
    if names:
        patient["name"] = names
    birth = segment.value(7)
    if birth.strip():
        try:
            patient["birthDate"] = fhir_date(birth)
        except ValueError:
            raise HarmonizeError(f"{segment.label} PID-7", INVALID_VALUE, "not a date") from None
    sex = segment.value(8).strip()
    if sex:
        gender = code_from_table("AdministrativeSex", sex.upper())
        patient["gender"] = gender or "unknown"
    addresses = [a for rep in repetitions(segment.field(11)) if (a := address(conv, rep))]
    if addresses:
        patient["address"] = addresses
    telecom = [t for rep in repetitions(segment.field(13)) if (t := contact_point(conv, rep, "home"))]
    telecom += [t for rep in repetitions(segment.field(14)) if (t := contact_point(conv, rep, "work"))]
    if telecom:
        patient["telecom"] = telecom
    language = codeable_concept(conv, segment.field(15).first(), table=None)
    if language:
        patient["communication"] = [{"language": language}]
    marital = codeable_concept(conv, segment.field(16).first(), table="MaritalStatus")
    if marital:
        patient["maritalStatus"] = marital
    _deceased(segment, conv, patient)
    conv.put(patient)
    state.extra["last_resource"] = ("Patient", patient_id)


def _deceased(segment: Segment, conv: Conversion, patient: Resource) -> None:
    """PID-29 death date/time → deceasedDateTime, else PID-30 death indicator → deceasedBoolean."""
    when = segment.value(29).strip()
    if when:
        try:
            patient["deceasedDateTime"] = fhir_datetime(when, conv.options.timezone)
            return
        except ValueError:
            raise HarmonizeError(f"{segment.label} PID-29", INVALID_VALUE, "not a date/time") from None
    flag = segment.value(30).strip().upper()
    if flag in ("Y", "N"):
        patient["deceasedBoolean"] = flag == "Y"


# -- PD1 → Patient, NK1 → RelatedPerson (added with the ADT mappers) -----------------------------------

NK1_NOT_RELATED_PERSON = frozenset({"EMR", "E", "F", "I", "S"})
"""NK1-3 codes the ADT message sheets send to Patient.contact only (employer, agencies, insurer), never
to a RelatedPerson (`IF NK1-3.1 NOT IN ("EMR", "E", "F", "I", "S")`)."""


@mapper("PD1")
def map_pd1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """PD1 → Patient.generalPractitioner: PD1-3 (XON → Organization), PD1-4 (XCN → Practitioner)."""
    if conv.patient_id is None:
        conv.unmapped_segment(segment)
        return
    practitioners = [ref for rep in repetitions(segment.field(3)) if (ref := organization_reference(conv, rep))]
    practitioners += [ref for rep in repetitions(segment.field(4)) if (ref := practitioner_reference(conv, rep))]
    if practitioners:
        conv.put({"resourceType": "Patient", "id": conv.patient_id, "generalPractitioner": practitioners})


@mapper("NK1")
def map_nk1(segment: Segment, conv: Conversion, state: WalkState) -> None:
    """NK1 → RelatedPerson (sheet NK1[RelatedPerson]), id (patient, NK1-1 set id, NK1-2 name).

    name NK1-2 (else NK1-30 contact person), relationship NK1-3 (Relationship map for codes without a
    coding system) and NK1-7 (ContactRole), address NK1-4 (and NK1-32), telecom NK1-5, NK1-6 (use work),
    NK1-31, NK1-40, NK1-41, period NK1-8/9, identifier NK1-12/33, gender NK1-15, birthDate NK1-16.
    """
    if conv.patient_id is None:
        raise HarmonizeError(segment.label, STRUCTURE, "NK1 without a PID before it")
    relationship_rep = segment.field(3).first()
    if relationship_rep.component(1).strip().upper() in NK1_NOT_RELATED_PERSON:
        conv.unmapped_segment(segment)  # Patient.contact (NK1[Patient]) is not produced
        return
    names = [n for rep in repetitions(segment.field(2)) if (n := human_name(conv, rep))]
    names += [n for rep in repetitions(segment.field(30)) if (n := human_name(conv, rep)) and n not in names]
    if not names:
        conv.unmapped_segment(segment)  # nobody to describe
        return
    name_key = [names[0].get("family", ""), *names[0].get("given", [])]
    person: Resource = {"resourceType": "RelatedPerson",
                        "id": conv.id_for("RelatedPerson", conv.patient_id, segment.value(1).strip(), *name_key)}
    identifiers = [i for n in (12, 33) for rep in repetitions(segment.field(n)) if (i := identifier_from_cx(conv, rep))]
    if identifiers:
        person["identifier"] = identifiers
    person["patient"] = {"reference": f"Patient/{conv.patient_id}"}
    relationships = [cc for cc in (codeable_concept(conv, relationship_rep, table="Relationship"),
                                   codeable_concept(conv, segment.field(7).first(), table="ContactRole")) if cc]
    if relationships:
        person["relationship"] = relationships
    person["name"] = names
    telecom = [t for rep in repetitions(segment.field(5)) if (t := contact_point(conv, rep))]
    telecom += [t for rep in repetitions(segment.field(6)) if (t := contact_point(conv, rep, "work"))]
    for n in (31, 40, 41):
        telecom += [t for rep in repetitions(segment.field(n)) if (t := contact_point(conv, rep))]
    if telecom:
        person["telecom"] = telecom
    sex = segment.value(15).strip()
    gender = code_from_table("AdministrativeSex", sex.upper()) if sex else None
    if gender:
        person["gender"] = gender
    birth = segment.value(16).strip()
    if birth and set(birth) - {"0"}:
        try:
            person["birthDate"] = fhir_date(birth)
        except ValueError:
            raise HarmonizeError(f"{segment.label} NK1-16", INVALID_VALUE, "not a date") from None
    addresses = [a for n in (4, 32) for rep in repetitions(segment.field(n)) if (a := address(conv, rep))]
    if addresses:
        person["address"] = addresses
    period = {}
    for key, n in (("start", 8), ("end", 9)):
        value = segment.value(n).strip()
        if value and set(value) - {"0"}:
            try:
                period[key] = fhir_datetime(value, conv.options.timezone)
            except ValueError:
                raise HarmonizeError(f"{segment.label} NK1-{n}", INVALID_VALUE, "not a date/time") from None
    if period:
        person["period"] = period
    conv.put(person)
