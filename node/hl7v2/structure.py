"""hl7apy where its knowledge of HL7 v2 structures pays (architecture.md §5), never on the hot path.

* `validate_structure`: a feed's optional ``validation = "strict"``. It checks one message against the
  message structure of its declared version; a failing message goes ``failed`` with `StructureReport.reason`.
* `describe_fields`: the TUI's message viewer. Position, long name, data type and value of every field.

What hl7apy 1.3.5 checks, read from its source, and what this module does with it:

* ``parse_message(STRICT)`` raises on the first problem only and does not say where. A bad date in PID-7
  raises ``ValueError('<value> is not an HL7 valid date value')``, with the patient's value in the text.
* ``Message.validate()`` collects every error but raises only the first, and does not say which segment
  instance it is about (two IN1 segments give the same text twice). Its warnings quote values.
* Its group finder silently DROPS segments it cannot place (an OBR in an ADT_A01 just vanishes), and
  nothing checks segment order (PV1 before PID passes).

So hl7apy parses each field repetition on its own, in STRICT mode. That checks data type formats (DT,
DTM, TM, NM, SI, TN), lengths, components beyond a type and components in primitive types. Every problem
then gets a position, and one bad field cannot hide the next. (Plain values skip hl7apy's object tree and
go straight to the ``datatype_factory`` its parser ends in; see `_plainly_valid`. That is 2.5x faster and
agreed with parse_field on all 100k field values of the corpus and their mutations.)

Cardinalities (required segments, groups, fields and components; repetitions) are checked against
hl7apy's structure tables with the rules of its ``Validator``. For segments, the check runs on the tree
that hl7apy's group finder builds from the segment IDs. Segments it drops and segments out of order are
reported too. Not checked: table values (hl7apy only warns about them). ``""`` (HL7's explicit null) is
valid in every field and component. OBX-5 is checked as the type OBX-2 names.

Z-segments never fail a message by themselves. They are site-defined: HL7 v2 lets sites put them anywhere,
and IHE PAM puts ZBE right after PV1. hl7apy has no definition for them, so they are removed before
validating and named in `StructureReport.notes`.

Limits (reliability.md §6: hl7apy raised IndexError on 33 of 8k fuzzed inputs, and its cost grows with
the number of elements, about 0.3 ms per field it parses). Every hl7apy call sits inside a catch-all that turns any
exception into a problem. The work is bounded before it starts, because signal-based timeouts only work
on the main thread and threads cannot be killed:

* a message over ``max_bytes``, `MAX_SEGMENTS` or ``max_elements`` separators fails unparsed;
* a field repetition with more than `MAX_REPETITION_ELEMENTS` components is not parsed;
* a cooperative deadline (``time_limit``) is checked before each field repetition and before the group
  finder runs.

Worst case with the defaults: time_limit plus the group finder on `MAX_SEGMENTS` segments plus one field,
about 2.6 s; crafted messages just under the limits took 1.5 s. A message that hits a limit fails (fail
closed): strict means every message was checked. A hard limit would need a child process per message (or
a pool worker killed on timeout), which costs more than these bounds buy. Call it in the caller's worker
(thread or process); nothing here does I/O. Typical times: 2 ms for a 6-segment ADT, 10 ms median and
90 ms max for the corpus (dense v2.8 messages).

Problem texts name segment, field, position and kind, never a value. hl7apy's own text is appended only
after `scrub_reason` has removed quoted text, values and every value token of the message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import hl7apy
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, InvalidName, MaxChildLimitReached, MaxLengthReached
from hl7apy.factories import datatype_factory
from hl7apy.parser import get_message_info, parse_component, parse_field, parse_segments

from node.hl7v2.charset import codec_name

MAX_MESSAGE_BYTES: Final = 1 << 20
"""Larger messages are not given to hl7apy: strict validation fails. The viewer still lists them."""
MAX_ELEMENTS: Final = 20_000
"""Separators (fields, components, repetitions, subcomponents, segments) in one message."""
MAX_SEGMENTS: Final = 5_000
"""Bounds hl7apy's group finder (about 0.15 ms per segment)."""
MAX_REPETITION_ELEMENTS: Final = 500
"""Components plus subcomponents of one field repetition. Bounds one hl7apy call (about 50 ms)."""
TIME_LIMIT_SECONDS: Final = 2.0
"""Cooperative deadline. The slowest corpus message (dense v2.8) needs 0.09 s."""
MAX_PROBLEMS: Final = 20
"""Problems listed per message. Any more are only counted."""

