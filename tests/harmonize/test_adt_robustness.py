"""Property: an ADT message with arbitrary values in its fields converts or fails with a HarmonizeError
(never another exception, never an invalid FHIR resource from these mappers), and every reference of a
converted message resolves within its bundle."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.harmonize.context import INVALID_RESOURCE, HarmonizeError
from tests.harmonize.helpers import dangling_references, segment
from tests.harmonize.test_adt_helpers import run

EVENTS = ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28", "A31", "A40"]
BASE = [
    segment("PID", {1: "1", 3: "4711^^^K^PI", 5: "Müller^Hans", 7: "19600101", 8: "M"}),
    segment("PD1", {3: "Praxis^^123", 4: "H1^Hausarzt^Heinz"}),
    segment("NK1", {1: "1", 2: "Müller^Erika", 3: "SPO", 4: "Hauptstr. 1^^Marburg^^35037^DE",
                    5: "^PRN^PH^^^06421^12345", 15: "F", 16: "19620101"}),
    segment("MRG", {1: "0815^^^K^PI", 4: "0815", 5: "V0^^^K^VN", 7: "Müller^Hans"}),
    segment("PV1", {1: "1", 2: "O", 3: "STA^Zi^B^K", 6: "STA2^Zi2^B2^K", 7: "D1^Arzt^Anna^^^Dr.^^^K", 10: "MED",
                    19: "V1^^^K^VN", 36: "01", 40: "O", 44: "20240115083000", 45: "20240120083000"}),
    segment("PV2", {1: "STA3^Zi3", 3: "01^Grund^301", 8: "20240115", 9: "20240125", 11: "10",
                    13: "D2^Weber^Klaus", 25: "1"}),
    segment("DG1", {1: "1", 3: "K35.30^Appendizitis^I10GM", 5: "20240115", 6: "A", 15: "1", 16: "D3^X",
                    20: "D-1^K"}),
    segment("PR1", {1: "1", 3: "5-470.11^Appendektomie^OPS", 5: "20240115093000", 7: "45", 11: "C1^Wagner^Petra",
                    12: "C2^Bauer"}),
    segment("AL1", {1: "1", 2: "DA", 3: "PEN^Penicillin^L", 4: "SV", 5: "Urtikaria", 6: "20200101"}),
    segment("IN1", {1: "1", 2: "P1^Plan", 3: "104940005^^^^NII", 4: "AOK", 5: "S^^C^^1^DE", 7: "^PRN^PH^^^0800^1",
                    12: "20240101", 13: "20241231", 15: "GKV", 16: "Müller^Hans", 17: "SEL", 18: "19600101",
                    36: "A123", 49: "X1^^^AOK^NI"}),
    "ZBE|1^ORBIS|20240115083000||INSERT",
]
HOSTILE = st.sampled_from(['', '""', '0', '00000000', '-1', '1e309', '99999999999999', '2.1', 'Aug 15, 1942',
                           '20241301', '2024011512+9999', '202401150830', '^^^^', '&&&', '~~', 'ÄÖÜ€', 'P', 'O',
                           'E', 'SEL', 'D', 'A', 'F', 'U', 'x^y^z^w&v', '19600101', '20240115083000+0100'])
TEXT = st.characters(blacklist_characters="|\r\n", blacklist_categories=("Cs",))  # no separators, no lone surrogates
VALUE = st.one_of(HOSTILE, st.text(alphabet=TEXT, max_size=20))


@given(event=st.sampled_from(EVENTS),
       edits=st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(1, 55), VALUE), min_size=1, max_size=6),
       drop=st.sets(st.integers(1, len(BASE) - 1), max_size=3),
       z_segments=st.sampled_from(["ignore", "extension"]))
def test_mutated_adt_messages_convert_or_fail_with_a_harmonize_error(event, edits, drop, z_segments):
    segments = [s.split("|") for i, s in enumerate(BASE) if i not in drop]
    for index, field, value in edits:
        fields = segments[index % len(segments)]
        fields.extend([""] * (field + 1 - len(fields)))
        fields[field] = value
    body = "\r".join("|".join(fields) for fields in segments)
    raw = (f"MSH|^~\\&|KIS|K|E|D|20240120090000||ADT^{event}|1|P|2.5\rEVN|{event}|20240120090000\r{body}\r")
    try:
        result = run(raw.encode("utf-8"), z_segments=z_segments)
    except HarmonizeError as exc:
        assert exc.kind != INVALID_RESOURCE, exc.reason
        return
    assert dangling_references(result) == []
