"""Orders and results: ORC/OBR → ServiceRequest and DiagnosticReport, OBX → Observation, NTE → notes,
SPM → Specimen.

Sheets followed (mappings/segments): ORC[ServiceRequest], OBR[ServiceRequest], ORC[DiagnosticReport],
OBR[DiagnosticReport], OBX[Observation], OBX[Observation-Component] (OBX-5 repeating), NTE[Observation],
NTE[ServiceRequest], SPM[Specimen]; the message sheets ORU_R01, ORM_O01, OML_O21, VXU_V04, MDM_T02 and
SIU_S12 decide what a segment becomes where:

* ORU (results): each OBR is a DiagnosticReport (basedOn the order's ServiceRequest) whose result[] are
  the OBX after it; OBX with OBX-29 QST/SCI are the order's supportingInfo instead. OBX after an SPM are
  observations *about the specimen* (focus). OBX before any ORC/OBR are patient observations. An OBX
  between an ORC and its OBR is the v2.7+ ORDER_DOCUMENT group, which the sheet leaves for R5: counted
  as unmapped.
* ORM/OML/MDM (orders): ORC and OBR build one ServiceRequest; OBX after it are its supportingInfo
  (ask-at-order-entry answers); SPM is ServiceRequest.specimen (OML).
* VXU: ORC is ORC[Immunization] (read by `segments.immunization`); OBX after an RXA are partOf the
  Immunization, OBX before any ORC are patient observations.
* MDM: OBX after a TXA are the document's content (`segments.documents` installs the handler).

Ids (stable, see node.harmonize.ids): ServiceRequest from the order number — filler (ORC-3/OBR-3) else
placer (ORC-2/OBR-2), EI value + namespace (else universal id) — else, when a sender fills neither, from
(patient, OBR-4, OBR-7); an OBR whose number already names a request with another OBR-4 code in the same
message is a request of its own (number + OBR-4: ServiceRequest.code is 0..1, codes are not merged).
DiagnosticReport from (order, OBR-4 code; OBR-1, else the OBR's position, when OBR-4 is empty).
Observation from (order, that OBR part, OBX-3 code, OBX-4 sub-id, OBX-1 set id): one order number often
carries several OBRs whose OBX set ids restart at 1. Specimen from SPM-2 (filler else placer) else
(order, SPM-1). MSH-10 is never part of an id: a resend or a correction overwrites.

Value policy (OBX-5): a value that does not parse as its OBX-2 type is a HarmonizeError naming OBX-5
(INVALID_VALUE), never a silent change of type (e.g. an NM "pos" is not turned into a valueString): the
operator fixes the sender or the feed's value type, and nothing wrong is stored. The one tolerance: an
NM with a leading comparator ("<0.5") is mapped exactly as the SN it should have been (SN[Quantity]:
value + comparator) — nothing is guessed or lost. Repetitions of OBX-5: coded types (CE/CWE/CNE/IS) go to
Observation.component per OBX[Observation-Component]; text types (ST/TX/FT) are joined with line breaks
(as OBX[DocumentReference] joins repeated text); any other type keeps the first repetition as value[x]
and the others as Observation.note (and a conversion note), so no value is dropped.

Statuses: the sheets' concept maps; codes they leave out are supplemented from the FHIR definitions
(OBSERVATION_STATUS_SUPPLEMENT, REPORT_STATUS_SUPPLEMENT), anything else is "unknown" and counted as an
unmapped code (HL70085, HL70123, HL70038). Times: an instant (DiagnosticReport.issued, Observation.issued
from OBR-22) only from a value precise to the second. Codes and uris that FHIR cannot carry (whitespace
runs) fail naming the segment (`checked`) instead of producing an invalid resource.

Not mapped (sheet rows deferred or implementation-specific): OBR-32/34/35 (NDL → PractitionerRole),
OBX-4 as the sub-id extension (it is part of the id), OBX-15/18/25, OBX-29/30 category/extension,
ORC-28 security labels, the ORC-1/ORC-9 businessEvent extension, OBR-18..21 placer/filler fields, PRT,
TQ1/TQ2 (counted as unmapped segments by the converter).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from node.harmonize.context import (
    INVALID_VALUE,
    MISSING_FIELD,
    Conversion,
    HarmonizeError,
    Resource,
)
from node.harmonize.datatypes import (
    Json,
    authority_system,
    code_from_table,
    codeable_concept,
    fhir_date,
    fhir_datetime,
    fhir_decimal,
    fhir_instant,
    fhir_time,
    identifier_from_cx,
    identifier_from_ei,
    local_system,
    organization_reference,
    practitioner_reference,
    quantity_from_cq,
    repetitions,
    units_from_cwe,
)
from node.harmonize.segments import WalkState, mapper
from node.harmonize.vocabulary import concept
from node.hl7v2.escape import unescape
from node.hl7v2.parser import Rep, Segment

RESULT_MESSAGES = frozenset({"ORU", "OUL"})
"""Messages whose OBR are results (DiagnosticReport); in all others an OBR is (part of) an order."""

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
DATA_ABSENT_CODES = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ORIGINAL_TEXT = "http://hl7.org/fhir/StructureDefinition/originalText"
ANALYSIS_DATE_TIME = "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time"
VALUE_ATTACHMENT = "https://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.valueAttachment"
"""OBX[Observation] row OBX-5 ED/RP, URL as the sheet writes it (R5 valueAttachment for R4)."""
REQUEST_STATUS_REASON = "http://hl7.org/fhir/StructureDefinition/request-statusReason"

NOTE_PASSTHROUGH = frozenset({"NTE", "PRT", "TQ1", "TQ2", "TCD", "CTD"})
"""Segments that may stand between a segment and the NTE that comments on it (same segment group)."""

CODED_TYPES = frozenset({"CE", "CWE", "CNE", "IS", "CF"})
TEXT_TYPES = frozenset({"ST", "TX", "FT"})
QUESTION_TYPES = frozenset({"QST", "SCI"})
"""OBX-29 observation types that are order questions (ORU_R01: ServiceRequest.supportingInfo)."""

# OBX-11 codes the ObservationResultStatusCodesInterpretation map leaves out, by the FHIR R4
# observation-status definitions: I "specimen in lab, results pending" and O "order detail only, no
# result" = registered (no result yet); R "entered, not verified" and S "partial" = preliminary
# ("initial or interim ... may be unverified"); U "changed to final without retransmitting" = final; N
# "not asked" = final with dataAbsentReason not-asked (the sheet's OBX-11 N row).
OBSERVATION_STATUS_SUPPLEMENT = {"I": "registered", "O": "registered", "R": "preliminary",
                                 "S": "preliminary", "U": "final", "N": "final"}
# OBR-25 codes the ResultStatus[Non-Queries] map leaves out, by the FHIR R4 diagnostic-report-status
# definitions: A "some, but not all, results available" = partial.
REPORT_STATUS_SUPPLEMENT = {"A": "partial"}

COMPARATORS = frozenset({"<", ">", "<=", ">="})

# HL7 table 0191 (type of referenced data, ED-2/RP-3) → MIME top-level type, for a contentType built
# from ED-2/ED-3 (the ED[Attachment] sheet puts ED-3 alone there, which is no MIME type).
MIME_TOP_LEVEL = {"AP": "application", "APPLICATION": "application", "AU": "audio", "AUDIO": "audio",
                  "IM": "image", "IMAGE": "image", "TEXT": "text", "TX": "text", "MULTIPART": "multipart",
                  "VIDEO": "video"}

NoteWriter = Callable[[Segment, Conversion, WalkState], None]


# -- small helpers shared with the other order-family modules ------------------------------------------

def message_code(conv: Conversion) -> str:
    return conv.message.message_code.upper()


def rep_text(conv: Conversion, rep: Rep) -> str:
    """The whole text of one repetition of an ST/TX/FT field, unescaped. Stray component/subcomponent
    separators (a sender writing `^` unescaped in free text) stay in the text instead of cutting it."""
    return unescape(rep.raw, conv.message.encoding, conv.message.charset)


def field_text(conv: Conversion, segment: Segment, n: int, joiner: str = "\n") -> str:
    """All repetitions of a text field, unescaped, joined (repeated FT/TX lines become line breaks)."""
    return joiner.join(rep_text(conv, rep) for rep in repetitions(segment.field(n))).strip("\n")


def datetime_of(conv: Conversion, segment: Segment, n: int) -> str | None:
    """DTM/TS field `n` (TS component 1) → FHIR dateTime. :raises HarmonizeError: naming the field."""
    try:
        return fhir_datetime(segment.value(n), conv.options.timezone)
    except ValueError as exc:
        raise HarmonizeError(f"{segment.label} {segment.id}-{n}", INVALID_VALUE, str(exc)) from None


_SECONDS = re.compile(r"^\s*\d{14}")


def instant_of(conv: Conversion, segment: Segment, n: int, *, minutes: bool = False) -> str | None:
    """DTM/TS field `n` → FHIR instant, only when the value is precise to the second (an instant claims
    that precision; `datatypes.fhir_instant` would pad a minute value with ":00"). `minutes=True` accepts
    minute precision: for scheduled times (Appointment) "09:30" means 09:30:00 exactly.
    None when the value is coarser. :raises HarmonizeError: not a valid date/time, naming the field."""
    text = segment.value(n)
    if not _SECONDS.match(text) and not (minutes and re.match(r"^\s*\d{12}", text)):
        datetime_of(conv, segment, n)  # still reject an invalid value
        return None
    try:
        return fhir_instant(text, conv.options.timezone)
    except ValueError as exc:
        raise HarmonizeError(f"{segment.label} {segment.id}-{n}", INVALID_VALUE, str(exc)) from None


def typed_identifier(conv: Conversion, rep: Rep, type_code: str) -> Json | None:
    """EI[Identifier-Extension] with a v2-0203 type (PLAC, FILL, PGN ...)."""
    identifier = identifier_from_ei(conv, rep)
    if identifier is not None:
        identifier["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return identifier


def ei_key(rep: Rep) -> tuple[str, str] | None:
    """(value, namespace or universal id) of an EI: the business key behind an id."""
    if rep.is_empty or rep.is_null:
        return None
    value = rep.component(1).strip()
    if not value:
        return None
    return value, rep.component(2).strip() or rep.component(3).strip()


def order_key(filler: Rep, placer: Rep) -> tuple[str, ...] | None:
    """The business key of an order (ORC/OBR-3 and -2) or appointment (SCH-2 and -1): filler number,
    else placer number (EI value + authority)."""
    number = ei_key(filler)
    if number:
        return ("FILL", *number)
    number = ei_key(placer)
    if number:
        return ("PLAC", *number)
    return None


def coded_key(rep: Rep) -> tuple[str, str]:
    """(code or text, coding system) of a CWE: the part of an id that a coded field contributes."""
    code = rep.component(1).strip() or rep.component(2).strip() or rep.component(9).strip()
    return code, rep.component(3).strip()


def table_concept(conv: Conversion, rep: Rep, table: str, table_system: str) -> Json | None:
    """A CWE whose codes come from the HL7 table `table_system` (e.g. "HL70162") with a v2-to-FHIR
    concept map `table`: without a coding system the map's coding replaces the bare code (as
    `codeable_concept(table=...)` does); with the table named as coding system the map's coding comes
    first and the v2 coding stays. Any other coding system: the CWE as sent."""
    if rep.component(3).strip().upper() == table_system:
        result = codeable_concept(conv, rep)
        mapped = concept(table, rep.component(1).strip())
        codings = result.setdefault("coding", []) if result is not None else []
        if mapped is not None and not any(
                (c.get("system"), c.get("code")) == (mapped.get("system"), mapped["code"]) for c in codings):
            codings.insert(0, mapped)
        return result
    return codeable_concept(conv, rep, table=table)


_FHIR_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_CODE_KEYS = frozenset({"code", "contentType"})
_URI_KEYS = frozenset({"system", "url"})


def checked(segment: Segment, value: Json, path: str = "") -> Json:
    """`value` (a resource or part of one) after checking the FHIR primitives that data reach unchanged
    and FHIR restricts: codes (Coding.code, Quantity.code, Attachment.contentType: no whitespace runs)
    and uris (no whitespace). A sender's "A  1" is a data error named by segment and element path — not
    an invalid resource at validation, and not silently changed.
    :raises HarmonizeError: INVALID_VALUE naming the segment and the element (never the value)."""
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if isinstance(item, str):
            if (key in _CODE_KEYS and not _FHIR_CODE.match(item)) or (key in _URI_KEYS and re.search(r"\s", item)):
                raise HarmonizeError(segment.label, INVALID_VALUE, f"{where} is not a valid FHIR {key}")
        elif isinstance(item, dict):
            checked(segment, item, where)
        elif isinstance(item, list):
            for index, element in enumerate(item):
                if isinstance(element, dict):
                    checked(segment, element, f"{where}[{index}]")
    return value


def referenced(conv: Conversion, segment: Segment, make: Callable[[Conversion, Rep], Json | None],
               rep: Rep) -> Json | None:
    """`make(conv, rep)` (practitioner_reference, organization_reference, location_reference: they add
    a resource and return a Reference to it) with the resource checked like `checked` does."""
    reference = make(conv, rep)
    target = reference.get("reference") if reference else None
    if target:
        resource = conv.get(*target.split("/", 1))
        if resource is not None:
            checked(segment, resource)
    return reference


def add_reference(resource: Resource | None, key: str, reference: Json) -> None:
    """Append `reference` to the list `key` of a stored resource (once)."""
    if resource is None:
        return
    items = resource.setdefault(key, [])
    if reference not in items:
        items.append(reference)


def set_note_target(state: WalkState, segment: Segment, writer: NoteWriter | None) -> None:
    """NTE segments that follow `segment` (only passthrough segments between) go to `writer`."""
    state.extra["note_target"] = (segment.position, writer) if writer else None


def annotation(conv: Conversion, segment: Segment) -> Json | None:
    """NTE[Observation]/NTE[ServiceRequest]: text NTE-3 (FT; repetitions are lines), author NTE-5,
    time NTE-6. None when NTE-3 is empty."""
    text = field_text(conv, segment, 3)
    if not text.strip():
        return None
    note: Json = {"text": text}
    author = referenced(conv, segment, practitioner_reference, segment.field(5).first())
    if author is not None:
        note["authorReference"] = author
    time = datetime_of(conv, segment, 6)
    if time:
        note["time"] = time
    return note


def note_writer(resource_type: str, resource_id: str) -> NoteWriter:
    """A writer appending each NTE as one Annotation to `note` of a stored resource."""

    def write(segment: Segment, conv: Conversion, state: WalkState) -> None:
        note = annotation(conv, segment)
        resource = conv.get(resource_type, resource_id)
        if note is not None and resource is not None:
            resource.setdefault("note", []).append(note)

    return write


def _start_group(state: WalkState) -> None:
    """A new order group (ORC, or an OBR without its own ORC): forget the previous one."""
    state.order_id = None
    state.order_key = ""
    state.report_id = None
    state.observation_id = None
    state.specimen_id = None
    state.immunization_id = None
    for key in ("orc", "orc_request", "order_key_parts", "report_part", "report_observations", "obr_effective",
                "obr_issued", "after_spm", "note_target"):
        state.extra.pop(key, None)


def _require_patient(conv: Conversion, segment: Segment) -> Json:
    subject = conv.patient_ref()
    if subject is None:
        raise HarmonizeError(f"{segment.label}", MISSING_FIELD,
                             "no PID before the order (ServiceRequest.subject is required)")
    return subject


def _status(conv: Conversion, code: str, table: str, unmapped: str, supplement: dict[str, str] | None = None) -> str:
    """A status for a (non-empty, upper-case) v2 status code: the concept map `table`, else `supplement`
    (codes the map leaves out, by the FHIR definitions); any other code is "unknown" and counted as an
    unmapped code of `unmapped` (e.g. "HL70123")."""
    mapped = code_from_table(table, code) or (supplement or {}).get(code)
    if mapped:
        return mapped
    conv.unmapped_code(unmapped)
    return "unknown"


# -- ORC → ServiceRequest ---------------------------------------------------------------------------

def _request_status(conv: Conversion, segment: Segment) -> str:
    """ORC-5 (OrderStatus map), else — the sheet's condition "IF ORC-5 NOT VALUED" — ORC-1
    (OrderControlCode[ServiceRequest.status]). ORC-1 codes outside that map (RE, SC, ...) are message
    semantics, not statuses, so they give "unknown" without being counted; an ORC-5 outside table 0038
    is counted as unmapped."""
    order_status = segment.value(5).strip().upper()
    if order_status:
        return _status(conv, order_status, "OrderStatus", "HL70038")
    control = segment.value(1).strip().upper()
    return (code_from_table("OrderControlCode[ServiceRequest.status]", control) if control else None) or "unknown"


def _orc_request(conv: Conversion, segment: Segment) -> Resource:
    """The ServiceRequest elements ORC[ServiceRequest] gives (no id yet)."""
    request: Resource = {"resourceType": "ServiceRequest", "status": _request_status(conv, segment),
                         "intent": "order"}
    identifiers = [i for i in (typed_identifier(conv, segment.field(2).first(), "PLAC"),
                               typed_identifier(conv, segment.field(3).first(), "FILL")) if i]
    if identifiers:
        request["identifier"] = identifiers
    group = typed_identifier(conv, segment.field(4).first(), "PGN")
    if group:
        request["requisition"] = group
    if segment.value(1).strip().upper() == "NW":  # sheet: authoredOn "IF ORC.1 IS NW"
        authored = datetime_of(conv, segment, 9)
        if authored:
            request["authoredOn"] = authored
    requester = referenced(conv, segment, practitioner_reference, segment.field(12).first())
    if requester is not None:
        request["requester"] = requester
    if not segment.value(5).strip():
        reason = codeable_concept(conv, segment.field(16).first())
        if reason:
            request["extension"] = [{"url": REQUEST_STATUS_REASON, "valueCodeableConcept": reason}]
    location = table_concept(conv, segment.field(29).first(), "OrderType", "HL70482")
    if location:
        request["locationCode"] = [location]
    return request


def _put_request(conv: Conversion, state: WalkState, segment: Segment, key: tuple[str, ...],
                 request: Resource) -> None:
    request_id = conv.id_for("ServiceRequest", *key)
    request = {**request, "id": request_id, "subject": _require_patient(conv, segment)}
    encounter = conv.encounter_ref()
    if encounter:
        request["encounter"] = encounter
    conv.put(checked(segment, request))
    state.order_id = request_id
    state.order_key = "\x1f".join(key)
    state.extra["order_key_parts"] = key
    state.extra["last_resource"] = ("ServiceRequest", request_id)


@mapper("ORC")
def map_orc(segment: Segment, conv: Conversion, state: WalkState) -> None:
    _start_group(state)
    state.extra["orc"] = segment
    if message_code(conv) == "VXU":
        # VXU_V04: ORC[Immunization] (segments.immunization reads it at the RXA); the sheet makes a
        # ServiceRequest optional ("only if the system wants to know about the order"): none is made.
        return
    request = _orc_request(conv, segment)
    key = order_key(segment.field(3).first(), segment.field(2).first())
    if key is None:
        state.extra["orc_request"] = request  # the order numbers may come in OBR-2/OBR-3
        return
    _put_request(conv, state, segment, key, request)
    set_note_target(state, segment, note_writer("ServiceRequest", state.order_id or ""))


# -- OBR → ServiceRequest (+ DiagnosticReport in results messages) -----------------------------------

def _obr_request(conv: Conversion, segment: Segment, orc: Segment | None) -> Resource:
    """The ServiceRequest elements OBR[ServiceRequest] gives (no id yet)."""
    request: Resource = {"resourceType": "ServiceRequest", "status": "unknown", "intent": "order"}
    identifiers = []
    for n, type_code in ((2, "PLAC"), (3, "FILL")):  # sheet: OBR-2/3 "IF ORC-2/3 NOT VALUED"
        if orc is None or orc.field(n).is_empty:
            identifier = typed_identifier(conv, segment.field(n).first(), type_code)
            if identifier:
                identifiers.append(identifier)
    if identifiers:
        request["identifier"] = identifiers
    code = codeable_concept(conv, segment.field(4).first())
    if code:
        request["code"] = code
    priority = segment.value(5).strip().upper()
    if priority:
        mapped = code_from_table("ExtendedPriorityCodes", priority)
        if mapped:
            request["priority"] = mapped
        else:
            conv.unmapped_code("HL70485")
    occurrence = datetime_of(conv, segment, 6)
    if occurrence:
        request["occurrenceDateTime"] = occurrence
    if orc is None or orc.field(12).is_empty:  # sheet: OBR-16 "IF ORC-12 NOT VALUED"
        requester = referenced(conv, segment, practitioner_reference, segment.field(16).first())
        if requester is not None:
            request["requester"] = requester
    reasons = [c for rep in repetitions(segment.field(31)) if (c := codeable_concept(conv, rep))]
    if reasons:
        request["reasonCode"] = reasons
    return request


def _report_part(segment: Segment, state: WalkState) -> tuple[str, ...]:
    """What tells the OBRs of one order apart: the OBR-4 code, else OBR-1, else the OBR's position."""
    code, system = coded_key(segment.field(4).first())
    if code:
        return ("OBR-4", code, system)
    set_id = segment.value(1).strip()
    if set_id:
        return ("OBR-1", set_id)
    count = state.extra["obr_count"] = state.extra.get("obr_count", 0) + 1
    return ("OBR", str(count))


