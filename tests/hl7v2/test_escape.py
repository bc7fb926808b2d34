"""HL7 v2 escape sequences: every sequence of §2.7, the tolerant cases, and escape/unescape round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.hl7v2.escape import DEFAULT_ENCODING, Encoding, escape, unescape

ENC = DEFAULT_ENCODING
V27 = Encoding("|", "^", "~", "\\", "&", "#")
ODD = Encoding("#", "$", "*", "@", "!")  # MSH#$*@!: other separators, escape character "@"


def u(text: str, encoding: Encoding = ENC, charset: str = "utf-8") -> str:
    return unescape(text, encoding, charset)


@pytest.mark.parametrize(
    ("wire", "plain"),
    [
        (r"A\F\B", "A|B"),
        (r"A\S\B", "A^B"),
        (r"A\T\B", "A&B"),
        (r"A\R\B", "A~B"),
        (r"A\E\B", "A\\B"),
        (r"Meier \T\ Söhne", "Meier & Söhne"),
        ("".join(f"\\{letter}\\" for letter in "FSTRE"), "|^&~\\"),
    ],
)
def test_delimiter_escapes(wire: str, plain: str) -> None:
    assert u(wire) == plain


def test_delimiter_escapes_use_the_message_separators() -> None:
    assert u("x@F@y@S@z@T@w@R@v@E@", ODD) == "x#y$z!w*v@"
    assert u(r"x\F\y", ODD) == r"x\F\y"  # "\" is not this message's escape character


def test_truncation_escape_v27() -> None:
    assert u(r"ab\P\c", V27) == "ab#c"
    assert u(r"ab\P\c", ENC) == r"ab\P\c"  # no truncation character before v2.7: kept


@pytest.mark.parametrize(
    ("wire", "charset", "plain"),
    [
        ("\\X41\\", "utf-8", "A"),
        (r"M\XC3BC\ller", "utf-8", "Müller"),
        (r"M\XFC\ller", "iso8859-1", "Müller"),
        (r"M\Xfc\ller", "cp1252", "Müller"),
        (r"a\X0D0A\b", "ascii", "a\r\nb"),
        ("\\X\\", "utf-8", ""),
    ],
)
def test_hex_escapes_decode_in_the_message_charset(wire: str, charset: str, plain: str) -> None:
    assert u(wire, charset=charset) == plain


@pytest.mark.parametrize(
    ("wire", "charset"),
    [
        (r"M\XFC\ller", "utf-8"),  # not UTF-8
        ("\\X4\\", "utf-8"),  # odd number of digits
        ("\\X81\\", "cp1252"),  # undefined in cp1252
        ("\\XZZ\\", "utf-8"),  # not hex: not a sequence at all
        ("\\X41\\", "no-such-codec"),
    ],
)
def test_bad_hex_escapes_are_kept_literally(wire: str, charset: str) -> None:
    assert u(wire, charset=charset) == wire


@pytest.mark.parametrize(
    ("wire", "plain"),
    [
        (r"line 1\.br\line 2", "line 1\nline 2"),
        (r"a\.sp\b", "a\nb"),
        (r"a\.sp 3\b", "a\n\n\nb"),
        (r"a\.sp3\b", "a\n\n\nb"),
        (r"a\.sp +2\b", "a\n\nb"),
        (r"a\.sp 0\b", "ab"),
        (r"a\.ce\b", "a\nb"),
        (r"a\.sk 2\b", "a  b"),
        (r"a\.sk\b", "a b"),
        ("a\\.in +4\\b\\.in -4\\", "ab"),
        (r"a\.ti -2\b", "ab"),
        (r"\.fi\a\.nf\b", "ab"),
        (r"a\H\important\N\b", "aimportantb"),
    ],
)
def test_formatting_and_highlighting(wire: str, plain: str) -> None:
    assert u(wire) == plain


def test_repeat_counts_are_capped() -> None:
    assert u("\\.sp 999999999999999999999999\\") == "\n" * 99
    assert u("\\.sk 123\\") == " " * 99
    assert u("\\.sp 99\\") == "\n" * 99


@pytest.mark.parametrize("wire", [r"a\C2842\b", r"a\M2442\b", r"a\M244228\b", r"a\C2D41\b"])
def test_charset_switching_escapes_are_dropped(wire: str) -> None:
    assert u(wire) == "ab"


@pytest.mark.parametrize(
    "wire",
    [
        r"a\Zcustom\b",  # locally defined: kept, escape characters included
        "\\",
        "\\\\",
        "abc\\",
        "\\abc",
        r"C:\temp\dir",
        r"\f\ lowercase",
        r"\Q\ unknown",
        r"\.xx\ unknown command",
        r"\.BR\ uppercase command",
        r"\C28\ short charset escape",
    ],
)
def test_unknown_and_unterminated_sequences_are_kept(wire: str) -> None:
    assert u(wire) == wire


def test_stray_escape_character_costs_only_itself() -> None:
    # A sender forgot to escape a backslash right before a real sequence.
    assert u(r"C:\temp\F\x") == "C:\\temp|x"
    # A custom sequence consumes its closing escape character: what follows is plain text.
    assert u(r"\Zab\F\ ") == r"\Zab\F\ "


def test_fast_path_returns_the_same_object() -> None:
    text = "Müller^Hans no escape character"
    assert u(text) is text


def test_escape_replaces_every_special_character() -> None:
    assert escape("a|b^c&d~e\\f", ENC) == r"a\F\b\S\c\T\d\R\e\E\f"
    assert escape("x#y", V27) == r"x\P\y"
    assert escape("x#y", ENC) == "x#y"
    assert escape("1\r\n2", ENC) == r"1\X0D\\X0A\2"
    assert escape("Müller", ENC) == "Müller"


def test_encoding_characters_property() -> None:
    assert ENC.characters == "^~\\&"
    assert V27.characters == "^~\\&#"


# --- properties -----------------------------------------------------------------------------------

SEPARATORS = "|^~\\&#!@$*+%/:;=?"


@st.composite
def encodings(draw: st.DrawFn) -> Encoding:
    chars = draw(st.permutations(SEPARATORS))
    truncation = chars[5] if draw(st.booleans()) else ""
    return Encoding(chars[0], chars[1], chars[2], chars[3], chars[4], truncation)


TRICKY = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(SEPARATORS) + list("FSTREPXHNCMZ.brspcekintifn0123456789ABCDEFabcdef +-\r\n")),
        st.characters(codec="utf-8"),
    ),
    max_size=40,
)


@given(text=TRICKY, encoding=encodings())
def test_unescape_inverts_escape(text: str, encoding: Encoding) -> None:
    wire = escape(text, encoding)
    for separator in (encoding.field, encoding.component, encoding.repetition, encoding.subcomponent, "\r", "\n"):
        assert separator not in wire
    assert unescape(wire, encoding, "utf-8") == text


@given(
    text=TRICKY,
    encoding=encodings(),
    charset=st.sampled_from(["utf-8", "ascii", "iso8859-1", "cp1252", "gb18030", "iso8859-15"]),
)
def test_unescape_never_raises(text: str, encoding: Encoding, charset: str) -> None:
    result = unescape(text, encoding, charset)
    assert isinstance(result, str)
    assert len(result) <= len(text) * 99 + 1
