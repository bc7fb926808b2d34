"""HL7 v2 acknowledgements: build the ACK the node sends, parse the ACK a peer sends. Pure; no I/O.

Original mode (MSH-15 and MSH-16 empty) answers AA/AE/AR; enhanced mode answers CA/CE/CR, as asked by
MSH-15 (table 0155). MSA-2 echoes MSH-10 byte for byte; an error ACK carries an ERR segment with an HL7
table 0357 code. Texts the node writes are escaped with the message's own delimiters; fields copied
from the original MSH are copied as their original bytes.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from node.errors import HL7HeaderError
from node.hl7v2.header import DEFAULT_ENCODING_CHARACTERS, DEFAULT_FIELD_SEPARATOR, MessageHeader, read_header

DEFAULT_PROCESSING_ID: Final = "P"
DEFAULT_VERSION: Final = "2.5"
MSA_TEXT_MAX: Final = 80
"""MSA-3 is an ST of 80 characters; longer texts are cut."""
APPLICATION_INTERNAL_ERROR: Final = 207
"""Table 0357 code used when an error ACK is built without one."""

TABLE_0357: Final[dict[int, str]] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
"""HL7 table 0357 (message error condition codes): the default text for each code."""


class AckCode(StrEnum):
    """MSA-1 (HL7 table 0008)."""

    AA = "AA"
    """Original mode: application accept."""
    AE = "AE"
    """Original mode: application error (content); the sender may correct and resend."""
    AR = "AR"
    """Original mode: application reject (not about content, e.g. store full); the sender may resend."""
    CA = "CA"
    """Enhanced mode: commit accept (committed to safe storage)."""
    CE = "CE"
    """Enhanced mode: commit error."""
    CR = "CR"
    """Enhanced mode: commit reject."""

    @property
    def is_success(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)


@dataclass(frozen=True, slots=True)
class ParsedAck:
    """What a peer's ACK says."""

    code: AckCode
    control_id: str
    """MSA-2: the MSH-10 of the message acknowledged (raw wire text)."""
    error_code: int | None
    """Table 0357 code from ERR-3 (v2.5+) or ERR-1 (older), None if absent or not a number."""
    text: str
    """MSA-3 (raw wire text), empty if absent."""


def choose_codes(header: MessageHeader | None) -> tuple[AckCode, AckCode, AckCode]:
    """(success, error, reject) codes: (AA, AE, AR) in original mode, (CA, CE, CR) in enhanced mode."""
    if header is not None and header.enhanced_mode:
        return AckCode.CA, AckCode.CE, AckCode.CR
    return AckCode.AA, AckCode.AE, AckCode.AR


def wants_accept_ack(header: MessageHeader | None, success: bool) -> bool:
    """Whether to send the immediate (accept/commit) ACK for this message.

    Original mode: always (it is the one ACK). Enhanced mode: MSH-15 per table 0155 — AL always, NE
    never, ER only on error/reject, SU only on success. An empty MSH-15 in enhanced mode, or a value not
    in table 0155, counts as AL: answering when not asked does less harm than a sender left waiting.
    """
    if header is None or not header.enhanced_mode:
        return True
    return _table_0155(header.accept_ack_type, success)


def wants_application_ack(header: MessageHeader | None, success: bool) -> bool:
    """Whether the sender asked for a separate application ACK (MSH-16, table 0155) after processing.

    Original mode: False — there is no second ACK; the single ACK (see `wants_accept_ack`) is it.
    Enhanced mode: as `wants_accept_ack`, for MSH-16 (empty or unknown counts as AL).
    """
    if header is None or not header.enhanced_mode:
        return False
    return _table_0155(header.app_ack_type, success)


def _table_0155(value: str, success: bool) -> bool:
    value = value.upper()
    if value == "NE":
        return False
    if value == "ER":
        return not success
    if value == "SU":
        return success
    return True  # AL, empty, or not in table 0155


