"""A real central FHIR transaction endpoint for tests (see tests.central.server)."""
