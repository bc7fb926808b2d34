"""Segment mappers: one module per family of segments, each registering its mappers here.

A mapper is `fn(segment, conv, state) -> None`: it reads one segment and adds or updates resources in
the Conversion. `state` carries the context a segment depends on (the current order, observation,
immunization...), because HL7 groups are implied by segment order. Mappers raise
`HarmonizeError(where, kind)` for data they cannot map (naming segment and field, never values) and
`ValueError` never escapes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.harmonize.context import Conversion
from node.hl7v2.parser import Segment


@dataclass(slots=True)
class WalkState:
    """Context carried from segment to segment while walking one message."""

    order_id: str | None = None
    """Stable id of the ServiceRequest of the current ORC/OBR group."""
    order_key: str = ""
    """Business key of the current order (filler or placer number) for child resource ids."""
    report_id: str | None = None
    """Stable id of the DiagnosticReport of the current OBR (results)."""
    observation_id: str | None = None
    """The last Observation (NTE after OBX attaches to it)."""
    immunization_id: str | None = None
    """The current Immunization (RXR after RXA attaches to it)."""
    document_id: str | None = None
    """The DocumentReference of a TXA (OBX after it are the document's content)."""
    specimen_id: str | None = None
    last_segment: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Mapper = Callable[[Segment, Conversion, WalkState], None]
MAPPERS: dict[str, Mapper] = {}


def mapper(*segment_ids: str) -> Callable[[Mapper], Mapper]:
    """Register a mapper for one or more segment ids."""

    def register(fn: Mapper) -> Mapper:
        for segment_id in segment_ids:
            if segment_id in MAPPERS:
                raise ValueError(f"segment {segment_id} has two mappers")
            MAPPERS[segment_id] = fn
        return fn

    return register


SEGMENT_MODULES = ("patient", "encounter", "clinical", "orders", "immunization", "documents")


def load_all() -> None:
    """Import every segment module so its mappers register (idempotent)."""
    import importlib

    for name in SEGMENT_MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