def new_ack_control_id() -> str:
    """A fresh MSH-10 for an ACK: 20 hex characters (80 random bits), no data from the message."""
    return secrets.token_hex(10)


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    *,
    error_code: int | None = None,
    error_text: str | None = None,
    ack_control_id: str,
    now: datetime,
    charset: str,
    error_field: int | None = None,
) -> bytes:
    """The ACK payload (not MLLP-framed) for the message whose header is `header`.

    MSH uses the message's own delimiters (``|^~\\&`` if `header` is None), swaps sender and receiver,
    MSH-7 is `now`, MSH-9 is ``ACK^<trigger>^ACK`` (``ACK`` without a trigger), MSH-10 is
    `ack_control_id`, MSH-11/12 echo the message's (default ``P`` / ``2.5``) and MSH-18 echoes the
    declared charset. MSA-2 echoes MSH-10 byte for byte. Error codes (AE/AR/CE/CR) add MSA-3 (a short
    text) and an ERR segment with the table 0357 `error_code` (default 207): for v2.5+ ERR-3
    ``code^text^HL70357`` with severity ERR-4 ``E`` (ERR-2 ``MSH^1^<error_field>`` if given); before
    v2.5 ERR-1 as ELD ``MSH^1^<error_field>^code&text&HL70357`` (``^^^code&...`` without a field).

    :param header: from `read_header` / `read_header_lenient` (latin-1 decoded wire text), or None when
        the message has no readable MSH.
    :param error_text: shown to the sender's operators; must not contain patient data. Defaults to the
        table 0357 description of `error_code`. Escaped with the message's escape character.
    :param now: timezone-aware time of the ACK.
    :param charset: Python codec of the original message (see `node.hl7v2.charset.resolve_charset`),
        ASCII-compatible; the node's own texts are encoded with it (unencodable characters become ``?``).
    :param error_field: the MSH field number the error is about, if known (e.g. 10 for MSH-10).
    :raises ValueError: if `now` is naive, or `error_code`/`error_text` are given with a success code.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("build_ack needs a timezone-aware datetime")
    success = code in _SUCCESS_CODES
    if success and (error_code is not None or error_text is not None):
        raise ValueError("error_code and error_text belong to error ACKs only")
    # One join per segment (this runs for every message, on the event loop).
    if header is not None:
        sep, enc = header.field_separator, header.encoding_characters
        comp = enc[0]
        version = header.version or DEFAULT_VERSION
        trigger = header.trigger_event
        msh = sep.join((
            "MSH", enc, header.receiving_app, header.receiving_facility, header.sending_app,
            header.sending_facility, now.strftime(_MSH7_FORMAT), "",
            f"ACK{comp}{trigger}{comp}ACK" if trigger else "ACK",
            _own(ack_control_id, sep, enc, charset), header.processing_id or DEFAULT_PROCESSING_ID, version,
        ))
        if header.charset_declared:
            msh = f"{msh}{sep * 6}{header.charset_declared}"
        control_id = header.control_id
    else:
        sep, enc, comp = DEFAULT_FIELD_SEPARATOR, DEFAULT_ENCODING_CHARACTERS, DEFAULT_ENCODING_CHARACTERS[0]
        version = DEFAULT_VERSION
        msh = sep.join(("MSH", enc, "", "", "", "", now.strftime(_MSH7_FORMAT), "", "ACK",
                        _own(ack_control_id, sep, enc, charset), DEFAULT_PROCESSING_ID, version))
        control_id = ""
    if success:
        return f"{msh}\r{sep.join(('MSA', code.value, control_id))}\r".encode("latin-1")
    number = APPLICATION_INTERNAL_ERROR if error_code is None else error_code
    text = error_text or TABLE_0357.get(number, "Error")
    # Cut before escaping, so an escape sequence is never split.
    msa = sep.join(("MSA", code.value, control_id, _own(text[:MSA_TEXT_MAX], sep, enc, charset)))
    err = _err_segment(number, _own(text, sep, enc, charset), version, error_field, sep, comp, enc[3])
    return f"{msh}\r{msa}\r{err}\r".encode("latin-1")


_MSH7_FORMAT: Final = "%Y%m%d%H%M%S%z"
_SUCCESS_CODES: Final = frozenset((AckCode.AA, AckCode.CA))


def _err_segment(
    number: int, text: str, version: str, error_field: int | None, sep: str, comp: str, sub: str
) -> str:
    """ERR for `number` (already-escaped `text`), in the form of the message's version."""
    if _version_tuple(version) >= (2, 5):
        location = f"MSH{comp}1{comp}{error_field}" if error_field else ""
        return sep.join(("ERR", "", location, f"{number}{comp}{text}{comp}HL70357", "E"))
    where = f"MSH{comp}1{comp}{error_field}" if error_field else f"{comp}{comp}"
    return sep.join(("ERR", f"{where}{comp}{number}{sub}{text}{sub}HL70357"))


