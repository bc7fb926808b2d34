"""FileSink: transaction Bundles written to a directory instead of central (sites without a network way
to central, and the embedded default `file://var/outbox`). Also `make_sink()`, which picks the sink the
`[central] url` names.

Each batch becomes `<dir>/<batch_id>.json`, written atomically: the bytes go to a hidden temp file in the
same directory (`.<batch_id>.<random>.tmp`, so readers globbing `*.json` never see a partial file),
which is fsynced, renamed over the final name and the directory fsynced. Writing the same batch again
replaces the file with the same contents (re-delivery is idempotent). The work runs in a thread.

Disk problems are outcomes, never exceptions: ENOSPC, EDQUOT, EIO and unknown errors are `transient`
(nothing is lost: the batch stays pending and is retried); a missing, read-only or forbidden directory
is `misconfigured`. A failed write leaves no temp file behind (as far as unlink can).
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
from pathlib import Path

from node.errors import ConfigError
from node.push.client import FHIRClient
from node.push.outcome import OutcomeKind, PushOutcome, Sink, check_batch_id
from node.settings import CentralSection

FILE_URL_PREFIX = "file://"
TEMP_SUFFIX = ".tmp"

TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.ENOMEM,
                              errno.EBUSY})
MISCONFIGURED_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                                  errno.EISDIR, errno.ENAMETOOLONG})


def directory_from_url(url: str) -> Path:
    """The directory of a `file://` url. Everything after `file://` is the path, taken literally (no
    host part, no percent-decoding): `file:///var/lib/edge-node/outbox` is absolute,
    `file://var/outbox` is `var/outbox` relative to the working directory.
    :raises ConfigError: not a file:// url, or an empty path."""
    if not url.startswith(FILE_URL_PREFIX):
        raise ConfigError(f"[central] url: {url!r} is not a file:// url")
    path = url[len(FILE_URL_PREFIX):]
    if not path:
        raise ConfigError("[central] url: file:// needs a directory (file:///abs/dir or file://rel/dir)")
    return Path(path)


class FileSink:
    """Writes each transaction Bundle to `<directory>/<batch_id>.json` (see the module docstring).

    The directory is created (with parents) at construction. :raises ConfigError: it cannot be created
    or is not a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"[central] url: cannot create the outbox directory {self.directory}: "
                              f"{exc.strerror}") from None

    @classmethod
    def from_url(cls, url: str) -> FileSink:
        return cls(directory_from_url(url))

    def __repr__(self) -> str:
        return f"FileSink({str(self.directory)!r})"

    def describe(self) -> str:
        return f"{FILE_URL_PREFIX}{self.directory}"

    async def post_transaction(self, bundle_bytes: bytes, *, batch_id: str) -> PushOutcome:
        """Write the bundle atomically as `<batch_id>.json`. `ok` once the file and its directory entry
        are on disk; never raises for disk problems. :raises ValueError: invalid batch_id."""
        check_batch_id(batch_id)
        return await asyncio.to_thread(self.write, bundle_bytes, batch_id)

    async def close(self) -> None:
        """Nothing to release (each write opens and closes its own files)."""

    def write(self, bundle_bytes: bytes, batch_id: str) -> PushOutcome:
        """The blocking write (runs in a thread from post_transaction)."""
        final = self.directory / f"{check_batch_id(batch_id)}.json"
        temp = self.directory / f".{batch_id}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            _write_synced(temp, bundle_bytes)
            os.replace(temp, final)
        except OSError as exc:
            _unlink_quietly(temp)
            return disk_outcome(exc)
        try:
            _fsync_directory(self.directory)
        except OSError as exc:  # the file is complete but its name may not survive a power cut: retry
            return disk_outcome(exc, "fsync the directory of")
        return PushOutcome(OutcomeKind.OK, f"written to {final.name} ({len(bundle_bytes)} bytes)")


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def disk_outcome(exc: OSError, action: str = "write") -> PushOutcome:
    """Classify a failed write: `misconfigured` for a missing, read-only or forbidden directory,
    `transient` for everything else (ENOSPC, EDQUOT, EIO, ...: retried, nothing is lost)."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    kind = OutcomeKind.MISCONFIGURED if exc.errno in MISCONFIGURED_ERRNOS else OutcomeKind.TRANSIENT
    return PushOutcome(kind, f"cannot {action} the bundle file: {code} ({exc.strerror})")


def make_sink(section: CentralSection) -> Sink:
    """The sink `section.url` names: FileSink for file://, FHIRClient for http(s)://.
    :raises ConfigError: certificates, credentials or the directory cannot be loaded/created."""
    if section.url.startswith(FILE_URL_PREFIX):
        return FileSink.from_url(section.url)
    return FHIRClient(section)