_SEGMENT_SPLIT: Final = re.compile(r"\r\n|\n|\r")
_LEADING: Final = " \t\r\n\x00\x0b\x1c\ufeff"  # whitespace, NUL, MLLP framing bytes, BOM
_SEGMENT_ID: Final = re.compile(r"[A-Z][A-Z0-9]{2}")
_VERSION: Final = re.compile(r"\d\.\d{1,2}(\.\d{1,2})?")
_STRUCTURE: Final = re.compile(r"[A-Z][A-Z0-9]{2}(_[A-Z0-9]{2,4}){0,2}")
_DATATYPE: Final = re.compile(r"[A-Z][A-Z0-9]{1,3}(_[A-Z0-9]+)?")
_NULL: Final = '""'
_STRICT: Final = VALIDATION_LEVEL.STRICT
_TOLERANT: Final = VALIDATION_LEVEL.TOLERANT

# Events that share another event's message structure (HL7 table 0354). Used only when MSH-9.3 is empty
# and <code>_<event> is not a structure of the version. The first structure the version defines wins:
# before 2.4, A05/A14/A28/A31 used ADT_A01 (hl7apy's 2.3.1 has no ADT_A05).
_SHARED_STRUCTURES: Final[dict[str, tuple[str, ...]]] = {
    f"{structure[:3]}_{event}": (structure, "ADT_A01") if structure == "ADT_A05" else (structure,)
    for structure, events in {
        "ADT_A01": "A04 A08 A13",
        "ADT_A05": "A05 A14 A28 A31",
        "ADT_A06": "A07",
        "ADT_A09": "A10 A11 A12",
        "ADT_A21": "A22 A23 A25 A26 A27 A29 A32 A33",
        "ADT_A30": "A34 A35 A36 A46 A47 A48 A49",
        "ADT_A39": "A40 A41 A42",
        "ADT_A50": "A51",
        "ADT_A52": "A53",
        "ADT_A61": "A62",
        "SIU_S12": "S13 S14 S15 S16 S17 S18 S19 S20 S21 S22 S23 S24 S26",
        "MDM_T01": "T03 T05 T07 T09 T11",
        "MDM_T02": "T04 T06 T08 T10",
        "BAR_P01": "P05",
        "ORU_R30": "R31 R32",
        "PPR_PC1": "PC2 PC3",
        "REF_I12": "I13 I14 I15",
    }.items()
    for event in events.split()
}


@dataclass(frozen=True, slots=True)
class StructureReport:
    """The outcome of `validate_structure`. No text in it contains a field value."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    """Each names segment, position and kind of problem. At most `MAX_PROBLEMS`, then a count."""
    notes: list[str] = field(default_factory=list)
    """What was tolerated or skipped (``ok`` stays True): Z-segments removed, structure inferred from the
    event, OBX-5 not checked because OBX-2 names no known type."""
    version: str = ""
    """MSH-12.1 as declared. Empty if missing or not a version number."""
    structure: str = ""
    """The message structure checked against, e.g. ``ADT_A01``. Empty if none was found."""

    @property
    def reason(self) -> str:
        """One line for a failed row: the problems joined by ``; ``."""
        return "; ".join(self.problems)


@dataclass(frozen=True, slots=True)
class ComponentInfo:
    position: str
    """E.g. ``PID-5.1``, or ``PID-3[2].1`` in a second repetition."""
    name: str
    """Long name from hl7apy's reference, e.g. ``Family Name``. Empty if unknown."""
    datatype: str
    value: str
    """Raw component text: subcomponents and escape sequences as on the wire."""


@dataclass(frozen=True, slots=True)
class FieldInfo:
    segment: str
    """Segment ID, e.g. ``PID``. For a line that is no segment: its first three characters."""
    segment_index: int
    """1-based position of the segment in the message."""
    position: str
    """E.g. ``PID-5``, or ``PID-3[2]`` for the second repetition. Empty for a line that is no segment."""
    repetition: int
    name: str
    """Long name, e.g. ``Patient Name``. Empty for Z-segments and fields beyond the standard."""
    datatype: str
    """E.g. ``XPN``. For OBX-5, the type OBX-2 names. Empty if unknown."""
    value: str
    """Raw text of this repetition."""
    components: tuple[ComponentInfo, ...] = ()
    """Non-empty components of composite types, and of any value with component separators."""


# --- shared: text, segments, separators, hl7apy's reference tables ---------------------------------


@dataclass(frozen=True, slots=True)
class _Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    subcomponent: str = "&"


@dataclass(frozen=True, slots=True)
class _Ref:
    """A field of a segment or a component of a data type, from hl7apy's tables."""

    name: str
    """hl7apy's element name, e.g. ``PID_5`` or ``XPN_1``."""
    long_name: str
    datatype: str
    cardinality: tuple[int, int]
    """(min, max) repetitions; max -1 = unbounded, max 0 = withdrawn."""
    ref: Any
    """hl7apy's reference: (content type, children, datatype, long name, table, max length)."""


_Refs = dict[int, _Ref]
"""By number. hl7apy leaves withdrawn elements out (EVN-1 in 2.8, XTN.1 in 2.6), so the position in its
tuple is not the number."""


def _codec(charset: str) -> str:
    try:
        return codec_name(charset)
    except LookupError:
        return "iso8859-1"  # decodes any bytes; only reached with a misconfigured feed


