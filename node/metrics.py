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


class ScrapeTimeCollector(Collector):
    """A collector whose metrics are computed when scraped. It describes no metrics, so registering it
    does not run `collect` (which reads the store or another source)."""

    def describe(self) -> Iterator[Metric]:
        return iter(())


class StoreCounts(Protocol):
    """What the scrape-time collector needs from a (read-only) store view."""

    def counts(self) -> dict[tuple[str, str], int]: ...
    def database_bytes(self) -> int: ...


class StoreCollector(ScrapeTimeCollector):
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


class HarmonizeCollector(ScrapeTimeCollector):
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


# -- store space and retention ----------------------------------------------------------------------------


class SpaceSource(Protocol):
    """What SpaceCollector needs: node.store.space.SpaceGuard."""

    def status(self) -> Any: ...
    def refused(self) -> dict[str, int]: ...


class SpaceCollector(ScrapeTimeCollector):
    """Scrape-time gauges of disk-space admission (node.store.space.SpaceGuard; it measures again when
    its last measurement is older than 0.5 s):

    - `edge_node_store_refusing{reason="cap"|"low_space"}`: 1 while new messages are refused for that
      reason (alert on it: senders get AR/207, file drops wait), else 0;
    - `edge_node_store_free_bytes`: free bytes of the store's file system (absent if unreadable);
    - `edge_node_store_cap_bytes`: `[store] max_bytes` (absent when there is no cap);
    - `edge_node_store_min_free_bytes`: `[store] min_free_bytes`;
    - `edge_node_store_refused_total{reason}`: stage requests refused for space since start.
    """

    def __init__(self, guard: SpaceSource) -> None:
        self._guard = guard

    def collect(self) -> Iterator[Metric]:
        status = self._guard.status()
        refused_counts = self._guard.refused()  # every reason is a key, 0 until it happens
        refusing = GaugeMetricFamily(
            "edge_node_store_refusing", "1 while new messages are refused for lack of space, per reason.",
            labels=["reason"])
        for reason in refused_counts:
            refusing.add_metric([reason], 1 if reason in status.reasons else 0)
        yield refusing
        if status.free_bytes is not None:
            yield GaugeMetricFamily(
                "edge_node_store_free_bytes", "Free bytes of the file system holding the store.",
                value=status.free_bytes)
        if status.max_bytes is not None:
            yield GaugeMetricFamily(
                "edge_node_store_cap_bytes", "[store] max_bytes: database + WAL bytes at which intake stops.",
                value=status.max_bytes)
        yield GaugeMetricFamily(
            "edge_node_store_min_free_bytes", "[store] min_free_bytes: free bytes below which intake stops.",
            value=status.min_free_bytes)
        refused = CounterMetricFamily(
            "edge_node_store_refused", "Messages refused for lack of space (never stored), per reason.",
            labels=["reason"])
        for reason, count in refused_counts.items():
            refused.add_metric([reason], count)
        yield refused


class RetentionMetrics:
    """Metrics of the retention job (node.maintenance.RetentionJob; it reports through the methods):
    `edge_node_retention_purged_total{kind="inbound"|"outbound"}` (payloads purged),
    `edge_node_retention_last_run_timestamp_seconds` (end of the last completed run; alert when it is
    older than a few intervals) and `edge_node_retention_failures_total`."""

    KINDS = ("inbound", "outbound")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.purged_total = Counter(
            "edge_node_retention_purged", "Payloads purged by retention (the audit row stays), per kind.",
            ["kind"], registry=registry)
        for kind in self.KINDS:
            self.purged_total.labels(kind=kind)
        self.last_run = Gauge(
            "edge_node_retention_last_run_timestamp_seconds",
            "Unix time the last completed retention run ended (0: none yet).", registry=registry)
        self.failures = Counter(
            "edge_node_retention_failures", "Retention runs that failed (the next interval retries).",
            registry=registry)

    def purged(self, kind: str, n: int) -> None:
        self.purged_total.labels(kind=kind).inc(n)

    def finished(self, timestamp: float) -> None:
        self.last_run.set(timestamp)

    def failed(self) -> None:
        self.failures.inc()


# -- push to central ----------------------------------------------------------------------------------------

