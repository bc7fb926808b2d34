"""node.harmonize.validate: the memoized fhir_core predicates answer exactly as fhir_core's own, and
validation still rejects what fhir_core rejects (a null inside a list of a complex type, a malformed date)."""

from __future__ import annotations

import json

import fhir_core.fhirabstractmodel as model_module
import pytest
from fhir_core.utils import is_list_type, is_primitive_type

from node.harmonize.context import HarmonizeError
from node.harmonize.validate import _model, dumps, validate_resource


@pytest.mark.parametrize("resource_type", ["Patient", "Encounter", "Observation", "Condition", "Procedure",
                                           "DiagnosticReport", "Immunization", "Coverage"])
def test_memoized_predicates_answer_as_fhir_core(resource_type: str) -> None:
    assert model_module.is_list_type is not is_list_type  # the memo is installed ...
    for field in _model(resource_type).model_fields.values():  # ... and agrees everywhere
        assert model_module.is_list_type(field) == bool(is_list_type(field))
        assert model_module.is_primitive_type(field) == bool(is_primitive_type(field))


def test_a_null_in_a_list_of_a_complex_type_is_still_rejected() -> None:
    good = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Synthetic"}]}
    validate_resource(good)
    with pytest.raises(HarmonizeError, match="name"):
        validate_resource({**good, "name": [{"family": "Synthetic"}, None]})
    with pytest.raises(HarmonizeError, match="birthDate"):
        validate_resource({**good, "birthDate": "15.08.1942"})


def _json_module(resource: dict) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def test_dumps_writes_the_canonical_json_of_the_json_module() -> None:
    resource = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Müller", "given": ["Jürgen"]}],
                "birthDate": "1965-04-12", "multipleBirthInteger": 2, "active": True,
                "extension": [{"url": "http://x", "valueDecimal": 84.5}], "text": {"div": 'a "b" \\ \n\t'}}
    assert dumps(resource) == _json_module(resource)
    assert "Müller" in dumps(resource)  # UTF-8, not \\u escapes


def test_dumps_takes_integers_beyond_64_bits_through_the_json_module() -> None:
    resource = {"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 12345678901234567890123}}
    assert dumps(resource) == _json_module(resource)
