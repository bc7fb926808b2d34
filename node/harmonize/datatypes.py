"""HL7 v2 data types → FHIR R4 data types, per `mappings/datatypes/` of the HL7 v2-to-FHIR guide.

Every function takes parsed values (`node.hl7v2.parser` Rep/Field/str) and returns a FHIR JSON fragment
(dict/str) or None when there is nothing to map; they never invent data. Invalid values raise
`ValueError` with a text naming the kind of problem (never the value); mappers turn that into a
HarmonizeError naming segment and field.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from node.harmonize.context import Conversion
from node.harmonize.terminology import ICD10GM, LOINC, OPS, SNOMED, UCUM
from node.harmonize.vocabulary import concept
from node.hl7v2.parser import Field, Rep

Json = dict[str, Any]

# HL7 table 0396 (coding system) → FHIR system URI, for the names seen in real feeds. "HL7nnnn" is
# handled by pattern (→ terminology.hl7.org v2-nnnn). Anything else is a local code system.
CODING_SYSTEMS = {
    "LN": LOINC, "LOINC": LOINC,
    "SCT": SNOMED, "SNM": SNOMED, "SNOMED": SNOMED, "SNOMED-CT": SNOMED,
    "I10": "http://hl7.org/fhir/sid/icd-10", "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10GM": ICD10GM, "I10-GM": ICD10GM, "ICD10GM": ICD10GM, "ICD-10-GM": ICD10GM,
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm", "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm", "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "OPS": OPS,
    "UCUM": UCUM, "ISO+": UCUM,
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ATC": "http://fhir.de/CodeSystem/bfarm/atc", "WC": "http://www.whocc.no/atc",
    "CPT": "http://www.ama-assn.org/go/cpt", "C4": "http://www.ama-assn.org/go/cpt",
    "ISO3166": "urn:iso:std:iso:3166",
    "MVX": "http://terminology.hl7.org/CodeSystem/MVX",
    "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
}
_HL7_TABLE = re.compile(r"^HL7(\d{4})$", re.IGNORECASE)
_LOCAL_SYSTEMS = {"L", "99L", "LOCAL", ""}


def local_system(conv: Conversion, name: str, kind: str = "CodeSystem") -> str:
    """A URI for a site-local code system or identifier namespace (`.invalid` marks it as not
    resolvable; the site id keeps sites apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "local"
    return f"https://{conv.options.site_id}.edge-node.invalid/fhir/{kind}/{safe}"


def system_uri(conv: Conversion, name: str) -> tuple[str, bool]:
    """(FHIR system URI, is_standard) for a v2 coding system name (CWE-3)."""
    key = name.strip()
    if key.upper() in CODING_SYSTEMS:
        return CODING_SYSTEMS[key.upper()], True
    match = _HL7_TABLE.match(key)
    if match:
        return f"http://terminology.hl7.org/CodeSystem/v2-{match.group(1)}", True
    if key.lower().startswith(("http://", "https://", "urn:")):
        return key, True
    return local_system(conv, key if key.upper() not in _LOCAL_SYSTEMS else "local"), False


# -- dates and times (DTM/TS/DT → dateTime/date/instant) ----------------------------------------------

_DTM = re.compile(
    r"^(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})"
    r"(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?$")


def fhir_datetime(text: str, zone: ZoneInfo) -> str | None:
    """HL7 DTM/TS (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]`, TS component 1) → FHIR dateTime.

    A value with a time gets the offset it carries, else the offset of `zone` at that local time (FHIR
    requires an offset with a time). Precision is kept: `2024` → `2024`, `202403` → `2024-03`.
    :raises ValueError: not a valid date/time.
    """
    text = text.strip()
    if not text:
        return None
    match = _DTM.match(text)
    if not match:
        raise ValueError("not an HL7 date/time")
    parts = match.groupdict()
    year, month, day = parts["y"], parts["mo"], parts["d"]
    try:
        datetime(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise ValueError("impossible calendar date") from None
    if parts["h"] is None:
        return "-".join(p for p in (year, month, day) if p)
    hour, minute, second = int(parts["h"]), int(parts["mi"] or 0), int(parts["s"] or 0)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("impossible time of day")
    second = min(second, 59)
    local = datetime(int(year), int(month), int(day), hour, minute, second)  # type: ignore[arg-type]
    if parts["tz"]:
        sign = 1 if parts["tz"][0] == "+" else -1
        offset = timedelta(hours=int(parts["tz"][1:3]), minutes=int(parts["tz"][3:5])) * sign
        if abs(offset) > timedelta(hours=14):
            raise ValueError("impossible time zone offset")
        aware = local.replace(tzinfo=timezone(offset))
    else:
        aware = local.replace(tzinfo=zone)
    result = aware.isoformat(timespec="seconds")
    if parts["f"]:
        result = result[:19] + "." + parts["f"] + result[19:]
    return result


def fhir_date(text: str) -> str | None:
    """HL7 DT (or the date part of a DTM) → FHIR date (precision kept). :raises ValueError:"""
    text = text.strip()
    if not text:
        return None
    digits = text[:8] if len(text) > 8 and text[:8].isdigit() else text
    result = fhir_datetime(digits, ZoneInfo("UTC"))
    assert result is not None
    return result[:10]


def fhir_instant(text: str, zone: ZoneInfo) -> str | None:
    """An HL7 DTM with at least seconds → FHIR instant; a coarser value is None (instant needs seconds)."""
    digits = text.strip().split("+", 1)[0].split("-", 1)[0]
    if len(digits.split(".", 1)[0]) < 14:  # no seconds in the HL7 value: not precise enough
        return None
    return fhir_datetime(text, zone)


# -- numbers ---------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def fhir_decimal(text: str) -> float | int | None:
    """HL7 NM → FHIR decimal (int when integral text). :raises ValueError: not a number."""
    text = text.strip()
    if not text:
        return None
    if not _DECIMAL.match(text):
        raise ValueError("not a number")
    if "." in text:
        return float(text)
    return int(text)


# -- coded values (CWE/CE/CNE/IS/ID) -----------------------------------------------------------------

def coding(conv: Conversion, code: str, display: str, system_name: str) -> tuple[Json, bool]:
    """One FHIR Coding for a v2 triplet; (coding, is_standard)."""
    system, standard = system_uri(conv, system_name)
    # FHIR codes are [^\s]+(\s[^\s]+)*: collapse whitespace runs senders put inside codes.
    result: Json = {"system": system, "code": " ".join(code.split())}
    if display.strip():
        result["display"] = display.strip()
    return result, standard


def codeable_concept(conv: Conversion, rep: Rep, *, table: str | None = None) -> Json | None:
    """CWE/CE/CNE[CodeableConcept]: primary (1-3) and alternate (4-6) triplets as codings, CWE-9 (or
    the text of CWE-2) as text. Local codes are looked up in the feed's terminology map; mapped
    targets come first, and the local coding stays. Unmapped local codes are counted per system.

    :param table: name of a v2-to-FHIR concept map (e.g. "AdministrativeSex") for HL7 table codes that
        arrive without a coding system.
    """
    if rep.is_empty or rep.is_null:
        return None
    codings: list[Json] = []
    text = rep.component(9).strip() or rep.component(2).strip()
    for offset in (0, 3):
        code = rep.component(1 + offset).strip()
        if not code:
            continue
        display = rep.component(2 + offset)
        system_name = rep.component(3 + offset).strip()
        if not system_name and table is not None:
            mapped = concept(table, code)
            if mapped is not None:
                codings.append(mapped)
                continue
        local, standard = coding(conv, code, display, system_name)
        if not standard:
            targets = conv.options.terminology.lookup(system_name, code)
            if targets:
                codings.extend(t.as_fhir() for t in targets if t.as_fhir() not in codings)
            else:
                conv.unmapped_code(system_name or "local")
        if local not in codings:
            codings.append(local)
    if not codings and not text:
        return None
    result: Json = {}
    if codings:
        result["coding"] = codings
    if text:
        result["text"] = text
    return result


def code_from_table(table: str, code: str) -> str | None:
    """The FHIR code a v2-to-FHIR concept map gives for a v2 table code (e.g. gender 'F' → 'female')."""
    mapped = concept(table, code.strip())
    return mapped["code"] if mapped else None


# -- identifiers (CX, EI, HD) ------------------------------------------------------------------------

def authority_system(conv: Conversion, namespace: str, universal_id: str, universal_type: str) -> str | None:
    """HD (assigning authority / facility) → an identifier system URI."""
    universal_id, namespace = universal_id.strip(), namespace.strip()
    kind = universal_type.strip().upper()
    if universal_id:
        if kind == "ISO" or re.fullmatch(r"[0-2](\.\d+)+", universal_id):
            return f"urn:oid:{universal_id}"
        if kind in ("UUID", "GUID"):
            return f"urn:uuid:{universal_id.lower()}"
        if kind in ("URI", "URL") or universal_id.startswith(("http://", "https://", "urn:")):
            return universal_id
    if namespace:
        return local_system(conv, namespace, "NamingSystem")
    return None


def identifier_from_cx(conv: Conversion, rep: Rep) -> Json | None:
    """CX[Identifier]: value CX-1, system from CX-4 (HD), type from CX-5 (table 0203), period CX-7/8."""
    value = rep.component(1).strip()
    if not value:
        return None
    result = _typed_identifier(conv, rep, value, authority=4, type_code=5)
    start, end = rep.component(7).strip(), rep.component(8).strip()
    period = _period(conv, start, end)
    if period:
        result["period"] = period
    return result


def identifier_from_ei(conv: Conversion, rep: Rep) -> Json | None:
    """EI[Identifier]: value EI-1, system from EI-2..4 (namespace, universal id, type)."""
    value = rep.component(1).strip()
    if not value:
        return None
    result: Json = {"value": value}
    system = authority_system(conv, rep.component(2), rep.component(3), rep.component(4))
    if system:
        result["system"] = system
    return result


_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _typed_identifier(conv: Conversion, rep: Rep, value: str, *, authority: int, type_code: int) -> Json:
    """An Identifier with `value`, system from the HD in component `authority` and type (table 0203)
    from component `type_code` (CX-4/CX-5, XCN-9/XCN-13, XON-6/XON-7)."""
    identifier: Json = {"value": value}
    system = authority_system(conv, rep.sub(authority, 1), rep.sub(authority, 2), rep.sub(authority, 3))
    if system:
        identifier["system"] = system
    code = rep.component(type_code).strip()
    if code:
        identifier["type"] = {"coding": [{"system": _V2_0203, "code": code}]}
    return identifier


def _period(conv: Conversion, start: str, end: str) -> Json | None:
    period: Json = {}
    try:
        if start:
            period["start"] = fhir_datetime(start, conv.options.timezone)
        if end:
            period["end"] = fhir_datetime(end, conv.options.timezone)
    except ValueError:
        return None  # a bad validity date does not make the identifier unusable
    return period or None


# -- names, addresses, telecom -------------------------------------------------------------------

def human_name(conv: Conversion, rep: Rep) -> Json | None:
    """XPN[HumanName]: family XPN-1.1, given XPN-2 and XPN-3, suffix XPN-4, prefix XPN-5, academic
    degree XPN-6 (suffix), use from XPN-7 (NameType)."""
    return _human_name(rep, family=1, given=(2, 3), prefix=5, suffix=(4, 6), name_type=7)


def _human_name(rep: Rep, *, family: int, given: tuple[int, int], prefix: int, suffix: tuple[int, int],
                name_type: int) -> Json | None:
    """A HumanName from the components of an XPN or XCN numbered as given: family (its first
    subcomponent), given names, prefix, suffixes, use from the name type (NameType); None without a
    family or given name."""
    family_name = rep.sub(family, 1).strip()
    given_names = [part.strip() for part in (rep.component(given[0]), rep.component(given[1])) if part.strip()]
    if not family_name and not given_names:
        return None
    result: Json = {}
    type_code = rep.component(name_type).strip()
    use = code_from_table("NameType", type_code) if type_code else None
    if use:
        result["use"] = use
    if family_name:
        result["family"] = family_name
    if given_names:
        result["given"] = given_names
    prefix_text = rep.component(prefix).strip()
    if prefix_text:
        result["prefix"] = [prefix_text]
    suffixes = [s.strip() for s in (rep.component(suffix[0]), rep.component(suffix[1])) if s.strip()]
    if suffixes:
        result["suffix"] = suffixes
    return result


def address(conv: Conversion, rep: Rep) -> Json | None:
    """XAD[Address]: line XAD-1.1 and XAD-2, city XAD-3, state XAD-4, postal code XAD-5, country XAD-6,
    use/type from XAD-7 (AddressType), district XAD-9."""
    lines = [line.strip() for line in (rep.sub(1, 1), rep.component(2)) if line.strip()]
    result: Json = {}
    address_type = rep.component(7).strip()
    if address_type:
        use = code_from_table("AddressType[Use]", address_type)
        if use:
            result["use"] = use
        kind = code_from_table("AddressType[Type]", address_type)
        if kind:
            result["type"] = kind
    if lines:
        result["line"] = lines
    for key, index in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6), ("district", 9)):
        value = rep.component(index).strip()
        if value:
            result[key] = value
    return result if set(result) - {"use", "type"} else None


