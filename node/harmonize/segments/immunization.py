"""RXA → Immunization (sheet RXA[Immunization], with ORC[Immunization] of the same ORDER group), RXR →
Immunization.route/site (sheet RXR[Immunization]). Message sheet VXU_V04.

The ORC of a VXU order group is kept by the ORC mapper (`segments.orders`: state.extra["orc"]) and read
here: ORC-2/ORC-3 are the Immunization's identifiers, ORC-9 its recorded time, ORC-12 the ordering
performer (function OP). OBX after the RXA become Observations partOf the Immunization (orders.map_obx,
via state.immunization_id).

Id: from the ORC filler order number (ORC-3, the immunization record's number at the sender) when
present, else from (patient, RXA-5 vaccine code, RXA-3 administration date/time) — what makes a dose
this dose.
"""

from __future__ import annotations

from node.harmonize.context import INVALID_VALUE, MISSING_FIELD, Conversion, HarmonizeError, Resource
from node.harmonize.datatypes import (
    Json,
    code_from_table,
    codeable_concept,
    fhir_date,
    fhir_decimal,
    practitioner_reference,
    repetitions,
    system_uri,
    units_from_cwe,
)
from node.harmonize.segments import WalkState, mapper
from node.harmonize.segments.orders import (
    checked,
    coded_key,
    datetime_of,
    ei_key,
    referenced,
    set_note_target,
    table_concept,
    typed_identifier,
)
from node.hl7v2.parser import Rep, Segment

V2_0443 = "http://terminology.hl7.org/CodeSystem/v2-0443"
UNKNOWN_AMOUNT = "999"
"""RXA-6 "999": amount unknown (CDC immunization guide; historical records): no doseQuantity."""

# RXA-9 administration notes, CDC table NIP001. The RXA[Immunization] sheet leaves RXA-9 to implementation
# guides and names the CDC guide's mapping: "00" new immunization record (the sender administered it) →
# primarySource true; "01".."08" historical records from another source → primarySource false and
# reportOrigin = the RXA-9 concept.
NIP001_NAMES = frozenset({"NIP001", "NIP-001"})


def _status(conv: Conversion, segment: Segment) -> tuple[str, bool]:
    """(status, isSubpotent): RXA-21 "D" → entered-in-error; else RXA-20 via CompletionStatus (empty →
    completed, sheet); PA (partially administered) → completed and isSubpotent."""
    if segment.value(21).strip().upper() == "D":
        return "entered-in-error", False
    code = segment.value(20).strip().upper()
    if not code:
        return "completed", False
    status = code_from_table("CompletionStatus", code)
    if status is None:
        # Immunization.status is required and has no "unknown": an unknown completion status is not
        # guessed (completed vs. not-done matters clinically).
        raise HarmonizeError(f"{segment.label} RXA-20", INVALID_VALUE, "not a completion status (table 0322)")
    return status, code == "PA"


def _manufacturer(conv: Conversion, segment: Segment, rep: Rep) -> Json | None:
    """CWE[Organization]: identifier CWE-1 with system CWE-3 (MVX), name CWE-2 (or CWE-9)."""
    code = rep.component(1).strip()
    name = rep.component(9).strip() or rep.component(2).strip()
    if not code and not name:
        return None
    organization: Resource = {"resourceType": "Organization"}
    system_name = rep.component(3).strip()
    if code:
        system = system_uri(conv, system_name)[0] if system_name else None
        organization["id"] = conv.id_for("Organization", "id", code, system or "")
        identifier: Json = {"value": code}
        if system:
            identifier["system"] = system
        organization["identifier"] = [identifier]
    else:
        organization["id"] = conv.id_for("Organization", "name", name)
    if name:
        organization["name"] = name
    return conv.put(checked(segment, organization))


def _performer(reference: Json, function: str) -> Json:
    return {"function": {"coding": [{"system": V2_0443, "code": function}]}, "actor": reference}


