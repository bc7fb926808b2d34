"""The hot-path HL7 v2 parser: lazy, tolerant, and fast enough for the v2→FHIR converter's budget.

Usage::

    message = parse_message(row.payload, row.charset)      # bytes + the Python codec resolve_charset chose
    pid = message.first("PID")                              # Segment | None
    if pid is not None:
        family = pid.value(5)                               # PID-5.1.1, unescaped: "Müller"
        given = pid.value(5, 2)                             # PID-5.2
        for rep in pid.field(3).repetitions:                # PID-3 ~ repetitions
            mrn, authority = rep.component(1), rep.component(4)
            oid = rep.sub(4, 2)                             # PID-3.4.2 (HD universal id)
    for obx in message.all("OBX"):
        ...

API (all values are ``str``; "absent" is always ``""``, never None, never an exception)
----------------------------------------------------------------------------------------
``parse_message(raw, charset) -> Message``
    Decodes, finds the segments and reads MSH-1/MSH-2. Everything else is split on first access.
``Message``
    ``encoding`` (`Encoding`: ``field component repetition escape subcomponent truncation``), ``charset``
    (the codec), ``segments`` (all segments in order: Z-segments, unknown and malformed ones included),
    ``first(id) -> Segment | None``, ``all(id) -> list[Segment]``, ``len()``/iteration over segments,
    and MSH shortcuts: ``message_code`` (MSH-9.1), ``trigger_event`` (MSH-9.2), ``structure``
    (MSH-9.3), ``version`` (MSH-12.1) — these four stripped —, ``control_id`` (MSH-10 as sent, wire text,
    like `node.hl7v2.header.read_header`), ``sending_app``/``sending_facility``/``receiving_app``/
    ``receiving_facility`` (MSH-3..6, first component = HD namespace id), ``timestamp`` (MSH-7.1),
    ``processing_id`` (MSH-11.1), ``charset_declared`` (MSH-18, first repetition, stripped).
``Segment``
    ``id`` (text before the first field separator: ``"PID"``, ``"ZBE"``, or whatever a malformed line
    holds), ``position`` (1-based among the message's segments), ``label`` (``"OBX (segment 7)"``: safe
    for error reasons, the id is left out unless it looks like a segment id), ``raw`` (wire text),
    ``field(n) -> Field``, ``value(n, component=1, sub=1, rep=1) -> str``, ``raw_field(n) -> str``
    (wire text of field n), ``fields_raw() -> list[str]`` / ``fields() -> list[Field]`` (fields 1..len),
    ``len(segment)`` (number of fields on the wire, empty and trailing empty ones included).
    A Segment is always truthy (even with 0 fields): test ``first()`` results with ``is not None``.
``Field``
    ``raw`` (wire text, all repetitions), ``repetitions -> list[Rep]`` (``[]`` when empty; empty
    repetitions in the middle/end are kept, so list index = rep - 1), ``first() -> Rep`` (an empty Rep
    when the field is empty), ``value(component=1, sub=1, rep=1)``, ``is_empty``, ``is_null``.
``Rep`` (one repetition)
    ``raw``, ``component(i) -> str`` (the unescaped FIRST subcomponent of component i),
    ``sub(i, j) -> str`` (unescaped subcomponent j of component i), ``subcomponents(i) -> list[str]``,
    ``components() -> list[str]`` (first subcomponent of each, ``[]`` when empty),
    ``component_raw(i)``/``components_raw()`` (wire text with subcomponent separators kept),
    ``is_empty``, ``is_null``.

Numbering is HL7's, 1-based everywhere. For MSH (and FHS/BHS), ``field(1)`` is the field separator and
``field(2)`` the encoding characters, as the standard numbers them; both are returned literally (never
split, never unescaped). Index 0 or below raises ValueError (a programming error, not a data error);
any index past the end gives ``""`` / an empty Field / an empty Rep.

Values
------
* Unescaped (see `node.hl7v2.escape`) only when read, and only the leaf actually read.
* Not stripped: ``" Müller "`` stays as sent (the corpus has ``"1 "`` and ``"  4223161584"``).
* The HL7 explicit null ``""`` is returned as the two characters ``'""'`` (as python-hl7, hl7apy and
  HAPI do); test ``Field.is_null``/``Rep.is_null`` or compare with `NULL`.
* The v2.7+ truncation character inside a value is kept as data (``\\P\\`` unescapes to it).

Tolerance (this parser is fuzzed: for ANY bytes it returns a Message or raises HL7ParseError)
---------------------------------------------------------------------------------------------
* Segment ends ``\\r``, ``\\n`` and ``\\r\\n``; blank (whitespace-only) lines are skipped; leading
  whitespace/NUL/BOM before the MSH and before a segment id is skipped; NUL/BOM at the very end dropped.
* No splitting heuristics: a line that is not a segment (e.g. a report line a sender broke with a raw
  LF) becomes a Segment whose ``id`` is its text before the first field separator.
* Segments with fewer/more fields, fields with extra components, repetitions in any field: all fine.
* MSH-2 with 5 characters (v2.7+ truncation character) is accepted.
* MSH-2 with a doubled escape character (``MSH|^~\\\\&|``, a C/Java string literal copied verbatim; in
  the corpus) is read as ``^~\\&``: as 5 characters it would be invalid anyway (escape character ==
  subcomponent separator), so no valid message is misread. Note: `node.hl7v2.header.read_header` (the
  intake's strict MSH read) still rejects it with 102.

Errors: `HL7ParseError` (a `MessageError`) with an HL7 table 0357 ``code`` and a ``reason`` that names
segment/field positions and the codec, never values (``"message bytes do not decode as utf-8 in PID-5
(segment 3)"``): 100 when the first segment is not MSH (or there is none: batch envelopes FHS/BHS must
have been removed, as `node.hl7v2.batch` does); 102 when MSH-1 is alphanumeric/whitespace/missing, when
MSH-2 does not hold 4 or 5 distinct characters that are neither alphanumeric, whitespace nor MSH-1, or
when the bytes do not decode in `charset`. Nothing about MSH-9/10/12 is checked here (the intake's
`read_header` did that).

Writing values: `node.hl7v2.escape.escape(text, encoding)` is the inverse of the unescaping done here.

Performance notes: segments are split eagerly (one ``str.split``); a segment's fields on first access
(one ``str.split``); ``Segment.value`` then reads one leaf with at most three short splits and no
objects; ``Field``/``Rep`` objects are created only when asked for and cached per segment/field.
Lazy caches are filled idempotently, so concurrent readers (threads) at worst compute a value twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from node.errors import MessageError
from node.hl7v2.escape import DEFAULT_ENCODING, Encoding, unescape

__all__ = [
    "DATA_TYPE_ERROR",
    "DEFAULT_ENCODING",
    "NULL",
    "SEGMENT_SEQUENCE_ERROR",
    "Encoding",
    "Field",
    "HL7ParseError",
    "Message",
    "Rep",
    "Segment",
    "parse_message",
]

# HL7 table 0357 codes raised here.
SEGMENT_SEQUENCE_ERROR: Final = 100
DATA_TYPE_ERROR: Final = 102

NULL: Final = '""'
"""The HL7 explicit null (a field/component valued ``""``: "delete the value in the receiver")."""

_HEADER_IDS: Final = frozenset({"MSH", "FHS", "BHS"})
"""Segments whose field 1 is the field separator and field 2 the encoding characters."""

_JUNK: Final = " \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x00\ufeff"
"""Skipped before the MSH and before a segment id; a line of only these is blank."""

_TAIL_JUNK: Final = "\x00\ufeff"
_BOM_BYTES: Final = b"\xef\xbb\xbf"
_BOM_AS_LATIN1: Final = "\xef\xbb\xbf"
"""The UTF-8 BOM's bytes decoded as ISO-8859-x/cp1252 (``ï»¿``)."""
_LINE_JUNK: Final = _JUNK + "\xef"
"""First characters of a line that may start junk to skip."""