def _fallback_key(conv: Conversion, segment: Segment) -> tuple[str, ...]:
    """An order without placer and filler number (some senders): keyed by patient, service, time."""
    code, system = coded_key(segment.field(4).first())
    when = segment.value(7).strip() or segment.value(6).strip()
    if conv.patient_id is None or not (code or when):
        raise HarmonizeError(f"{segment.label} OBR-2", MISSING_FIELD,
                             "no placer or filler order number (ORC-2/3, OBR-2/3)")
    return ("OBR", conv.patient_id, code, system, when)


def _report_status(conv: Conversion, segment: Segment) -> str:
    code = segment.value(25).strip().upper()
    if not code:
        return "unknown"  # sheet: status "IF OBR-25 VALUED"; DiagnosticReport.status is required
    return _status(conv, code, "ResultStatus[Non-Queries]", "HL70123", REPORT_STATUS_SUPPLEMENT)


def _report_category(conv: Conversion, segment: Segment) -> Json | None:
    """OBR-24 (ID, table 0074) via DiagnosticServiceSectionID. A code outside table 0074 is a local
    section code (local system, counted), not labelled as v2-0074."""
    code = segment.value(24).strip()
    if not code:
        return None
    mapped = concept("DiagnosticServiceSectionID", code.upper())
    if mapped:
        return {"coding": [mapped]}
    conv.unmapped_code("HL70074")
    return {"coding": [{"system": local_system(conv, "HL70074"), "code": code}]}


