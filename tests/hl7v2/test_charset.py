"""Charset resolution: umlauts survive declared, undeclared and mis-declared encodings."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from node.errors import HL7HeaderError
from node.hl7v2.charset import codec_for_charset, codec_name, decode_message, resolve_charset
from node.hl7v2.header import read_header

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"
CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "hl7v2"
FALLBACKS = ["utf-8", "iso-8859-1"]


def message(msh18: str, name: str, encoding: str) -> bytes:
    return (f"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||{msh18}\rPID|1||1||{name}^Hans\r").encode(encoding)


def resolve(raw: bytes, forced: str | None = None) -> str:
    return resolve_charset(read_header(raw).charset_declared, raw, forced=forced, fallbacks=FALLBACKS)


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        ("ASCII", "ascii"),
        ("8859/1", "iso8859-1"),
        ("8859/2", "iso8859-2"),
        ("8859/15", "iso8859-15"),
        ("8859/9", "iso8859-9"),
        ("UNICODE UTF-8", "utf-8"),
        ("unicode utf-8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("utf8", "utf-8"),
        ("UNICODE", "utf-8"),
        ("ISO-8859-1", "iso8859-1"),
        ("iso_8859-15", "iso8859-15"),
        (" 8859/1 ", "iso8859-1"),
        ("ISO IR6", "ascii"),
        ("", None),
        ("KLINGON", None),
        ("UNICODE UTF-16", None),
    ],
)
def test_table_0211_mapping(declared: str, codec: str | None) -> None:
    assert codec_for_charset(declared) == codec


def test_codec_name_accepts_python_names_and_refuses_unknown() -> None:
    assert codec_name("latin-1") == "iso8859-1"
    assert codec_name("8859/15") == "iso8859-15"
    with pytest.raises(LookupError):
        codec_name("no-such-codec")


@pytest.mark.parametrize(
    ("msh18", "encoding", "expected"),
    [
        ("8859/1", "iso-8859-1", "iso8859-1"),
        ("8859/15", "iso-8859-15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8", "utf-8"),
        ("", "utf-8", "utf-8"),  # undeclared: first fallback
        ("", "iso-8859-1", "iso8859-1"),  # undeclared, not UTF-8: second fallback
        ("8859/1", "utf-8", "utf-8"),  # the German feed mistake
        ("8859/15", "utf-8", "utf-8"),
        ("UNICODE UTF-8", "iso-8859-1", "iso8859-1"),  # declared UTF-8, bytes are not
        ("ASCII", "utf-8", "utf-8"),
        ("KLINGON", "utf-8", "utf-8"),  # unknown declaration: fallbacks
    ],
)
def test_mueller_survives(msh18: str, encoding: str, expected: str) -> None:
    raw = message(msh18, "Müller", encoding)
    codec = resolve(raw)
    assert codec == expected
    assert "Müller^Hans" in decode_message(raw, codec)


def test_euro_sign_needs_8859_15() -> None:
    raw = message("8859/15", "M€ller", "iso-8859-15")
    assert "M€ller" in decode_message(raw, resolve(raw))


def test_ascii_message_keeps_declared_codec() -> None:
    raw = message("8859/1", "Mueller", "ascii")
    assert resolve(raw) == "iso8859-1"


def test_forced_charset_wins() -> None:
    raw = message("8859/1", "Müller", "utf-8")
    assert resolve(raw, forced="iso-8859-1") == "iso8859-1"
    assert resolve(raw, forced="UNICODE UTF-8") == "utf-8"


def test_forced_charset_that_does_not_decode_is_an_error() -> None:
    raw = message("", "Müller", "iso-8859-1")
    with pytest.raises(HL7HeaderError) as info:
        resolve(raw, forced="utf-8")
    assert info.value.code == 102


def test_nothing_decodes_unknown_declaration_is_103() -> None:
    raw = message("KLINGON", "Müller", "iso-8859-1")
    with pytest.raises(HL7HeaderError) as info:
        resolve_charset("KLINGON", raw, forced=None, fallbacks=["utf-8"])
    assert info.value.code == 103
    assert "MSH-18" in info.value.reason


def test_nothing_decodes_is_102() -> None:
    raw = message("UNICODE UTF-8", "Müller", "iso-8859-1")
    with pytest.raises(HL7HeaderError) as info:
        resolve_charset("UNICODE UTF-8", raw, forced=None, fallbacks=["ascii"])
    assert info.value.code == 102
    assert "Müller" not in info.value.reason


def test_decode_message_is_strict() -> None:
    with pytest.raises(HL7HeaderError) as info:
        decode_message("Müller".encode("latin-1"), "utf-8")
    assert info.value.code == 102


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("adt_a01_v25_utf8.hl7", "Müller^Hans"),
        ("adt_a01_v25_latin1.hl7", "Müller^Hans"),
        ("adt_a04_v25_enhanced.hl7", "Köhler^Jörg"),
        ("oru_r01_v251.hl7", "Weiß^Anna"),
    ],
)
def test_fixture_names_survive(name: str, text: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    assert text in decode_message(raw, resolve(raw))


# --- the shared corpus --------------------------------------------------------------------------


def corpus_manifest() -> list[tuple[Path, dict[str, str]]]:
    if not CORPUS.is_dir():
        pytest.skip(f"HL7 v2 corpus not available at {CORPUS.resolve()} (clone without ../shared)")
    rows = []
    for manifest in sorted(CORPUS.glob("*/MANIFEST.tsv")):
        with manifest.open(encoding="utf-8", newline="") as handle:
            rows += [(manifest.parent / row["file"], row) for row in csv.DictReader(handle, delimiter="\t")]
    return rows


@pytest.mark.corpus
def test_every_corpus_message_decodes_without_replacement_characters() -> None:
    rows = corpus_manifest()
    assert len(rows) == 200
    for path, row in rows:
        raw = path.read_bytes()
        codec = resolve_charset(row["msh18"], raw, forced=None, fallbacks=FALLBACKS)
        text = decode_message(raw, codec)
        assert "\ufffd" not in text
        assert "Ã" not in text, path.name  # UTF-8 umlauts decoded as Latin-1 ("MÃ¼ller")
        if row["bytes_encoding"] == "utf-8":
            assert codec == "utf-8", path.name  # includes those declaring 8859/1
        elif row["bytes_encoding"].startswith("non-utf-8"):
            assert codec == "iso8859-1", path.name


@pytest.mark.corpus
def test_corpus_latin1_message_and_its_utf8_twin_decode_alike() -> None:
    folder = CORPUS / "diz-unimr-marburg"
    if not folder.is_dir():
        pytest.skip(f"corpus folder not available at {folder.resolve()}")
    latin = (folder / "hl7-to-kafka__hl7v2-oru-r01-sample__ORU_R01.hl7").read_bytes()
    utf8 = (folder / "hl7-to-kafka__hl7v2-oru-r01-sample_utf8__ORU_R01.hl7").read_bytes()
    latin_text = decode_message(latin, resolve(latin))
    utf8_text = decode_message(utf8, resolve(utf8))
    assert "ü" in latin_text
    # The twin differs only by MSH-17/18; every other segment must decode to the same text.
    assert latin_text.split("\r")[1:] == utf8_text.split("\r")[1:]