_LITERAL: Final = Encoding("\r", "\r", "\r", "\r", "\r")
"""Separators that cannot occur inside a segment (lines are split on CR): nothing splits, nothing
unescapes. Used for MSH-1 and MSH-2."""

_ENCODINGS: dict[str, Encoding] = {}
"""Validated encodings by MSH-1 + MSH-2 text (almost always one entry: ``|^~\\&``)."""
_ENCODINGS_MAX: Final = 64


class HL7ParseError(MessageError):
    """A message cannot be parsed at all. Carries an HL7 table 0357 error code.

    (Defined here, not in `node.errors`, which this module's owner may not edit.)

    :param code: 100 (no MSH first) or 102 (unusable MSH-1/MSH-2, bytes do not decode).
    :param reason: names segment/field positions and the codec, never values.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- leaves ---------------------------------------------------------------------------------------


def _leaf(raw: str, enc: Encoding, charset: str, component: int, sub: int, rep: int) -> str:
    """Unescaped subcomponent `sub` of component `component` of repetition `rep` of a field's wire text."""
    if not raw:
        return raw
    sep = enc.repetition
    if rep == 1:
        if sep in raw:
            raw = raw[: raw.index(sep)]
    elif rep > 1:
        parts = raw.split(sep, rep)
        if rep > len(parts):
            return ""
        raw = parts[rep - 1]
    else:
        raise ValueError("repetition numbers start at 1")
    sep = enc.component
    if component == 1:
        if sep in raw:
            raw = raw[: raw.index(sep)]
    elif component > 1:
        parts = raw.split(sep, component)
        if component > len(parts):
            return ""
        raw = parts[component - 1]
    else:
        raise ValueError("component numbers start at 1")
    sep = enc.subcomponent
    if sub == 1:
        if sep in raw:
            raw = raw[: raw.index(sep)]
    elif sub > 1:
        parts = raw.split(sep, sub)
        if sub > len(parts):
            return ""
        raw = parts[sub - 1]
    else:
        raise ValueError("subcomponent numbers start at 1")
    if enc.escape in raw:
        return unescape(raw, enc, charset)
    return raw