def contact_point(conv: Conversion, rep: Rep, default_use: str | None = None) -> Json | None:
    """XTN[ContactPoint]: value from XTN-4 (email), XTN-12 (unformatted), XTN-5..7 (+country area local)
    or XTN-1; system from XTN-3 (equipment type); use from XTN-2 (TelecommunicationUseCode)."""
    equipment = rep.component(3).strip()
    email = rep.component(4).strip()
    number = rep.component(12).strip()
    if not number:
        pieces = [rep.component(5).strip(), rep.component(6).strip(), rep.component(7).strip()]
        number = " ".join(p for p in pieces if p)
        if rep.component(8).strip():
            number += " ext. " + rep.component(8).strip()
    value = email if equipment in ("Internet", "X.400") or (email and not number) else (
        number or rep.component(1).strip())
    if not value:
        return None
    result: Json = {}
    system = {"PH": "phone", "FX": "fax", "MD": "other", "CP": "phone", "BP": "pager",
              "Internet": "email", "X.400": "email", "TDD": "other", "TTY": "other"}.get(equipment)
    if system is None:
        system = "email" if "@" in value else "phone"
    result["system"] = system
    result["value"] = value
    use_code = rep.component(2).strip()
    use = code_from_table("TelecommunicationUseCode", use_code) if use_code else None
    if equipment == "CP" and use is None:
        use = "mobile"
    if use or default_use:
        result["use"] = use or default_use
    return result


