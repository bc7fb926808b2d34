"""Property: an order/result/immunization/document/appointment message with arbitrary values in the fields
of its order/result segments (PID stays valid: it is another mapper's) converts or fails with a
HarmonizeError (never another exception, never an invalid FHIR resource from these mappers), and every
reference of a converted message resolves within its bundle."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.harmonize.context import INVALID_RESOURCE, HarmonizeError
from tests.harmonize.helpers import dangling_references, segment
from tests.harmonize.test_results_helpers import PID, run

MESSAGES = {
    "ORU^R01": [
        PID,
        segment("ORC", {1: "RE", 2: "PL1^HIS", 3: "FL1^LAB", 5: "CM", 9: "20240115080000", 12: "D1^Arzt^Anton"}),
        segment("OBR", {1: "1", 2: "PL1^HIS", 3: "FL1^LAB", 4: "24326-1^Elektrolyte^LN", 7: "20240115073000",
                        22: "20240115083015", 24: "CH", 25: "F"}),
        "NTE|1||Kommentar",
        segment("OBX", {1: "1", 2: "NM", 3: "2951-2^Natrium^LN", 5: "140", 6: "mmol/L^^UCUM", 7: "135-145",
                        8: "N", 11: "F", 14: "20240115073000", 16: "D2^Labor^Lena", 23: "Labor GmbH"}),
        segment("OBX", {1: "2", 2: "SN", 3: "X^Titer^L", 5: "^1^:^128", 11: "F"}),
        segment("OBX", {1: "3", 2: "CWE", 3: "Y^Keim^L", 5: "3092008^S. aureus^SCT", 11: "F"}),
        segment("SPM", {1: "1", 2: "S1&HIS^S2&LAB", 4: "BLD", 12: "5^mL&&UCUM", 17: "20240115070000", 18: "20240115"}),
    ],
    "OML^O21": [
        PID,
        segment("ORC", {1: "NW", 2: "PL2^HIS", 9: "20240115080000", 12: "D1^Arzt^Anton", 29: "O"}),
        segment("OBR", {1: "1", 2: "PL2^HIS", 4: "GLU^Glukose^L", 5: "S", 6: "20240115100000", 11: "G"}),
        segment("OBX", {1: "1", 2: "ST", 3: "Q1^Frage^L", 5: "ja", 11: "F"}),
        segment("SPM", {1: "1", 2: "S3", 4: "SER", 7: "VENIP", 17: "20240115070000^20240115071000", 20: "Y"}),
    ],
    "VXU^V04": [
        PID,
        segment("ORC", {1: "RE", 3: "IZ1^EHR", 12: "D1^Arzt^Anton"}),
        segment("RXA", {1: "0", 2: "1", 3: "20240110", 5: "140^Influenza^CVX", 6: "0.5", 7: "mL^^UCUM",
                        9: "00^New^NIP001", 10: "N1^Pflege^Paula", 15: "L1", 16: "20241231", 17: "SKB^GSK^MVX",
                        20: "CP", 21: "A"}),
        segment("RXR", {1: "IM^^HL70162", 2: "LD^^HL70163"}),
        segment("OBX", {1: "1", 2: "CE", 3: "64994-7^Eligibility^LN", 5: "V01^Not VFC^HL70064", 11: "F"}),
    ],
    "MDM^T02": [
        "EVN|T02|20240115090000",
        PID,
        segment("ORC", {1: "NW", 2: "PL3^HIS"}),
        segment("OBR", {1: "1", 2: "PL3^HIS", 4: "18748-4^Bildgebung^LN"}),
        segment("TXA", {1: "1", 2: "DS", 3: "TX", 4: "20240115083000", 6: "20240115084500", 9: "D1^Arzt^Anton",
                        12: "DOC1^KIS", 17: "AU", 18: "R", 19: "AV"}),
        segment("OBX", {1: "1", 2: "TX", 3: "T^Text^L", 5: "Zeile", 11: "F"}),
        segment("OBX", {1: "2", 2: "ED", 3: "P^PDF^L", 5: "^AP^PDF^Base64^JVBERi0xLjQK", 11: "F"}),
    ],
    "SIU^S12": [
        segment("SCH", {1: "A1^HIS", 2: "A2^RIS", 7: "ROUTINE", 8: "Normal^^HL70277", 9: "30", 10: "min",
                        11: "^^30^20240120090000^20240120093000", 25: "Booked"}),
        "NTE|1||Hinweis",
        PID,
        "RGS|1|A",
        segment("AIS", {1: "1", 2: "A", 3: "71651007^Mammographie^SCT", 4: "20240120090000", 7: "30", 8: "min"}),
        segment("AIG", {1: "1", 2: "A", 3: "G1^Geraet^L", 4: "EQ^Equipment^L", 8: "20240120090000"}),
        segment("AIL", {1: "1", 2: "A", 3: "RAD^R1^^KLINIK", 6: "20240120090000", 9: "30", 10: "min"}),
        segment("AIP", {1: "1", 2: "A", 3: "D5^Radiologe^Rita", 4: "RAD^^L", 6: "20240120090000", 12: "Booked"}),
    ],
}
HOSTILE = st.sampled_from(['', '""', '0', '00000000', '-1', '1e309', '99999999999999', '2.1', 'Aug 15, 1942',
                           '20241301', '2024011512+9999', '202401150830', '^^^^', '&&&', '~~', 'ÄÖÜ€', 'NM', 'SN',
                           'ED', 'TX', 'FT', 'DT', 'TS', 'TM', 'CWE', 'RP', 'NA', 'F', 'C', 'X', 'D', 'RE', 'PA',
                           '<^5', '^1^-^', '^1^:^0', '>=^x', '^AP^PDF^Base64^@@', '^^^Hex^ABC', '<0.5', '3.5-5.0',
                           'x^y^z^w&v', '19600101', '20240115083000+0100', '1430', '2599', '\\.br\\', 'DR', 'NR',
                           'VR', 'DTM', 'IS', 'CE', 'A  1', '20240101^20240102', '1^2', 'Cancelled', 'AV', 'OB'])
VALUE = st.one_of(HOSTILE, st.text(alphabet=st.characters(blacklist_characters="|\r\n", blacklist_categories=("Cs",)),
                                   max_size=20))


@given(kind=st.sampled_from(sorted(MESSAGES)),
       edits=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 30), VALUE), min_size=1, max_size=6),
       drop=st.sets(st.integers(0, 9), max_size=2))
def test_mutated_messages_convert_or_fail_with_a_harmonize_error(kind, edits, drop):
    base = MESSAGES[kind]
    segments = [s.split("|") for i, s in enumerate(base) if i not in drop or s.startswith(("PID", "SCH"))]
    ours = [fields for fields in segments if fields[0] not in ("PID", "EVN")]  # PID/EVN: other mappers
    for index, field, value in edits:
        fields = ours[index % len(ours)]
        fields.extend([""] * (field + 1 - len(fields)))
        fields[field] = value
    body = "\r".join("|".join(fields) for fields in segments)
    raw = f"MSH|^~\\&|LAB|L|E|D|20240120090000||{kind}|1|P|2.5.1\r{body}\r"
    try:
        result = run(raw.encode("utf-8"))
    except HarmonizeError as exc:
        assert exc.kind != INVALID_RESOURCE, exc.reason
        return
    assert dangling_references(result) == []