class Rep:
    """One repetition of a field: components, each of subcomponents. Split on first access."""

    __slots__ = ("_charset", "_components", "_enc", "raw")

    raw: str
    """Wire text of this repetition (escaped, with component and subcomponent separators)."""

    def __init__(self, raw: str, enc: Encoding, charset: str) -> None:
        self.raw = raw
        self._enc = enc
        self._charset = charset
        self._components: list[str] | None = None

    def _split(self) -> list[str]:
        components = self._components = self.raw.split(self._enc.component)
        return components

    def component_raw(self, i: int) -> str:
        """Wire text of component `i` (1-based), subcomponent separators and escapes kept; "" if absent."""
        components = self._components or self._split()
        if 0 < i <= len(components):
            return components[i - 1]
        if i < 1:
            raise ValueError("component numbers start at 1")
        return ""

    def components_raw(self) -> list[str]:
        """Wire text of every component (a new list); ``[]`` when the repetition is empty."""
        return list(self._components or self._split()) if self.raw else []

    def component(self, i: int) -> str:
        """Unescaped first subcomponent of component `i` (1-based); "" if absent.

        For a component without subcomponents that is the whole component; for ``HD`` in ``CX.4``
        (``KIS&1.2.3&ISO``) it is the namespace id (``KIS``); use `sub` or `subcomponents` for the rest.
        """
        components = self._components or self._split()
        if 0 < i <= len(components):
            text = components[i - 1]
        elif i < 1:
            raise ValueError("component numbers start at 1")
        else:
            return ""
        enc = self._enc
        sep = enc.subcomponent
        if sep in text:
            text = text[: text.index(sep)]
        if enc.escape in text:
            return unescape(text, enc, self._charset)
        return text

    def sub(self, i: int, j: int) -> str:
        """Unescaped subcomponent `j` of component `i` (both 1-based); "" if absent."""
        if j == 1:
            return self.component(i)
        if j < 1:
            raise ValueError("subcomponent numbers start at 1")
        parts = self.component_raw(i).split(self._enc.subcomponent, j)
        if j > len(parts):
            return ""
        return unescape(parts[j - 1], self._enc, self._charset)

    def subcomponents(self, i: int) -> list[str]:
        """Every subcomponent of component `i`, unescaped; ``[]`` when the component is empty/absent."""
        text = self.component_raw(i)
        if not text:
            return []
        enc, charset = self._enc, self._charset
        return [unescape(part, enc, charset) for part in text.split(enc.subcomponent)]

    def components(self) -> list[str]:
        """The unescaped first subcomponent of every component; ``[]`` when the repetition is empty."""
        if not self.raw:
            return []
        return [self.component(i) for i in range(1, len(self._components or self._split()) + 1)]

    @property
    def is_empty(self) -> bool:
        """True when this repetition holds no text at all."""
        return not self.raw

    @property
    def is_null(self) -> bool:
        """True when this repetition is the HL7 explicit null ``""``."""
        return self.raw == NULL

    def __repr__(self) -> str:  # never the value: it is patient data
        return f"<Rep {len(self.raw)} chars>"