def repetitions(field: Field) -> list[Rep]:
    """Non-empty, non-null repetitions of a field."""
    return [rep for rep in field.repetitions if not rep.is_empty and not rep.is_null]


# -- resources behind data types: XCN → Practitioner, PL → Location, XON → Organization ----------------
# (Added for the ADT mappers; usable by any mapper.) Each adds its resource(s) to the Conversion under a
# stable id and returns the Reference to put in the referring resource.

_PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"


def _hd_key(rep: Rep, i: int) -> str:
    """The assigning authority of an HD in component `i` as an id part: universal id, else namespace."""
    return rep.sub(i, 2).strip() or rep.sub(i, 1).strip()


def xcn_name(conv: Conversion, rep: Rep) -> Json | None:
    """XCN (and CNN) name part → HumanName per XCN[Practitioner]: family XCN-2.1, given XCN-3/XCN-4,
    suffix XCN-5 and XCN-21, prefix XCN-6, use from XCN-10 (NameType)."""
    return _human_name(rep, family=2, given=(3, 4), prefix=6, suffix=(5, 21), name_type=10)


def practitioner_reference(conv: Conversion, rep: Rep) -> Json | None:
    """XCN[Practitioner]: adds a Practitioner (stable id from XCN-1 + the XCN-9 authority) and returns
    a Reference to it. An XCN with a name but no XCN-1 identifies nobody reliably (two doctors may share
    a name), so it gives a display-only Reference and no resource; an empty XCN gives None.

    identifier: value XCN-1, system from XCN-9 (HD), type XCN-13; name per `xcn_name`; qualification
    from XCN-7 only where the DegreeLicenseCertificate map knows the code (senders put free text there).
    """
    if rep.is_empty or rep.is_null:
        return None
    value = rep.component(1).strip()
    name = xcn_name(conv, rep)
    if not value:
        if name is None:
            return None
        parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
        return {"display": " ".join(p for p in parts if p)}
    practitioner_id = conv.id_for("Practitioner", value, _hd_key(rep, 9))
    identifier = _typed_identifier(conv, rep, value, authority=9, type_code=13)
    practitioner: Json = {"resourceType": "Practitioner", "id": practitioner_id, "identifier": [identifier]}
    if name:
        practitioner["name"] = [name]
    degree = rep.component(7).strip()
    qualification = concept("DegreeLicenseCertificate", degree) if degree else None
    if qualification:
        practitioner["qualification"] = [{"code": {"coding": [qualification]}}]
    return conv.put(practitioner)


