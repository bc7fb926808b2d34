"""Batch assembly for the push stage: pure functions from pending outbound rows to transaction Bundles.

No I/O and no clock: node.push.worker reads the rows (node.store.push) and decides when to send; this
module decides WHAT goes together. The rules (node.push.worker's docstring explains why):

- Rows arrive in (inbound_id, id) order, already filtered by the store (watermark, partitions that are
  busy or waiting for a retry, rows superseded by an attempt whose outcome is unknown).
- A batch is made of whole messages (all rows of one inbound_id), taken greedily in that order. A batch
  is closed when the next message would push it past `max_entries` entries or `max_bytes` bytes of
  Bundle JSON (or past `max_entries * ROWS_PER_ENTRY` rows); a single message larger than the bounds
  travels alone. A batch is `full` when it was closed that way or is at a bound; the last batch of a
  round may be partial (the worker decides whether to wait for more).
- One partition (patient) goes into ONE batch per round: once a partition's message is left out (its
  batch is full), every later message of that partition is left out too, so nothing newer overtakes it.
- One resource's versions keep their order across partitions too (the same Encounter after a patient
  merge, an Organization or Location many patients share): a message is left out when one of its
  resources has an earlier version with DIFFERENT contents (another `fingerprint`) that is not in the
  batch being filled: left out earlier in the round, in an earlier batch of the round, or among the
  `blockers` (rows in flight or waiting for a retry). Equal contents may go in any order (central ends
  the same), so resources every message repeats unchanged do not serialise the batches. A message left
  out this way blocks its partition and its resources for the rest of the round.
- The same resource (type, id) never appears twice in one Bundle: the newest version (highest
  (inbound_id, id)) is the `Entry`'s representative and is what is sent; the older rows are its
  `superseded` rows, marked pushed with it once central confirms the Bundle. Entries keep the position
  of their key's first row (a Patient updated by a later message stays before its Encounter).
- `bundle_bytes` writes the Bundle by concatenating the stored compact JSON bodies (no re-encoding):
  `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"PUT","url":"T/id"},
  "resource":<body>}, ...]}`. `Batch.bytes` is its exact length, computed from the rows' body sizes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

ROWS_PER_ENTRY = 4
"""A batch holds at most max_entries * ROWS_PER_ENTRY rows (superseded versions included): bounds the
work of one confirmation while still letting bursts of updates to one patient collapse."""

_PREFIX = b'{"resourceType":"Bundle","type":"transaction","entry":['
_SUFFIX = b"]}"
_ENTRY_HEAD = b'{"request":{"method":"PUT","url":'
_ENTRY_MIDDLE = b'},"resource":'
_ENTRY_TAIL = b"}"
_EMPTY_BUNDLE_BYTES = len(_PREFIX) + len(_SUFFIX)


class Row(Protocol):
    """What the batcher needs of a pending outbound row (node.store.push.PendingRow)."""

    @property
    def id(self) -> int: ...
    @property
    def inbound_id(self) -> int: ...
    @property
    def resource_type(self) -> str: ...
    @property
    def resource_id(self) -> str: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def size(self) -> int:
        """Bytes of the stored body (UTF-8)."""
        ...
    @property
    def created_at(self) -> float: ...
    @property
    def fingerprint(self) -> str:
        """A digest of the body: equal for equal contents."""
        ...


def order_key(row: Row) -> tuple[int, int]:
    """The push order of rows: message order, then the order the harmonizer wrote them in."""
    return row.inbound_id, row.id


def _url(row: Row) -> bytes:
    return json.dumps(f"{row.resource_type}/{row.resource_id}", ensure_ascii=False).encode()


def entry_bytes(row: Row) -> int:
    """Bytes one entry carrying `row` adds to a Bundle (without the separating comma)."""
    return len(_ENTRY_HEAD) + len(_url(row)) + len(_ENTRY_MIDDLE) + row.size + len(_ENTRY_TAIL)


@dataclass(frozen=True, slots=True)
class Entry:
    """One Bundle entry: `row` is sent; `superseded` are older versions of the same resource in the batch."""

    row: Row
    superseded: tuple[Row, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.row.resource_type, self.row.resource_id

    @property
    def rows(self) -> tuple[Row, ...]:
        return (*self.superseded, self.row)


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows that travel in one transaction Bundle."""

    entries: tuple[Entry, ...]
    rows: tuple[Row, ...]
    """Every row, sent or superseded, in (inbound_id, id) order."""
    bytes: int
    """Exact length of `bundle_bytes(...)` for this batch."""
    full: bool = False
    """Closed because the next message did not fit: send now, do not wait for more."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Entries per resource type."""

    @property
    def messages(self) -> tuple[int, ...]:
        """Inbound ids of the messages in the batch, in order."""
        return tuple(dict.fromkeys(row.inbound_id for row in self.rows))

    @property
    def partitions(self) -> frozenset[str]:
        return frozenset(row.partition_key for row in self.rows)

    @property
    def oldest_created_at(self) -> float:
        return min(row.created_at for row in self.rows)

    @property
    def superseded(self) -> tuple[tuple[Row, Row], ...]:
        """(superseded row, the row sent in its place) pairs."""
        return tuple((old, entry.row) for entry in self.entries for old in entry.superseded)


def plan(rows: Iterable[Row], *, full: bool = False) -> Batch:
    """One batch of exactly these rows (no bounds): collapse each (type, id) to its newest row."""
    ordered = sorted(rows, key=order_key)
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in ordered:
        groups.setdefault((row.resource_type, row.resource_id), []).append(row)
    entries = tuple(Entry(versions[-1], tuple(versions[:-1])) for versions in groups.values())
    size = _EMPTY_BUNDLE_BYTES + sum(entry_bytes(entry.row) for entry in entries) + max(0, len(entries) - 1)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.row.resource_type] = counts.get(entry.row.resource_type, 0) + 1
    return Batch(entries, tuple(ordered), size, full, dict(sorted(counts.items())))