class Field:
    """One field (all its repetitions). Repetitions are split on first access."""

    __slots__ = ("_charset", "_enc", "_repetitions", "raw")

    raw: str
    """Wire text of the whole field (escaped, all repetitions)."""

    def __init__(self, raw: str, enc: Encoding, charset: str) -> None:
        self.raw = raw
        self._enc = enc
        self._charset = charset
        self._repetitions: list[Rep] | None = None

    @property
    def repetitions(self) -> list[Rep]:
        """The repetitions in order (``[]`` when the field is empty). Cached: do not mutate the list."""
        repetitions = self._repetitions
        if repetitions is None:
            raw, enc, charset = self.raw, self._enc, self._charset
            repetitions = [Rep(part, enc, charset) for part in raw.split(enc.repetition)] if raw else []
            self._repetitions = repetitions
        return repetitions

    def first(self) -> Rep:
        """The first repetition, or an empty Rep when the field is empty."""
        repetitions = self.repetitions
        return repetitions[0] if repetitions else Rep("", self._enc, self._charset)

    def value(self, component: int = 1, sub: int = 1, rep: int = 1) -> str:
        """Unescaped subcomponent `sub` of component `component` of repetition `rep`; "" if absent."""
        return _leaf(self.raw, self._enc, self._charset, component, sub, rep)

    @property
    def is_empty(self) -> bool:
        """True when the field is absent or empty on the wire."""
        return not self.raw

    @property
    def is_null(self) -> bool:
        """True when the field is the HL7 explicit null ``""``."""
        return self.raw == NULL

    def __repr__(self) -> str:  # never the value: it is patient data
        return f"<Field {len(self.raw)} chars>"


