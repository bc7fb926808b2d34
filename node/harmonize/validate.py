"""Every produced resource is validated with fhir.resources before it is stored.

fhir.resources 8.x defaults to R5; we validate against its R4B package (`fhir.resources.R4B`), whose
structures match R4 for every resource type the converter produces.

Validation is the largest cost of harmonization, so two things keep it affordable without weakening it:

- A per-process cache of resources already validated, keyed by their canonical JSON text (the exact
  bytes that are stored and pushed — never a hash, so a collision cannot let an invalid resource
  through). Real feeds repeat the same Locations, Practitioners and Organizations in every message;
  each distinct content is validated once. Bounded (LRU), so memory stays flat.
- fhir_core's `reject_null_complex_elements` validator asks, on every model instantiation and for every
  field, whether it is a list of a complex type; `_memoize_field_predicates()` answers those two pure
  predicates from a dict per field object (same answers; model_validate of the corpus mix's resources
  60 µs instead of 66 µs with fhir_core's own lru_cache, measured in one run).
"""

from __future__ import annotations

import importlib
import json
from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson
from pydantic import ValidationError

from node.harmonize.context import INVALID_RESOURCE, HarmonizeError, Resource

CACHE_ENTRIES = 20_000


def dumps(resource: Resource) -> str:
    """Compact, deterministic JSON of a resource (what is stored and pushed): keys sorted, no spaces,
    non-ASCII kept as UTF-8.

    orjson writes it about five times faster than the json module, byte for byte the same for every
    resource of the corpus mix; where the two differ it is only in how a float's exponent is written
    (json `1e-07`, orjson `1e-7`; both valid JSON for the same FHIR decimal). An integer beyond 64 bits
    (an NM value with 20 digits), which orjson refuses, goes through the json module.
    """
    try:
        return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except orjson.JSONEncodeError:
        return json.dumps(resource, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _memoize_field_predicates() -> None:
    import fhir_core.fhirabstractmodel as model_module

    class Answers(dict[Any, bool]):
        """field -> predicate(field), computed on first use. FieldInfo hashes by identity, and the
        dict keeps each field alive. Its `__getitem__` is C code: a lookup costs less than calling
        even fhir_core's own lru_cache wrapper."""

        def __init__(self, predicate: Callable[[Any], bool]) -> None:
            super().__init__()
            self.predicate = predicate

        def __missing__(self, field: Any) -> bool:
            answer = self[field] = bool(self.predicate(field))
            return answer

    for name in ("is_list_type", "is_primitive_type"):
        original = getattr(model_module, name, None)
        if original is not None and not isinstance(getattr(original, "__self__", None), Answers):
            setattr(model_module, name, Answers(original).__getitem__)


_memoize_field_predicates()


@cache
def _model(resource_type: str) -> Any:
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def validate_resource(resource: Resource) -> None:
    """:raises HarmonizeError: naming the resource type and the element path of the first problems
    (never the values)."""
    resource_type = resource.get("resourceType", "")
    try:
        model = _model(resource_type)
    except (ModuleNotFoundError, AttributeError):
        raise HarmonizeError(resource_type or "resource", INVALID_RESOURCE, "unknown resource type") from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        paths = []
        for error in exc.errors(include_url=False, include_input=False)[:3]:
            loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
            paths.append(f"{loc}: {error['type']}")
        raise HarmonizeError(resource_type, INVALID_RESOURCE, "; ".join(paths)) from None


class ValidatedCache:
    """JSON texts of resources that passed validation in this process (LRU, bounded)."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __contains__(self, text: str) -> bool:
        if text in self._seen:
            self._seen.move_to_end(text)
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, text: str) -> None:
        self._seen[text] = None
        if len(self._seen) > self._entries:
            self._seen.popitem(last=False)

    def clear(self) -> None:
        self._seen.clear()


VALIDATED = ValidatedCache()


def validate_all(resources: list[Resource], cache: ValidatedCache | None = VALIDATED) -> list[str]:
    """Validate every resource; return their canonical JSON texts (in order).

    :param cache: where to remember validated texts; None validates everything (benchmarks' cold path).
    :raises HarmonizeError: the first invalid resource.
    """
    texts = []
    for resource in resources:
        text = dumps(resource)
        if cache is None or text not in cache:
            validate_resource(resource)
            if cache is not None:
                cache.add(text)
        texts.append(text)
    return texts
