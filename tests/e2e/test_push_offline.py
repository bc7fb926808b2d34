"""Store and forward with a real `edge-node run`: central is down while many small messages arrive through
the file-drop feed and are harmonized; when central comes back, every resource arrives, in order, once.

The message count is EDGE_NODE_TEST_OFFLINE_MESSAGES (default 10,000): 2,000 patients, five updates each.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.central.server import CentralFHIRServer
from tests.conftest import wait_until
from tests.e2e.test_mllp_process import http_get, samples
from tests.e2e.test_push_kill9 import push_config
from tests.harmonize.test_worker_support import adt, counts
from tests.node_process import NodeProcess
from tests.push.test_worker_support import assert_delivered, batches, states

MESSAGES = int(os.environ.get("EDGE_NODE_TEST_OFFLINE_MESSAGES", "10000"))
UPDATES = 5


def filedrop_config(central: CentralFHIRServer, workdir: Path) -> str:
    config = push_config(central, workdir=workdir, harmonize="workers = 2\nchunk_size = 256",
                         backoff_initial_s=0.2, backoff_max_s=1.0, batch_max_entries=200)
    return config + (f'[[feeds]]\nname = "drop"\ntype = "filedrop"\npath = "{workdir / "inbox"}"\n'
                     f'archive = "{workdir / "archive"}"\nerror = "{workdir / "error"}"\nsettle_s = 0\n'
                     "poll_interval_s = 0.2\n")


def metrics(node: NodeProcess) -> dict[object, float]:
    """The node's /metrics: unlabelled samples by name, labelled ones by (name, the label's value)."""
    _, exposition = http_get(node.ports["metrics"], "/metrics")
    values: dict[object, float] = {}
    for (name, labels), value in samples(exposition).items():
        values[(name, next(iter(dict(labels).values()))) if labels else name] = value
    return values


def test_central_down_while_messages_arrive_then_everything_arrives_when_it_is_back(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    patients = max(1, MESSAGES // UPDATES)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    started = time.monotonic()
    with CentralFHIRServer(shutdown_timeout=0.5) as central:
        central.down()
        node = NodeProcess(tmp_path, filedrop_config(central, tmp_path))
        try:
            payload = b"".join(adt(f"OFF-{n}", mrn=f"M{n % patients}", name=f"Offline^Given{n}")
                               for n in range(MESSAGES))
            (inbox / ".all.tmp").write_bytes(payload)
            (inbox / ".all.tmp").rename(inbox / "all.hl7")  # written, then renamed: settled at once
            wait_until(lambda: counts(db) == {"harmonized": MESSAGES}, timeout=300, interval=0.2)
            arrived = time.monotonic()
            time.sleep(1.0)  # central stays down a little longer: the node keeps probing, nothing moves
            assert states(db) == {"pending": MESSAGES}
            assert {b["outcome"] for b in batches(db) if b["finished_at"]} <= {"transient"}
            down = metrics(node)
            assert down["edge_node_central_up"] == 0 and down["edge_node_push_breaker_state"] == 2
            assert down["edge_node_oldest_pending_age_seconds"] > 0.5
            assert down["edge_node_last_push_success_timestamp_seconds"] == 0
            assert down[("edge_node_outbound_resources", "pending")] == MESSAGES

            central.up()
            wait_until(lambda: states(db) == {"pushed": MESSAGES}, timeout=300, interval=0.2)
            drained = time.monotonic()
            up = metrics(node)
            assert node.stop() == 0
        finally:
            if node.proc.poll() is None:
                node.kill()
        assert_delivered(db, central)
        assert len(central.resources) == patients
        assert up["edge_node_central_up"] == 1 and up["edge_node_push_breaker_state"] == 0
        assert up["edge_node_oldest_pending_age_seconds"] == 0
        assert up["edge_node_last_push_success_timestamp_seconds"] > time.time() - 300
        assert up[("edge_node_push_batches_total", "ok")] == sum(b["outcome"] == "ok" for b in batches(db))
        assert up[("edge_node_outbound_resources", "pushed")] == MESSAGES
        audit = batches(db)
        print(f"\n{MESSAGES} messages: harmonized while central was down in {arrived - started:.1f} s, pushed in "
              f"{drained - arrived - 1.0:.1f} s after central came back ({sum(b['outcome'] == 'ok' for b in audit)} "
              f"bundles, {sum(b['outcome'] == 'transient' for b in audit)} failed attempts while down)")
