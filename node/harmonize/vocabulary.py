"""Look-ups in the official v2-to-FHIR concept maps (derived by `build_vocabulary.py` into data/)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("data") / "v2_concept_maps.json"


@cache
def _maps() -> dict[str, dict[str, list[str]]]:
    result: dict[str, dict[str, list[str]]] = json.loads(DATA.read_text(encoding="utf-8"))
    return result


def concept(table: str, code: str) -> dict[str, Any] | None:
    """The FHIR Coding the concept map `table` gives for the v2 `code`, or None if it has none.

    :raises KeyError: `table` is not a concept map we ship (a programming error).
    """
    row = _maps()[table].get(code)
    if row is None:
        return None
    fhir_code, display, system = row
    result = {"system": system, "code": fhir_code} if system else {"code": fhir_code}
    if display:
        result["display"] = display
    return result


def tables() -> list[str]:
    return sorted(_maps())
