"""Every message of the shared corpus parses; cross-checks against a naive split, the light MSH read
and python-hl7 (PID-3, PID-5)."""

from __future__ import annotations

import re
from pathlib import Path

import hl7
import pytest

from node.errors import HL7HeaderError
from node.hl7v2.charset import resolve_charset
from node.hl7v2.header import read_header, read_header_lenient
from node.hl7v2.parser import Message, parse_message
from tests.conftest import corpus_dir

pytestmark = pytest.mark.corpus

DOUBLED_ESCAPE = "diz-unimr-marburg/hl7-to-kafka__hl7v2-mllp-sample__ORU_R01.hl7"
"""`MSH|^~\\\\&|`: read_header rejects it (102); the parser reads it as `^~\\&`; python-hl7 takes the second
backslash as the subcomponent separator, so it is left out of the python-hl7 comparison."""

_LINES = re.compile(r"\r\n|\r|\n")
_BASIC_ESCAPE = re.compile(r"\\[FSTRE]\\")


def corpus() -> list[tuple[str, bytes]]:
    root = corpus_dir("hl7v2")
    files = sorted(root.glob("*/*.hl7"))
    assert len(files) == 200
    return [(path.relative_to(root).as_posix(), path.read_bytes()) for path in files]


def charset_of(raw: bytes) -> str:
    header = read_header_lenient(raw)
    assert header is not None
    return resolve_charset(header.charset_declared, raw, forced=None, fallbacks=["utf-8", "iso8859-1"])


def naive_ids(text: str) -> list[str]:
    separator = text[3]
    return [line.split(separator)[0] for line in _LINES.split(text) if line.strip()]


def test_every_corpus_message_parses() -> None:
    for name, raw in corpus():
        charset = charset_of(raw)
        message = parse_message(raw, charset)
        text = raw.decode(charset)
        assert [s.id for s in message.segments] == naive_ids(text), name
        try:
            header = read_header(raw)
        except HL7HeaderError as error:
            assert (name, error.code) == (DOUBLED_ESCAPE, 102)
            header = read_header_lenient(raw)  # type: ignore[assignment]
            assert header is not None
        assert message.control_id == header.control_id, name
        assert (message.message_code, message.trigger_event) == (header.message_code, header.trigger_event), name
        assert message.version == header.version, name
        separator = message.encoding.field
        for segment in message.segments:
            # The lazy split loses nothing: the fields put back together are the segment.
            fields = segment.fields_raw()
            if segment.id == "MSH":
                assert separator.join(["MSH", *fields[1:]]) == segment.raw
            else:
                assert separator.join([segment.id, *fields]) == segment.raw, name


def test_german_corpus_values() -> None:
    messages = dict(corpus())
    raw = messages["diz-unimr-marburg/hl7-to-kafka__hl7v2-oru-r01-sample__ORU_R01.hl7"]
    latin1, utf8 = (
        parse_message(raw, charset_of(raw)),
        parse_message(
            messages["diz-unimr-marburg/hl7-to-kafka__hl7v2-oru-r01-sample_utf8__ORU_R01.hl7"],
            "utf-8",
        ),
    )
    assert latin1.charset == "iso8859-1"
    for message in (latin1, utf8):
        pid = message.first("PID")
        assert pid is not None
        assert "ü" in pid.value(5) + pid.value(5, 2)
    doubled = parse_message(messages[DOUBLED_ESCAPE], "ascii")
    assert doubled.encoding.characters == "^~\\&"
    assert len(doubled.all("OBX")) == 14


def _hl7_components(rep: object) -> list[str]:
    """python-hl7's components of one repetition as wire text (it leaves a level unsplit, as a str, when
    the level's separator does not occur)."""
    if isinstance(rep, str):
        return [rep]
    return [str(component) for component in rep]  # type: ignore[attr-defined]


def test_pid3_pid5_agree_with_python_hl7() -> None:
    compared_messages = compared_values = 0
    for name, raw in corpus():
        if name == DOUBLED_ESCAPE:
            continue
        charset = charset_of(raw)
        try:
            theirs = hl7.parse(raw.decode(charset))
            their_pids = theirs.segments("PID")
        except (KeyError, hl7.ParseException):
            continue  # no PID, or python-hl7 cannot parse it
        ours: Message = parse_message(raw, charset)
        our_pids = ours.all("PID")
        assert len(our_pids) == len(their_pids), name
        compared_messages += 1
        subcomponent = ours.encoding.subcomponent
        for our_pid, their_pid in zip(our_pids, their_pids, strict=True):
            for n in (3, 5):
                field = our_pid.field(n)
                their_field = their_pid[n] if n < len(their_pid) else None
                if field.is_empty:
                    assert their_field is None or str(their_field) == "", name
                    continue
                assert their_field is not None and str(their_field) == field.raw, name
                assert len(field.repetitions) == len(their_field), name
                for rep, their_rep in zip(field.repetitions, their_field, strict=True):
                    their_components = _hl7_components(their_rep)
                    assert rep.components_raw() == their_components, name
                    for i, wire in enumerate(their_components, start=1):
                        first = wire.split(subcomponent)[0]
                        if "\\" in _BASIC_ESCAPE.sub("", first):
                            continue  # sequences python-hl7 unescapes differently
                        # python-hl7 does not unescape when parsing: compare with its own unescape().
                        assert rep.component(i) == theirs.unescape(first), name
                        compared_values += 1
    assert compared_messages >= 150
    assert compared_values >= 1000


def test_corpus_messages_are_read_lazily() -> None:
    for _, raw in corpus()[:20]:
        message = parse_message(raw, charset_of(raw))
        assert all(segment._parts is None for segment in message.segments)


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_corpus_with_other_segment_ends(end: str) -> None:
    for name, raw in corpus():
        charset = charset_of(raw)
        expected = [s.raw for s in parse_message(raw, charset).segments]
        converted = raw.replace(b"\r", end.encode()) + b"\r\n\r\n"
        assert [s.raw for s in parse_message(converted, charset).segments] == expected, Path(name).name
