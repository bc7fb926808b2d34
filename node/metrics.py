"""Prometheus metrics. Their names and labels are a contract with central operations.

Counters are incremented where the event happens (connectors, the store writer); queue depths and the
store size are computed at scrape time from the store by `StoreCollector`. Label values come from small
fixed sets (feed names from the config, ACK codes, states): never patient data or message ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node import __version__
from node.errors import StoreFullError, StoreIOError

ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
# `*_created` series double the exposition for no alerting value.
disable_created_metrics()

COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class FeedMetrics:
    """The counters of one feed, label children bound once (cheap on the hot path)."""

    received: Callable[[], None]
    duplicate: Callable[[], None]
    acks: dict[str, Callable[[], None]]
    junk_bytes: Callable[[float], None]
    connections: Gauge
    refused_counter: Counter
    feed: str

    def refused(self, reason: str) -> None:
        self.refused_counter.labels(feed=self.feed, reason=reason).inc()

    def ack(self, code: str) -> None:
        self.acks[code]()


class NodeMetrics:
    """Every metric the node exports, registered on an injected registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages_received = Counter(
            "edge_node_messages_received", "HL7 v2 messages received, per feed (before dedup).",
            ["feed"], registry=registry)
        self.acks = Counter(
            "edge_node_acks", "HL7 acknowledgements sent, per feed and MSA-1 code.",
            ["feed", "code"], registry=registry)
        self.messages_duplicate = Counter(
            "edge_node_messages_duplicate", "Resent messages answered with the stored ACK; no new row.",
            ["feed"], registry=registry)
        self.mllp_junk_bytes = Counter(
            "edge_node_mllp_junk_bytes", "Bytes outside MLLP frames, skipped.", ["feed"], registry=registry)
        self.mllp_connections = Gauge(
            "edge_node_mllp_connections", "Open MLLP connections.", ["feed"], registry=registry)
        self.mllp_connections_refused = Counter(
            "edge_node_mllp_connections_refused", "MLLP connections refused, per reason.",
            ["feed", "reason"], registry=registry)
        self.store_commit_seconds = Histogram(
            "edge_node_store_commit_seconds", "Duration of one group commit (transaction + fsync).",
            buckets=COMMIT_BUCKETS, registry=registry)
        self.store_commit_failures = Counter(
            "edge_node_store_commit_failures", "Group commits that failed, per reason (full, io).",
            ["reason"], registry=registry)
        self.build_info = Gauge(
            "edge_node_build_info", "Always 1; the label carries the running version.", ["version"],
            registry=registry)
        self.build_info.labels(version=__version__).set(1)
        self._feeds: dict[str, FeedMetrics] = {}

    def feed(self, name: str) -> FeedMetrics:
        """Bound counters for feed `name` (created once, so all label values exist from start-up)."""
        if name not in self._feeds:
            self._feeds[name] = FeedMetrics(
                received=self.messages_received.labels(feed=name).inc,
                duplicate=self.messages_duplicate.labels(feed=name).inc,
                acks={code: self.acks.labels(feed=name, code=code).inc for code in ACK_CODES},
                junk_bytes=self.mllp_junk_bytes.labels(feed=name).inc,
                connections=self.mllp_connections.labels(feed=name),
                refused_counter=self.mllp_connections_refused,
                feed=name,
            )
        return self._feeds[name]

    def observe_commit(self, seconds: float, _count: int) -> None:
        """`GroupCommitWriter(on_commit=...)` hook."""
        self.store_commit_seconds.observe(seconds)

    def observe_commit_failure(self, exc: BaseException) -> None:
        """`GroupCommitWriter(on_commit_failure=...)` hook: reason `full` (no space), `io` (I/O error,
        fatal) or `other` (any other store error)."""
        reason = "full" if isinstance(exc, StoreFullError) else "io" if isinstance(exc, StoreIOError) else "other"
        self.store_commit_failures.labels(reason=reason).inc()


class StoreCounts(Protocol):
    """What the scrape-time collector needs from a (read-only) store view."""

    def counts(self) -> dict[tuple[str, str], int]: ...
    def database_bytes(self) -> int: ...


