"""HL7 v2 → FHIR R4 harmonization (see `convert.py` for the entry point)."""
