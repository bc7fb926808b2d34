"""Durable moves of processed files into the archive or error directory, and `.reason` files.

A move is `os.replace` (atomic within one file system; a copy, fsync, rename and unlink across file
systems), never over an existing file: a name that is taken gets a UTC timestamp before its suffix
(`x.hl7` -> `x.20250102T030405.123456Z.hl7`). Both directories are fsynced afterwards, so after a power
loss the file is in one place or, at worst, in both (then it is read again and deduplicated by the store).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

REASON_SUFFIX = ".reason"


def fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable. File systems that cannot fsync a directory are ignored."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def free_name(directory: Path, name: str, now: datetime | None = None) -> Path:
    """`directory / name`, or a timestamped variant of `name` when that is taken."""
    target = directory / name
    if not target.exists():
        return target
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    path = Path(name)
    stem, suffix = (path.stem, path.suffix) if path.suffix and path.stem else (name, "")
    for attempt in range(1000):
        extra = f"-{attempt}" if attempt else ""
        target = directory / f"{stem}.{stamp}{extra}{suffix}"
        if not target.exists():
            return target
    raise FileExistsError(errno.EEXIST, "no free name in the target directory", str(directory / name))


def write_durably(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary dotfile, fsync, rename and fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def move_into(source: Path, directory: Path, reason: str | None = None) -> Path:
    """Move `source` into `directory` under a free name; with `reason`, write `<target>.reason` first.

    The reason file is written before the move: a crash in between leaves the source in place (it is
    processed again and the reason rewritten), never a file in `error/` without its reason.

    :returns: the file's new path.
    :raises OSError: the move failed; `source` is still where it was.
    """
    target = free_name(directory, source.name)
    if reason is not None:
        write_durably(target.with_name(target.name + REASON_SUFFIX), reason)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(source, target)
    fsync_dir(directory)
    fsync_dir(source.parent)
    return target


def _copy_across(source: Path, target: Path) -> None:
    """The move for another file system: copy to a dotfile beside `target`, fsync, rename, unlink."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
    source.unlink()
