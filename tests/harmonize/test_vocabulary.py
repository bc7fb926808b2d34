"""The shipped concept maps are exactly what build_vocabulary derives from the official CSVs."""

from __future__ import annotations

import json

from node.harmonize.build_vocabulary import OUTPUT, build
from node.harmonize.vocabulary import concept
from tests.conftest import SHARED


def test_concept_maps_match_the_reference_tables() -> None:
    import pytest

    folder = SHARED / "reference" / "v2-to-fhir" / "mappings" / "codesystems"
    if not folder.is_dir():
        pytest.skip(f"reference tables not available at {folder} (clone without ../shared)")
    assert json.loads(OUTPUT.read_text(encoding="utf-8")) == build(folder)


def test_known_rows_from_the_official_maps() -> None:
    # AdministrativeSex: F -> female; PatientClass[EncounterClass]: I -> IMP (v3-ActCode)
    assert concept("AdministrativeSex", "F") == {
        "system": "http://hl7.org/fhir/administrative-gender", "code": "female", "display": "Female"}
    assert concept("PatientClass[EncounterClass]", "I")["code"] == "IMP"
    assert concept("InterpretationCodes", "H")["code"] == "H"
    assert concept("AdministrativeSex", "no-such-code") is None