# PL components from the most general level to the most granular, with their location-physical-type.
# Order as numbered in PL[Location] (Location[6] facility … Location[1] bed); each level is partOf the
# next more general one present. The point of care (ward/clinic/department) has no physical type in
# the sheet ("/extension??-poc/"), so none is invented.
_PL_LEVELS: tuple[tuple[str, int, str | None], ...] = (
    ("facility", 4, "si"), ("building", 7, "bu"), ("point-of-care", 1, None), ("floor", 8, "lvl"),
    ("room", 2, "ro"), ("bed", 3, "bd"),
)


def location_reference(conv: Conversion, rep: Rep) -> Json | None:
    """PL[Location]: adds one Location per valued level of the PL (facility, building, point of care,
    floor, room, bed; each partOf the level above) and returns a Reference to the most granular one.

    Ids are stable from the path of levels down to the location (bed 1 of room 12 is not bed 1 of room
    13). Each Location: identifier from the HD (namespace id; universal id as a second identifier), mode
    "instance", physicalType; PL-9 (description) goes to the most granular. PL-5/PL-6 (status, person
    location type) describe the patient's stay, not the place, and are not mapped here.
    """
    if rep.is_empty or rep.is_null:
        return None
    path: list[str] = []
    parent: Json | None = None
    last: Json | None = None
    for level, index, physical in _PL_LEVELS:
        namespace, universal, kind = rep.sub(index, 1).strip(), rep.sub(index, 2).strip(), rep.sub(index, 3)
        if not namespace and not universal:
            continue
        path += [level, namespace, universal]
        location: Json = {"resourceType": "Location", "id": conv.id_for("Location", *path)}
        identifiers: list[Json] = []
        if namespace:
            identifiers.append({"value": namespace})
        if universal:
            system = authority_system(conv, "", universal, kind)
            if system and system.startswith(("urn:oid:", "urn:uuid:")):
                identifiers.append({"system": "urn:ietf:rfc:3986", "value": system})
            else:
                identifiers.append({"value": universal})
        location["identifier"] = identifiers
        location["mode"] = "instance"
        if physical:
            location["physicalType"] = {"coding": [{"system": _PHYSICAL_TYPE, "code": physical}]}
        if parent is not None:
            location["partOf"] = parent
        parent = conv.put(location)
        last = location
    if last is None:
        return None
    description = rep.component(9).strip()
    if description:
        conv.get("Location", last["id"])["description"] = description  # type: ignore[index]
    return parent


