"""Helpers for the ADT conversion tests (synthetic ADT messages and their conversion; look-up and reference
checks are in tests.harmonize.helpers), and tests of the helpers themselves. Expectations in the test_adt_*
modules are written by hand from the v2-to-FHIR mapping tables (../shared/reference/v2-to-fhir/mappings),
not from converter output."""

from __future__ import annotations

import pytest

from node.harmonize.convert import ConversionResult
from tests.harmonize.helpers import assert_references_resolve, bundle_dangling_references, convert_utf8, segment

SITE = "uk-test"
MSH_TIME = "20240115090000"


def message(event: str, *segments: str, msh_time: str = MSH_TIME, control_id: str = "MSG0001") -> bytes:
    """An ADT message (v2.5, from a German KIS) with MSH and EVN, then `segments`."""
    msh = f"MSH|^~\\&|KIS|KLINIKUM|EDGE|DIZ|{msh_time}||ADT^{event}|{control_id}|P|2.5|||||DE||DE"
    evn = f"EVN|{event}|{msh_time}"
    return "\r".join([msh, evn, *segments]).encode("utf-8") + b"\r"


PID = segment("PID", {1: "1", 3: "4711^^^KLINIKUM^PI", 5: "Müller^Hans", 7: "19600101", 8: "M",
                      11: "Hauptstr. 1^^Marburg^^35037^DE"})


def pv1(**fields: str) -> str:
    """A PV1; keyword `f<n>` sets PV1-n (e.g. f2="I", f19="V1001^^^KLINIKUM^VN")."""
    return segment("PV1", {1: "1", **{int(k[1:]): v for k, v in fields.items()}})


def run(raw: bytes, *, site_id: str = SITE, z_segments: str = "ignore") -> ConversionResult:
    return convert_utf8(raw, site_id=site_id, z_segments=z_segments)


# -- tests of the helpers ----------------------------------------------------------------------------

def test_segment_places_fields_by_number():
    assert segment("PV1", {2: "I", 5: "x"}) == "PV1||I|||x"


def test_dangling_reference_is_found_and_resolving_one_is_not():
    bundle = {"entry": [
        {"request": {"url": "Patient/p1"}, "resource": {"resourceType": "Patient", "id": "p1"}},
        {"request": {"url": "Encounter/e1"},
         "resource": {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"},
                      "location": [{"location": {"reference": "Location/l1"}}]}},
    ]}
    assert bundle_dangling_references(bundle) == ["Location/l1"]


def test_a_synthetic_message_converts():
    result = run(message("A01", PID, pv1(f2="I", f19="V1^^^KLINIKUM^VN", f44="20240115083000")))
    assert {r["resourceType"] for r in result.resources} == {"Patient", "Encounter"}
    assert_references_resolve(result)


@pytest.mark.parametrize("event", ["A01", "A28"])
def test_message_builder_sets_msh_9(event):
    assert f"ADT^{event}|" in message(event, PID).decode()
