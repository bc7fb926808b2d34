"""A light read of the MSH segment (and nothing else): what the ACK, dedup and routing need.

This sits on the ACK hot path, so it does no full parse: it finds the first segment, decodes it as
latin-1 (lossless: every byte maps to one character, so MSH values can be re-encoded to their original
bytes) and splits it on the field separator. Values are the raw wire text: escape sequences are not
resolved and components are kept (``"LAB^1.2.3^ISO"`` stays as is).

`read_header` is strict and raises `HL7HeaderError` with an HL7 table 0357 code; `read_header_lenient`
returns what it can for building an error ACK. Error reasons name segment and field, never values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.errors import HL7HeaderError

DEFAULT_FIELD_SEPARATOR: Final = "|"
DEFAULT_ENCODING_CHARACTERS: Final = "^~\\&"

_BOM: Final = b"\xef\xbb\xbf"
_LEADING: Final = b" \t\r\n\x00" + _BOM
_MSH: Final = b"MSH"
_MSH_FIELDS: Final = 18
"""MSH-18 is the last field read; shorter segments are padded with empty fields."""

# Table 0357 codes used here.
SEGMENT_SEQUENCE_ERROR: Final = 100
REQUIRED_FIELD_MISSING: Final = 101
DATA_TYPE_ERROR: Final = 102


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The MSH fields the node uses, as raw wire text (latin-1 decoded, escapes unresolved)."""

    field_separator: str
    encoding_characters: str
    """MSH-2: component, repetition, escape, subcomponent (and, from v2.7, truncation) characters."""
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    timestamp: str
    """MSH-7 as sent."""
    message_type: str
    """MSH-9 as sent, e.g. ``ADT^A01^ADT_A01``."""
    message_code: str
    """MSH-9.1, e.g. ``ADT``."""
    trigger_event: str
    """MSH-9.2, e.g. ``A01``; empty if absent."""
    control_id: str
    """MSH-10 as sent (MSA-2 of the ACK echoes it byte for byte)."""
    processing_id: str
    """MSH-11 as sent (e.g. ``P``, ``D``, ``T^T``)."""
    version: str
    """MSH-12.1, e.g. ``2.5``."""
    accept_ack_type: str
    """MSH-15 (table 0155: AL, NE, ER, SU), stripped."""
    app_ack_type: str
    """MSH-16 (table 0155), stripped."""
    charset_declared: str
    """MSH-18 first repetition, stripped (table 0211, e.g. ``8859/1``); empty if not declared."""

    @property
    def enhanced_mode(self) -> bool:
        """True when MSH-15 or MSH-16 is valued: enhanced acknowledgement mode (CA/CE/CR)."""
        return bool(self.accept_ack_type or self.app_ack_type)

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0]

    @property
    def repetition_separator(self) -> str:
        return self.encoding_characters[1]

    @property
    def escape_character(self) -> str:
        return self.encoding_characters[2]

    @property
    def subcomponent_separator(self) -> str:
        return self.encoding_characters[3]


def read_header(payload: bytes) -> MessageHeader:
    """Read the MSH segment of one message.

    Leading whitespace, NUL bytes and a UTF-8 BOM are skipped; the segment ends at the first ``\\r`` or
    ``\\n`` (so ``\\r``, ``\\n`` and ``\\r\\n`` segment ends all work).

    :raises HL7HeaderError: 100 if the first segment is not MSH; 102 if the MSH is too short to hold its
        separators or the separators are invalid (MSH-1/MSH-2); 101 if MSH-9, MSH-10 or MSH-12 is empty
        or missing (the segment ends before it).
    """
    start = 0 if payload.startswith(_MSH) else _skip_leading(payload)
    if not payload.startswith(_MSH, start):
        raise HL7HeaderError(SEGMENT_SEQUENCE_ERROR, "first segment is not MSH")
    segment = _first_segment(payload, start)
    if len(segment) < 8:
        raise HL7HeaderError(DATA_TYPE_ERROR, "MSH segment is too short to hold MSH-1 and MSH-2")
    separator = segment[3]
    fields = segment.split(separator)
    problem = _separator_problem(separator, fields[1])
    if problem:
        raise HL7HeaderError(DATA_TYPE_ERROR, problem)
    header = _build(fields, separator, fields[1])
    if not (header.message_type.strip() and header.control_id.strip() and header.version):
        for number, value, name in (
            (9, header.message_type, "message type"),
            (10, header.control_id, "message control id"),
            (12, header.version, "version id"),
        ):
            if not value.strip():
                raise HL7HeaderError(REQUIRED_FIELD_MISSING, f"MSH-{number} ({name}) is empty")
    return header


