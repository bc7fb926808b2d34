"""Every produced resource is validated with fhir.resources (FHIR R4B/R4 models) before it is stored.

fhir.resources 8.x defaults to R5; we validate against the R4B package (`fhir.resources.R4B`), whose
structures match R4 for every resource type the converter produces.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from pydantic import ValidationError

from node.harmonize.context import INVALID_RESOURCE, HarmonizeError, Resource


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


def validate_all(resources: list[Resource]) -> None:
    for resource in resources:
        validate_resource(resource)