def _effective(conv: Conversion, segment: Segment, start: int, end: int) -> Json:
    """OBR-7/OBR-8 (DiagnosticReport.effective[x], sheet: Period when OBR-8 is valued)."""
    begin, finish = datetime_of(conv, segment, start), datetime_of(conv, segment, end)
    if finish:
        period = {"end": finish}
        if begin:
            period["start"] = begin
        return {"effectivePeriod": period}
    return {"effectiveDateTime": begin} if begin else {}


def _put_report(conv: Conversion, state: WalkState, segment: Segment, orc: Segment | None,
                request: Resource) -> None:
    report_id = conv.id_for("DiagnosticReport", state.order_key, *state.extra["report_part"])
    report: Resource = {"resourceType": "DiagnosticReport", "id": report_id,
                        "status": _report_status(conv, segment)}
    identifiers = []  # OBR[DiagnosticReport] OBR-2/3, ORC[DiagnosticReport] ORC-2/3 (same numbers)
    for n, type_code in ((2, "PLAC"), (3, "FILL")):
        rep = segment.field(n).first()
        if rep.is_empty and orc is not None:
            rep = orc.field(n).first()
        identifier = typed_identifier(conv, rep, type_code)
        if identifier:
            identifiers.append(identifier)
    if identifiers:
        report["identifier"] = identifiers
    report["basedOn"] = [conv.ref("ServiceRequest", state.order_id or "")]
    category = _report_category(conv, segment)
    if category:
        report["category"] = [category]
    # DiagnosticReport.code is required; an OBR without OBR-4 (a v2 required field some feeds leave
    # empty) says so explicitly instead of inventing a code.
    report["code"] = request.get("code") or {
        "extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}
    if "code" not in request:
        conv.notes.append("OBR-4 empty: DiagnosticReport.code has a data-absent-reason")
    report["subject"] = conv.patient_ref()
    encounter = conv.encounter_ref()
    if encounter:
        report["encounter"] = encounter
    report.update(_effective(conv, segment, 7, 8))
    issued = instant_of(conv, segment, 22)
    if issued:
        report["issued"] = issued
    conv.put(checked(segment, report))
    state.report_id = report_id
    state.extra["last_resource"] = ("DiagnosticReport", report_id)


@mapper("OBR")
def map_obr(segment: Segment, conv: Conversion, state: WalkState) -> None:
    orc: Segment | None = state.extra.pop("orc", None)  # the ORC of this group (first OBR after it)
    orc_request: Resource | None = state.extra.pop("orc_request", None)
    if orc is None:
        _start_group(state)  # an OBR without its own ORC starts a new order group
    else:
        state.report_id = None
        state.observation_id = None
        state.specimen_id = None
        for key in ("report_observations", "after_spm"):
            state.extra.pop(key, None)
    request = _obr_request(conv, segment, orc)
    if state.order_id is not None:  # the ORC of this group made the request
        key: tuple[str, ...] = state.extra["order_key_parts"]
    else:
        key = order_key(segment.field(3).first(), segment.field(2).first()) or _fallback_key(conv, segment)
        if orc_request is not None:  # ORC without numbers: its elements go into the same request
            merged = dict(orc_request)
            for name, value in request.items():
                if name == "identifier":
                    merged[name] = merged.get(name, []) + value
                elif name not in merged:
                    merged[name] = value
            request = merged
    existing = conv.get("ServiceRequest", conv.id_for("ServiceRequest", *key))
    if existing is not None and "code" in existing and "code" in request and existing["code"] != request["code"]:
        # The order number already names another service in this message (a sender reusing numbers
        # across OBRs): this OBR is a request of its own rather than a second code merged into one.
        key = (*key, "OBR-4", *coded_key(segment.field(4).first()))
        existing = conv.get("ServiceRequest", conv.id_for("ServiceRequest", *key))
        conv.notes.append("OBR with an order number already used for another service")
    if existing is not None:
        conv.put(checked(segment, {**request, "id": existing["id"]}))
        state.order_id, state.order_key = existing["id"], "\x1f".join(key)
        state.extra["order_key_parts"] = key
    else:
        _put_request(conv, state, segment, key, request)
    stored = conv.get("ServiceRequest", state.order_id or "")
    specimen_action = segment.value(11).strip().upper()
    if stored is not None and specimen_action == "G":  # sheet: OBR-11 "G" → intent reflex-order
        stored["intent"] = "reflex-order"
    state.extra["report_part"] = _report_part(segment, state)
    state.extra["obr_effective"] = datetime_of(conv, segment, 7)
    state.extra["obr_issued"] = instant_of(conv, segment, 22)
    state.extra["report_observations"] = []
    if message_code(conv) in RESULT_MESSAGES:
        _put_report(conv, state, segment, orc, request)
    # ORU_R01 has no row for an NTE after the OBR; the order's notes are ServiceRequest.note there too.
    set_note_target(state, segment, note_writer("ServiceRequest", state.order_id or ""))


# -- OBX → Observation -------------------------------------------------------------------------------

def _obx_where(segment: Segment, n: int = 5) -> str:
    return f"{segment.label} OBX-{n}"


def _decimal(segment: Segment, text: str, n: int = 5) -> float | int | None:
    try:
        return fhir_decimal(text)
    except ValueError:
        raise HarmonizeError(_obx_where(segment, n), INVALID_VALUE,
                             f"OBX-2 is {segment.value(2).strip().upper() or 'empty'} but the value is "
                             "not a number") from None


_NM_WITH_COMPARATOR = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


def _nm_quantity(conv: Conversion, segment: Segment, text: str) -> Json | None:
    """NM[Quantity] + OBX-6 (CWE[Quantity]); "<0.5" is read as SN[Quantity] (see the module doc)."""
    match = _NM_WITH_COMPARATOR.match(text)
    if match:
        value = _decimal(segment, match.group(2))
        return {"value": value, "comparator": match.group(1), **units_from_cwe(conv, segment.field(6).first())}
    value = _decimal(segment, text)
    if value is None:
        return None
    return {"value": value, **units_from_cwe(conv, segment.field(6).first())}


def _sn_value(conv: Conversion, segment: Segment, rep: Rep) -> Json:
    """SN per the OBX[Observation] conditions: "<>" and "+" → valueString; ":" or "/" → valueRatio
    (SN[Ratio]); "-" → valueRange (SN[Range]); otherwise valueQuantity (SN[Quantity]) with comparator.
    Units (OBX-6) go to every Quantity; the originalText extension keeps the SN as sent."""
    comparator, num1, separator, num2 = (rep.component(i).strip() for i in (1, 2, 3, 4))
    original = " ".join(part for part in (comparator, num1, separator, num2) if part)
    units = units_from_cwe(conv, segment.field(6).first())
    if comparator == "<>" or separator == "+":
        unit_text = segment.value(6).strip()
        return {"valueString": " ".join(p for p in (original, unit_text) if p)}
    if comparator and comparator != "=" and comparator not in COMPARATORS:
        raise HarmonizeError(_obx_where(segment), INVALID_VALUE, "SN comparator is not one of < > <= >= = <>")
    first = _decimal(segment, num1)
    second = _decimal(segment, num2)
    if separator in (":", "/"):
        if first is None or second is None:
            raise HarmonizeError(_obx_where(segment), INVALID_VALUE, "SN ratio needs two numbers")
        numerator: Json = {"value": first, **units}
        if comparator and comparator != "=":
            numerator["comparator"] = comparator
        return {"valueRatio": {"extension": [{"url": ORIGINAL_TEXT, "valueString": original}],
                               "numerator": numerator, "denominator": {"value": second, **units}}}
    if separator == "-":
        if first is None or second is None:
            raise HarmonizeError(_obx_where(segment), INVALID_VALUE, "SN range needs two numbers")
        value_range: Json = {"low": {"value": first, **units}, "high": {"value": second, **units}}
        if comparator or separator:  # SN[Range]: originalText "If SN.1 OR SN.3 VALUED"
            value_range["extension"] = [{"url": ORIGINAL_TEXT, "valueString": original}]
        return {"valueRange": value_range}
    if first is None:
        raise HarmonizeError(_obx_where(segment), INVALID_VALUE, "SN without a number")
    quantity: Json = {"value": first, **units}
    if comparator and comparator != "=":
        quantity["comparator"] = comparator
    if separator or num2:  # SN[Quantity]: originalText "If SN.3 OR SN.4 VALUED"
        quantity["extension"] = [{"url": ORIGINAL_TEXT, "valueString": original}]
    return {"valueQuantity": quantity}


def attachment_from_ed(conv: Conversion, rep: Rep, where: str) -> Json | None:
    """ED[Attachment]: contentType from ED-2 (table 0191 type) + ED-3 (subtype), data ED-5 as Base64
    (ED-4 Base64 is checked and kept, Hex is decoded, A/None is the text itself). None when ED-5 is
    empty. :raises HarmonizeError: ED-5 is not valid for its encoding (naming `where`)."""
    data = rep.component(5)
    if not data.strip():
        return None
    encoding = rep.component(4).strip().upper()
    try:
        if encoding in ("BASE64", "B64"):
            compact = re.sub(r"\s+", "", data)
            raw = base64.b64decode(compact, validate=True)
        elif encoding == "HEX":
            raw = bytes.fromhex(re.sub(r"\s+", "", data))
        else:
            raw = data.encode("utf-8")
    except (binascii.Error, ValueError):
        raise HarmonizeError(where, INVALID_VALUE, f"ED data is not valid {encoding.title() or 'text'}") from None
    attachment: Json = {"contentType": media_type(rep.component(2), rep.component(3)) or "application/octet-stream",
                        "data": base64.b64encode(raw).decode("ascii")}
    return attachment


def media_type(kind: str, subtype: str) -> str | None:
    """A MIME type from a v2 type of data (table 0191: AP, IM, TEXT ...) and subtype (PDF, JPEG ...)."""
    kind, subtype = kind.strip(), subtype.strip()
    if "/" in subtype:
        return subtype.lower()
    top = MIME_TOP_LEVEL.get(kind.upper())
    if top and subtype:
        return f"{top}/{subtype.lower()}"
    if top == "text":
        return "text/plain"
    return None


def attachment_from_rp(rep: Rep) -> Json | None:
    """RP[Attachment]: url RP-1, contentType RP-3 "/" RP-4 (as a MIME type)."""
    pointer = rep.component(1).strip()
    if not pointer:
        return None
    attachment: Json = {"url": pointer}
    content_type = media_type(rep.component(3), rep.component(4))
    if content_type:
        attachment["contentType"] = content_type
    return attachment


def _single_value(conv: Conversion, segment: Segment, value_type: str, rep: Rep) -> Json:
    """value[x] (or the attachment extension) for one repetition of OBX-5 of a non-coded type."""
    where = _obx_where(segment)
    try:
        if value_type == "NM":
            quantity = _nm_quantity(conv, segment, rep_text(conv, rep))
            return {"valueQuantity": quantity} if quantity else {}
        if value_type == "SN":
            return _sn_value(conv, segment, rep)
        if value_type == "DT":
            return {"valueDateTime": fhir_date(rep.component(1))}
        if value_type in ("DTM", "TS"):
            return {"valueDateTime": fhir_datetime(rep.component(1), conv.options.timezone)}
        if value_type == "TM":
            return {"valueTime": fhir_time(rep.component(1))}
        if value_type == "DR":
            period = {k: v for k, v in (
                ("start", fhir_datetime(rep.sub(1, 1), conv.options.timezone)),
                ("end", fhir_datetime(rep.sub(2, 1), conv.options.timezone))) if v}
            return {"valuePeriod": period} if period else {}
        if value_type == "NR":
            low, high = _decimal(segment, rep.component(1)), _decimal(segment, rep.component(2))
            value_range = {k: {"value": v} for k, v in (("low", low), ("high", high)) if v is not None}
            return {"valueRange": value_range} if value_range else {}
    except ValueError as exc:
        raise HarmonizeError(where, INVALID_VALUE, f"OBX-2 is {value_type}: {exc}") from None
    if value_type == "VR":
        return {"valueString": "-".join(rep.component(i).strip() for i in (1, 2))}
    if value_type == "ED":
        attachment = attachment_from_ed(conv, rep, where)
        if attachment is None:
            conv.notes.append("OBX-5 ED without data not mapped")
            return {}
        return {"extension": [{"url": VALUE_ATTACHMENT, "valueAttachment": attachment}]}
    if value_type == "RP":
        attachment = attachment_from_rp(rep)
        return {"extension": [{"url": VALUE_ATTACHMENT, "valueAttachment": attachment}]} if attachment else {}
    if value_type == "NA":
        # OBX[Observation]: valueSampledData, "full guidance ... in a future version": not mapped.
        conv.notes.append("OBX-5 NA (numeric array) not mapped")
        return {}
    # Any other type (HD, EI, ID, FN, XCN ..., or OBX-2 empty): the sheet's last OBX-5 row, a string of
    # the components and the units.
    parts = [c.strip() for c in rep.components() if c.strip()]
    unit_text = segment.value(6).strip()
    text = " ".join([*parts, unit_text] if parts and unit_text else parts)
    if not text:
        return {}
    conv.notes.append(f"OBX-5 of type {value_type[:8] or '(none)'} mapped as a string")
    return {"valueString": text}


def _observation_value(conv: Conversion, segment: Segment, observation: Resource) -> None:
    """OBX-2/OBX-5/OBX-6 → value[x] (or component[]) per OBX[Observation] and OBX[Observation-Component]."""
    value_type = segment.value(2).strip().upper()
    reps = repetitions(segment.field(5))
    if not reps:
        return
    if value_type in CODED_TYPES:
        concepts = [c for rep in reps if (c := codeable_concept(conv, rep))]
        if len(concepts) == 1:
            observation["valueCodeableConcept"] = concepts[0]
        elif concepts:
            observation["component"] = [{"code": observation["code"], "valueCodeableConcept": c}
                                         for c in concepts]
        return
    if value_type in TEXT_TYPES:
        text = "\n".join(rep_text(conv, rep) for rep in reps)
        if text.strip():
            observation["valueString"] = text
        return
    observation.update(_single_value(conv, segment, value_type, reps[0]))
    extra = reps[1:]
    if extra:
        notes = observation.setdefault("note", [])
        for number, rep in enumerate(extra, start=2):
            notes.append({"text": f"OBX-5 repetition {number}: {rep_text(conv, rep)}"})
        conv.notes.append("OBX-5 repetitions of a non-coded type kept as Observation.note")


_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|\u2013|to|bis)\s*([+-]?\d+(?:\.\d+)?)\s*$", re.IGNORECASE)
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*$")