def _lines(text: str) -> list[str]:
    return [line for line in _SEGMENT_SPLIT.split(text.lstrip(_LEADING)) if line.strip()]


def _separators(msh: str) -> _Separators:
    if len(msh) < 4:
        return _Separators()
    encoding = msh[4:].split(msh[3], 1)[0]
    default = _Separators()
    return _Separators(
        field=msh[3],
        component=encoding[0] if len(encoding) > 0 else default.component,
        repetition=encoding[1] if len(encoding) > 1 else default.repetition,
        subcomponent=encoding[3] if len(encoding) > 3 else default.subcomponent,
    )


def _fields(line: str, separator: str) -> list[str]:
    """Field texts by number: [1] is SEG-1. For MSH, [1] is the separator itself and [2] is MSH-2."""
    parts = line.split(separator)
    return ["MSH", separator, *parts[1:]] if parts[0] == "MSH" else parts


def _declared_version(msh: Sequence[str], seps: _Separators) -> str:
    value = msh[12].split(seps.component)[0].strip() if len(msh) > 12 else ""
    return value if _VERSION.fullmatch(value) else ""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@lru_cache(maxsize=64)
def reference_version(declared: str) -> str | None:
    """The hl7apy library that names the fields of a message declaring `declared` (MSH-12.1).

    The declared version if hl7apy has it, else the nearest older one (``2.9`` -> ``2.8.2``), else the
    oldest one. None if `declared` is not a version number.
    """
    if declared in hl7apy.SUPPORTED_LIBRARIES:
        return declared
    if not _VERSION.fullmatch(declared):
        return None
    known = sorted(hl7apy.SUPPORTED_LIBRARIES, key=_version_key)
    older = [version for version in known if _version_key(version) <= _version_key(declared)]
    return older[-1] if older else known[0]


def _by_number(children: Iterable[Any] | None) -> _Refs | None:
    if not children:
        return None
    refs: _Refs = {}
    for position, (name, child, cardinality, _kind) in enumerate(children, start=1):
        suffix = name.rpartition("_")[2]
        number = int(suffix) if suffix.isdigit() else position
        refs[number] = _Ref(name, child[3] or "", child[2] or "", (cardinality[0], cardinality[1]), child)
    return refs


@lru_cache(maxsize=4096)
def _segment_refs(version: str, segment: str) -> _Refs | None:
    try:
        return _by_number(hl7apy.load_reference(segment, "Segment", version)[1])
    except Exception:  # ChildNotFound, or KeyError for some names
        return None


@lru_cache(maxsize=4096)
def _datatype_refs(version: str, datatype: str) -> _Refs | None:
    try:
        return _by_number(hl7apy.load_reference(datatype, "Datatypes_Structs", version))
    except Exception:
        return None


def _component_refs(ref: _Ref, version: str | None) -> _Refs | None:
    if ref.ref[0] == "leaf":
        return None
    return (_datatype_refs(version, ref.datatype) if version else None) or _by_number(ref.ref[1])


@lru_cache(maxsize=16)
def _base_datatypes(version: str) -> frozenset[str]:
    return frozenset(hl7apy.load_library(version).get_base_datatypes())


@lru_cache(maxsize=1024)
def _typed_ref(version: str, name: str, long_name: str, cardinality: tuple[int, int], datatype: str) -> _Ref | None:
    """A ``varies`` field as `datatype`, built the way hl7apy builds a typed Z-field."""
    if datatype in _base_datatypes(version):
        return _Ref(name, long_name, datatype, cardinality, ("leaf", None, datatype, long_name, None, -1))
    try:
        struct = hl7apy.load_reference(datatype, "Datatypes_Structs", version)
    except Exception:
        return None
    return _Ref(name, long_name, datatype, cardinality, ("sequence", struct, datatype, long_name, None, -1))


def _value_ref(ref: _Ref, version: str, fields: Sequence[str], seps: _Separators) -> _Ref | None:
    """`ref` itself; for OBX-5 (``varies``) the type OBX-2 names; None if that type is unknown."""
    if ref.datatype != "varies":
        return ref
    datatype = fields[2].split(seps.component)[0].strip() if fields[0] == "OBX" and len(fields) > 2 else ""
    if not _DATATYPE.fullmatch(datatype):
        return None
    return _typed_ref(version, ref.name, ref.long_name, ref.cardinality, datatype)


_SMALL_WORDS: Final = frozenset({"OF", "AND", "OR", "THE", "TO", "FOR", "IN", "BY", "ON", "AT", "FROM", "WITH"})
_ACRONYMS: Final = frozenset(
    {"ID", "IDS", "SSN", "HL7", "OID", "UID", "DOB", "NDC", "DEA", "DMV", "VIP", "DRG", "UB", "UB82", "UB92"}
    | {"CPU", "ZIP", "PSRO", "UR", "MD", "DR", "JR", "III", "URL", "NPI", "ISO", "CDM", "UOM", "PCA", "POA"}
    | {"PID", "MSH", "EVN", "OBX", "OBR", "ORC", "NTE", "MRG", "TXA"}
)


