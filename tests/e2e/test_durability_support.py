"""Helpers shared by the durability tests (test_durability_*.py); this module has no tests itself.

Everything here is deliberately independent of the code under test where it judges it: the MLLP client
and the ACK reader are a few lines of plain sockets and string splitting, so a bug in the node's own
client or ACK parser cannot hide a bug in what the node answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.store.queries import StoredMessage
from node.store.reader import StoreReader
from tests.node_process import NodeProcess

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CR = b"\r"


def adt_message(sender: str, seq: int, run: str = "") -> tuple[str, bytes]:
    """A synthetic ADT^A01 (~300 bytes, no real patient data) with the unique MSH-10 `<run><sender><seq>`.

    Returns (control id, wire payload without MLLP framing)."""
    control_id = f"{run}{sender}{seq:06d}"
    segments = (
        f"MSH|^~\\&|DURTEST|{sender}|EDGE|TESTSITE|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1",
        f"EVN|A01|20240101120000|||{sender}",
        f"PID|1||{sender}{seq:08d}^^^TESTHOSP^MR||SYNTHETIC^PATIENT^{seq % 1000}||19700101|U|||"
        "1 TEST STREET^^TESTTOWN^^00000",
        f"PV1|1|I|WARD^{seq % 100:03d}^1^TESTHOSP||||0000^TEST^DOCTOR|||MED||||||||V{seq:08d}",
    )
    return control_id, ("\r".join(segments) + "\r").encode("ascii")


@dataclass(frozen=True, slots=True)
class Ack:
    """MSA-1, MSA-2 and the table 0357 code of ERR-3 (v2.5+), read with plain string splitting."""

    code: str
    control_id: str
    error_code: int | None


def read_ack(payload: bytes) -> Ack:
    """Read the MSA (and ERR) of one ACK payload. :raises ValueError: no MSA segment."""
    text = payload.decode("latin-1")
    separator = text[3] if len(text) > 3 else "|"
    msa: list[str] | None = None
    err: list[str] | None = None
    for segment in text.replace("\n", "\r").split("\r"):
        fields = segment.split(separator)
        if fields[0] == "MSA" and msa is None:
            msa = fields
        elif fields[0] == "ERR" and err is None:
            err = fields
    if msa is None or len(msa) < 3:
        raise ValueError(f"ACK without a usable MSA segment: {payload!r}")
    error_code = None
    if err is not None and len(err) > 3 and err[3].split("^")[0].isdigit():
        error_code = int(err[3].split("^")[0])
    return Ack(msa[1], msa[2], error_code)


class BlockingMLLPClient:
    """One stop-and-wait MLLP connection with plain blocking sockets.

    Any failure (refused, reset, closed, timeout) raises OSError (ConnectionError/TimeoutError are
    subclasses); the caller then closes the client and reconnects.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> BlockingMLLPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def exchange(self, payload: bytes) -> Ack:
        """Send one framed message and return the first ACK frame that comes back."""
        self._sock.sendall(START_BLOCK + payload + END_BLOCK + CR)
        while True:
            start = self._buffer.find(START_BLOCK)
            end = self._buffer.find(END_BLOCK, start + 1) if start >= 0 else -1
            if end >= 0:
                block = self._buffer[start + 1:end]
                self._buffer = self._buffer[end + 1:].lstrip(CR)
                return read_ack(block)
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the node before its ACK")
            self._buffer += data


def close_pipes(node: NodeProcess) -> None:
    """Close the stderr pipe of an exited NodeProcess (NodeProcess.stop()/kill() leave it open, which is a
    ResourceWarning, an error under this suite's filterwarnings). Idempotent."""
    assert node.proc.poll() is not None
    node._reader.join(5)
    if node.proc.stderr is not None and not node._reader.is_alive():
        node.proc.stderr.close()


def http_status(port: int, path: str = "/healthz", timeout: float = 5.0) -> int:
    """The HTTP status of GET http://127.0.0.1:<port><path>."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def stored_rows(path: Path) -> dict[str, list[StoredMessage]]:
    """Every row of the store file at `path`, grouped by control id (MSH-10)."""
    rows: dict[str, list[StoredMessage]] = defaultdict(list)
    with StoreReader(path) as reader:
        after = 0
        while True:
            page = reader.messages(after_id=after, limit=1000)
            if not page:
                break
            for row in page:
                rows[row.control_id].append(row)
            after = page[-1].id
    return dict(rows)


def integrity(path: Path) -> str:
    with StoreReader(path) as reader:
        return reader.integrity_check()


def assert_acked_stored_once(path: Path, acked: dict[str, bytes]) -> dict[str, list[StoredMessage]]:
    """Every message that got AA is in the store exactly once with its exact bytes; no MSH-10 has two
    rows; the file passes PRAGMA integrity_check. Returns the rows by control id."""
    rows = stored_rows(path)
    doubled = {control_id: len(found) for control_id, found in rows.items() if len(found) != 1}
    assert not doubled, f"MSH-10s stored more than once: {doubled}"
    missing = sorted(set(acked) - set(rows))
    assert not missing, f"{len(missing)} messages got AA but are not in the store, e.g. {missing[:10]}"
    wrong = [control_id for control_id, raw in acked.items() if rows[control_id][0].raw != raw]
    assert not wrong, f"stored bytes differ from the bytes sent for {wrong[:10]}"
    assert integrity(path) == "ok"
    return rows


# -- a real full disk: a small tmpfs ---------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path | str]:
    """Mount a tmpfs of `size` on `where` and always unmount it again. Yields `where`, or, when this
    process may not mount (not root / no CAP_SYS_ADMIN / no `mount`), the reason as a str."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                                capture_output=True, text=True, timeout=30)
    except OSError as exc:
        yield f"cannot run mount: {exc}"
        return
    if result.returncode != 0:
        yield f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {result.stderr.strip() or result.returncode}"
        return
    try:
        yield where
    finally:
        done = subprocess.run(["umount", str(where)], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:  # still busy (a failed test left a process behind): detach it anyway
            subprocess.run(["umount", "-l", str(where)], capture_output=True, text=True, timeout=30)


def fill_file_system(filler: Path) -> int:
    """Write zeros to `filler` until the file system is full (ENOSPC even for one byte); returns the
    number of bytes written."""
    written = 0
    chunk = bytes(1 << 20)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while chunk:
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[:len(chunk) // 2]
                continue
            written += n
            if n < len(chunk):
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)
    return written


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