def _reference_range(segment: Segment, observation: Resource) -> Json | None:
    """OBX-7 → referenceRange: text always (sheet); low/high when it parses ("3.5-5.0", "4 to 6", "<5",
    ">10") and the value is a Quantity, with that Quantity's unit."""
    text = segment.value(7).strip()
    if not text:
        return None
    result: Json = {"text": text}
    quantity = observation.get("valueQuantity")
    if not quantity:
        return result
    units = {k: quantity[k] for k in ("unit", "system", "code") if k in quantity}
    match = _RANGE.match(text)
    if match:
        result["low"] = {"value": fhir_decimal(match.group(1)), **units}
        result["high"] = {"value": fhir_decimal(match.group(2)), **units}
        return result
    match = _BOUND.match(text)
    if match:
        side = "high" if match.group(1).startswith("<") else "low"
        result[side] = {"value": fhir_decimal(match.group(2)), **units}
    return result


def _interpretation(conv: Conversion, rep: Rep) -> Json | None:
    """OBX-8 via InterpretationCodes (v3-ObservationInterpretation) for table 0078 codes (no coding
    system, or HL70078); anything else as a plain CWE (local codes counted)."""
    code = rep.component(1).strip()
    system = rep.component(3).strip().upper()
    if code and system in ("", "HL70078"):
        mapped = concept("InterpretationCodes", code)
        if mapped:
            return {"coding": [mapped]}
    return codeable_concept(conv, rep)


