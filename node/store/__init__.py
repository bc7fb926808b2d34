"""The message store: the only code in the node that touches SQLite.

- `Store` (node.store.store): the writer connection; stages batches of messages in one transaction.
- `GroupCommitWriter` (node.store.writer): owns a Store in one thread and group-commits requests
  from threads (`submit`) and asyncio tasks (`stage`).
- `StoreReader` (node.store.reader): read-only access for metrics and the status CLI.
- `open_connection` (node.store.connect) and `migrate` (node.store.migrations): the file's settings
  and schema.

Every failure is a node.errors.StoreError subclass; see each module for which and when.
"""

from __future__ import annotations

from node.store.connect import open_connection
from node.store.migrations import migrate
from node.store.queries import StoredMessage
from node.store.reader import StoreReader
from node.store.store import Store
from node.store.writer import GroupCommitWriter

__all__ = ["GroupCommitWriter", "Store", "StoreReader", "StoredMessage", "migrate", "open_connection"]
