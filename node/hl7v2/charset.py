"""Which Python codec decodes a message: MSH-18 (HL7 table 0211), feed settings and the bytes themselves.

Umlauts must survive ("Müller" stays "Müller"), and German feeds are messy: many declare ``8859/1`` in
MSH-18 while their interface engine actually writes UTF-8, and some write ISO-8859-1 without declaring
anything. `resolve_charset` therefore checks the declaration against the bytes instead of trusting it.

Only ASCII-compatible codecs are supported (every MSH is read as ASCII bytes first, and MLLP framing
bytes must not occur inside the payload), so UTF-16/UTF-32 are deliberately not mapped.
Codec names returned are Python's canonical ones (``codecs.lookup(name).name``: ``utf-8``,
``iso8859-1``, ``iso8859-15``, ``ascii``, ...).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import Final

from node.errors import HL7HeaderError

DATA_TYPE_ERROR: Final = 102
TABLE_VALUE_NOT_FOUND: Final = 103

_SPELLING: Final = re.compile(r"[\s_\-/.]+")


def _key(value: str) -> str:
    """Spelling-insensitive lookup key: ``UNICODE UTF-8``, ``unicode_utf8`` -> ``UNICODEUTF8``."""
    key = _SPELLING.sub("", value.upper())
    return key[3:] if key.startswith("ISO") else key


_TABLE_0211: Final[dict[str, str]] = {
    # HL7 table 0211 values (and common spellings), keyed by _key(); values are Python codec names.
    "ASCII": "ascii",
    "USASCII": "ascii",
    "IR6": "ascii",  # "ISO IR6"
    "UNICODEUTF8": "utf-8",
    "UTF8": "utf-8",
    # Plain "UNICODE" (ISO/IEC 10646, deprecated) names no byte encoding; over a byte protocol
    # whose framing bytes may not occur in the payload, only UTF-8 is possible.
    "UNICODE": "utf-8",
    "LATIN1": "iso8859-1",
    "LATIN9": "iso8859-15",
    "GB180302000": "gb18030",
    "GB18030": "gb18030",
    "KSX1001": "euc_kr",
    "BIG5": "big5",
    "WINDOWS1252": "cp1252",
    "CP1252": "cp1252",
    **{f"8859{part}": f"iso8859-{part}" for part in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)},
}

_SINGLE_BYTE: Final = frozenset(name for name in _TABLE_0211.values() if name.startswith(("iso8859", "cp")))


_CODECS: dict[str, str | None] = {}
"""`codec_for_charset` by MSH-18 value as sent (a feed sends the same few): looked up once per message."""
_CODECS_MAX: Final = 64


def codec_for_charset(declared: str) -> str | None:
    """The Python codec for an MSH-18 value (HL7 table 0211, case- and spelling-insensitive).

    :returns: None if `declared` is empty or not a supported table 0211 value.
    """
    try:
        return _CODECS[declared]
    except KeyError:
        pass
    codec = _TABLE_0211.get(_key(declared)) if declared.strip() else None
    if len(declared) <= 32:  # bounded: MSH-18 is read from the wire
        if len(_CODECS) >= _CODECS_MAX:
            _CODECS.clear()
        _CODECS[declared] = codec
    return codec


def codec_name(name: str) -> str:
    """Canonical Python codec name for a table 0211 value or a Python codec name (feed settings).

    :raises LookupError: if it is neither (validate feed settings with this at start-up).
    """
    return codec_for_charset(name) or codecs.lookup(name).name


def resolve_charset(
    declared: str, raw: bytes, *, forced: str | None, fallbacks: Sequence[str]
) -> str:
    """The codec that decodes `raw`, a whole message whose MSH-18 says `declared`.

    In order:

    1. `forced` (a feed setting) wins over everything; it must decode `raw`.
    2. A known `declared` charset that decodes `raw` — except that when it is a single-byte charset
       (8859/x) and `raw` is nevertheless valid UTF-8 with multi-byte sequences, ``utf-8`` is returned.
       Why: single-byte charsets decode *any* bytes, so a wrong ``8859/1`` can never fail; yet real
       Latin-1 text almost never forms valid UTF-8 sequences (that needs pairs like ``Ã¼``), while
       engines that declare 8859/1 and write UTF-8 are common in German feeds. Without this, "Müller"
       would be stored as "MÃ¼ller".
    3. The first of `fallbacks` (table 0211 values or Python codec names, e.g.
       ``["utf-8", "iso-8859-1"]``) that decodes `raw`.

    Pure ASCII bytes take a fast path: every supported codec decodes them alike.

    :raises HL7HeaderError: 103 if `declared` is not a known table 0211 value and no fallback decodes;
        102 if the bytes decode with neither the forced, the declared nor any fallback codec.
    :raises LookupError: if `forced` or a fallback is not a codec name (a configuration error).
    """
    if forced:
        codec = codec_name(forced)
        if _decodes(raw, codec):
            return codec
        raise HL7HeaderError(DATA_TYPE_ERROR, "message bytes do not decode with the feed's forced charset")
    codec = codec_for_charset(declared)
    if codec is not None:
        if raw.isascii():
            return codec
        if codec in _SINGLE_BYTE and _decodes(raw, "utf-8"):
            return "utf-8"
        if _decodes(raw, codec):
            return codec
    for fallback in fallbacks:
        candidate = codec_name(fallback)
        if raw.isascii() or _decodes(raw, candidate):
            return candidate
    if declared.strip() and codec is None:
        raise HL7HeaderError(
            TABLE_VALUE_NOT_FOUND, "MSH-18 (character set) is not a supported table 0211 value"
        )
    raise HL7HeaderError(DATA_TYPE_ERROR, "message bytes do not decode with MSH-18 or any fallback charset")


def decode_message(raw: bytes, codec: str) -> str:
    """Decode a whole message with the codec `resolve_charset` chose.

    :raises HL7HeaderError: 102 if the bytes do not decode (strict: no replacement characters, which
        would silently corrupt names).
    """
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        raise HL7HeaderError(DATA_TYPE_ERROR, "message bytes do not decode with the chosen charset") from None


def _decodes(raw: bytes, codec: str) -> bool:
    try:
        raw.decode(codec)
    except UnicodeDecodeError:
        return False
    return True