@lru_cache(maxsize=8192)
def _pretty(long_name: str) -> str:
    """hl7apy's long names made readable.

    ``PATIENT_NAME`` -> ``Patient Name``, ``SET_ID_PID`` -> ``Set ID PID``, ``PREFIX_E_G_DR`` -> ``Prefix e.g. DR``.
    """
    words = [word for word in long_name.replace("_E_G_", "_e.g._").split("_") if word]
    out = []
    for index, word in enumerate(words):
        if word == "e.g." or word in _ACRONYMS or (len(word) == 3 and word[-1].isdigit()):
            out.append(word)  # acronyms and segment IDs such as NK1, PV1
        elif index and word in _SMALL_WORDS:
            out.append(word.lower())
        else:
            out.append(word.capitalize())
    return " ".join(out)


# --- describe_fields -------------------------------------------------------------------------------


def describe_fields(raw: bytes, charset: str) -> list[FieldInfo]:
    """Every non-empty field repetition of a message, in order, with its long name and data type.

    Names and types come from hl7apy's tables for the declared version, or from the nearest version
    hl7apy has (see `reference_version`). Z-segments, fields beyond the standard and messages without a
    version get empty names but are listed all the same. Bytes are decoded with `charset` (a Python codec
    or a table 0211 name); bytes that do not decode become U+FFFD. Reads hl7apy's tables only, it parses
    nothing with hl7apy (about 0.1-2 ms per message once a version's tables are loaded).

    Never raises. If the named listing fails, it returns a plain split with empty names.
    """
    try:
        lines = _lines(raw.decode(_codec(charset), errors="replace"))
    except Exception:
        return []
    try:
        return _describe(lines, named=True)
    except Exception:
        try:
            return _describe(lines, named=False)
        except Exception:
            return []


def _describe(lines: list[str], *, named: bool) -> list[FieldInfo]:
    msh = lines[0] if lines and lines[0].startswith("MSH") else ""
    seps = _separators(msh)
    version = reference_version(_declared_version(_fields(msh, seps.field), seps)) if msh and named else None
    out: list[FieldInfo] = []
    for index, line in enumerate(lines, start=1):
        fields = _fields(line, seps.field)
        segment = fields[0]
        if not _SEGMENT_ID.fullmatch(segment):
            out.append(FieldInfo(line[:3], index, "", 1, "", "", line))
            continue
        refs = _segment_refs(version, segment) if version else None
        for number, text in enumerate(fields[1:], start=1):
            ref = refs.get(number) if refs else None
            if ref is not None and version is not None:
                ref = _value_ref(ref, version, fields, seps) or ref
            whole = segment == "MSH" and number <= 2  # the separators themselves
            for repetition, value in enumerate([text] if whole else text.split(seps.repetition), start=1):
                if not value:
                    continue
                position = f"{segment}-{number}" + (f"[{repetition}]" if repetition > 1 else "")
                components = () if whole else _components(value, position, ref, version, seps.component)
                name, datatype = (_pretty(ref.long_name), ref.datatype) if ref else ("", "")
                out.append(FieldInfo(segment, index, position, repetition, name, datatype, value, components))
    return out


def _components(
    value: str, position: str, ref: _Ref | None, version: str | None, separator: str
) -> tuple[ComponentInfo, ...]:
    refs = _component_refs(ref, version) if ref is not None else None
    if refs is None and separator not in value:
        return ()
    out = []
    for number, text in enumerate(value.split(separator), start=1):
        child = refs.get(number) if refs else None
        if text:
            name, datatype = (_pretty(child.long_name), child.datatype) if child else ("", "")
            out.append(ComponentInfo(f"{position}.{number}", name, datatype, text))
    return tuple(out)


# --- scrubbing hl7apy's texts ----------------------------------------------------------------------

_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")
_VALUE_FIRST: Final = re.compile(r"^.*?\s(is not an HL7 valid)", re.DOTALL)  # "<value> is not an HL7 valid ..."
_AFTER_VALUE: Final = re.compile(  # "The value <value> exceed ...", "Value <value> not in table ..."
    r"\b(value)\b(?!\s+(?:is|for|of|not|exceeds?|in)\b)[\s:=]*\S.*?(?=\s+(?:exceeds?|not in table|is not)\b|$)",
    re.IGNORECASE | re.DOTALL,
)
_AFTER_LABEL: Final = re.compile(r"\b(offset|format)\b[\s:]+\S+", re.IGNORECASE)  # "Invalid date offset: <x>"
_MIN_TOKEN: Final = 3
_TEMPLATE_WORDS: Final = frozenset(
    # Words of hl7apy's texts. A value that equals one must not garble the text; the rules above already
    # remove values from the places hl7apy puts them.
    {"HL7", "value", "Value", "valid", "date", "data", "Invalid", "invalid", "name", "for", "Component"}
    | {"SubComponent", "Field", "Segment", "Group", "Message", "type", "of", "Cannot", "add", "max", "limit"}
    | {"reached", "length", "exceed", "the", "The", "not", "is", "an", "in", "table", "element", "encoding"}
    | {"chars", "Found", "duplicate", "Missing", "required", "child", "None", "varies"}
)


