"""Per-feed terminology maps: local codes → LOINC, SNOMED CT, ICD-10-GM, OPS, UCUM.

A map is a UTF-8 CSV file with this header and one mapping per line (`#` lines are comments):

    source_system,source_code,target_system,target_code,target_display
    SWISSLAB,NA,LN,2951-2,Sodium [Moles/volume] in Serum or Plasma
    ,mmol/l,UCUM,mmol/L,
    KIS-DIAG,J18.9,ICD-10-GM,J18.9,"Pneumonie, nicht näher bezeichnet"

- `source_system` is the coding system as the feed sends it (CWE-3 / CE-3, e.g. `L`, `99LAB`,
  `SWISSLAB`); empty matches any system. For units (OBX-6) use the source system `unit`.
- `target_system` is a URI or one of the aliases in `SYSTEM_ALIASES` (LN, SCT, ICD-10-GM, OPS, UCUM, ...).
- A (source_system, source_code) pair may map to several targets (e.g. SNOMED CT and LOINC).

The maps are loaded at start-up; a bad file is a configuration error naming the file and the line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import ConfigError

HEADER = ["source_system", "source_code", "target_system", "target_code", "target_display"]
UNIT_SYSTEM = "unit"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10GM = "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
OPS = "http://fhir.de/CodeSystem/bfarm/ops"
UCUM = "http://unitsofmeasure.org"

SYSTEM_ALIASES = {
    "LN": LOINC, "LOINC": LOINC,
    "SCT": SNOMED, "SNOMED": SNOMED, "SNOMED-CT": SNOMED,
    "ICD-10-GM": ICD10GM, "I10GM": ICD10GM, "ICD10GM": ICD10GM,
    "OPS": OPS,
    "UCUM": UCUM,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ATC": "http://fhir.de/CodeSystem/bfarm/atc",
    "CVX": "http://hl7.org/fhir/sid/cvx",
}


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str = ""

    def as_fhir(self) -> dict[str, str]:
        coding = {"system": self.system, "code": self.code}
        if self.display:
            coding["display"] = self.display
        return coding


@dataclass(slots=True)
class Terminology:
    """Lookups of one feed's maps. An empty Terminology maps nothing."""

    _by_system: dict[tuple[str, str], list[Coding]] = field(default_factory=dict)
    _any_system: dict[str, list[Coding]] = field(default_factory=dict)

    def lookup(self, system: str, code: str) -> list[Coding]:
        """Target codings for a local (system, code); [] when unmapped."""
        return self._by_system.get((system, code)) or self._any_system.get(code) or []

    def unit(self, unit: str) -> Coding | None:
        """The UCUM coding for a local unit string, if mapped."""
        found = self.lookup(UNIT_SYSTEM, unit)
        return found[0] if found else None

    def add(self, source_system: str, source_code: str, target: Coding) -> None:
        if source_system:
            self._by_system.setdefault((source_system, source_code), []).append(target)
        else:
            self._any_system.setdefault(source_code, []).append(target)

    def __len__(self) -> int:
        return sum(map(len, self._by_system.values())) + sum(map(len, self._any_system.values()))

    @classmethod
    def load(cls, paths: Iterable[Path]) -> Terminology:
        """Load and merge CSV maps. :raises ConfigError: naming the file and line of a problem."""
        terminology = cls()
        for path in paths:
            _load_file(terminology, path)
        return terminology


def resolve_system(name: str) -> str:
    return SYSTEM_ALIASES.get(name.strip().upper(), name.strip())


def _load_file(terminology: Terminology, path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read terminology map: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: terminology map is not UTF-8") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"{path}: terminology map is empty")
    rows = csv.reader([line for _, line in lines])
    header = [cell.strip() for cell in next(rows)]
    if header[:4] != HEADER[:4]:
        raise ConfigError(f"{path}:{lines[0][0]}: header must be {','.join(HEADER)}")
    for (number, _), row in zip(lines[1:], rows, strict=True):
        if len(row) < 4 or len(row) > 5:
            raise ConfigError(f"{path}:{number}: expected 4 or 5 columns, found {len(row)}")
        source_system, source_code, target_system, target_code = (cell.strip() for cell in row[:4])
        display = row[4].strip() if len(row) == 5 else ""
        if not source_code or not target_system or not target_code:
            raise ConfigError(f"{path}:{number}: source_code, target_system and target_code are required")
        system = resolve_system(target_system)
        if ":" not in system:
            raise ConfigError(f"{path}:{number}: target_system {target_system!r} is neither a URI nor a "
                              f"known alias ({', '.join(sorted(SYSTEM_ALIASES))})")
        terminology.add(source_system, source_code, Coding(system, target_code, display))