class Segment:
    """One segment. Its fields are split on first access."""

    __slots__ = ("_charset", "_enc", "_fields", "_parts", "id", "position", "raw")

    id: str
    """Text before the first field separator: ``"PID"``, ``"ZBE"``; any text for malformed lines."""
    position: int
    """1-based position among the message's segments (blank lines not counted)."""
    raw: str
    """Wire text of the whole segment, without its terminator."""

    def __init__(self, segment_id: str, position: int, raw: str, enc: Encoding, charset: str) -> None:
        self.id = segment_id
        self.position = position
        self.raw = raw
        self._enc = enc
        self._charset = charset
        self._parts: list[str] | None = None
        self._fields: dict[int, Field] | None = None

    def _split(self) -> list[str]:
        """``[id, field 1, field 2, ...]``."""
        parts = self._parts = self.raw.split(self._enc.field)
        return parts

    def raw_field(self, n: int) -> str:
        """Wire text of field `n` (1-based; escaped, all repetitions); "" if absent."""
        parts = self._parts or self._split()
        if 0 < n < len(parts):
            return parts[n]
        if n < 1:
            raise ValueError("field numbers start at 1")
        return ""

    def value(self, n: int, component: int = 1, sub: int = 1, rep: int = 1) -> str:
        """Unescaped subcomponent `sub` of component `component` of repetition `rep` of field `n`.

        All numbers are 1-based; the defaults read the first of each (``value(5)`` is PID-5.1.1).
        Returns "" for anything absent; the text is not stripped.
        """
        parts = self._parts or self._split()
        if not 0 < n < len(parts):
            if n < 1:
                raise ValueError("field numbers start at 1")
            return ""
        raw = parts[n]
        if component != 1 or sub != 1 or rep != 1:
            return _leaf(raw, self._enc, self._charset, component, sub, rep)
        # Inlined _leaf for the most common read (x.1.1 of the first repetition): no call, no objects.
        enc = self._enc
        sep = enc.repetition
        if sep in raw:
            raw = raw[: raw.index(sep)]
        sep = enc.component
        if sep in raw:
            raw = raw[: raw.index(sep)]
        sep = enc.subcomponent
        if sep in raw:
            raw = raw[: raw.index(sep)]
        if enc.escape in raw:
            return unescape(raw, enc, self._charset)
        return raw

    def _encoding_of(self, n: int) -> Encoding:
        return self._enc

    def field(self, n: int) -> Field:
        """Field `n` (1-based), cached; an empty Field when the segment has no field `n`."""
        fields = self._fields
        if fields is None:
            fields = self._fields = {}
        found = fields.get(n)
        if found is None:
            found = fields[n] = Field(self.raw_field(n), self._encoding_of(n), self._charset)
        return found

    def fields_raw(self) -> list[str]:
        """Wire text of fields 1..len(self) (a new list)."""
        return (self._parts or self._split())[1:]

    def fields(self) -> list[Field]:
        """Fields 1..len(self)."""
        return [self.field(n) for n in range(1, len(self) + 1)]

    def __len__(self) -> int:
        """Number of fields on the wire (empty and trailing empty fields included)."""
        return len(self._parts or self._split()) - 1

    def __bool__(self) -> bool:
        return True

    @property
    def label(self) -> str:
        """``"OBX (segment 7)"`` for error reasons; just ``"segment 7"`` when the id does not look like a
        segment id (it might then be patient text from a broken line)."""
        segment_id = self.id
        if len(segment_id) == 3 and segment_id.isascii() and segment_id.isalnum():
            return f"{segment_id} (segment {self.position})"
        return f"segment {self.position}"

    def __repr__(self) -> str:  # never values: they are patient data
        return f"<Segment {self.label}>"


class _HeaderSegment(Segment):
    """MSH, FHS, BHS: field 1 is the field separator, field 2 the encoding characters (both literal)."""

    __slots__ = ()

    def _split(self) -> list[str]:
        separator = self._enc.field
        parts = self.raw.split(separator)
        parts.insert(1, separator)
        self._parts = parts
        return parts

    def value(self, n: int, component: int = 1, sub: int = 1, rep: int = 1) -> str:
        if n == 1 or n == 2:
            return _leaf(self.raw_field(n), _LITERAL, self._charset, component, sub, rep)
        return Segment.value(self, n, component, sub, rep)

    def _encoding_of(self, n: int) -> Encoding:
        return _LITERAL if n == 1 or n == 2 else self._enc


