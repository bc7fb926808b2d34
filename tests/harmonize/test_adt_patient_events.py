"""Patient-level ADT events: A28/A31 (Patient only), A40 merge (MRG; FHIR R4 Patient.link), and the rule
that error reasons name segment and field, never the message's values."""

from __future__ import annotations

import pytest

from node.harmonize.context import HarmonizeError
from tests.harmonize.helpers import assert_references_resolve, of_type, one, segment
from tests.harmonize.test_adt_helpers import PID, message, pv1, run


def test_a28_add_person_is_patient_only():
    # The A28 structure requires a PV1; one without a visit number makes no Encounter (an admit date
    # alone does not make a patient-level event a visit).
    result = run(message("A28", PID, pv1(f2="N", f44="20240115083000")))
    assert [r["resourceType"] for r in result.resources] == ["Patient"]
    patient = one(result, "Patient")
    assert patient["name"] == [{"family": "Müller", "given": ["Hans"]}]
    assert result.partition_key == patient["id"]


def test_a31_update_person_with_a_visit_number_also_writes_the_encounter():
    result = run(message("A31", PID, pv1(f2="I", f19="V1001^^^KLINIKUM^VN", f44="20240115083000")))
    encounter = one(result, "Encounter")
    assert encounter["subject"] == {"reference": f"Patient/{one(result, 'Patient')['id']}"}
    assert encounter["status"] == "in-progress"  # no event map entry: the PV1's own status
    admitted = one(run(message("A01", PID, pv1(f2="I", f19="V1001^^^KLINIKUM^VN", f44="20240115083000"))),
                   "Encounter")
    assert encounter["id"] == admitted["id"]


def test_a31_same_patient_id_as_a01():
    updated = one(run(message("A31", PID, pv1(f2="N"))), "Patient")
    admitted = one(run(message("A01", PID, pv1(f2="I", f19="V1"))), "Patient")
    assert updated["id"] == admitted["id"]


PRIOR_PID = segment("PID", {1: "1", 3: "0815^^^KLINIKUM^PI", 5: "Müller^Hans", 7: "19600101", 8: "M"})


def test_a40_merge_links_prior_and_surviving_patient():
    mrg = segment("MRG", {1: "0815^^^KLINIKUM^PI", 7: "Müller^Hans"})
    result = run(message("A40", PID, mrg))
    surviving_id = one(run(message("A28", PID)), "Patient")["id"]
    prior_id = one(run(message("A28", PRIOR_PID)), "Patient")["id"]  # the id the prior record had
    patients = {p["id"]: p for p in of_type(result, "Patient")}
    assert set(patients) == {surviving_id, prior_id}
    surviving, prior = patients[surviving_id], patients[prior_id]
    assert surviving["link"] == [{"other": {"reference": f"Patient/{prior_id}"}, "type": "replaces"}]
    assert prior["link"] == [{"other": {"reference": f"Patient/{surviving_id}"}, "type": "replaced-by"}]
    assert prior["active"] is False
    assert prior["identifier"][0]["value"] == "0815"
    assert prior["name"] == [{"family": "Müller", "given": ["Hans"]}]
    assert "active" not in surviving
    assert result.partition_key == surviving_id
    assert_references_resolve(result)


def test_a40_repeated_patient_groups_each_merge():
    other_pid = segment("PID", {1: "2", 3: "5000^^^KLINIKUM^PI", 5: "Schulz^Eva"})
    raw = message("A40", PID, segment("MRG", {1: "0815^^^KLINIKUM^PI"}),
                  other_pid, segment("MRG", {1: "5001^^^KLINIKUM^PI"}))
    result = run(raw)
    links = sorted(link["type"] for p in of_type(result, "Patient") for link in p.get("link", []))
    assert links == ["replaced-by", "replaced-by", "replaces", "replaces"]
    assert_references_resolve(result)


def test_a40_prior_from_mrg_4_when_mrg_1_is_empty_and_self_merge_makes_no_link():
    result = run(message("A40", PID, segment("MRG", {4: "0815^^^KLINIKUM"})))
    assert len(of_type(result, "Patient")) == 2
    same = run(message("A40", PID, segment("MRG", {1: "4711^^^KLINIKUM^PI"})))
    assert [p.get("link") for p in of_type(same, "Patient")] == [None]


def test_a40_without_prior_identifier_fails_naming_mrg_1():
    with pytest.raises(HarmonizeError) as caught:
        run(message("A40", PID, segment("MRG", {7: "Müller^Hans"})))
    assert "MRG-1" in caught.value.reason
    assert "Müller" not in caught.value.reason


def test_canary_bad_birth_date_reason_names_pid_7_not_the_value():
    canary = "31.02.1960-CANARY"
    bad = segment("PID", {1: "1", 3: "4711^^^KLINIKUM^PI", 5: "Müller^Hans", 7: canary})
    with pytest.raises(HarmonizeError) as caught:
        run(message("A01", bad, pv1(f2="I", f19="V1")))
    reason = caught.value.reason
    assert "PID-7" in reason
    assert canary not in reason and "CANARY" not in reason and "Müller" not in reason and "4711" not in reason


def test_clinical_segment_without_pid_is_a_structure_error():
    with pytest.raises(HarmonizeError) as caught:
        run(message("A01", segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM"})))
    assert caught.value.kind == "structure_violation"
    assert "DG1" in caught.value.reason and "K35" not in caught.value.reason


def test_a_second_patient_group_does_not_inherit_the_first_groups_encounter():
    other_pid = segment("PID", {1: "2", 3: "5000^^^KLINIKUM^PI", 5: "Schulz^Eva"})
    dg1 = segment("DG1", {1: "1", 3: "K35.30^Akute Appendizitis^I10GM"})
    result = run(message("A01", PID, pv1(f2="I", f19="V1001^^^KLINIKUM^VN"), other_pid, dg1))
    condition = one(result, "Condition")
    assert "encounter" not in condition
    assert condition["subject"] == {"reference": f"Patient/{one(run(message('A28', other_pid)), 'Patient')['id']}"}
