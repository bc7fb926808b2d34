"""When is a dropped file complete? When its size and mtime have not changed for `settle_s` seconds.

Writers that write `x.tmp` and rename it to `x.hl7` are complete the moment the name matches the feed's
pattern; writers that write `x.hl7` in place (FTP, SMB shares) are not, and nothing but time tells. The
tracker remembers, per file name, the last (size, mtime, inode) it saw and since when (monotonic clock);
a file is *settled* once that observation is `settle_s` old. With `settle_s == 0` a file is settled when
first seen. An empty file is a writer that has created but not yet written it far more often than a
real empty drop, so it must stay unchanged for at least `empty_settle_s` (whatever `settle_s` is).
Wall-clock mtimes are only compared for equality (never against our clock: network file
systems stamp them with the server's clock).

Pure bookkeeping, no I/O: the connector passes in what it listed. Not thread-safe (one scan thread).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Signature:
    """What identifies one version of a file: if any of these changes, the file changed."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, stat: os.stat_result) -> Signature:
        return cls(stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)


@dataclass(slots=True)
class _Observation:
    signature: Signature
    since: float
    """Monotonic time at which `signature` was first seen."""
    not_before: float = 0.0
    """Monotonic time before which the file is not offered again (after a failed attempt)."""


class SettleTracker:
    """Tracks files across scans and says which ones are settled.

    :param settle_s: how long a file's signature must stay unchanged (0: settled when first seen).
    :param empty_settle_s: the least time an empty file must stay empty.
    """

    def __init__(self, settle_s: float, empty_settle_s: float = 0.0) -> None:
        self._settle_s = settle_s
        self._empty_settle_s = max(settle_s, empty_settle_s)
        self._seen: dict[str, _Observation] = {}

    def observe(self, listing: Mapping[str, os.stat_result], now: float) -> tuple[list[str], float | None]:
        """Record one scan's `listing` (name -> stat) taken at monotonic time `now`.

        Names no longer listed are forgotten; a changed signature restarts the wait.

        :returns: the settled names, oldest mtime first (then by name), and the earliest monotonic time
            at which a file that is not ready now may become ready (None if there is no such file).
        """
        for name in self._seen.keys() - listing.keys():
            del self._seen[name]
        ready: list[tuple[int, str]] = []
        next_due: float | None = None
        for name, stat in listing.items():
            due = self._update(name, Signature.of(stat), now)
            if due <= now:
                ready.append((stat.st_mtime_ns, name))
            elif next_due is None or due < next_due:
                next_due = due
        return [name for _, name in sorted(ready)], next_due

    def _update(self, name: str, signature: Signature, now: float) -> float:
        """Store the observation; the monotonic time from which the file may be processed."""
        seen = self._seen.get(name)
        if seen is None or seen.signature != signature:
            seen = self._seen[name] = _Observation(signature, now)
        settle_s = self._settle_s if signature.size else self._empty_settle_s
        return max(seen.since + settle_s, seen.not_before)

    def signature(self, name: str) -> Signature | None:
        """The signature the tracker last saw for `name` (None if it does not track it)."""
        seen = self._seen.get(name)
        return None if seen is None else seen.signature

    def changed(self, name: str, signature: Signature, now: float) -> None:
        """The connector found `name` different from what the scan saw: wait for it to settle again."""
        self._seen[name] = _Observation(signature, now)

    def defer(self, name: str, until: float) -> None:
        """Do not offer `name` again before monotonic time `until` (a failed attempt; retry later)."""
        seen = self._seen.get(name)
        if seen is not None:
            seen.not_before = until

    def forget(self, name: str) -> None:
        """`name` was moved away; a new file of that name starts from scratch."""
        self._seen.pop(name, None)

    def __len__(self) -> int:
        return len(self._seen)
