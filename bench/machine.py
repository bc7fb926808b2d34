"""Facts about the machine a bench ran on, and the disk's own fsync latency."""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from pathlib import Path

FSYNC_SAMPLES = 200
FSYNC_BLOCK = 4096


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def disk_of(path: Path) -> str:
    """'<device> <fstype> (<mount point>, <options>; rotational=<0|1>)' for the file system holding `path`."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    mount = fstype = source = options = "?"
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[2] == dev and "-" in fields:
            sep = fields.index("-")
            mount, options = fields[4], fields[5]
            fstype, source = fields[sep + 1], fields[sep + 2]
            break
    block = os.path.realpath(f"/sys/dev/block/{dev}")
    name = os.path.basename(block) if os.path.exists(block) else ""
    rotational = _read(f"/sys/block/{name}/queue/rotational") if name else ""
    kind = "virtio" if "virtio" in block else ""
    extra = f"; rotational={rotational}" if rotational else ""
    return f"{source} {fstype} {kind}".strip() + f" (mounted at {mount}, {options}{extra})"


def facts(workdir: Path) -> list[str]:
    """One line of machine facts: CPUs, Python, SQLite, disk of `workdir`."""
    cpus = len(os.sched_getaffinity(0))
    return [
        f"machine: nproc={cpus} (cpu_count={os.cpu_count()}), python {platform.python_version()}, "
        f"sqlite {sqlite3.sqlite_version}, kernel {platform.release()}",
        f"disk of {workdir}: {disk_of(workdir)}",
    ]


def fsync_latency(workdir: Path) -> dict[str, float]:
    """p50/p99 in µs of `write(4 KiB) + fsync` (and of `write + fdatasync`), FSYNC_SAMPLES times each,
    appending to a fresh file in `workdir` (so each sync also has metadata to write, as a growing WAL)."""
    out: dict[str, float] = {}
    block = os.urandom(FSYNC_BLOCK)
    for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
        path = workdir / f"{name}.probe"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            samples = []
            for _ in range(FSYNC_SAMPLES):
                started = time.perf_counter()
                os.write(fd, block)
                sync(fd)
                samples.append(time.perf_counter() - started)
        finally:
            os.close(fd)
            path.unlink()
        samples.sort()
        out[f"{name}_p50_us"] = samples[len(samples) // 2] * 1e6
        out[f"{name}_p99_us"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6
    return out