def organization_reference(conv: Conversion, rep: Rep) -> Json | None:
    """XON[Organization]: adds an Organization and returns a Reference to it. Name XON-1; identifier
    XON-10 (else XON-3) with system from XON-6 and type XON-7. The stable id comes from the identifier
    and its authority, else from the name (an organization's name is what identifies it in many feeds).
    """
    if rep.is_empty or rep.is_null:
        return None
    name = rep.component(1).strip()
    value = rep.component(10).strip() or rep.component(3).strip()
    if not name and not value:
        return None
    organization: Json = {"resourceType": "Organization"}
    if value:
        organization["id"] = conv.id_for("Organization", "id", value, _hd_key(rep, 6))
        organization["identifier"] = [_typed_identifier(conv, rep, value, authority=6, type_code=7)]
    else:
        organization["id"] = conv.id_for("Organization", "name", name)
    if name:
        organization["name"] = name
    return conv.put(organization)


# -- units and times for results (OBX-5/6, RXA-6/7, SPM-12): CWE[Quantity], CQ[Quantity], TM ----------
# (Added for the order/result mappers; usable by any mapper.)

def unit_quantity(conv: Conversion, code: str, text: str, system_name: str) -> Json:
    """The unit part of a FHIR Quantity from CWE units (OBX-6, RXA-7; CQ-2 as subcomponents), per
    CWE[Quantity]: unit = CWE-2, else CWE-1. `system`/`code` only when they are UCUM: the coding system
    (CWE-3) names UCUM, or the feed's terminology map (source system `unit`) maps the unit; any other
    unit stays text only (a local unit code is not a computable unit) and is counted as unmapped under
    `unit`. {} when there is no unit at all.
    """
    code, text, system_name = code.strip(), text.strip(), system_name.strip()
    if not code and not text:
        return {}
    result: Json = {"unit": text or code}
    if code and system_name and system_uri(conv, system_name)[0] == UCUM:
        result["system"], result["code"] = UCUM, code
        return result
    mapped = conv.options.terminology.unit(code or text)
    if mapped is not None and mapped.system == UCUM:
        result["system"], result["code"] = UCUM, mapped.code
        return result
    conv.unmapped_code("unit")
    return result


