"""`edge-node send` → a real `edge-node run` with harmonizer workers → `edge-node status --json` and
`/metrics` show the harmonized messages, their outbound resources and the persisted counters."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.test_mllp_cli import edge_node
from tests.e2e.test_mllp_process import http_get, samples
from tests.harmonize.test_worker_support import adt, counts, query
from tests.mllp.conftest import mllp_node_process
from tests.node_process import mllp_only_config

CANARY = "Canarysurname^Canarygiven"


def test_sent_messages_are_harmonized_and_reported_by_status_and_metrics(tmp_path: Path) -> None:
    messages = tmp_path / "adt.hl7"
    good = [adt(f"CLI-{n}", name=CANARY, mrn=f"MRN-CANARY-{n}", extra="ZQQ|1") for n in range(3)]
    unsupported = adt("CLI-X", trigger="A99", name=CANARY)
    skipped = adt("CLI-S", trigger="A60", name=CANARY)
    messages.write_bytes(b"".join(m.replace(b"\r", b"\n") for m in [*good, unsupported, skipped]))
    config = mllp_only_config(harmonize="workers = 2") + 'skip_message_types = ["ADT^A60"]\n'
    db = tmp_path / "node.db"

    with mllp_node_process(tmp_path, config) as node:
        sent = edge_node("send", "--port", str(node.ports["mllp"]), messages, cwd=tmp_path)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: "staged" not in counts(db), timeout=30)
        # The default [central] url is file://var/outbox: the push stage writes the resources there.
        wait_until(lambda: query(db, "SELECT count(*) FROM outbound WHERE state != 'pushed'") == [(0,)], timeout=30)
        status = edge_node("status", "--json", "--config", node.config, cwd=tmp_path)
        text = edge_node("status", "--config", node.config, cwd=tmp_path)
        health = http_get(node.ports["metrics"], "/healthz")
        _, exposition = http_get(node.ports["metrics"], "/metrics")
        assert node.stop() == 0

    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["feeds"] == {"mllp": {"harmonized": 3, "failed": 1, "skipped": 1}}
    assert report["outbound"]["pushed"] >= 3 and report["outbound"]["pending"] == 0
    push = report["push"]  # what the operator sees of the push stage: times, outcomes, never contents
    assert push["last_success"] is not None and push["oldest_pending_age_s"] == 0 and push["waiting_for_retry"] == 0
    assert push["last_batch"]["outcome"] == "ok" and push["last_batch"]["entries"] >= 1
    assert "push                last success 20" in text.stdout and "last batch          #" in text.stdout
    assert "Canary" not in text.stdout + status.stdout
    assert len(list((tmp_path / "var" / "outbox").glob("*.json"))) >= 1
    assert health == (200, "ok\n")

    values = samples(exposition)

    def value(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    assert value("edge_node_outbound_resources", state="pushed") == report["outbound"]["pushed"]
    assert value("edge_node_outbound_resources", state="dead") == 0
    assert value("edge_node_inbound_messages", feed="mllp", state="harmonized") == 3
    assert value("edge_node_unmapped_segments_total", feed="mllp", segment="ZQQ") == 3
    assert value("edge_node_harmonize_failures_total", feed="mllp", reason="unsupported_message_type") == 1
    assert value("edge_node_harmonize_failures_total", feed="mllp", reason="internal_error") == 0
    assert value("edge_node_harmonize_backlog_messages") == 0
    assert value("edge_node_oldest_staged_age_seconds") == 0
    assert value("edge_node_harmonize_workers") == 2
    assert value("edge_node_harmonize_worker_restarts_total") == 0
    assert "Canary" not in node.log and "MRN-CANARY" not in node.log  # no patient data in any process's log
