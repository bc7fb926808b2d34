"""HarmonizeCollector on a real store through StoreReader: persisted counters as counters, the outbound and
backlog gauges, zero-filled failure kinds."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from node.harmonize.worker import FAILURE_KINDS
from node.metrics import HarmonizeCollector
from node.store.connect import open_connection
from node.store.outbound import MessageResult, OutboundResource, record_results
from node.store.reader import StoreReader
from tests.harmonize.test_worker_support import adt, stage, stage_request


def test_collector_exports_counters_outbound_and_backlog(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    old = replace(stage_request(adt("OLD-1")), received_at=time.time() - 120)
    ids = stage(db, [adt("M-1"), adt("M-2"), old])
    conn = open_connection(db)
    try:
        record_results(conn, [
            MessageResult.harmonized(ids[0], "adt", "p", [OutboundResource("Patient", "p", "{}")], {"ZQQ": 2},
                                     {"99LAB": 3}),
            MessageResult.failed(ids[1], "adt", "MSH-9: unsupported message type", "unsupported_message_type")])
    finally:
        conn.close()
    registry = CollectorRegistry()
    with StoreReader(db) as reader:
        registry.register(HarmonizeCollector(reader, ["adt", "lab"], FAILURE_KINDS))
        value = registry.get_sample_value
        assert value("edge_node_unmapped_codes_total", {"feed": "adt", "system": "99LAB"}) == 3
        assert value("edge_node_unmapped_segments_total", {"feed": "adt", "segment": "ZQQ"}) == 2
        assert value("edge_node_harmonize_failures_total", {"feed": "adt", "reason": "unsupported_message_type"}) == 1
        assert value("edge_node_harmonize_failures_total", {"feed": "lab", "reason": "internal_error"}) == 0
        assert value("edge_node_outbound_resources", {"state": "pending"}) == 1
        assert value("edge_node_outbound_resources", {"state": "pushed"}) == 0
        assert value("edge_node_harmonize_backlog_messages") == 1
        assert 119 < value("edge_node_oldest_staged_age_seconds") < 300
