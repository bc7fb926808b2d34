"""Feed type (the `type` key of a `[[feeds]]` table) → connector class."""

from __future__ import annotations

from typing import Any

from connectors.base import Connector, Sink
from node.metrics import FeedMetrics


def create_connector(feed: Any, sink: Sink, metrics: FeedMetrics) -> Connector:
    """Build the connector for one validated feed section. Imports are local so that a node without
    a feed of some type never imports (or pays start-up time for) that connector's libraries."""
    if feed.type == "mllp":
        from connectors.mllp.connector import MLLPConnector

        return MLLPConnector(feed, sink, metrics)
    if feed.type == "filedrop":
        from connectors.filedrop.connector import FileDropConnector

        return FileDropConnector(feed, sink, metrics)
    raise ValueError(f"no connector for feed type {feed.type!r}")