class _Builder:
    """A batch being filled: the entry size of each key (the newest version's), for the bounds."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.sizes: dict[tuple[str, str], int] = {}
        self.body_bytes = 0
        """Sum of `sizes`."""

    def cost(self, message: Sequence[Row]) -> tuple[int, int, int]:
        """(entries, bytes, rows) of the batch if `message` were added."""
        added = {(row.resource_type, row.resource_id): entry_bytes(row) for row in message}
        entries = len(self.sizes) + sum(1 for key in added if key not in self.sizes)
        body = self.body_bytes + sum(size - self.sizes.get(key, 0) for key, size in added.items())
        return entries, _EMPTY_BUNDLE_BYTES + body + max(0, entries - 1), len(self.rows) + len(message)

    def add(self, message: Sequence[Row]) -> None:
        for row in message:
            key = (row.resource_type, row.resource_id)
            size = entry_bytes(row)
            self.body_bytes += size - self.sizes.get(key, 0)
            self.sizes[key] = size
        self.rows.extend(message)


def messages_of(rows: Iterable[Row]) -> list[list[Row]]:
    """Rows grouped by message (consecutive inbound_id), in (inbound_id, id) order."""
    grouped: list[list[Row]] = []
    for row in sorted(rows, key=order_key):
        if grouped and grouped[-1][0].inbound_id == row.inbound_id:
            grouped[-1].append(row)
        else:
            grouped.append([row])
    return grouped


def _key(row: Row) -> tuple[str, str]:
    return row.resource_type, row.resource_id


def assemble(rows: Iterable[Row], *, max_entries: int, max_bytes: int, max_batches: int = 1,
             blockers: Iterable[Row] = ()) -> list[Batch]:
    """Up to `max_batches` batches from `rows` (pending, eligible, whole messages), see the module
    docstring. `blockers`: pending rows that cannot go now (their partitions are in flight or waiting
    for a retry); a row's later versions with other contents wait for them. Only the last batch may be
    partial (`full` False): the caller decides whether to wait."""
    if max_entries < 1 or max_bytes < 1 or max_batches < 1:
        raise ValueError("bounds and max_batches must be positive")
    max_rows = max_entries * ROWS_PER_ENTRY
    owner: dict[str, int] = {}
    """partition -> index of the batch holding its messages this round."""
    blocked: set[str] = set()
    """Partitions with a message left out: nothing newer of them may go this round."""
    earlier: dict[tuple[str, str], set[str]] = {}
    """(type, id) -> fingerprints of its earlier versions that are not in the batch being filled."""
    outside = sorted(blockers, key=order_key)
    next_outside = 0
    done: list[Batch] = []
    current = _Builder()

    def fits(entries: int, size: int, count: int) -> bool:
        return entries <= max_entries and size <= max_bytes and count <= max_rows

    def note(unsent: Iterable[Row]) -> None:
        for row in unsent:
            earlier.setdefault(_key(row), set()).add(row.fingerprint)

    def overtakes(message: Sequence[Row]) -> bool:
        return any(earlier.get(_key(row), {row.fingerprint}) - {row.fingerprint} for row in message)

    def leave_out(message: Sequence[Row]) -> None:
        blocked.add(message[0].partition_key)
        note(message)

    for message in messages_of(rows):
        position = order_key(message[0])
        while next_outside < len(outside) and order_key(outside[next_outside]) < position:
            note([outside[next_outside]])
            next_outside += 1
        partition = message[0].partition_key
        if partition in blocked or (partition in owner and owner[partition] < len(done)) or overtakes(message):
            leave_out(message)  # its partition's batch is closed already, or an older version waits
            continue
        if current.rows and not fits(*current.cost(message)):
            note(current.rows)
            done.append(plan(current.rows, full=True))
            current = _Builder()
            if len(done) >= max_batches:
                break
            if partition in owner or overtakes(message):  # its partition or a resource is in the closed batch
                leave_out(message)
                continue
        current.add(message)  # a single message larger than the bounds travels alone
        owner[partition] = len(done)
    if current.rows and len(done) < max_batches:
        entries, size, count = current.cost(())
        at_capacity = entries >= max_entries or size >= max_bytes or count >= max_rows
        done.append(plan(current.rows, full=at_capacity))
    return done


def split(batch: Batch) -> list[list[Row]] | None:
    """Two halves of `batch` for bisection or after a 413: by whole messages while there are several,
    then by entries (each entry's superseded rows stay with it); None for a single entry."""
    messages = messages_of(batch.rows)
    if len(messages) > 1:
        middle = len(messages) // 2
        return [[row for message in half for row in message] for half in (messages[:middle], messages[middle:])]
    if len(batch.entries) > 1:
        middle = len(batch.entries) // 2
        return [[row for entry in half for row in entry.rows]
                for half in (batch.entries[:middle], batch.entries[middle:])]
    return None


def bundle_bytes(batch: Batch, bodies: Mapping[int, str]) -> bytes:
    """The transaction Bundle of `batch`: one `PUT Type/id` entry per entry, with the body of its row.

    :raises KeyError: a body is missing from `bodies` (row id -> stored compact JSON).
    """
    parts: list[bytes] = []
    for entry in batch.entries:
        row = entry.row
        parts.append(_ENTRY_HEAD + _url(row) + _ENTRY_MIDDLE + bodies[row.id].encode("utf-8") + _ENTRY_TAIL)
    return _PREFIX + b",".join(parts) + _SUFFIX
