"""build_node(): the only wiring code. Each component gets only its own section of the settings."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from connectors.registry import create_connector
from node.harmonize.pool import HarmonizerPool
from node.harmonize.worker import FAILURE_KINDS
from node.http_endpoint import MetricsEndpoint
from node.metrics import HarmonizeCollector, HarmonizeMetrics, NodeMetrics, StoreCollector
from node.model import MessageState
from node.settings import NodeSettings
from node.store.outbound import HarmonizeStats
from node.store.reader import StoreReader
from node.store.writer import GroupCommitWriter
from node.supervisor import Node


class LazyStoreReader:
    """A read-only store view opened on first use (the writer creates and migrates the file first),
    shared by the scrape threads behind a lock."""

    def __init__(self, settings: NodeSettings) -> None:
        self._path = settings.store.path
        self._reader: StoreReader | None = None
        self._lock = threading.Lock()

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return self._open().counts()

    def database_bytes(self) -> int:
        with self._lock:
            return self._open().database_bytes()

    def harmonize_stats(self) -> HarmonizeStats:
        with self._lock:
            return self._open().harmonize_stats()

    def _open(self) -> StoreReader:
        if self._reader is None:
            self._reader = StoreReader(self._path)
        return self._reader

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def build_node(settings: NodeSettings, registry: CollectorRegistry | None = None) -> Node:
    """Assemble a Node from validated settings. Nothing is opened or bound until `Node.startup()`."""
    registry = registry or CollectorRegistry()
    metrics = NodeMetrics(registry)
    writer = GroupCommitWriter(settings.store.path, max_batch=settings.store.max_batch,
                               on_commit=metrics.observe_commit, on_commit_failure=metrics.observe_commit_failure)
    connectors = [create_connector(feed, writer, metrics.feed(feed.name)) for feed in settings.feeds]
    reader = LazyStoreReader(settings)
    registry.register(StoreCollector(reader, [feed.name for feed in settings.feeds],
                                     [state.value for state in MessageState]))
    harmonize_metrics = HarmonizeMetrics(registry)
    registry.register(HarmonizeCollector(reader, [feed.name for feed in settings.feeds], FAILURE_KINDS))
    node = Node(writer, connectors, None, settings.node.shutdown_timeout_s, on_close=reader.close)
    if settings.harmonize.enabled:
        node.harmonizer = HarmonizerPool(settings, metrics=harmonize_metrics,
                                         stop_timeout_s=settings.node.shutdown_timeout_s)
    if settings.metrics.enabled:
        node.endpoint = MetricsEndpoint(registry, settings.metrics.host, settings.metrics.port,
                                        health=node.health_problem, ready=node.readiness_problem)
    node.metrics = metrics
    return node
