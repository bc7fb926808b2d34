"""The node's exception hierarchy.

Data errors (about one message) become a row state, a NAK and a counter; they are never raised past a
connector or worker. Infrastructure errors propagate: the supervisor exits non-zero and systemd restarts.
Texts of these exceptions never contain patient data: they name fields, files, lines and codes only.
"""

from __future__ import annotations

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the exit status of every configuration error (unit: RestartPreventExitStatus=78)."""

EX_IOERR = 74
"""sysexits.h EX_IOERR: the exit status after a fatal store I/O error (systemd restarts the node)."""


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration is invalid; the text names the file and the key."""


class StoreError(NodeError):
    """The store cannot do what was asked."""


class StoreFullError(StoreError):
    """The commit failed for lack of space (disk full, or the configured cap). Retryable later.

    Nothing of the failed transaction is stored; the sender must get AR/CR (never AA/CA).
    """


class StoreIOError(StoreError):
    """An I/O error at commit. Not retryable in-process (fsync errors may drop pages): the node
    answers AR/CR to every waiter, stops and exits with EX_IOERR so systemd restarts it."""


class StoreClosedError(StoreError):
    """The store writer was stopped (shutdown, or after a fatal I/O error)."""


class ConnectorError(NodeError):
    """A connector cannot start (cannot bind or watch): fatal at start-up."""


class MessageError(NodeError):
    """About ONE message: recorded with its reason, never raised past a connector or worker."""


class HL7HeaderError(MessageError):
    """The MSH segment cannot be read. Carries an HL7 table 0357 error code.

    :param code: HL7 table 0357 code (100 segment sequence error, 101 required field missing,
        102 data type error, 103 table value not found, ...).
    :param reason: a text naming segment and field, never their contents.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