PUSH_OUTCOMES = ("ok", "rejected", "too_large", "throttled", "transient", "auth", "misconfigured")
"""Label values of edge_node_push_batches_total{outcome} (node.push.outcome.OutcomeKind)."""
PUSH_RESULTS = ("pushed", "superseded", "dead")
"""Label values of edge_node_push_resources_total{result}."""
PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class PushMetrics:
    """Metrics of the push stage kept in the node's process (node.push.worker.PushWorker sets them):

    - `edge_node_push_batches_total{outcome}`: transaction Bundles sent, per outcome (every kind reported,
      0 until it happens);
    - `edge_node_push_duration_seconds`: duration of one POST (or file write), whatever its outcome;
    - `edge_node_push_resources_total{result="pushed"|"superseded"|"dead"}`: outbound rows resolved;
    - `edge_node_central_up`: 1 while central answers as a FHIR server (last outcome ok, rejected,
      too_large or throttled), 0 after a transient, auth or misconfigured outcome;
    - `edge_node_last_push_success_timestamp_seconds`: unix time of the last confirmed batch (0: none;
      restored from the audit at start-up) — alert when it is old while resources are pending;
    - `edge_node_retry_delay_seconds`: the retry delay the circuit breaker chose after the last failure
      (0 after a success);
    - `edge_node_push_breaker_state`: 0 closed, 1 half-open, 2 open;
    - `edge_node_central_auth_failing`: 1 after a 401/403/407 (or no token) until central accepts again:
      the alert for credentials; `edge_node_central_misconfigured`: 1 after a misconfigured outcome
      (certificates, redirects, wrong URL) until central accepts again.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "edge_node_push_batches", "Transaction Bundles sent to central, per outcome.", ["outcome"],
            registry=registry)
        for outcome in PUSH_OUTCOMES:
            self.batches.labels(outcome=outcome)
        self.duration = Histogram(
            "edge_node_push_duration_seconds", "Duration of one push of a Bundle to central (any outcome).",
            buckets=PUSH_BUCKETS, registry=registry)
        self.resources = Counter(
            "edge_node_push_resources", "Outbound resources resolved by the push stage, per result.", ["result"],
            registry=registry)
        for result in PUSH_RESULTS:
            self.resources.labels(result=result)
        self.central_up = Gauge(
            "edge_node_central_up", "1 while central answers as a FHIR server, 0 after a failed attempt.",
            registry=registry)
        self.central_up.set(1)
        self.last_success = Gauge(
            "edge_node_last_push_success_timestamp_seconds", "Unix time central last confirmed a batch (0: never).",
            registry=registry)
        self.retry_delay = Gauge(
            "edge_node_retry_delay_seconds", "Retry delay chosen after the last failed push (0 after a success).",
            registry=registry)
        self.breaker_state = Gauge(
            "edge_node_push_breaker_state", "Circuit breaker towards central: 0 closed, 1 half-open, 2 open.",
            registry=registry)
        self.auth_failing = Gauge(
            "edge_node_central_auth_failing", "1 while central refuses the node's credentials (401/403).",
            registry=registry)
        self.misconfigured = Gauge(
            "edge_node_central_misconfigured",
            "1 while pushes fail for configuration reasons (certificates, redirects, wrong URL).", registry=registry)


class PushStatsSource(Protocol):
    """What PushCollector needs: node.push.worker.PushWorker.stats() (node.store.push.PushStats or None)."""

    def stats(self) -> Any: ...


class PushCollector(ScrapeTimeCollector):
    """Scrape-time gauges of the push queue, read from the store: `edge_node_oldest_pending_age_seconds`
    (age of the head of the queue: the pending resource first in message order) and
    `edge_node_push_waiting_resources` (pending resources waiting for a retry). Nothing before the push
    stage has started."""

    def __init__(self, source: PushStatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        stats = self._source.stats()
        if stats is None:
            return
        yield GaugeMetricFamily(
            "edge_node_oldest_pending_age_seconds", "Age of the oldest resource waiting to be pushed (0: none).",
            value=stats.oldest_pending_age_s)
        yield GaugeMetricFamily(
            "edge_node_push_waiting_resources", "Pending resources waiting for a retry after a failed push.",
            value=stats.waiting_for_retry)
