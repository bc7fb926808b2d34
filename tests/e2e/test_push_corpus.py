"""The whole way with real processes: `edge-node send` of the shared HL7 v2 corpus over MLLP → a real
`edge-node run` (intake, harmonizer workers, push) → the real central test server. Central ends with
exactly what the converter makes of the stored messages: for every (type, id) the version of the newest
message that produced it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.harmonize.convert import convert
from node.harmonize.worker import load_feed_runtimes, worker_settings
from node.settings import load_settings
from tests.central.server import CentralFHIRServer
from tests.conftest import corpus_dir, wait_until
from tests.e2e.test_mllp_cli import edge_node
from tests.e2e.test_push_kill9 import push_config
from tests.harmonize.test_worker_support import counts, query
from tests.mllp.conftest import mllp_node_process
from tests.push.test_worker_support import batches, outbound, states

pytestmark = pytest.mark.corpus


def expected_from_the_converter(db: Path, config: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Convert every harmonized message the node stored, with the node's own feed options, in message
    order; the newest version of each resource wins."""
    feeds = load_feed_runtimes(worker_settings(load_settings(config)))
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    rows = query(db, "SELECT feed, raw, charset FROM inbound WHERE state = 'harmonized' ORDER BY id")
    for feed, raw, charset in rows:
        for resource in convert(bytes(raw), charset, feeds[feed].options).resources:
            expected[resource["resourceType"], resource["id"]] = json.loads(json.dumps(resource))
    return expected


def test_the_corpus_sent_over_mllp_ends_up_at_central_exactly_as_the_converter_makes_it(tmp_path: Path) -> None:
    files = sorted(corpus_dir("hl7v2").rglob("*.hl7"))
    assert len(files) >= 100
    db = tmp_path / "node.db"
    with CentralFHIRServer(shutdown_timeout=0.5) as central:
        config_text = push_config(central, workdir=tmp_path, batch_max_entries=50, batch_max_wait_s=0.2)
        with mllp_node_process(tmp_path, config_text) as node:
            sent = edge_node("send", "--port", str(node.ports["mllp"]), *files, cwd=tmp_path)
            assert "NO-ACK" not in sent.stdout, sent.stdout[-2000:]
            wait_until(lambda: "staged" not in counts(db) and states(db).get("pending", 0) == 0, timeout=120,
                       interval=0.1)
            assert node.stop() == 0
        stored = counts(db)
        assert stored.get("harmonized", 0) >= 100, stored
        expected = expected_from_the_converter(db, node.config)
        dead = [row for row in outbound(db) if row["state"] == "dead"]
        assert dead == [], [(row["resource_type"], row["error"]) for row in dead]
        central.assert_stored(expected.values(), exact=True)
        assert {b["outcome"] for b in batches(db)} == {"ok"}
        for request in central.requests:
            assert len(request.keys) == len(set(request.keys))
