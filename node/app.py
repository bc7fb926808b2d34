"""build_node(): the only wiring code. Each component gets only its own section of the settings."""

from __future__ import annotations

import threading
from functools import partial

from prometheus_client import CollectorRegistry

from connectors.registry import create_connector
from node.harmonize.pool import HarmonizerPool
from node.harmonize.worker import FAILURE_KINDS
from node.http_endpoint import MetricsEndpoint
from node.maintenance import RetentionJob
from node.metrics import (
    HarmonizeCollector,
    HarmonizeMetrics,
    NodeMetrics,
    PushCollector,
    PushMetrics,
    RetentionMetrics,
    SpaceCollector,
    StoreCollector,
)
from node.model import MessageState
from node.push.worker import PushWorker
from node.settings import HL7FeedBase, NodeSettings
from node.store.checkpoint import BACKSTOP_PAGES, Checkpointer
from node.store.outbound import HarmonizeStats
from node.store.reader import StoreReader
from node.store.space import SpaceGuard
from node.store.store import Store
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
    store = settings.store
    space = SpaceGuard(store.path, max_bytes=store.max_bytes, min_free_bytes=store.min_free_bytes)
    writer = GroupCommitWriter(store.path, max_batch=store.max_batch, space_guard=space,
                               on_commit=metrics.observe_commit, on_commit_failure=metrics.observe_commit_failure,
                               store_factory=partial(Store.open, wal_autocheckpoint=BACKSTOP_PAGES))
    registry.register(SpaceCollector(space))
    connectors = [create_connector(feed, writer, metrics.feed(feed.name)) for feed in settings.feeds]
    reader = LazyStoreReader(settings)
    registry.register(StoreCollector(reader, [feed.name for feed in settings.feeds],
                                     [state.value for state in MessageState]))
    harmonize_metrics = HarmonizeMetrics(registry)
    registry.register(HarmonizeCollector(reader, [feed.name for feed in settings.feeds], FAILURE_KINDS))
    node = Node(writer, connectors, None, settings.node.shutdown_timeout_s, on_close=reader.close)
    node.checkpointer = Checkpointer(store.path, finish=lambda: writer.call(Store.checkpoint).result())
    node.maintenance = RetentionJob(writer, retention_days=store.retention_days,
                                    interval_s=store.retention_interval_s, space_guard=space,
                                    observer=RetentionMetrics(registry))
    if settings.harmonize.enabled:
        node.harmonizer = HarmonizerPool(settings, metrics=harmonize_metrics,
                                         stop_timeout_s=settings.node.shutdown_timeout_s)
    node.pusher = PushWorker(settings.central, writer, settings.store.path, site_id=settings.node.site_id,
                             feeds=[feed.name for feed in settings.feeds if isinstance(feed, HL7FeedBase)],
                             metrics=PushMetrics(registry))
    registry.register(PushCollector(node.pusher))
    if settings.metrics.enabled:
        node.endpoint = MetricsEndpoint(registry, settings.metrics.host, settings.metrics.port,
                                        health=node.health_problem, ready=node.readiness_problem,
                                        ready_note=node.intake_refusal)
    node.metrics = metrics
    return node