class StoreCollector(Collector):
    """Computes store-derived gauges at scrape time: `edge_node_inbound_messages{feed,state}` and
    `edge_node_store_bytes`. Feeds and states with no rows are reported as 0 so alerts see them."""

    def __init__(self, reader: StoreCounts, feeds: list[str], states: list[str]) -> None:
        self._reader = reader
        self._feeds = feeds
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._reader.counts()
        inbound = GaugeMetricFamily(
            "edge_node_inbound_messages", "Inbound messages in the store, per feed and state.",
            labels=["feed", "state"])
        feeds = sorted(set(self._feeds) | {feed for feed, _ in counts})
        for feed in feeds:
            for state in self._states:
                inbound.add_metric([feed, state], counts.get((feed, state), 0))
        yield inbound
        yield GaugeMetricFamily(
            "edge_node_store_bytes", "Bytes of the SQLite store on disk (database + WAL).",
            value=self._reader.database_bytes())

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


# -- harmonization ----------------------------------------------------------------------------------------


class HarmonizeMetrics:
    """Metrics of the harmonizer pool kept in the node's own process (registered on `registry`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.worker_restarts = Counter(
            "edge_node_harmonize_worker_restarts", "Harmonizer worker processes restarted after an unexpected exit.",
            registry=registry)
        self.workers = Gauge(
            "edge_node_harmonize_workers", "Harmonizer worker processes running.", registry=registry)


class HarmonizeStatsSource(Protocol):
    """What HarmonizeCollector needs from a (read-only) store view: node.store.outbound.HarmonizeStats."""

    def harmonize_stats(self) -> Any: ...


class HarmonizeCollector(Collector):
    """Scrape-time metrics of the harmonization stage, read from the store.

    Worker processes cannot share this process's prometheus counters; they persist theirs in the store's
    `counters` table in the transaction of the data they count, and this collector exports them as
    counters: `edge_node_unmapped_codes_total{feed,system}`, `edge_node_unmapped_segments_total{feed,
    segment}`, `edge_node_harmonize_failures_total{feed,reason}` (every configured feed and failure kind
    reported, 0 until it happens). Gauges: `edge_node_outbound_resources{state}`,
    `edge_node_harmonize_backlog_messages` (staged inbound rows) and `edge_node_oldest_staged_age_seconds`.
    Label values are feed names, code system names, segment ids and failure kinds (bounded per feed by
    the store, node.store.outbound.MAX_LABELS_PER_FEED), never message content.
    """

    _FAMILIES = (
        ("unmapped_codes", "edge_node_unmapped_codes", "Codes without a terminology mapping, per code system.",
         "system"),
        ("unmapped_segments", "edge_node_unmapped_segments", "Segments no mapper handled, per segment id.",
         "segment"),
        ("harmonize_failures", "edge_node_harmonize_failures",
         "Messages that failed harmonization, per kind of failure.", "reason"),
    )

    def __init__(self, reader: HarmonizeStatsSource, feeds: list[str], failure_kinds: Sequence[str] = ()) -> None:
        self._reader = reader
        self._feeds = feeds
        self._failure_kinds = tuple(failure_kinds)

    def collect(self) -> Iterator[Metric]:
        stats = self._reader.harmonize_stats()
        values: dict[str, dict[tuple[str, str], int]] = {name: {} for name, *_ in self._FAMILIES}
        for name, feed, label, value in stats.counters:
            if name in values:
                values[name][feed, label] = value
        for feed in self._feeds:
            for kind in self._failure_kinds:
                values["harmonize_failures"].setdefault((feed, kind), 0)
        for name, metric, documentation, label in self._FAMILIES:
            family = CounterMetricFamily(metric, documentation, labels=["feed", label])
            for (feed, value_label), value in sorted(values[name].items()):
                family.add_metric([feed, value_label], value)
            yield family
        outbound = GaugeMetricFamily(
            "edge_node_outbound_resources", "Harmonized FHIR resources in the store, per state.", labels=["state"])
        for state, count in stats.outbound.items():
            outbound.add_metric([state], count)
        yield outbound
        yield GaugeMetricFamily(
            "edge_node_harmonize_backlog_messages", "Inbound messages staged and waiting for harmonization.",
            value=stats.staged)
        yield GaugeMetricFamily(
            "edge_node_oldest_staged_age_seconds", "Age of the oldest message waiting for harmonization.",
            value=stats.oldest_staged_age_s)

    def describe(self) -> Iterator[Metric]:
        return iter(())