def units_from_cwe(conv: Conversion, rep: Rep) -> Json:
    """`unit_quantity` for a CWE/CE units field (OBX-6, RXA-7)."""
    if rep.is_empty or rep.is_null:
        return {}
    return unit_quantity(conv, rep.component(1), rep.component(2), rep.component(3))


def quantity_from_cq(conv: Conversion, rep: Rep) -> Json | None:
    """CQ[Quantity] (SPM-12, OBR-9): value CQ-1 (NM), units CQ-2 (a CWE in subcomponents).
    :raises ValueError: CQ-1 is not a number."""
    value = fhir_decimal(rep.component(1))
    if value is None:
        return None
    return {"value": value, **unit_quantity(conv, rep.sub(2, 1), rep.sub(2, 2), rep.sub(2, 3))}


_TM = re.compile(r"^(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?(?P<tz>[+-]\d{4})?$")


def fhir_time(text: str) -> str | None:
    """HL7 TM (`HH[MM[SS[.S…]]][±ZZZZ]`) → FHIR time `hh:mm:ss[.f]`. FHIR time has no zone: an offset
    is dropped (a time of day without a date cannot be moved to another zone anyway).
    :raises ValueError: not a valid time."""
    text = text.strip()
    if not text:
        return None
    match = _TM.match(text)
    if not match:
        raise ValueError("not an HL7 time")
    hour, minute, second = int(match["h"]), int(match["mi"] or 0), int(match["s"] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError("impossible time of day")
    result = f"{hour:02d}:{minute:02d}:{second:02d}"
    return result + "." + match["f"] if match["f"] else result
