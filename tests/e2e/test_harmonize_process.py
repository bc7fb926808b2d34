"""A real `edge-node run` with harmonizer workers: a worker SIGKILLed mid-run loses and duplicates nothing;
a bad terminology map fails the start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, wait_until
from tests.e2e.test_mllp_process import http_get, samples
from tests.harmonize.test_worker_support import adt, counts, outbound_keys, query, stage
from tests.mllp.conftest import mllp_node_process
from tests.node_process import NodeProcess, mllp_only_config

MESSAGES = 1500
WORKER_STARTED = re.compile(r"harmonizer worker (?P<index>\d+)/\d+ started \(pid (?P<pid>\d+)\)")


def worker_pids(node: NodeProcess) -> dict[int, list[int]]:
    """Worker index -> pids of its processes so far, from the node's log."""
    pids: dict[int, list[int]] = {}
    for line in list(node.log_lines):
        match = WORKER_STARTED.search(line)
        if match:
            pids.setdefault(int(match["index"]), []).append(int(match["pid"]))
    return pids


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper that may not exist in a container counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigkill_of_a_worker_mid_run_harmonizes_every_message_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    ids = stage(db, [adt(f"E2E-{n}", mrn=f"M{n % 13}") for n in range(MESSAGES)], feed="mllp")
    config = mllp_only_config(harmonize="workers = 2\nchunk_size = 4")
    with mllp_node_process(tmp_path, config) as node:
        started = worker_pids(node)
        assert sorted(started) == [0, 1]
        victim = started[0][0]
        wait_until(lambda: counts(db).get("harmonized", 0) >= MESSAGES // 10, timeout=30, interval=0.005)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), timeout=10)
        left = query(db, "SELECT count(*) FROM inbound WHERE state = 'staged' AND id % 2 = 0")[0][0]
        assert left > 0, "worker 0 had finished before it was killed: the test proves nothing"

        wait_until(lambda: counts(db) == {"harmonized": MESSAGES}, timeout=30)
        _, exposition = http_get(node.ports["metrics"], "/metrics")
        pids = worker_pids(node)
        assert node.stop() == 0

    assert len(pids[0]) == 2 and pids[1] == started[1]  # worker 0 restarted once, worker 1 untouched
    assert "harmonizer worker 0/2 was killed by signal 9; restarting" in node.log
    values = samples(exposition)
    assert values[("edge_node_harmonize_worker_restarts_total", frozenset())] == 1
    assert values[("edge_node_harmonize_backlog_messages", frozenset())] == 0
    assert not any(alive(pid) for pid in pids[0] + pids[1])  # the node stopped its workers

    keys = outbound_keys(db)
    assert len(keys) == len(set(keys))  # nothing recorded twice
    per_message: dict[int, list[str]] = {}
    for inbound_id, kind, _ in keys:
        per_message.setdefault(inbound_id, []).append(kind)
    assert sorted(per_message) == ids  # every message's resources are there ...
    assert len({tuple(kinds) for kinds in per_message.values()}) == 1  # ... exactly one conversion's worth
    assert "Patient" in per_message[ids[0]]
    partitions = query(db, "SELECT count(DISTINCT partition_key) FROM outbound")[0][0]
    assert partitions == 13  # one partition per patient


def test_a_bad_terminology_map_fails_start_up_with_exit_78(tmp_path: Path) -> None:
    (tmp_path / "lab.csv").write_text(
        "source_system,source_code,target_system,target_code\nL,NA,LN\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(mllp_only_config(harmonize="workers = 1") + 'terminology = ["lab.csv"]\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")} | {"PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "node", "run", "--config", str(config)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "configuration error" in result.stderr
    assert re.search(r"feeds\.mllp\.terminology: .*lab\.csv:2: expected 4 or 5 columns", result.stderr)
    assert "edge-node ready" not in result.stderr
    assert "harmonizer worker" not in result.stderr  # no worker was started


def test_workers_stop_by_themselves_when_the_node_is_killed(tmp_path: Path) -> None:
    with mllp_node_process(tmp_path, mllp_only_config(metrics=False, harmonize="workers = 2")) as node:
        pids = [pid for started in worker_pids(node).values() for pid in started]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        node.kill()
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10)
