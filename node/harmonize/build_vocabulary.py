"""Derive the node's vocabulary tables from the official HL7 v2-to-FHIR concept maps (CSV).

Run once when the reference changes:

    python -m node.harmonize.build_vocabulary ../shared/reference/v2-to-fhir/mappings/codesystems

It writes `node/harmonize/data/v2_concept_maps.json`: {map name: {v2 code: [fhir code, display, system]}},
which the converter loads at import (the node never needs `../shared` at run time). The tables are
Apache-2.0 (HL7 International); rows without a FHIR code (inactive or unmapped concepts) are left out,
so a lookup miss means "no standard mapping" and the converter keeps the v2 code as a local coding.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

OUTPUT = Path(__file__).with_name("data") / "v2_concept_maps.json"
_NAME = re.compile(r"^HL7 Concept Map_ (?P<name>.+?) - [^-]+\.csv$")


def read_concept_map(path: Path) -> dict[str, list[str]]:
    """One CSV: rows after the two header lines; v2 code in column 0, FHIR code in column 6, display in
    column 7 or 8 (the sheets differ), system in column 9."""
    table: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    for row in rows[2:]:
        row = [*row, *[""] * (12 - len(row))]
        code, fhir_code = row[0].strip(), row[6].strip()
        if not code or not fhir_code or code in table:
            continue
        display = row[7].strip() or row[8].strip()
        table[code] = [fhir_code, display, row[9].strip()]
    return table


def build(folder: Path) -> dict[str, dict[str, list[str]]]:
    maps: dict[str, dict[str, list[str]]] = {}
    for path in sorted(folder.glob("*.csv")):
        match = _NAME.match(path.name)
        if match:
            table = read_concept_map(path)
            if table:
                maps[match.group("name")] = table
    return maps


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m node.harmonize.build_vocabulary CODESYSTEMS_DIR", file=sys.stderr)
        return 2
    maps = build(Path(argv[0]))
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps(maps, ensure_ascii=False, sort_keys=True, indent=0) + "\n", encoding="utf-8")
    print(f"wrote {len(maps)} concept maps to {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
