"""Translate sqlite3 exceptions into the node's store exceptions (node.errors).

The mapping is by SQLite result code, falling back to SQLite's fixed English texts when an exception
carries no code:

- SQLITE_FULL ("database or disk is full"): StoreFullError (retryable later).
- the SQLITE_IOERR family ("disk I/O error", extended codes IOERR_WRITE, IOERR_FSYNC, ...): StoreIOError.
- anything else: StoreError.

The new exception's text names the operation and SQLite's error name and text. SQLite's texts never
contain bound parameter values, so no message content reaches an exception text; callers must keep
their `operation` free of message content too (name files and feeds, never fields' values).
"""

from __future__ import annotations

import sqlite3

from node.errors import StoreError, StoreFullError, StoreIOError

_PRIMARY_CODE_MASK = 0xFF
"""Extended result codes carry the primary code in their low byte (SQLITE_IOERR_FSYNC & 0xFF == IOERR)."""


def primary_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of `exc`, or None when the exception carries none."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & _PRIMARY_CODE_MASK if isinstance(code, int) else None


def map_sqlite_error(exc: sqlite3.Error, operation: str) -> StoreError:
    """The StoreError subclass for `exc`; the caller raises it `from exc`.

    :param operation: what was being done, e.g. "stage" or "open /var/lib/edge-node/store.db".
    """
    code = primary_code(exc)
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    detail = f"{operation}: {name}: {text}"
    if code == sqlite3.SQLITE_FULL or (code is None and "database or disk is full" in text):
        return StoreFullError(detail)
    if code == sqlite3.SQLITE_IOERR or (code is None and "disk I/O error" in text):
        return StoreIOError(detail)
    return StoreError(detail)
