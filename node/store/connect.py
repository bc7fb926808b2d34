"""Open SQLite connections to the store file with the node's settings.

Writer connections: parent directory created, `auto_vacuum=INCREMENTAL` (before anything else, since it
only takes effect before the first table exists), `journal_mode=WAL`, `synchronous=FULL` (a COMMIT returns
only after the WAL is fsynced), `busy_timeout=5000`, `foreign_keys=ON`. Reader connections open the file
with a `mode=ro` URI and `query_only=ON`; they see committed data while the writer writes (WAL).

Two writer options serve the node's hot paths (node.store.checkpoint explains both): `wal_autocheckpoint`
(pages of WAL before a committing connection checkpoints by itself; SQLite's default 1000) and
`durable=False` (`synchronous=NORMAL`: a COMMIT does not fsync; the transaction is atomic and the file
consistent after a crash, but a power cut may undo the last commits). Only the harmonizer workers use
`durable=False`: undoing their commit leaves the message `staged` (one transaction), so it is converted
again, and anything the push stage sends was made durable first by its own FULL commit, which fsyncs the
whole WAL, the workers' frames before it included.

Every connection has `isolation_level=None`: the sqlite3 module never opens transactions implicitly,
callers issue BEGIN IMMEDIATE / COMMIT themselves. Connections are created with `check_same_thread=False`
(a writer is opened in one thread and used in another; a reader serialises use with its own lock); each
connection must still be used by one thread at a time.

Failures raise node.errors.StoreError (see node.store.errormap): the file cannot be opened or created,
WAL cannot be enabled (e.g. on a file system without shared memory), or the file is not a database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from node.errors import StoreError
from node.store.errormap import map_sqlite_error

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another connection's lock before failing with SQLITE_BUSY."""

DEFAULT_WAL_AUTOCHECKPOINT = 1000
"""SQLite's own default."""

_WRITER_PRAGMAS = (
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    # auto_vacuum must come before the first table is created (and before WAL writes the header).
    "PRAGMA auto_vacuum=INCREMENTAL",
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
)

_READER_PRAGMAS = (
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA query_only=ON",
)


def open_connection(path: Path, *, readonly: bool = False, durable: bool = True,
                    wal_autocheckpoint: int = DEFAULT_WAL_AUTOCHECKPOINT) -> sqlite3.Connection:
    """Open `path` for writing (created if missing) or, with `readonly`, for reading (must exist).
    `durable` and `wal_autocheckpoint` apply to writer connections (module docstring).

    :raises StoreError: the file or its directory cannot be opened or created, or is not a database.
    :raises StoreIOError: an I/O error while reading the header or switching to WAL.
    """
    operation = f"open {path}"
    try:
        if readonly:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise map_sqlite_error(exc, operation) from exc
    except OSError as exc:
        raise StoreError(f"{operation}: cannot create directory: {exc.strerror}") from exc
    try:
        _configure(conn, readonly=readonly)
        if not readonly:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        raise map_sqlite_error(exc, operation) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, *, readonly: bool) -> None:
    for pragma in _READER_PRAGMAS if readonly else _WRITER_PRAGMAS:
        conn.execute(pragma).fetchall()
    if not readonly:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(f"journal_mode is {mode!r}, not 'wal' (file system without shared memory?)")