class Message:
    """A parsed message: its encoding characters and its segments (in order)."""

    __slots__ = ("_index", "charset", "encoding", "segments")

    encoding: Encoding
    """MSH-1 and MSH-2."""
    charset: str
    """The Python codec the message was decoded with (also used for ``\\Xhh\\`` escapes)."""
    segments: list[Segment]
    """Every segment in order, MSH first; Z-segments and unknown segments included."""

    def __init__(self, encoding: Encoding, charset: str, segments: list[Segment]) -> None:
        self.encoding = encoding
        self.charset = charset
        self.segments = segments
        self._index: dict[str, list[Segment]] | None = None

    def _build_index(self) -> dict[str, list[Segment]]:
        index: dict[str, list[Segment]] = {}
        for segment in self.segments:
            found = index.get(segment.id)
            if found is None:
                index[segment.id] = [segment]
            else:
                found.append(segment)
        self._index = index
        return index

    def first(self, segment_id: str) -> Segment | None:
        """The first segment with this id, or None."""
        found = (self._index or self._build_index()).get(segment_id)
        return found[0] if found else None

    def all(self, segment_id: str) -> list[Segment]:
        """Every segment with this id, in message order (a new list; ``[]`` if none)."""
        return list((self._index or self._build_index()).get(segment_id, ()))

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    @property
    def msh(self) -> Segment:
        """The MSH segment (always the first)."""
        return self.segments[0]

    @property
    def message_code(self) -> str:
        """MSH-9.1, stripped (``ADT``)."""
        return self.segments[0].value(9).strip()

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, stripped (``A01``); "" if absent."""
        return self.segments[0].value(9, 2).strip()

    @property
    def structure(self) -> str:
        """MSH-9.3, stripped (``ADT_A01``); "" if absent (common before v2.3.1)."""
        return self.segments[0].value(9, 3).strip()

    @property
    def version(self) -> str:
        """MSH-12.1, stripped (``2.5.1``)."""
        return self.segments[0].value(12).strip()

    @property
    def control_id(self) -> str:
        """MSH-10 as sent (wire text, not unescaped or split: what MSA-2 echoes)."""
        return self.segments[0].raw_field(10)

    @property
    def sending_app(self) -> str:
        """MSH-3.1 (HD namespace id), unescaped."""
        return self.segments[0].value(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1 (HD namespace id), unescaped."""
        return self.segments[0].value(4)

    @property
    def receiving_app(self) -> str:
        """MSH-5.1 (HD namespace id), unescaped."""
        return self.segments[0].value(5)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1 (HD namespace id), unescaped."""
        return self.segments[0].value(6)

    @property
    def timestamp(self) -> str:
        """MSH-7.1 as sent (``20240315103000+0100``); not parsed."""
        return self.segments[0].value(7)

    @property
    def processing_id(self) -> str:
        """MSH-11.1 (``P``, ``D``, ``T``)."""
        return self.segments[0].value(11)

    @property
    def charset_declared(self) -> str:
        """MSH-18, first repetition, stripped (table 0211, e.g. ``8859/1``); "" if not declared."""
        return self.segments[0].value(18).strip()

    def __repr__(self) -> str:  # no values beyond the message type
        return f"<Message {self.message_code}^{self.trigger_event}, {len(self.segments)} segments>"


# --- parsing --------------------------------------------------------------------------------------


def _encoding(key: str) -> Encoding:
    """The Encoding for MSH-1 + MSH-2 text (`key`), validated.

    :raises HL7ParseError: 102 when the characters are unusable.
    """
    separator, characters = key[:1], key[1:]
    if not separator or separator in _JUNK or separator.isalnum():
        raise HL7ParseError(DATA_TYPE_ERROR, "MSH-1 (field separator) is not a valid separator (segment 1)")
    if len(characters) >= 4 and characters[2] == characters[3]:
        # `^~\\&`: a doubled escape character (see the module docstring).
        characters = characters[:3] + characters[4:]
    if (
        len(characters) not in (4, 5)
        or len(set(characters)) != len(characters)
        or separator in characters
        or any(c in _JUNK or c.isalnum() for c in characters)
    ):
        raise HL7ParseError(
            DATA_TYPE_ERROR, "MSH-2 (encoding characters) must hold 4 or 5 distinct separators (segment 1)"
        )
    encoding = Encoding(separator, characters[0], characters[1], characters[2], characters[3], characters[4:])
    if len(_ENCODINGS) >= _ENCODINGS_MAX:
        _ENCODINGS.clear()
    _ENCODINGS[key] = encoding
    return encoding


def _decode_error_reason(raw: bytes, offset: int, charset: str) -> str:
    """Where the undecodable byte is: ``PID-5 (segment 3)``, never the bytes themselves."""
    prefix = raw[:offset].replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    lines = prefix.split(b"\r")
    position = sum(1 for line in lines[:-1] if line.strip(b" \t\x00")) + 1
    where = f"segment {position}"
    start = raw.lstrip(_JUNK[:-1].encode("latin-1"))
    if start.startswith(b"\xef\xbb\xbf"):
        start = start[3:]
    separator = start[3:4] if start.startswith(b"MSH") else b""
    current = lines[-1].lstrip(b" \t\x00")
    if separator and separator in current:
        segment_id, *fields = current.split(separator)
        if len(segment_id) == 3 and segment_id.isalnum():
            number = len(fields) + (1 if segment_id in (b"MSH", b"FHS", b"BHS") else 0)
            where = f"{segment_id.decode('ascii')}-{number} ({where})"
    return f"message bytes do not decode as {charset} in {where}"


def parse_message(raw: bytes, charset: str) -> Message:
    """Parse one HL7 v2 message.

    Decodes `raw` with `charset` (a Python codec name: the charset stored with the message, as chosen by
    `node.hl7v2.charset.resolve_charset`), splits it into segments (``\\r``, ``\\n`` or ``\\r\\n`` ends;
    blank lines skipped; leading whitespace/NUL/BOM skipped; trailing NUL/BOM dropped) and reads MSH-1/MSH-2.
    Fields are split when first read (see the module docstring).

    :raises HL7ParseError: 100 when the first segment is not MSH (or there is no segment); 102 when
        MSH-1/MSH-2 are unusable or the bytes do not decode in `charset`. Nothing else, for any bytes.
    :raises LookupError: when `charset` is not a codec name (a configuration error, not a message error).
    """
    if raw.endswith(_BOM_BYTES):
        raw = raw[:-3]
    try:
        text = raw.decode(charset)
    except UnicodeDecodeError as error:
        raise HL7ParseError(DATA_TYPE_ERROR, _decode_error_reason(raw, error.start, charset)) from None
    except UnicodeError:
        raise HL7ParseError(DATA_TYPE_ERROR, f"message bytes do not decode as {charset}") from None
    if not text.startswith("MSH"):
        text = text.lstrip(_JUNK)
        if text.startswith(_BOM_AS_LATIN1):
            # A UTF-8 BOM in front of a message decoded with a single-byte codec (8859-x, cp1252).
            text = text[3:].lstrip(_JUNK)
        if not text.startswith("MSH"):
            raise HL7ParseError(SEGMENT_SEQUENCE_ERROR, "first segment is not MSH (segment 1)")
    if text[-1] in _TAIL_JUNK:
        text = text.rstrip(_TAIL_JUNK)
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    lines = text.split("\r")
    header = lines[0]
    separator = header[3:4]
    end = header.find(separator, 4) if separator else -1
    key = header[3:end] if end >= 0 else header[3:]
    encoding = _ENCODINGS.get(key) or _encoding(key)

    segments: list[Segment] = []
    append = segments.append
    header_ids = _HEADER_IDS
    junk = _JUNK
    line_junk = _LINE_JUNK
    position = 0
    for line in lines:
        if not line:
            continue
        if line[0] in line_junk:
            line = line.lstrip(junk)
            if line.startswith(_BOM_AS_LATIN1):
                line = line[3:].lstrip(junk)
            if not line:
                continue
        position += 1
        cut = line.find(separator)  # stops at index 3 for every well-formed segment
        segment_id = line[:cut] if cut >= 0 else line
        if segment_id in header_ids:
            append(_HeaderSegment(segment_id, position, line, encoding, charset))
        else:
            append(Segment(segment_id, position, line, encoding, charset))
    return Message(encoding, charset, segments)
