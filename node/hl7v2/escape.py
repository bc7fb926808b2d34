"""HL7 v2 escape sequences (v2.x chapter 2, "escape sequences in text fields"): `unescape` for reading
values, `escape` for writing them.

`unescape(text, encoding, charset)` turns the wire text of ONE leaf value (a subcomponent, or a component
without subcomponents; split on the separators *before* unescaping) into plain text:

- ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``: the field, component, subcomponent, repetition and escape characters.
- ``\\P\\``: the truncation character (v2.7+, only when MSH-2 has 5 characters; otherwise kept as is).
- ``\\Xhhhh..\\``: the bytes ``hh hh ..`` decoded in the message's charset (the codec the message was
  decoded with). An odd number of digits, or bytes that do not decode in that charset, are kept as is.
- ``\\.br\\``: ``"\\n"``.
- ``\\.sp\\``, ``\\.sp n\\``: ``n`` newlines (absent ``n`` = 1: the standard makes ``\\.sp\\`` equal to
  ``\\.br\\``); ``n`` is capped at 99.
- ``\\.ce\\``: ``"\\n"`` (the standard: "end current output line and center the next line"; the centring
  is dropped, the line end is kept so that the words of two lines do not fuse).
- ``\\.sk n\\``: ``n`` spaces ("skip n spaces to the right"; absent ``n`` = 1; capped at 99).
- ``\\.in n\\``, ``\\.ti n\\``, ``\\.fi\\``, ``\\.nf\\``: dropped (indentation, fill mode: layout only).
- ``\\H\\``, ``\\N\\``: dropped (start/end highlighting).
- ``\\Cxxyy\\``, ``\\Mxxyy\\``, ``\\Mxxyyzz\\``: dropped. ISO 2022 character set switching is NOT
  supported: the text after such an escape is decoded in the message charset like the rest.
- ``\\Zxxx\\``: kept literally, escape characters included (locally defined sequences).

Anything else never raises and is kept literally, character for character: unknown sequences, a lone
or unterminated escape character, lowercase letters (``\\f\\`` is not ``\\F\\``). When a sequence is not
recognised, its opening escape character is kept and the scan resumes right after it, so a stray
escape character (``C:\\temp\\F\\x``: an unescaped backslash before a real ``\\F\\``) costs only itself.

Fast path: text without the escape character is returned as is (the same object).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["Encoding", "escape", "unescape"]

_MAX_REPEAT: Final = 99
"""Cap on ``\\.sp n\\`` newlines and ``\\.sk n\\`` spaces: a hostile ``\\.sp 999999999\\`` must not allocate GBs."""


@dataclass(frozen=True, slots=True)
class Encoding:
    """The separators of one message: MSH-1 and MSH-2 (validated by the parser, not here)."""

    field: str
    """MSH-1, e.g. ``|``."""
    component: str
    """MSH-2.1, e.g. ``^``."""
    repetition: str
    """MSH-2.2, e.g. ``~``."""
    escape: str
    """MSH-2.3, e.g. ``\\``."""
    subcomponent: str
    """MSH-2.4, e.g. ``&``."""
    truncation: str = ""
    """MSH-2.5 (v2.7+), e.g. ``#``; empty when MSH-2 has 4 characters."""

    @property
    def characters(self) -> str:
        """MSH-2 as it would be written: ``^~\\&`` (or ``^~\\&#``)."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_ENCODING: Final = Encoding("|", "^", "~", "\\", "&")


_HEX: Final = "0-9A-Fa-f"


def _pattern(esc: str) -> re.Pattern[str]:
    e = re.escape(esc)
    not_e = "[^" + e + "]"
    body = (
        "[FSTREPHN]"
        f"|X[{_HEX}]*"
        f"|C[{_HEX}]{{4}}"
        f"|M[{_HEX}]{{4}}(?:[{_HEX}]{{2}})?"
        r"|\.(?:br|fi|nf|ce)"
        r"|\.(?:sp|sk) *\+?[0-9]*"
        r"|\.(?:in|ti) *[+-]?[0-9]*"
        f"|Z{not_e}*"
    )
    return re.compile(f"{e}({body}){e}")


_PATTERNS: dict[str, re.Pattern[str]] = {}
"""Compiled sequence patterns by escape character (almost always one entry: ``\\``)."""
_PATTERNS_MAX: Final = 32


def _replacer(encoding: Encoding, charset: str) -> Callable[[re.Match[str]], str]:
    simple = {
        "F": encoding.field,
        "S": encoding.component,
        "T": encoding.subcomponent,
        "R": encoding.repetition,
        "E": encoding.escape,
        "H": "",
        "N": "",
    }
    if encoding.truncation:
        simple["P"] = encoding.truncation

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        head = body[0]
        if head == "X":
            digits = body[1:]
            if len(digits) % 2:
                return match.group(0)
            try:
                return bytes.fromhex(digits).decode(charset)
            except (UnicodeError, LookupError, ValueError):
                return match.group(0)
        if head == ".":
            command = body[1:3]
            if command in ("br", "ce"):
                return "\n"
            if command == "sp":
                return "\n" * _sp_count(body[3:])
            if command == "sk":
                return " " * _sp_count(body[3:])
            return ""  # .in .ti .fi .nf: layout only
        if len(body) == 1:
            # F S T R E P H N; P without a truncation character is kept literally.
            return simple.get(head, match.group(0))
        if head == "Z":
            return match.group(0)
        return ""  # C / M: character set switching, unsupported

    return replace


def _sp_count(rest: str) -> int:
    """``n`` of ``.sp n`` / ``.sk n`` from the text after the command: 1 when absent, capped."""
    digits = rest.lstrip(" +")
    if not digits:
        return 1
    digits = digits.lstrip("0")
    if len(digits) > 2:
        return _MAX_REPEAT
    return min(int(digits or "0"), _MAX_REPEAT)


def unescape(text: str, encoding: Encoding, charset: str) -> str:
    """The plain text of one leaf value's wire text (see the module docstring for every sequence).

    :param text: a subcomponent (or a component/field without deeper separators), already split.
    :param encoding: the message's separators.
    :param charset: the Python codec the message was decoded with (for ``\\Xhh\\``).
    :returns: `text` itself when it holds no escape character. Never raises for any `text`.
    """
    esc = encoding.escape
    if esc not in text:
        return text
    pattern = _PATTERNS.get(esc)
    if pattern is None:
        if len(_PATTERNS) >= _PATTERNS_MAX:  # hostile input may vary the escape character
            _PATTERNS.clear()
        pattern = _PATTERNS[esc] = _pattern(esc)
    return pattern.sub(_replacer(encoding, charset), text)


def escape(text: str, encoding: Encoding) -> str:
    """The wire text of a plain value: the inverse of `unescape` (``unescape(escape(t)) == t``).

    Separators and the escape character become ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (and the truncation
    character ``\\P\\``); CR and LF, which would end the segment, become ``\\X0D\\`` and ``\\X0A\\``.
    """
    table = {
        ord(encoding.escape): f"{encoding.escape}E{encoding.escape}",
        ord(encoding.field): f"{encoding.escape}F{encoding.escape}",
        ord(encoding.component): f"{encoding.escape}S{encoding.escape}",
        ord(encoding.subcomponent): f"{encoding.escape}T{encoding.escape}",
        ord(encoding.repetition): f"{encoding.escape}R{encoding.escape}",
        ord("\r"): f"{encoding.escape}X0D{encoding.escape}",
        ord("\n"): f"{encoding.escape}X0A{encoding.escape}",
    }
    if encoding.truncation:
        table[ord(encoding.truncation)] = f"{encoding.escape}P{encoding.escape}"
    return text.translate(table)