def message_tokens(text: str, seps: Iterable[str] = ()) -> frozenset[str]:
    """Every value of a message (segment IDs left out), split on ``|^~&\\`` and `seps`."""
    pattern = re.compile("[" + re.escape("".join({*seps, *"|^~&\\"})) + "]+")
    values = (line[3:] if _SEGMENT_ID.match(line) else line for line in _SEGMENT_SPLIT.split(text))
    return frozenset(token for value in values for token in pattern.split(value) if len(token.strip()) >= _MIN_TOKEN)


def scrub_reason(reason: str, tokens: Iterable[str] = ()) -> str:
    """An exception text from hl7apy without values: quoted text, text after "value", message tokens.

    hl7apy puts values in its texts (``'1980X101 is not an HL7 valid date value'``, ``'The value X
    exceed the max length: 20'``, ``'Value X not in table HL70001'``); those become ``…``. `tokens`
    (see `message_tokens`) catches what the rules miss: every value of the message that is still in the
    text, as a whole word, becomes ``…`` too.
    """
    text = _QUOTED.sub("…", reason.replace("\r", " ").replace("\n", " "))
    text = _VALUE_FIRST.sub(r"value \1", text)
    text = _AFTER_VALUE.sub(r"\1 …", text)
    text = _AFTER_LABEL.sub(r"\1 …", text)
    for token in sorted((token for token in tokens if token in text), key=len, reverse=True):
        # whole words only: a value "PV1" must not turn hl7apy's "PV1_2" into "…_2"
        text = re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", "…", text)
    return text[:200]


@lru_cache(maxsize=16)
def _hl7_words(version: str) -> frozenset[str]:
    lib = hl7apy.load_library(version)
    return frozenset(lib.SEGMENTS) | frozenset(lib.DATATYPES_STRUCTS) | _base_datatypes(version) | _TEMPLATE_WORDS


# --- validate_structure ----------------------------------------------------------------------------


class _Problems:
    def __init__(self, tokens: frozenset[str], version: str) -> None:
        self.items: list[str] = []
        self.count = 0
        self.tokens = tokens - _hl7_words(version)

    def add(self, where: str, kind: str, error: BaseException | None = None) -> None:
        self.count += 1
        if len(self.items) >= MAX_PROBLEMS:
            return
        text = f"{where}: {kind}"
        if isinstance(error, HL7apyException | ValueError):
            text += f" (hl7apy: {scrub_reason(str(error), self.tokens)})"
        elif error is not None:  # IndexError, KeyError, ...: their texts could hold anything
            text += f" (hl7apy raised {type(error).__name__})"
        self.items.append(text)

    def listing(self) -> list[str]:
        extra = self.count - len(self.items)
        return self.items + ([f"... and {extra} more problems"] if extra > 0 else [])


class _DeadlineReached(Exception):
    pass


def validate_structure(
    raw: bytes,
    charset: str,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_elements: int = MAX_ELEMENTS,
    time_limit: float = TIME_LIMIT_SECONDS,
) -> StructureReport:
    """Check one message against the HL7 v2 structure of its declared version (MSH-12), with hl7apy.

    :param raw: one message; segments end with ``\\r``, ``\\n`` or ``\\r\\n``.
    :param charset: the Python codec (or table 0211 name) that decodes `raw`, see `resolve_charset`.
    :returns: ``ok`` if no problem was found. Otherwise ``problems`` name segment, field, position and kind
        of each problem, never a value. Versions hl7apy does not have (e.g. 2.9) fail with a clear reason.
        Never raises: any exception, inside hl7apy or here, becomes a problem.
    """
    try:
        return _validate(raw, charset, max_bytes, max_elements, time.monotonic() + time_limit)
    except Exception as error:  # reliability.md §6: catch-all, one message must not stop the worker
        return StructureReport(False, [f"strict validation failed: {type(error).__name__}"])