def _observation_status(conv: Conversion, segment: Segment) -> str:
    code = segment.value(11).strip().upper()
    if not code:
        return "unknown"  # Observation.status is required; OBX-11 empty says nothing
    return _status(conv, code, "ObservationResultStatusCodesInterpretation", "HL70085", OBSERVATION_STATUS_SUPPLEMENT)


def _observation_key(conv: Conversion, segment: Segment, state: WalkState) -> tuple[str, ...]:
    if state.order_key:
        context: tuple[str, ...] = (state.order_key, *state.extra.get("report_part", ()))
        if state.extra.get("after_spm") and state.specimen_id:
            context += ("SPM", state.specimen_id)
    elif state.immunization_id:
        context = ("Immunization", state.immunization_id)
    elif conv.patient_id:
        context = ("Patient", conv.patient_id, segment.value(14).strip())
    else:
        context = ("Message", conv.message.sending_facility, conv.message.control_id)
    code, system = coded_key(segment.field(3).first())
    return (*context, code, system, segment.value(4).strip(), segment.value(1).strip())


def build_observation(conv: Conversion, segment: Segment, state: WalkState) -> Resource:
    """OBX[Observation] (without the links to report/order/immunization/specimen)."""
    code = codeable_concept(conv, segment.field(3).first())
    if code is None:
        raise HarmonizeError(_obx_where(segment, 3), MISSING_FIELD, "no observation identifier")
    observation_id = conv.id_for("Observation", *_observation_key(conv, segment, state))
    status = _observation_status(conv, segment)
    observation: Resource = {"resourceType": "Observation", "id": observation_id, "status": status,
                             "code": code}
    identifier = typed_identifier(conv, segment.field(21).first(), "FILL")
    if identifier:
        observation["identifier"] = [identifier]
    subject = conv.patient_ref()
    if subject:
        observation["subject"] = subject
    encounter = conv.encounter_ref()
    if encounter:
        observation["encounter"] = encounter
    # effective: OBX-14, else the OBR's observation date/time (OBR-7 is the clinically relevant time of
    # all its results; FHIR Observation.effective)
    effective = datetime_of(conv, segment, 14) or state.extra.get("obr_effective")
    if effective:
        observation["effectiveDateTime"] = effective
    # issued: the release time — OBR-22 (results reported/status change), FHIR Observation.issued. OBX-19
    # is the analysis time, which the sheet maps to the observation-analysis-date-time extension.
    issued = state.extra.get("obr_issued")
    if issued:
        observation["issued"] = issued
    analysis = datetime_of(conv, segment, 19)
    if analysis:
        observation["extension"] = [{"url": ANALYSIS_DATE_TIME, "valueDateTime": analysis}]
    _observation_value(conv, segment, observation)
    if segment.value(11).strip().upper() == "N" and not any(k.startswith("value") for k in observation):
        observation["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_CODES, "code": "not-asked"}]}
    reference_range = _reference_range(segment, observation)
    if reference_range:
        observation["referenceRange"] = [reference_range]
    interpretations = [c for rep in repetitions(segment.field(8)) if (c := _interpretation(conv, rep))]
    if interpretations:
        observation["interpretation"] = interpretations
    performers = [r for rep in repetitions(segment.field(16))
                  if (r := referenced(conv, segment, practitioner_reference, rep))]
    organization = referenced(conv, segment, organization_reference, segment.field(23).first())
    if organization:
        performers.append(organization)
    if performers:
        observation["performer"] = performers
    method = codeable_concept(conv, segment.field(17).first())
    if method:
        observation["method"] = method
    body_site = codeable_concept(conv, segment.field(20).first())
    if body_site:
        observation["bodySite"] = body_site
    return observation


@mapper("OBX")
def map_obx(segment: Segment, conv: Conversion, state: WalkState) -> None:
    handler = state.extra.get("obx_handler")  # set by TXA (MDM): the OBX are the document's content
    if handler is not None:
        handler(segment, conv, state)
        return
    code = message_code(conv)
    if code in RESULT_MESSAGES and "orc" in state.extra:
        # ORU_R01 ORDER_DOCUMENT (ORC, OBX, PRT, TXA before the OBR): "will be addressed with FHIR R5"
        conv.unmapped_segment(segment)
        set_note_target(state, segment, None)
        return
    observation = build_observation(conv, segment, state)
    reference = conv.ref("Observation", observation["id"])
    if state.immunization_id:  # VXU_V04: Observation.partOf the Immunization
        observation["partOf"] = [conv.ref("Immunization", state.immunization_id)]
    elif state.extra.get("after_spm") and state.specimen_id:  # SPECIMEN_OBSERVATION: about the specimen
        specimen = conv.ref("Specimen", state.specimen_id)
        observation["focus"] = [specimen]
        observation["specimen"] = specimen
    conv.put(checked(segment, observation))
    state.observation_id = observation["id"]
    state.extra["last_resource"] = ("Observation", observation["id"])
    set_note_target(state, segment, note_writer("Observation", observation["id"]))
    if state.immunization_id or state.extra.get("after_spm"):
        return
    question = segment.value(29).strip().upper() in QUESTION_TYPES
    if state.report_id and not question:
        add_reference(conv.get("DiagnosticReport", state.report_id), "result", reference)
        state.extra.setdefault("report_observations", []).append(observation["id"])
    elif state.order_id:  # ORM/OML/MDM (and ORU QST/SCI): answers to the order's questions
        add_reference(conv.get("ServiceRequest", state.order_id), "supportingInfo", reference)


# -- NTE → note of the resource of the segment before --------------------------------------------------

@mapper("NTE")
def map_nte(segment: Segment, conv: Conversion, state: WalkState) -> None:
    target = state.extra.get("note_target")
    if target is None:
        conv.unmapped_segment(segment)
        return
    position, writer = target
    between = conv.message.segments[position:segment.position - 1]
    if any(other.id not in NOTE_PASSTHROUGH for other in between):
        conv.unmapped_segment(segment)  # e.g. an NTE after PID/PV1: patient notes have no target here
        return
    writer(segment, conv, state)


# -- SPM → Specimen ---------------------------------------------------------------------------------

def _eip_part(rep: Rep, component: int) -> tuple[str, str] | None:
    """(value, authority) of one EI inside an EIP component (the EI's parts are subcomponents)."""
    value = rep.sub(component, 1).strip()
    if not value:
        return None
    return value, rep.sub(component, 2).strip() or rep.sub(component, 3).strip()


def _eip_identifier(conv: Conversion, rep: Rep, component: int, type_code: str) -> Json | None:
    part = _eip_part(rep, component)
    if part is None:
        return None
    identifier: Json = {"value": part[0]}
    system = authority_system(conv, rep.sub(component, 2), rep.sub(component, 3), rep.sub(component, 4))
    if system:
        identifier["system"] = system
    identifier["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return identifier


@mapper("SPM")
def map_spm(segment: Segment, conv: Conversion, state: WalkState) -> None:
    ids = segment.field(2).first()
    filler, placer = _eip_part(ids, 2), _eip_part(ids, 1)
    if filler:
        key: tuple[str, ...] = ("FILL", *filler)
    elif placer:
        key = ("PLAC", *placer)
    elif state.order_key:
        key = ("ORDER", state.order_key, segment.value(1).strip())
    else:
        raise HarmonizeError(f"{segment.label} SPM-2", MISSING_FIELD, "no specimen id and no order")
    specimen_id = conv.id_for("Specimen", *key)
    specimen: Resource = {"resourceType": "Specimen", "id": specimen_id}
    # SPM-2 placer/filler assigned ids. (The EIP datatype sheets type them PGN/FGN, which are *group*
    # numbers; for a specimen's own ids the v2-0203 placer/filler identifier types are used.)
    identifiers = [i for i in (_eip_identifier(conv, ids, 1, "PLAC"), _eip_identifier(conv, ids, 2, "FILL"))
                   if i]
    identifiers += [i for rep in repetitions(segment.field(31)) if (i := identifier_from_cx(conv, rep))]
    if identifiers:
        specimen["identifier"] = identifiers
    accession = identifier_from_cx(conv, segment.field(30).first())
    if accession:
        specimen["accessionIdentifier"] = accession
    availability = segment.value(20).strip().upper()
    if availability:
        status = code_from_table("YesNoIndicator[AvailabilityStatus]", availability)
        if status:
            specimen["status"] = status
    specimen_type = table_concept(conv, segment.field(4).first(), "SpecimenType", "HL70487")
    if specimen_type:
        specimen["type"] = specimen_type
    subject = conv.patient_ref()
    if subject:
        specimen["subject"] = subject
    received = datetime_of(conv, segment, 18)
    if received:
        specimen["receivedTime"] = received
    collection = _collection(conv, segment)
    if collection:
        specimen["collection"] = collection
    container: Json = {}
    container_type = codeable_concept(conv, segment.field(27).first())  # no ContainerType map shipped
    if container_type:
        container["type"] = container_type
    additive = table_concept(conv, segment.field(6).first(), "AdditivePreservative", "HL70371")
    if additive:
        container["additiveCodeableConcept"] = additive
    if container:
        specimen["container"] = [container]
    conditions = [c for rep in repetitions(segment.field(24))
                  if (c := table_concept(conv, rep, "SpecimenCondition", "HL70493"))]
    if conditions:
        specimen["condition"] = conditions
    description = field_text(conv, segment, 14)
    if description.strip():
        specimen["note"] = [{"text": description}]
    reference = conv.put(checked(segment, specimen))
    state.specimen_id = specimen_id
    state.extra["after_spm"] = True
    state.extra["last_resource"] = ("Specimen", specimen_id)
    set_note_target(state, segment, None)
    if state.report_id:  # ORU_R01: DiagnosticReport.specimen; its observations' specimen
        add_reference(conv.get("DiagnosticReport", state.report_id), "specimen", reference)
        for observation_id in state.extra.get("report_observations", []):
            observation = conv.get("Observation", observation_id)
            if observation is not None and "specimen" not in observation:
                observation["specimen"] = reference
    elif state.order_id:  # OML_O21: ServiceRequest.specimen
        add_reference(conv.get("ServiceRequest", state.order_id), "specimen", reference)


def _collection(conv: Conversion, segment: Segment) -> Json:
    collection: Json = {}
    collected = segment.field(17).first()
    try:
        start = fhir_datetime(collected.sub(1, 1), conv.options.timezone)
        end = fhir_datetime(collected.sub(2, 1), conv.options.timezone)
    except ValueError as exc:
        raise HarmonizeError(f"{segment.label} SPM-17", INVALID_VALUE, str(exc)) from None
    if end:  # sheet: collectedPeriod "IF SPM-17.2 VALUED"
        collection["collectedPeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    elif start:
        collection["collectedDateTime"] = start
    method = table_concept(conv, segment.field(7).first(), "SpecimenCollectionMethod", "HL70488")
    if method:
        collection["method"] = method
    site = codeable_concept(conv, segment.field(8).first())  # no SpecimenSourceSite map is shipped
    if site:
        collection["bodySite"] = site
    amount = segment.field(12).first()
    if not amount.is_empty and not amount.is_null:
        try:
            quantity = quantity_from_cq(conv, amount)
        except ValueError:
            raise HarmonizeError(f"{segment.label} SPM-12", INVALID_VALUE, "not a number") from None
        if quantity:
            collection["quantity"] = quantity
    return collection
