"""Terminology CSV maps: the shipped examples load; bad files name the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import ConfigError
from node.harmonize.terminology import ICD10GM, LOINC, SNOMED, UCUM, Terminology
from tests.conftest import REPO

MAPS = REPO / "node" / "harmonize" / "maps"


def test_shipped_example_maps_load_and_map() -> None:
    terminology = Terminology.load(sorted(MAPS.glob("*.csv")))
    assert [c.as_fhir() for c in terminology.lookup("LAB", "NA")] == [
        {"system": LOINC, "code": "2951-2", "display": "Sodium [Moles/volume] in Serum or Plasma"}]
    unit = terminology.unit("mmol/l")
    assert unit is not None and (unit.system, unit.code) == (UCUM, "mmol/L")
    systems = [c.system for c in terminology.lookup("KIS-DIAG", "PNEU")]
    assert systems == [ICD10GM, SNOMED]
    assert terminology.lookup("LAB", "UNKNOWN") == []
    assert terminology.lookup("OTHER-SYSTEM", "NA") == []  # a source system scopes its codes


def test_empty_source_system_matches_any_system(tmp_path: Path) -> None:
    path = tmp_path / "any.csv"
    path.write_text("source_system,source_code,target_system,target_code\n,GLU,LN,2345-7\n")
    assert Terminology.load([path]).lookup("WHATEVER", "GLU")[0].code == "2345-7"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("source_system,source_code,target_system,target_code\nLAB,NA,NOSUCH,1\n", 2, "neither a URI"),
    ("source_system,source_code,target_system,target_code\n# comment\nLAB,,LN,1\n", 3, "required"),
    ("source_system,source_code,target_system,target_code\nLAB,NA,LN\n", 2, "4 or 5 columns"),
    ("code,target\nLAB,NA\n", 1, "header must be"),
])
def test_bad_map_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        Terminology.load([path])
    assert str(info.value).startswith(f"{path}:{line}:" if line else str(path))


def test_missing_map_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read terminology map"):
        Terminology.load([tmp_path / "absent.csv"])