def _validate(raw: bytes, charset: str, max_bytes: int, max_elements: int, deadline: float) -> StructureReport:
    if len(raw) > max_bytes:
        reason = f"message too large for strict validation ({len(raw)} bytes, limit {max_bytes})"
        return StructureReport(False, [reason])
    codec = _codec(charset)
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        return StructureReport(False, [f"message bytes do not decode as {codec}"])
    lines = _lines(text)
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        return StructureReport(False, ["not an HL7 v2 message: it does not start with an MSH segment"])
    seps = _separators(lines[0])
    msh = _fields(lines[0], seps.field)
    version = _declared_version(msh, seps)
    size_problem = _size_problem(text, lines, seps, max_elements) or _version_problem(version)
    if size_problem:
        return StructureReport(False, [size_problem], version=version)
    problems = _Problems(message_tokens(text, _all(seps)), version)
    notes: list[str] = []
    try:
        encoding = get_message_info(lines[0])[0]
    except Exception as error:  # InvalidEncodingChars, or IndexError on a short MSH
        problems.add("MSH-2", "invalid encoding characters", error)
        return StructureReport(False, problems.listing(), notes, version)
    kept = []
    for index, line in enumerate(lines, start=1):
        segment = _fields(line, seps.field)[0]
        if segment.startswith("Z") and _SEGMENT_ID.fullmatch(segment):
            notes.append(f"Z-segment {segment} (segment {index}) not validated: site-defined")
        else:
            kept.append((index, line))
    structure = _message_structure(msh, seps, version, problems, notes)
    try:
        for index, line in kept:
            try:
                _check_segment(index, line, version, seps, encoding, problems, notes, deadline)
            except _DeadlineReached:
                raise
            except Exception as error:  # a surprise in hl7apy (or here) costs this segment, not the report
                problems.add(f"segment {index}", "could not be checked", error)
        if structure:
            if time.monotonic() > deadline:
                raise _DeadlineReached
            try:
                _check_structure(kept, structure, version, seps, problems)
            except Exception as error:
                problems.add(structure, "message structure could not be checked", error)
    except _DeadlineReached:
        problems.add("message", "strict validation stopped at its time limit, the rest is unchecked")
    return StructureReport(problems.count == 0, problems.listing(), notes, version, structure)


def _all(seps: _Separators) -> tuple[str, ...]:
    return (seps.field, seps.component, seps.repetition, seps.subcomponent)


def _size_problem(text: str, lines: list[str], seps: _Separators, max_elements: int) -> str:
    elements = len(lines) + sum(text.count(separator) for separator in set(_all(seps)))
    if elements <= max_elements and len(lines) <= MAX_SEGMENTS:
        return ""
    limits = f"limits {MAX_SEGMENTS} and {max_elements}"
    return f"message too large for strict validation ({len(lines)} segments, {elements} elements; {limits})"


def _version_problem(version: str) -> str:
    if version in hl7apy.SUPPORTED_LIBRARIES:
        return ""
    supported = ", ".join(sorted(hl7apy.SUPPORTED_LIBRARIES, key=_version_key))
    if not version:
        return f"MSH-12 (version) is missing or not a version number (strict validation supports {supported})"
    return f"HL7 version {version} is not supported by strict validation (supported: {supported})"


def _message_structure(msh: list[str], seps: _Separators, version: str, problems: _Problems, notes: list[str]) -> str:
    parts = [part.strip() for part in msh[9].split(seps.component)] if len(msh) > 9 else []
    code, event, declared = [*parts, "", "", ""][:3]
    if declared:
        if _structure_ref(declared, version) is not None:
            return declared
        shown = declared if _STRUCTURE.fullmatch(declared) else "in MSH-9.3"
        problems.add("MSH-9.3", f"message structure {shown} is not defined in HL7 {version}")
        return ""
    typed = f"{code}_{event}"
    candidates = ("ACK",) if code == "ACK" else (typed, *_SHARED_STRUCTURES.get(typed, ()))
    for candidate in candidates:
        if _STRUCTURE.fullmatch(candidate) and _structure_ref(candidate, version) is not None:
            if candidate != typed:
                notes.append(f"message structure {candidate} inferred from {code}^{event} (MSH-9.3 empty)")
            return candidate
    shown = f"{code}^{event}" if _STRUCTURE.fullmatch(typed) else "MSH-9"
    problems.add("MSH-9", f"no message structure known for {shown} in HL7 {version}")
    return ""


@lru_cache(maxsize=1024)
def _structure_ref(structure: str, version: str) -> Any:
    try:
        return hl7apy.load_reference(structure, "Message", version)
    except Exception:
        return None


# --- fields: cardinality from hl7apy's tables, values parsed by hl7apy in STRICT mode ---------------