def _own(text: str, sep: str, enc: str, charset: str) -> str:
    """A text the node writes, escaped and encoded in `charset`, as latin-1 characters (one per byte)."""
    if text.isalnum() and text.isascii() and _plain_for(sep, enc, charset):
        return text  # e.g. an ACK control id: nothing to escape, the same bytes in every such charset
    return escape(text, sep, enc).encode(charset, "replace").decode("latin-1")


_ALNUM: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PLAIN: dict[tuple[str, str, str], bool] = {}
_PLAIN_MAX: Final = 64


def _plain_for(sep: str, enc: str, charset: str) -> bool:
    """Whether `_own` leaves every ASCII letter and digit as it is: no delimiter is one (escape changes
    nothing) and `charset` encodes them as ASCII (e.g. not UTF-16). Cached: a feed uses a few."""
    key = (sep, enc, charset)
    plain = _PLAIN.get(key)
    if plain is None:
        try:
            same = _ALNUM.encode(charset, "replace") == _ALNUM.encode("ascii")
        except Exception:  # not a text codec: the slow path raises as it always did
            same = False
        plain = same and not any(c in _ALNUM for c in sep + enc)
        if len(_PLAIN) >= _PLAIN_MAX:
            _PLAIN.clear()
        _PLAIN[key] = plain
    return plain


def escape(text: str, field_separator: str, encoding_characters: str) -> str:
    """HL7-escape `text`: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (and ``\\P\\`` for a v2.7 truncation
    character); CR and LF, which would end the segment, become spaces."""
    esc = encoding_characters[2]
    out = text.replace(esc, f"{esc}E{esc}")
    names = {field_separator: "F", encoding_characters[0]: "S", encoding_characters[1]: "R",
             encoding_characters[3]: "T"}
    if len(encoding_characters) > 4:
        names[encoding_characters[4]] = "P"
    for char, name in names.items():
        out = out.replace(char, f"{esc}{name}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


_VERSION_NUMBERS: Final = re.compile(r"\d+")


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"2.5.1"`` -> (2, 5, 1); unreadable versions count as DEFAULT_VERSION."""
    numbers = tuple(int(n) for n in _VERSION_NUMBERS.findall(version))
    return numbers or (2, 5)


def parse_ack(payload: bytes) -> ParsedAck:
    """Read an ACK's MSA (and ERR, if any). For clients and tests; the header is read strictly.

    :raises HL7HeaderError: as `read_header`; 100 if there is no MSA segment; 103 if MSA-1 is not in
        table 0008.
    """
    header = read_header(payload)
    sep, comp, sub = header.field_separator, header.component_separator, header.subcomponent_separator
    msa: list[str] | None = None
    err: list[str] | None = None
    for line in payload.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if line.startswith("MSA") and msa is None:
            msa = line.split(sep)
        elif line.startswith("ERR") and err is None:
            err = line.split(sep)
    if msa is None:
        raise HL7HeaderError(100, "MSA segment is missing")
    msa += [""] * (4 - len(msa))
    try:
        code = AckCode(msa[1].strip())
    except ValueError:
        raise HL7HeaderError(103, "MSA-1 (acknowledgment code) is not in table 0008") from None
    return ParsedAck(code=code, control_id=msa[2], error_code=_err_code(err, comp, sub), text=msa[3])


def _err_code(err: list[str] | None, comp: str, sub: str) -> int | None:
    """Table 0357 code from ERR-3.1 (v2.5+) or ERR-1.4.1 (ELD, before v2.5)."""
    if err is None:
        return None
    err = [*err, "", "", ""]
    eld = [*err[1].split(comp), "", "", ""]
    candidates = (err[3].split(comp, 1)[0], eld[3].split(sub, 1)[0])
    for candidate in candidates:
        if candidate.strip().isdigit():
            return int(candidate)
    return None