def read_header_lenient(payload: bytes) -> MessageHeader | None:
    """Read whatever the MSH holds, for an error ACK; never raises.

    Finds the first segment that starts with ``MSH`` (also after other segments, e.g. a batch header).
    Invalid separators are replaced by the defaults ``|`` and ``^~\\&``; missing fields are empty.

    :returns: None if no segment starts with MSH.
    """
    start = _find_msh(payload)
    if start < 0:
        return None
    segment = _first_segment(payload, start)
    separator = segment[3] if len(segment) > 3 else DEFAULT_FIELD_SEPARATOR
    fields = segment.split(separator)
    encoding = fields[1] if len(fields) > 1 else ""
    if _separator_problem(separator, encoding):
        encoding = DEFAULT_ENCODING_CHARACTERS
        if _separator_problem(separator, encoding):
            # Not even the field separator is usable: only the segment's presence is known.
            separator, fields = DEFAULT_FIELD_SEPARATOR, ["MSH"]
    return _build(fields, separator, encoding)


def _skip_leading(payload: bytes) -> int:
    """Index of the first byte after leading whitespace, NULs and BOMs."""
    return len(payload) - len(payload.lstrip(_LEADING))


def _first_segment(payload: bytes, start: int) -> str:
    """The segment starting at `start`, up to (excluding) the first CR or LF, decoded as latin-1."""
    end = payload.find(b"\r", start)
    if end < 0:
        end = len(payload)
    newline = payload.find(b"\n", start, end)
    if newline >= 0:
        end = newline
    return payload[start:end].decode("latin-1")


def _find_msh(payload: bytes) -> int:
    """Index of the first segment that starts with MSH, or -1."""
    start = _skip_leading(payload)
    if payload.startswith(_MSH, start):
        return start
    for terminator in (b"\rMSH", b"\nMSH"):
        found = payload.find(terminator, start)
        if found >= 0:
            return found + 1
    return -1


_SEPARATOR_PROBLEMS: dict[str, str | None] = {}
"""`_separator_problem` by MSH-1 + MSH-2 (a feed sends the same few): the check runs once per message."""
_SEPARATOR_PROBLEMS_MAX: Final = 64


def _separator_problem(separator: str, encoding: str) -> str | None:
    """Why MSH-1/MSH-2 are unusable, or None.

    MSH-2 holds 4 distinct characters (component, repetition, escape, subcomponent) or 5 (v2.7+
    truncation character); none may be alphanumeric, whitespace or the field separator.
    """
    key = separator + encoding
    try:
        return _SEPARATOR_PROBLEMS[key]
    except KeyError:
        pass
    problem = _check_separators(separator, encoding)
    if len(encoding) < 6:  # bounded key space; longer MSH-2 values are always wrong (and rare)
        if len(_SEPARATOR_PROBLEMS) >= _SEPARATOR_PROBLEMS_MAX:
            _SEPARATOR_PROBLEMS.clear()
        _SEPARATOR_PROBLEMS[key] = problem
    return problem


def _check_separators(separator: str, encoding: str) -> str | None:
    if separator.isalnum() or separator.isspace():
        return "MSH-1 (field separator) is not a valid separator"
    if len(encoding) not in (4, 5):
        return "MSH-2 (encoding characters) must hold 4 or 5 characters"
    if (
        len(set(encoding)) != len(encoding)
        or separator in encoding
        or any(c.isalnum() or c.isspace() for c in encoding)
    ):
        return "MSH-2 (encoding characters) holds invalid or repeated separators"
    return None


def _build(fields: list[str], separator: str, encoding: str) -> MessageHeader:
    """A MessageHeader from split MSH fields; fields[n - 1] is MSH-n for n >= 2."""
    if len(fields) < _MSH_FIELDS:
        fields = fields + [""] * (_MSH_FIELDS - len(fields))
    component = encoding[0]
    message_type = fields[8]
    parts = message_type.split(component, 2)
    # Positional, in field order (the hot path: about a third cheaper than keywords).
    return MessageHeader(
        separator,  # field_separator
        encoding,  # encoding_characters
        fields[2],  # sending_app
        fields[3],  # sending_facility
        fields[4],  # receiving_app
        fields[5],  # receiving_facility
        fields[6],  # timestamp
        message_type,  # message_type
        parts[0].strip(),  # message_code
        parts[1].strip() if len(parts) > 1 else "",  # trigger_event
        fields[9],  # control_id
        fields[10],  # processing_id
        fields[11].split(component, 1)[0].strip(),  # version
        fields[14].strip(),  # accept_ack_type
        fields[15].strip(),  # app_ack_type
        fields[17].split(encoding[1], 1)[0].strip(),  # charset_declared
    )