def _check_segment(
    index: int,
    line: str,
    version: str,
    seps: _Separators,
    encoding: dict[str, str],
    problems: _Problems,
    notes: list[str],
    deadline: float,
) -> None:
    fields = _fields(line, seps.field)
    segment = fields[0]
    refs = _segment_refs(version, segment) if _SEGMENT_ID.fullmatch(segment) else None
    if refs is None:
        shown = segment if _SEGMENT_ID.fullmatch(segment) else "?"
        problems.add(f"segment {index}", f"unknown segment {shown} in HL7 {version}")
        return
    for number in range(3 if segment == "MSH" else 1, max(len(fields), max(refs) + 1)):
        where = f"{segment}-{number}"
        ref = refs.get(number)
        text = fields[number] if number < len(fields) else ""
        repetitions = text.split(seps.repetition) if text.strip() else []
        if ref is None or ref.cardinality[1] == 0:
            if repetitions:
                kind = "not defined for" if ref is None else "withdrawn from"
                problems.add(f"{where} (segment {index})", f"field {kind} {segment} in HL7 {version}")
            continue
        low, high = ref.cardinality
        if low > 0 and not any(rep.strip() for rep in repetitions):
            problems.add(f"{where} (segment {index})", "required field missing")
        elif high != -1 and len(repetitions) > high:
            problems.add(f"{where} (segment {index})", f"{len(repetitions)} repetitions, at most {high} allowed")
        value_ref = _value_ref(ref, version, fields, seps)
        if value_ref is None and repetitions:
            why = f"OBX-2 names no data type of HL7 {version}" if segment == "OBX" else "its data type varies"
            notes.append(f"{where} (segment {index}) not checked: {why}")
        for number_of_rep, rep in enumerate(repetitions, start=1):
            if time.monotonic() > deadline:
                raise _DeadlineReached
            rep_where = where + (f"[{number_of_rep}]" if number_of_rep > 1 else "")
            if rep.count(seps.component) + rep.count(seps.subcomponent) > MAX_REPETITION_ELEMENTS:
                problems.add(f"{rep_where} (segment {index})", "too many components to check (not parsed)")
            elif value_ref is not None and rep.strip() and rep != _NULL:
                _check_value(rep_where, f"(segment {index})", rep, value_ref, version, seps, encoding, problems)


def _check_value(
    where: str,
    segment_where: str,
    text: str,
    ref: _Ref,
    version: str,
    seps: _Separators,
    encoding: dict[str, str],
    problems: _Problems,
) -> None:
    text = _without_nulls(text, seps)
    try:
        if not _plainly_valid(text, ref, version, seps):
            parse_field(text, ref.name, version, encoding, _STRICT, ref.ref)
    except Exception as error:
        position, datatype, cause = _locate(where, text, ref, version, seps, encoding, error)
        problems.add(f"{position} {segment_where}", _kind(cause, datatype, version), cause)
        return
    _check_required(f"{where} {segment_where}", text, ref, version, seps.component, seps.subcomponent, problems)


def _plainly_valid(text: str, ref: _Ref, version: str, seps: _Separators) -> bool:
    """True if hl7apy's ``parse_field`` would accept `text`, decided at a tenth of its cost; else False.

    For a value that is a primitive, or a composite of primitives without subcomponents, parse_field
    comes down to hl7apy's ``datatype_factory`` on each value (the call its SubComponent makes), plus
    the component checks done here. Anything else, and anything that fails, goes to parse_field, so
    every problem is still found and worded by hl7apy.
    """
    if seps.subcomponent in text:
        return False
    base = _base_datatypes(version)
    if ref.ref[0] == "leaf":
        return seps.component not in text and ref.datatype in base and _accepted(ref.datatype, text, version)
    children = _component_refs(ref, version)
    if not children:
        return False
    for number, component in enumerate(text.split(seps.component), start=1):
        if not component.strip():
            continue  # hl7apy skips empty components of composite types
        child = children.get(number)
        if child is None or child.cardinality[1] == 0 or child.ref[0] != "leaf" or child.datatype not in base:
            return False
        if not _accepted(child.datatype, component, version):
            return False
    return True


def _accepted(datatype: str, value: str, version: str) -> bool:
    try:
        datatype_factory(datatype, value, version, _STRICT)
    except Exception:
        return False
    return True


def _without_nulls(text: str, seps: _Separators) -> str:
    """``""`` (explicit null) is valid in any component. hl7apy would parse it as a date, a number, ..."""
    if _NULL not in text:
        return text
    return seps.component.join(
        seps.subcomponent.join("" if sub == _NULL else sub for sub in component.split(seps.subcomponent))
        for component in text.split(seps.component)
    )


def _locate(
    where: str, text: str, ref: _Ref, version: str, seps: _Separators, encoding: dict[str, str], error: Exception
) -> tuple[str, str, Exception]:
    """Which component hl7apy rejected: parse the components one by one. (position, data type, error)."""
    children = _component_refs(ref, version)
    if children is None:
        return where, ref.datatype, error
    if isinstance(error, MaxChildLimitReached) and error.limit == 0:  # a withdrawn component
        number = str(getattr(error.child, "name", "") or "").rpartition("_")[2]
        return (f"{where}.{number}" if number.isdigit() else where), ref.datatype, error
    for number, component in enumerate(text.split(seps.component), start=1):
        child = children.get(number)
        if not component.strip():
            continue
        try:
            name = f"{ref.datatype}_{number}"
            parse_component(component, name, None, version, encoding, _STRICT, child.ref if child else None)
        except Exception as component_error:
            return f"{where}.{number}", child.datatype if child else ref.datatype, component_error
    return where, ref.datatype, error


