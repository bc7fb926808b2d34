"""HL7 v2 message → harmonized FHIR R4 resources: the pure entry point of harmonization.

`convert(raw, charset, options)` parses (node.hl7v2.parser), walks the segments in order through the
registered segment mappers (node.harmonize.segments.*), applies the trigger event's semantics
(cancellations, merges), the output profile (base or MII), validates every resource with
fhir.resources, and returns them with the message's partition key (its patient) and what it could not
map. It raises `HarmonizeError` (segment, field, kind — never data) for a message that cannot be
converted; no other exception escapes for any input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from node.harmonize import events, profiles, validate
from node.harmonize.context import (
    INVALID_VALUE,
    UNREADABLE,
    UNSUPPORTED_MESSAGE,
    Conversion,
    ConvertOptions,
    HarmonizeError,
    Resource,
)
from node.harmonize.segments import MAPPERS, WalkState
from node.harmonize.segments import load_all as load_segment_mappers
from node.harmonize.validate import dumps as dumps  # re-exported: the JSON that is stored and pushed
from node.hl7v2.parser import HL7ParseError, Message, parse_message

SUPPORTED_EVENTS: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28",
                      "A31", "A40"}),
    "ORU": frozenset({"R01"}),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "VXU": frozenset({"V04"}),
    "MDM": frozenset({"T02"}),
    "SIU": frozenset({"S12"}),
}
HEADER_SEGMENTS = frozenset({"MSH", "EVN"})
"""Read by the converter itself (message type, event time), not by a segment mapper."""

load_segment_mappers()


@dataclass(slots=True)
class ConversionResult:
    """The resources of one message and what could not be mapped."""

    resources: list[Resource]
    partition_key: str
    """The patient's stable id (resources of one patient are pushed in order), else the message's."""
    event: str
    unmapped_segments: Counter[str] = field(default_factory=Counter)
    unmapped_codes: Counter[str] = field(default_factory=Counter)
    json: list[str] = field(default_factory=list)
    """The canonical JSON text of each resource (same order): what is stored and pushed."""

    def bundle(self) -> dict[str, Any]:
        """A FHIR transaction Bundle with one PUT entry per resource (stable ids: idempotent)."""
        return transaction_bundle(self.resources)


def transaction_bundle(resources: list[Resource]) -> dict[str, Any]:
    entries = []
    for resource in resources:
        url = f"{resource['resourceType']}/{resource['id']}"
        entries.append({"fullUrl": f"urn:uuid:{_uuid_of(resource['id'])}", "resource": resource,
                        "request": {"method": "PUT", "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _uuid_of(resource_id: str) -> str:
    hex32 = (resource_id + "0" * 32)[:32]
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:32]}"


def message_event(message: Message) -> tuple[str, str]:
    """(message code, trigger event) with the usual sender quirks normalised (`ADT^A11_A09` → A11)."""
    code = message.message_code.upper()
    trigger = message.trigger_event.upper().split("_", 1)[0]
    return code, trigger


def convert(raw: bytes, charset: str, options: ConvertOptions) -> ConversionResult:
    """Convert one stored message. :raises HarmonizeError: with a reason an operator can act on."""
    try:
        message = parse_message(raw, charset)
    except HL7ParseError as exc:
        raise HarmonizeError("MSH", UNREADABLE, exc.reason) from None
    code, trigger = message_event(message)
    if trigger not in SUPPORTED_EVENTS.get(code, ()):
        raise HarmonizeError("MSH-9", UNSUPPORTED_MESSAGE, f"{code}^{trigger}"[:16])
    conv = Conversion(message, options)
    state = WalkState()
    for segment in message.segments:
        mapper = MAPPERS.get(segment.id)
        if mapper is not None:
            try:
                mapper(segment, conv, state)
            except ValueError as exc:  # a data type conversion without its own HarmonizeError
                raise HarmonizeError(segment.label, INVALID_VALUE, str(exc)) from None
        elif segment.id in HEADER_SEGMENTS:
            continue
        elif segment.id.startswith("Z"):
            events.z_segment(segment, conv, state)
        else:
            conv.unmapped_segment(segment)
        state.last_segment = segment.id
    events.apply(code, trigger, conv)
    resources = list(conv.resources.values())
    profiles.apply(resources, options.profile)
    texts = validate.validate_all(resources, validate.VALIDATED if options.validation_cache else None)
    partition = conv.patient_id or conv.id_for("Message", message.sending_facility, message.control_id)
    return ConversionResult(resources, partition, f"{code}^{trigger}", conv.unmapped_segments,
                            conv.unmapped_codes, texts)
