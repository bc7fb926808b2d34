"""The `mii` output profile: harmonized resources shaped for the MII core data set (Kerndatensatz).

`apply(resources)` runs after the segment mappers and the trigger event, before validation. It tags each
resource that a MII profile describes with that profile's canonical URL (`meta.profile`) and adjusts
what the profiles require *and the node can honestly know from the message*. It never invents clinical
facts: an element a profile requires that cannot be derived stays absent (table below), so a resource
may be "MII-tagged but incomplete" — it still validates as plain FHIR R4. Resource types without a
MII core profile (RelatedPerson, Practitioner, Organization, Location, Specimen, Immunization,
DocumentReference, Coverage, ...) are left as they are, without `meta.profile`.

Profiles (canonical URLs from the StructureDefinitions' `url`, unversioned; checked against
Person/Fall/Diagnose 2025.0.1, Labor 2026.0.0, Prozedur 2025.0.0)::

    Patient           …/modul-person/StructureDefinition/Patient
    Encounter         …/modul-fall/StructureDefinition/KontaktGesundheitseinrichtung
    Condition         …/modul-diagnose/StructureDefinition/Diagnose
    Procedure         …/modul-prozedur/StructureDefinition/Procedure
    Observation       …/modul-labor/StructureDefinition/ObservationLab       (lab observations only)
    DiagnosticReport  …/modul-labor/StructureDefinition/DiagnosticReportLab  (lab reports only)
    ServiceRequest    …/modul-labor/StructureDefinition/ServiceRequestLab    (lab orders with status
                                                                             completed + intent order only)

What the rules do (every rule only adds or re-labels; none removes a coding or changes a code's meaning):

* Diagnoses (Condition.code) are ICD-10-GM (`http://fhir.de/CodeSystem/bfarm/icd-10-gm`): German
  hospitals code diagnoses in ICD-10-GM by law (§301 SGB V), so in a feed whose profile is `mii` a coding
  with the WHO system `http://hl7.org/fhir/sid/icd-10` (v2 `I10`) or with a local system named like
  ICD-10-GM (`icd10gm2022`, `ICD10-GM`, `I10GM_2023` …) is re-labelled ICD-10-GM. Suffixes German KIS
  append to the code become the fhir.de extensions (the profile allows "no additions" in `code`):
  `U99.0!`/`A54.4†`/`A54.4+`/`M73.04*` → Mehrfachkodierungs-Kennzeichen; `H91.2 LG` → Seitenlokalisation
  `L` (R/L/B) and Diagnosesicherheit `G` (A/G/V/Z). Diagnosesicherheit also sets `verificationStatus`
  when the mapper left it empty (G confirmed, V provisional, A refuted; Z "Zustand nach" sets nothing).
* Procedures (Procedure.code) are OPS (`http://fhir.de/CodeSystem/bfarm/ops`): codings whose local
  system is named like OPS (`OPS2022`, `OPS-301`, `O301`), and codings of the generic local system
  (v2 coding system empty, `L`, `99L`, `LOCAL`) whose code has the OPS syntax (`5-470.11`) — a German
  procedure feed codes in OPS (§301 SGB V). A side suffix (`5-788.00:L`, `5-788.00 R`) becomes the
  Seitenlokalisation extension.
* ICD-10-GM and OPS codings need a `version` (CodingICD10GM / CodingOPS: `version 1..`, the catalogue
  year). Taken from, in order: the coding's own version; a year in the v2 coding system name
  (`icd10gm2022` → 2022); else **assumed**: the catalogue of the year the diagnosis was recorded
  (Condition.recordedDate, else its assertedDate) / the procedure was performed (performed[x], else its
  documentation date) — the catalogue in force when it was coded. With no date the version stays absent.
* Condition.recordedDate (1..1 in the profile): the DG1 mapper sets it from DG1-19 (attestation), else
  DG1-5 (diagnosis date/time: documented then, in practice). When a Condition arrives without it, the
  condition-assertedDate extension is taken (the date the diagnosis was established; it was documented
  then or later — the closest the message says).
* Procedure.category (proc-mii-1: OPS-coded ⇒ SNOMED category): the SNOMED CT code of the OPS chapter
  (first digit), per the fhir.de ConceptMap OPS-SNOMED-Category (1 → 165197003 Diagnostic assessment,
  3 → 363679005 Imaging, 5 → 387713003 Surgical procedure, 6 → 18629005 Administration of drug or
  medicament, 8 → 277132007 Therapeutic procedure, 9 → 394841004 Other category). No OPS code → absent.
* Encounter: `type:Kontaktebene = einrichtungskontakt` for an Encounter that is not `partOf` another one
  — **assumption**: an Encounter from PV1 is the stay at the facility identified by the visit number
  (PV1-19, the German "Fallnummer"/Aufnahmenummer); department and ward contacts would be sub-encounters
  with `partOf`, which the node does not build. The visit number PV1-19 already has type v2-0203 `VN`
  from the Encounter mapper (slice Aufnahmenummer); PV1-50 alternate ids stay untyped. A serviceType
  (PV1-10) coding of a local system named like the DKG Fachabteilungsschlüssel (`FA`, `FAB`,
  `Fachabteilung`, `301`) with a 4-digit code is re-labelled
  `http://fhir.de/CodeSystem/dkgev/Fachabteilungsschluessel`; other feeds can map theirs in the
  terminology CSV (target_system = that URI).
* Patient: a maiden name (use `maiden`, slice geburtsname) keeps only its family name (the profile forbids
  given/prefix there; they belong to the official name). Country `D` (DEÜV vehicle code for Germany)
  becomes ISO 3166 `DE`.
* Lab: a DiagnosticReport is a lab report when its category names a lab section of HL7 table 0074 (LAB,
  CH, HM, MB, SR, …) or laboratory, or — **assumption** — when it has no category at all (in a `mii`
  feed an uncategorised result report is a lab report); a category naming another section (RAD, CT,
  SP, …) makes it no lab report. An Observation is a lab observation when categorised laboratory (or a
  lab section), or a result of a lab report in the message, or LOINC-coded and neither a vital sign
  (FHIR vital-signs LOINC codes) nor in a message with an Immunization (VXU observations describe the
  vaccination). Lab reports get category `LAB` (v2-0074) + LOINC `26436-6` and the code coding LOINC
  `11502-2` "Laboratory report" (slice loinc-labReport; the panel codes from OBR-4 stay; a code the
  mapper marked data-absent for an empty OBR-4 loses that mark, since it now says what it is). Lab
  observations get one category holding LOINC `26436-6` + observation-category `laboratory` (both
  slices are on category.coding, so every category repetition needs both: other category codings are
  merged into it) and, when OBX-14 was empty, the effective time of their report (OBR-7: HL7 v2 says
  OBX-14 is valued only when it differs from OBR-7). Lab orders get category `laboratory`.

What the `mii` profile can't fill from HL7 v2 (left absent — the resource is then not fully conformant
to its MII profile, but is valid R4):

==============================================  ======================================================================
Element (profile)                               Why it stays absent
==============================================  ======================================================================
Patient.identifier:pid.system (Person)          CX-4 (assigning authority) empty in the feed; a namespace is not
                                                invented.
Patient.identifier:versichertenId (Person)      the GKV insurance number (KVNR) and its IK assigner (IN1) are not
                                                mapped to the Patient.
Patient.name:name given/family (Person)         an official name (XPN-7 L) without given or family name.
Patient.address:Strassenanschrift/Postfach      XAD components missing in the message.
line, city, postalCode, country (Person)
Patient.gender.extension:other-amtlich          v2 sex `O` says "other", not whether "divers" (D) or "unbestimmt" (X);
(Person, mii-pat-1)                             German `D`/`X` are not in table 0001 and arrive as gender `unknown`.
Encounter.identifier:Aufnahmenummer.system      PV1-19 CX-4 empty (typical for ORBIS/SAP feeds).
(Fall)
Encounter.class (Fall, required                 v2 E (EMER) and B (OBSENC) have no code in EncounterClassDE; not
EncounterClassDE)                               re-classified.
Encounter.status (Fall, EncounterStatusDe)      `arrived`/`triaged` have no German equivalent.
Encounter.period.start/end (mii-enc-1/2/5)      PV1-44/45 empty while the status says in progress or finished.
Encounter.serviceType:Fachabteilungsschluessel  the department key is site-specific (PV1-10, PV1-3.4, PV1-39,
(Fall)                                          Z-segment); only named local systems or a terminology map give it.
Encounter.type:KontaktArt,                      §301 Aufnahmegrund/-anlass and Entlassungsgrund codes are sent in
extension:Aufnahmegrund,                        site-specific places; not mapped.
hospitalization.admitSource,
dischargeDisposition:Entlassungsgrund (Fall)
Encounter.diagnosis.use (Fall, 1.. per entry)   DG1-6 diagnosis types are local (e.g. "Aufn.", "Entl."); no
                                                DiagnoseTyp/KontaktDiagnoseProzedur map.
Condition.code.coding:icd10-gm.version          no version in the message and no recorded/asserted date to take the
(Diagnose, CodingICD10GM 1..)                   catalogue year from.
Condition.code.coding:icd10-gm (max 1)          two different ICD-10-GM codes in one Condition (e.g. sent +
                                                terminology-mapped) are both kept.
Condition.code.coding:alpha-id / sct /          not in v2 feeds.
orphanet
Condition.recordedDate (Diagnose 1..1)          neither a recorded (DG1-19) nor a diagnosis date (DG1-5).
Procedure.code.coding:ops.version (Prozedur)    no version and no performed/documentation date.
Procedure.code (sct-ops-1: OPS or SNOMED)       a local procedure code that is neither OPS-shaped nor mapped by the
                                                terminology CSV.
Procedure.category:sct (proc-mii-1)             no OPS coding (SNOMED-only or local codes).
Procedure.performed[x] (Prozedur 1..)           PR1-5 empty.
Observation.identifier:analyseBefundCode        the OBI identifier needs system, value and an assigner organisation;
(ObservationLab 1..1)                           OBX-21 is rarely sent and has no assigner.
Observation.effective[x] (ObservationLab 1..,   neither OBX-14 nor OBR-7; a date of month precision stays as sent.
mii-lab-1: at least a day)
Observation.valueQuantity system/code (UCUM)    a local unit without a UCUM mapping (OBX-6).
Observation.dataAbsentReason (mii-lab-2)        an OBX without value; the reason is not in the message.
DiagnosticReport.identifier:befund (FILL +      the filler number (OBR-3) has no assigner organisation; the others
system + assigner), basedOn, issued (OBR-22),   stay absent when the message lacks them.
effective[x], result (DiagnosticReportLab)
ServiceRequest (ServiceRequestLab)              the profile fixes status `completed` and intent `order`; open or
                                                cancelled orders are not tagged.
ServiceRequest.identifier:anforderung           no assigner organisation / ORC-9 empty.
assigner, authoredOn (ServiceRequestLab)
==============================================  ======================================================================
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from node.harmonize.context import Resource
from node.harmonize.terminology import ICD10GM, LOINC, OPS, SNOMED

Json = dict[str, Any]

# -- canonical URLs (StructureDefinition.url) -------------------------------------------------------

_MII = "https://www.medizininformatik-initiative.de/fhir/core"
PATIENT_PROFILE = f"{_MII}/modul-person/StructureDefinition/Patient"
ENCOUNTER_PROFILE = f"{_MII}/modul-fall/StructureDefinition/KontaktGesundheitseinrichtung"
CONDITION_PROFILE = f"{_MII}/modul-diagnose/StructureDefinition/Diagnose"
PROCEDURE_PROFILE = f"{_MII}/modul-prozedur/StructureDefinition/Procedure"
OBSERVATION_LAB_PROFILE = f"{_MII}/modul-labor/StructureDefinition/ObservationLab"
DIAGNOSTIC_REPORT_LAB_PROFILE = f"{_MII}/modul-labor/StructureDefinition/DiagnosticReportLab"
SERVICE_REQUEST_LAB_PROFILE = f"{_MII}/modul-labor/StructureDefinition/ServiceRequestLab"

# -- systems ---------------------------------------------------------------------------------------

ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
KONTAKTEBENE = "http://fhir.de/CodeSystem/Kontaktebene"
FACHABTEILUNG = "http://fhir.de/CodeSystem/dkgev/Fachabteilungsschluessel"

MEHRFACH_EXTENSION = "http://fhir.de/StructureDefinition/icd-10-gm-mehrfachcodierungs-kennzeichen"
MEHRFACH_SYSTEM = "http://fhir.de/CodeSystem/icd-10-gm-mehrfachcodierungs-kennzeichen"
SEITE_EXTENSION = "http://fhir.de/StructureDefinition/seitenlokalisation"
SEITE_SYSTEM = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_ICD_SEITENLOKALISATION"
SICHERHEIT_EXTENSION = "http://fhir.de/StructureDefinition/icd-10-gm-diagnosesicherheit"
SICHERHEIT_SYSTEM = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_ICD_DIAGNOSESICHERHEIT"
ASSERTED_DATE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"
PROZEDUR_DOKUMENTATIONSDATUM = "http://fhir.de/StructureDefinition/ProzedurDokumentationsdatum"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

LAB_STUDIES = {"system": LOINC, "code": "26436-6", "display": "Laboratory studies (set)"}
LABORATORY = {"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}
LAB_SECTION = {"system": V2_0074, "code": "LAB", "display": "Laboratory"}
LAB_REPORT = {"system": LOINC, "code": "11502-2", "display": "Laboratory report"}
EINRICHTUNGSKONTAKT = {"system": KONTAKTEBENE, "code": "einrichtungskontakt", "display": "Einrichtungskontakt"}

OPS_CHAPTER_CATEGORY = {
    "1": ("165197003", "Diagnostic assessment (procedure)"),
    "3": ("363679005", "Imaging (procedure)"),
    "5": ("387713003", "Surgical procedure (procedure)"),
    "6": ("18629005", "Administration of drug or medicament (procedure)"),
    "8": ("277132007", "Therapeutic procedure (procedure)"),
    "9": ("394841004", "Other category (qualifier value)"),
}
"""OPS chapter (first character) → SNOMED CT category (fhir.de ConceptMap OPS-SNOMED-Category)."""

LAB_SECTIONS = frozenset({"LAB", "BG", "BLB", "CG", "CH", "GE", "HM", "IMM", "MB", "MCB", "MYC", "OSL", "SR",
                          "TX", "URN", "VR"})
"""HL7 table 0074 (diagnostic service section) codes of laboratory sections."""

NON_LAB_OBSERVATION_CATEGORIES = frozenset({"social-history", "vital-signs", "imaging", "survey", "exam",
                                            "therapy", "activity", "procedure"})

VITAL_SIGN_LOINC = frozenset({
    "85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4", "29463-7", "39156-5",
    "85354-9", "8480-6", "8462-4", "8478-0", "8287-5", "8306-3", "8308-9", "3141-9", "3137-7", "59576-9",
    "8289-1", "77606-2", "9847-5", "8301-4",
})
"""The FHIR R4 vital-signs profile codes (and their common variants): LOINC-coded, but not lab."""

SEITE_DISPLAY = {"R": "rechts", "L": "links", "B": "beiderseits"}
SICHERHEIT_DISPLAY = {"A": "ausgeschlossen", "G": "gesicherte Diagnose", "V": "Verdacht auf", "Z": "Zustand nach"}
SICHERHEIT_VERIFICATION = {"G": "confirmed", "V": "provisional", "A": "refuted"}
MARKERS = {"†": "†", "+": "†", "*": "*", "!": "!"}
"""ICD-10-GM Mehrfachkodierungs-Kennzeichen; `+` is the ASCII spelling of the dagger."""

# -- recognising code systems ----------------------------------------------------------------------

_LOCAL_SYSTEM = re.compile(r"^https://[^/]+\.edge-node\.invalid/fhir/CodeSystem/(?P<name>[^/]+)$")
"""What `datatypes.local_system` makes of a v2 coding system that is not a known standard."""
_GENERIC_LOCAL_NAME = "local"
"""`local_system` name for an empty, `L`, `99L` or `LOCAL` v2 coding system."""
_YEAR = r"(?P<year>(?:19|20)\d{2})?"
_ICD_NAME = re.compile(rf"^(?:icd10gm|i10gm|icd10|i10){_YEAR}$")
_OPS_NAME = re.compile(rf"^(?:ops(?:301)?|o301){_YEAR}$")
_FACHABTEILUNG_NAME = re.compile(r"^(?:fa|fab|fachabteilung|fachabteilungsschluessel|fachabteilungsschlussel|301|"
                                 r"dkgev|dkg)$")
_ICD_CODE = re.compile(r"^(?P<code>[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z-]{0,4})?)(?P<marker>[†+*!])?"
                       r"(?:\s+(?P<suffix>[RLBAGVZ]{1,2}))?$")
_OPS_CODE = re.compile(r"^(?P<code>[135689]-[0-9A-Za-z]{3}(?:\.[0-9A-Za-z]{1,2})?)(?:\s*[:\s]\s*(?P<side>[RLB]))?$")
_DATE_YEAR = re.compile(r"^(\d{4})")


def _local_name(system: str) -> str | None:
    """The normalised v2 coding system name behind a node-made local system URI (`icd10gm2022`)."""
    match = _LOCAL_SYSTEM.match(system)
    if not match:
        return None
    return re.sub(r"[^a-z0-9]", "", match.group("name").lower()) or _GENERIC_LOCAL_NAME


def _year(value: Any) -> str | None:
    match = _DATE_YEAR.match(value) if isinstance(value, str) else None
    return match.group(1) if match else None


# -- small helpers ---------------------------------------------------------------------------------

def _tag(resource: Resource, url: str) -> None:
    if "meta" not in resource:  # right after the id, where readers look for it
        items = list(resource.items())
        resource.clear()
        for key, value in items:
            resource[key] = value
            if key == "id":
                resource["meta"] = {}
        resource.setdefault("meta", {})
    profiles = resource["meta"].setdefault("profile", [])
    if url not in profiles:
        profiles.append(url)


def _codings(concepts: Iterable[Json] | Json | None) -> list[Json]:
    if concepts is None:
        return []
    if isinstance(concepts, dict):
        concepts = [concepts]
    return [coding for concept in concepts if isinstance(concept, dict)
            for coding in concept.get("coding", []) if isinstance(coding, dict)]


def _has(codings: Iterable[Json], system: str, code: str | None = None) -> bool:
    return any(c.get("system") == system and (code is None or c.get("code") == code) for c in codings)


def _add_extension(coding: Json, url: str, system: str, code: str, display: str) -> None:
    extensions = coding.setdefault("extension", [])
    if not any(ext.get("url") == url for ext in extensions):
        extensions.append({"url": url, "valueCoding": {"system": system, "code": code, "display": display}})


def _extension_code(coding: Json, url: str) -> str | None:
    for ext in coding.get("extension", []):
        if ext.get("url") == url:
            return ext.get("valueCoding", {}).get("code")
    return None


def _reference_id(reference: Any, resource_type: str) -> str | None:
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference", "")
    prefix = f"{resource_type}/"
    return text[len(prefix):] if isinstance(text, str) and text.startswith(prefix) else None


def _dedupe(codings: list[Json], system: str) -> list[Json]:
    """Merge codings of `system` with the same code (the first keeps what the others add)."""
    result: list[Json] = []
    seen: dict[str, Json] = {}
    for coding in codings:
        code = coding.get("code")
        if coding.get("system") == system and code in seen:
            first = seen[code]
            for key, value in coding.items():
                if key == "extension":
                    for ext in value:
                        if not any(e.get("url") == ext.get("url") for e in first.get("extension", [])):
                            first.setdefault("extension", []).append(ext)
                else:
                    first.setdefault(key, value)
            continue
        if coding.get("system") == system:
            seen[code] = coding
        result.append(coding)
    return result


# -- the message's resources, for rules that look across them ----------------------------------------

@dataclass(slots=True)
class _Index:
    by_key: dict[tuple[str, str], Resource] = field(default_factory=dict)
    lab_results: set[str] = field(default_factory=set)
    """Observation ids that a lab DiagnosticReport lists as result."""
    other_results: set[str] = field(default_factory=set)
    """Observation ids that a non-lab DiagnosticReport lists as result."""
    report_of: dict[str, Resource] = field(default_factory=dict)
    """Observation id → the (first) DiagnosticReport listing it."""
    lab_orders: set[str] = field(default_factory=set)
    """ServiceRequest ids a lab DiagnosticReport is based on."""
    has_immunization: bool = False

    @classmethod
    def of(cls, resources: list[Resource]) -> _Index:
        index = cls()
        for resource in resources:
            index.by_key[(resource["resourceType"], resource.get("id", ""))] = resource
            if resource["resourceType"] == "Immunization":
                index.has_immunization = True
        for resource in resources:
            if resource["resourceType"] != "DiagnosticReport":
                continue
            lab = is_lab_report(resource)
            for ref in resource.get("result", []):
                obs_id = _reference_id(ref, "Observation")
                if obs_id:
                    (index.lab_results if lab else index.other_results).add(obs_id)
                    index.report_of.setdefault(obs_id, resource)
            if lab:
                for ref in resource.get("basedOn", []):
                    order_id = _reference_id(ref, "ServiceRequest")
                    if order_id:
                        index.lab_orders.add(order_id)
        return index


# -- classification ----------------------------------------------------------------------------------

def is_lab_report(report: Resource) -> bool:
    """A DiagnosticReport is a lab report by its category (table 0074 lab section, laboratory, LOINC
    26436-6); one without category counts as lab (assumption, see the module docstring)."""
    codings = _codings(report.get("category"))
    if not codings:
        return True
    sections = {c.get("code") for c in codings if c.get("system") == V2_0074}
    if sections:
        return bool(sections & LAB_SECTIONS)
    return _has(codings, OBSERVATION_CATEGORY, "laboratory") or _has(codings, LOINC, "26436-6")


def is_lab_observation(observation: Resource, index: _Index) -> bool:
    codings = _codings(observation.get("category"))
    categories = {c.get("code") for c in codings if c.get("system") == OBSERVATION_CATEGORY}
    if "laboratory" in categories or _has(codings, LOINC, "26436-6"):
        return True
    if categories & NON_LAB_OBSERVATION_CATEGORIES:
        return False
    sections = {c.get("code") for c in codings if c.get("system") == V2_0074}
    if sections:
        return bool(sections & LAB_SECTIONS)
    obs_id = observation.get("id", "")
    if obs_id in index.lab_results:
        return True
    if obs_id in index.other_results:
        return False
    loinc = [c.get("code") for c in _codings(observation.get("code")) if c.get("system") == LOINC]
    return bool(loinc) and not (set(loinc) & VITAL_SIGN_LOINC) and not index.has_immunization


def is_lab_order(order: Resource, index: _Index) -> bool:
    codings = _codings(order.get("category"))
    if _has(codings, OBSERVATION_CATEGORY, "laboratory"):
        return True
    sections = {c.get("code") for c in codings if c.get("system") == V2_0074}
    if sections & LAB_SECTIONS:
        return True
    return order.get("id", "") in index.lab_orders


# -- ICD-10-GM and OPS -------------------------------------------------------------------------------

def icd10gm_coding(coding: Json, fallback_year: str | None) -> bool:
    """Re-label `coding` as ICD-10-GM if it is one (see module docstring); move code suffixes into the
    fhir.de extensions; set the version. Returns whether the coding is ICD-10-GM."""
    system = coding.get("system", "")
    year = None
    if system not in (ICD10GM, ICD10_WHO):
        name = _local_name(system)
        match = _ICD_NAME.match(name) if name else None
        if match is None:
            return False
        year = match.group("year")
    coding["system"] = ICD10GM
    code = coding.get("code")
    parsed = _ICD_CODE.match(code.strip()) if isinstance(code, str) else None
    if parsed:
        suffix = parsed.group("suffix") or ""
        sides = [letter for letter in suffix if letter in SEITE_DISPLAY]
        certainty = [letter for letter in suffix if letter in SICHERHEIT_DISPLAY]
        if len(sides) <= 1 and len(certainty) <= 1:
            coding["code"] = parsed.group("code")
            if parsed.group("marker"):
                marker = MARKERS[parsed.group("marker")]
                _add_extension(coding, MEHRFACH_EXTENSION, MEHRFACH_SYSTEM, marker, marker)
            if sides:
                _add_extension(coding, SEITE_EXTENSION, SEITE_SYSTEM, sides[0], SEITE_DISPLAY[sides[0]])
            if certainty:
                _add_extension(coding, SICHERHEIT_EXTENSION, SICHERHEIT_SYSTEM, certainty[0],
                               SICHERHEIT_DISPLAY[certainty[0]])
    if not coding.get("version") and (year or fallback_year):
        coding["version"] = year or fallback_year
    return True


def ops_coding(coding: Json, fallback_year: str | None) -> bool:
    """Re-label `coding` as OPS if it is one (see module docstring); move a side suffix into the
    Seitenlokalisation extension; set the version. Returns whether the coding is OPS."""
    system = coding.get("system", "")
    code = coding.get("code")
    parsed = _OPS_CODE.match(code.strip()) if isinstance(code, str) else None
    year = None
    if system != OPS:
        name = _local_name(system)
        if name is None:
            return False
        match = _OPS_NAME.match(name)
        if match:
            year = match.group("year")
        elif not (name == _GENERIC_LOCAL_NAME and parsed):
            return False
    coding["system"] = OPS
    if parsed:
        coding["code"] = parsed.group("code")
        side = parsed.group("side")
        if side:
            _add_extension(coding, SEITE_EXTENSION, SEITE_SYSTEM, side, SEITE_DISPLAY[side])
    if not coding.get("version") and (year or fallback_year):
        coding["version"] = year or fallback_year
    return True


# -- rules per resource type ---------------------------------------------------------------------------

def _patient(patient: Resource, index: _Index) -> None:
    _tag(patient, PATIENT_PROFILE)
    for name in patient.get("name", []):
        if name.get("use") == "maiden" and name.get("family"):
            name.pop("given", None)
            name.pop("prefix", None)
    for address in patient.get("address", []):
        if address.get("country") == "D":
            address["country"] = "DE"


def _encounter(encounter: Resource, index: _Index) -> None:
    _tag(encounter, ENCOUNTER_PROFILE)
    types = encounter.get("type", [])
    if not encounter.get("partOf") and not _has(_codings(types), KONTAKTEBENE):
        encounter["type"] = [*types, {"coding": [dict(EINRICHTUNGSKONTAKT)]}]
    service = encounter.get("serviceType")  # 0..1 CodeableConcept in R4
    if isinstance(service, dict):
        for coding in service.get("coding", []):
            name = _local_name(coding.get("system", ""))
            if name and _FACHABTEILUNG_NAME.match(name) and re.fullmatch(r"\d{4}", coding.get("code", "")):
                coding["system"] = FACHABTEILUNG


def _condition(condition: Resource, index: _Index) -> None:
    _tag(condition, CONDITION_PROFILE)
    if not condition.get("recordedDate"):
        for ext in condition.get("extension", []):
            if ext.get("url") == ASSERTED_DATE_EXTENSION and ext.get("valueDateTime"):
                condition["recordedDate"] = ext["valueDateTime"]
                break
    code = condition.get("code")
    if not isinstance(code, dict) or not code.get("coding"):
        return
    year = _year(condition.get("recordedDate"))
    gm = [coding for coding in code["coding"] if icd10gm_coding(coding, year)]
    code["coding"] = _dedupe(code["coding"], ICD10GM)
    if gm and not condition.get("verificationStatus"):
        certainty = next((c for g in gm if (c := _extension_code(g, SICHERHEIT_EXTENSION))), None)
        status = SICHERHEIT_VERIFICATION.get(certainty or "")
        if status:
            condition["verificationStatus"] = {"coding": [{"system": CONDITION_VER_STATUS, "code": status}]}


def _procedure(procedure: Resource, index: _Index) -> None:
    _tag(procedure, PROCEDURE_PROFILE)
    code = procedure.get("code")
    if not isinstance(code, dict) or not code.get("coding"):
        return
    performed = procedure.get("performedDateTime") or (procedure.get("performedPeriod") or {}).get("start")
    year = _year(performed)
    if year is None:
        for ext in procedure.get("extension", []):
            if ext.get("url") == PROZEDUR_DOKUMENTATIONSDATUM:
                year = _year(ext.get("valueDateTime"))
    ops = [coding for coding in code["coding"] if ops_coding(coding, year)]
    code["coding"] = _dedupe(code["coding"], OPS)
    chapter = next((c["code"][0] for c in ops if isinstance(c.get("code"), str) and c["code"]), "")
    if chapter in OPS_CHAPTER_CATEGORY and not _has(_codings(procedure.get("category")), SNOMED):
        sct, display = OPS_CHAPTER_CATEGORY[chapter]
        category = procedure.setdefault("category", {})
        category.setdefault("coding", []).append({"system": SNOMED, "code": sct, "display": display})


def _observation(observation: Resource, index: _Index) -> None:
    if not is_lab_observation(observation, index):
        return
    _tag(observation, OBSERVATION_LAB_PROFILE)
    categories = [c for c in observation.get("category", []) if isinstance(c, dict)]
    merged: list[Json] = [dict(LAB_STUDIES), dict(LABORATORY)]
    for coding in _codings(categories):
        if not any(m.get("system") == coding.get("system") and m.get("code") == coding.get("code")
                   for m in merged):
            merged.append(coding)
    category: Json = {"coding": merged}
    text = next((c["text"] for c in categories if c.get("text")), None)
    if text:
        category["text"] = text
    observation["category"] = [category]
    if not any(key.startswith("effective") for key in observation):
        report = index.report_of.get(observation.get("id", ""))
        for key in ("effectiveDateTime", "effectivePeriod", "effectiveInstant"):
            if report is not None and report.get(key):
                observation[key] = report[key]
                break


def _diagnostic_report(report: Resource, index: _Index) -> None:
    if not is_lab_report(report):
        return
    _tag(report, DIAGNOSTIC_REPORT_LAB_PROFILE)
    categories = report.setdefault("category", [])
    target = next((c for c in categories if _has(_codings(c), V2_0074, "LAB")), None)
    if target is None:
        target = {"coding": [dict(LAB_SECTION)]}
        categories.append(target)
    if not _has(target["coding"], LOINC, "26436-6"):
        target["coding"].append(dict(LAB_STUDIES))
    code = report.get("code")
    if isinstance(code, dict):
        codings = code.setdefault("coding", [])
        if not _has(codings, LOINC, "11502-2"):
            codings.append(dict(LAB_REPORT))
        # OBR-4 empty: the mapper marked the code data-absent; now that it says "lab report" it is not
        extensions = [e for e in code.get("extension", []) if e.get("url") != DATA_ABSENT_REASON]
        if extensions:
            code["extension"] = extensions
        else:
            code.pop("extension", None)


def _service_request(order: Resource, index: _Index) -> None:
    if not is_lab_order(order, index) or order.get("status") != "completed" or order.get("intent") != "order":
        return
    _tag(order, SERVICE_REQUEST_LAB_PROFILE)
    categories = [c for c in order.get("category", []) if isinstance(c, dict)]
    if not categories:
        order["category"] = [{"coding": [dict(LABORATORY)]}]
        return
    first = categories[0]  # category is 1..1 in the profile: the laboratory coding joins the first
    if not _has(_codings(first), OBSERVATION_CATEGORY, "laboratory"):
        first.setdefault("coding", []).append(dict(LABORATORY))


RULES: dict[str, Callable[[Resource, _Index], None]] = {
    "Patient": _patient,
    "Encounter": _encounter,
    "Condition": _condition,
    "Procedure": _procedure,
    "Observation": _observation,
    "DiagnosticReport": _diagnostic_report,
    "ServiceRequest": _service_request,
}

PROFILE_URLS = {
    "Patient": PATIENT_PROFILE,
    "Encounter": ENCOUNTER_PROFILE,
    "Condition": CONDITION_PROFILE,
    "Procedure": PROCEDURE_PROFILE,
    "Observation": OBSERVATION_LAB_PROFILE,
    "DiagnosticReport": DIAGNOSTIC_REPORT_LAB_PROFILE,
    "ServiceRequest": SERVICE_REQUEST_LAB_PROFILE,
}


def apply(resources: list[Resource]) -> None:
    """Shape `resources` (one message's) for the MII core data set, in place. Idempotent."""
    for resource in resources:
        # Mappers may share sub-objects between resources (a DiagnosticReport's code is its order's);
        # a rule changing one resource must not change another.
        content = copy.deepcopy(resource)
        resource.clear()
        resource.update(content)
    index = _Index.of(resources)
    for resource in resources:
        rule = RULES.get(resource.get("resourceType", ""))
        if rule is not None:
            rule(resource, index)