def _kind(error: Exception, datatype: str, version: str) -> str:
    if isinstance(error, MaxLengthReached):
        return f"value longer than {int(error.limit)} characters allowed for {datatype}"
    if isinstance(error, MaxChildLimitReached):
        if error.limit == 0:
            return f"component withdrawn from {datatype} in HL7 {version}"
        if getattr(error.child, "classname", "") == "SubComponent":
            return f"subcomponents in a component of primitive type {datatype}"
        return f"components in a field of primitive type {datatype}"
    if isinstance(error, InvalidName):
        return f"component not defined for {datatype} in HL7 {version}"
    if isinstance(error, ValueError):
        return f"invalid {datatype} value"
    if isinstance(error, HL7apyException):
        return f"not valid as {datatype} in HL7 {version}"
    return f"hl7apy failed on this {datatype} value"


def _check_required(
    where: str, text: str, ref: _Ref, version: str, separator: str, subcomponent_sep: str, problems: _Problems
) -> None:
    """Required components (HL7 2.6+) of a present field; required subcomponents of a present component."""
    children = _component_refs(ref, version)
    if not children:
        return
    position, _, segment_where = where.partition(" ")
    parts = text.split(separator)
    for number, child in children.items():
        value = parts[number - 1] if number <= len(parts) else ""
        child_where = f"{position}.{number} {segment_where}"
        if child.cardinality[0] > 0 and not value.strip():
            problems.add(child_where, f"required component of {ref.datatype} missing")
        elif value.strip() and separator != subcomponent_sep:
            _check_required(child_where, value, child, version, subcomponent_sep, subcomponent_sep, problems)


# --- message structure: hl7apy's group finder, then cardinality, dropped segments and order ---------


def _check_structure(
    kept: list[tuple[int, str]], structure: str, version: str, seps: _Separators, problems: _Problems
) -> None:
    known = [(index, _fields(line, seps.field)[0]) for index, line in kept]
    known = [(index, name) for index, name in known if _SEGMENT_ID.fullmatch(name) and _segment_refs(version, name)]
    reference = _structure_ref(structure, version)
    try:  # fields were checked above: the group finder gets the segment IDs only
        nodes = parse_segments("\r".join(name for _, name in known), version, None, _TOLERANT, reference, True)
    except Exception as error:
        problems.add(structure, "hl7apy could not assign the segments to groups", error)
        return
    placed: dict[int, int] = {}  # id(segment node) -> its index in the message
    flat = list(_flatten(nodes))
    position = 0
    for index, name in known:  # the tree keeps message order, minus the segments hl7apy dropped
        if position < len(flat) and flat[position].name == name:
            placed[id(flat[position])] = index
            position += 1
        else:
            problems.add(f"{name} (segment {index})", f"not allowed in {structure} (hl7apy cannot place it)")
    _walk(nodes, reference, structure, placed, problems)


def _flatten(nodes: Iterable[Any]) -> Iterable[Any]:
    for node in nodes:
        if node.classname == "Segment":
            yield node
        else:
            yield from _flatten(node.children)


def _first_index(node: Any, placed: dict[int, int]) -> int:
    return next((placed.get(id(segment), 0) for segment in _flatten([node])), 0)


def _walk(nodes: Sequence[Any], reference: Any, label: str, placed: dict[int, int], problems: _Problems) -> None:
    """The cardinality rules of hl7apy's Validator, per group instance, plus the order it does not check."""
    by_name: dict[str, list[Any]] = {}
    for node in nodes:
        by_name.setdefault(node.name, []).append(node)
    if reference[0] == "choice":  # hl7apy only creates the group once one alternative is present
        return
    slots: dict[str, list[int]] = {}
    for slot, (name, child_ref, (low, high), kind) in enumerate(reference[1]):
        slots.setdefault(name, []).append(slot)
        if len(slots[name]) > 1:
            continue  # listed twice (ROL in ADT_A01): hl7apy's group finder fills the first slot only
        present = by_name.get(name, [])
        noun = "group" if kind == "GRP" else "segment"
        if len(present) < low:
            problems.add(label, f"required {noun} {name} missing")
        elif high != -1 and len(present) > high:
            first = _first_index(present[high], placed)
            where = f"group {name} (from segment {first})" if kind == "GRP" else f"{name} (segment {first})"
            problems.add(where, f"more than {high} in {label}")
        if kind == "GRP":
            for group in present:
                _walk(group.children, child_ref, f"group {name} (from segment {_first_index(group, placed)})",
                      placed, problems)
    _check_order(nodes, slots, label, placed, problems)


def _check_order(
    nodes: Sequence[Any], slots: dict[str, list[int]], label: str, placed: dict[int, int], problems: _Problems
) -> None:
    current, previous = 0, None
    for node in nodes:
        later = [slot for slot in slots.get(node.name, []) if slot >= current]
        if later:
            current, previous = later[0], node
        elif previous is not None:
            problems.add(
                f"{node.name} (segment {_first_index(node, placed)})",
                f"out of order in {label}: must come before {previous.name} (segment {_first_index(previous, placed)})",
            )