@mapper("RXA")
def map_rxa(segment: Segment, conv: Conversion, state: WalkState) -> None:
    patient = conv.patient_ref()
    if patient is None:
        raise HarmonizeError(f"{segment.label}", MISSING_FIELD, "no PID before RXA (Immunization.patient)")
    vaccine = codeable_concept(conv, segment.field(5).first())
    if vaccine is None:
        raise HarmonizeError(f"{segment.label} RXA-5", MISSING_FIELD, "no administered code")
    occurrence = datetime_of(conv, segment, 3)
    if occurrence is None:
        raise HarmonizeError(f"{segment.label} RXA-3", MISSING_FIELD, "no administration date/time")
    orc: Segment | None = state.extra.get("orc")
    filler = ei_key(orc.field(3).first()) if orc is not None else None
    if filler:
        immunization_id = conv.id_for("Immunization", "FILL", *filler)
    else:
        immunization_id = conv.id_for("Immunization", conv.patient_id or "", *coded_key(segment.field(5).first()),
                                      segment.value(3).strip())
    status, subpotent = _status(conv, segment)
    immunization: Resource = {"resourceType": "Immunization", "id": immunization_id, "status": status,
                              "vaccineCode": vaccine, "patient": patient, "occurrenceDateTime": occurrence}
    if subpotent:
        immunization["isSubpotent"] = True
    performers: list[Json] = []
    if orc is not None:  # ORC[Immunization]
        identifiers = [i for i in (typed_identifier(conv, orc.field(2).first(), "PLAC"),
                                   typed_identifier(conv, orc.field(3).first(), "FILL")) if i]
        if identifiers:
            immunization["identifier"] = identifiers
        recorded = datetime_of(conv, orc, 9)
        if recorded:
            immunization["recorded"] = recorded
        ordering = referenced(conv, orc, practitioner_reference, orc.field(12).first())
        if ordering is not None:
            performers.append(_performer(ordering, "OP"))
    if segment.value(21).strip().upper() == "A" and "recorded" not in immunization:
        recorded = datetime_of(conv, segment, 22)  # sheet: RXA-22 → recorded "IF RXA-21 EQUALS A"
        if recorded:
            immunization["recorded"] = recorded
    encounter = conv.encounter_ref()
    if encounter:
        immunization["encounter"] = encounter
    _dose(conv, segment, immunization)
    _source(conv, segment, immunization)
    administering = [r for rep in repetitions(segment.field(10))
                     if (r := referenced(conv, segment, practitioner_reference, rep))]
    performers[:0] = [_performer(r, "AP") for r in administering]
    if performers:
        immunization["performer"] = performers
    lot = segment.value(15).strip()
    if lot:
        immunization["lotNumber"] = lot
    expiration = segment.value(16).strip()
    if expiration:
        try:
            immunization["expirationDate"] = fhir_date(expiration)
        except ValueError:
            raise HarmonizeError(f"{segment.label} RXA-16", INVALID_VALUE, "not a date") from None
    manufacturer = _manufacturer(conv, segment, segment.field(17).first())
    if manufacturer:
        immunization["manufacturer"] = manufacturer
    reason = codeable_concept(conv, segment.field(18).first())
    if reason:
        immunization["statusReason"] = reason
    indications = [c for rep in repetitions(segment.field(19)) if (c := codeable_concept(conv, rep))]
    if indications:
        immunization["reasonCode"] = indications
    conv.put(checked(segment, immunization))
    state.immunization_id = immunization_id
    state.observation_id = None
    state.extra["last_resource"] = ("Immunization", immunization_id)
    set_note_target(state, segment, None)


def _dose(conv: Conversion, segment: Segment, immunization: Resource) -> None:
    """RXA-6 (NM) + RXA-7 (CWE[Quantity]) → doseQuantity; RXA-6 "999" (unknown amount) → none."""
    amount = segment.value(6).strip()
    if not amount or amount == UNKNOWN_AMOUNT:
        return
    try:
        value = fhir_decimal(amount)
    except ValueError:
        raise HarmonizeError(f"{segment.label} RXA-6", INVALID_VALUE, "not a number") from None
    if value is None:
        return
    immunization["doseQuantity"] = {"value": value, **units_from_cwe(conv, segment.field(7).first())}


def _source(conv: Conversion, segment: Segment, immunization: Resource) -> None:
    """RXA-9 (NIP001) → primarySource/reportOrigin, see NIP001_NAMES."""
    for rep in repetitions(segment.field(9)):
        code = rep.component(1).strip()
        if rep.component(3).strip().upper() not in NIP001_NAMES or not code:
            continue
        if code == "00":
            immunization["primarySource"] = True
        else:
            immunization["primarySource"] = False
            origin = codeable_concept(conv, rep)
            if origin:
                immunization["reportOrigin"] = origin
        return


@mapper("RXR")
def map_rxr(segment: Segment, conv: Conversion, state: WalkState) -> None:
    immunization = conv.get("Immunization", state.immunization_id) if state.immunization_id else None
    if immunization is None:
        conv.unmapped_segment(segment)  # an RXR of a medication order: not mapped here
        return
    route = table_concept(conv, segment.field(1).first(), "RouteOfAdministration", "HL70162")
    if route:
        immunization["route"] = checked(segment, route)
    site = table_concept(conv, segment.field(2).first(), "BodyParts", "HL70550")
    if site:
        immunization["site"] = checked(segment, site)
