"""Per-message conversion state shared by the segment mappers.

A `Conversion` collects the resources one message produces (keyed by type and stable id, so a second
segment describing the same resource merges into it), remembers the message's patient and encounter
for references, and counts what it could not map (segments, codes) so nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from node.errors import MessageError
from node.harmonize.ids import stable_id
from node.harmonize.terminology import Terminology
from node.hl7v2.parser import Message, Segment

Resource = dict[str, Any]
Profile = Literal["base", "mii"]


class HarmonizeError(MessageError):
    """A message that cannot be converted. `reason` names segment, field and the kind of problem, never
    the data; `kind` is a short fixed label (a metric label value)."""

    def __init__(self, where: str, kind: str, detail: str = "") -> None:
        self.where = where
        self.kind = kind
        reason = f"{where}: {kind.replace('_', ' ')}" + (f" ({detail})" if detail else "")
        super().__init__(reason)
        self.reason = reason


# The kinds of HarmonizeError (metric label values of edge_node_harmonize_failures_total{reason}).
MISSING_FIELD = "missing_required_field"
INVALID_VALUE = "invalid_value"
UNSUPPORTED_MESSAGE = "unsupported_message_type"
UNREADABLE = "unreadable_message"
INVALID_RESOURCE = "invalid_fhir_resource"
STRUCTURE = "structure_violation"


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """What a conversion needs to know beyond the message itself (from the feed's settings)."""

    site_id: str
    feed: str = ""
    profile: Profile = "base"
    terminology: Terminology = field(default_factory=Terminology)
    z_segments: Literal["ignore", "extension"] = "ignore"
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Berlin"))
    """Zone of HL7 timestamps that carry no offset (FHIR dateTimes with a time need one)."""
    validation_cache: bool = True
    """Skip re-validating resources whose exact JSON was validated before in this process."""


class Conversion:
    """The resources of one message, in the order they were first added."""

    def __init__(self, message: Message, options: ConvertOptions) -> None:
        self.message = message
        self.options = options
        self.resources: dict[tuple[str, str], Resource] = {}
        self.patient_id: str | None = None
        self.encounter_id: str | None = None
        self.unmapped_segments: Counter[str] = Counter()
        self.unmapped_codes: Counter[str] = Counter()
        self.notes: list[str] = []

    # -- ids and references ------------------------------------------------------------------------

    def id_for(self, resource_type: str, *parts: str) -> str:
        """Stable id of a resource identified by business identifiers `parts` at this site."""
        return stable_id(self.options.site_id, resource_type, *parts)

    @staticmethod
    def ref(resource_type: str, resource_id: str) -> dict[str, str]:
        return {"reference": f"{resource_type}/{resource_id}"}

    def patient_ref(self) -> dict[str, str] | None:
        return self.ref("Patient", self.patient_id) if self.patient_id else None

    def encounter_ref(self) -> dict[str, str] | None:
        return self.ref("Encounter", self.encounter_id) if self.encounter_id else None

    # -- resources ---------------------------------------------------------------------------------

    def put(self, resource: Resource) -> dict[str, str]:
        """Add `resource` (with resourceType and id) or merge it into the one already added with the same
        type and id: keys the earlier one lacks are taken over; lists are extended with new items.
        Returns a reference to it."""
        key = (resource["resourceType"], resource["id"])
        existing = self.resources.get(key)
        if existing is None:
            self.resources[key] = resource
        else:
            _merge(existing, resource)
        return self.ref(*key)

    def get(self, resource_type: str, resource_id: str) -> Resource | None:
        return self.resources.get((resource_type, resource_id))

    # -- bookkeeping -------------------------------------------------------------------------------

    def unmapped_segment(self, segment: Segment) -> None:
        self.unmapped_segments[segment.id[:8]] += 1

    def unmapped_code(self, system: str) -> None:
        self.unmapped_codes[system[:64] or "(none)"] += 1


def _merge(target: Resource, source: Resource) -> None:
    for key, value in source.items():
        if key not in target or target[key] in (None, "", [], {}):
            target[key] = value
        elif isinstance(target[key], list) and isinstance(value, list):
            for item in value:
                if item not in target[key]:
                    target[key].append(item)
        elif isinstance(target[key], dict) and isinstance(value, dict):
            _merge(target[key], value)
