"""HarmonizerPool with real spawned worker processes: start, restart after SIGKILL, stop, bad maps."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from node.errors import ConfigError
from node.harmonize.pool import HarmonizerPool
from node.metrics import HarmonizeMetrics
from node.settings import NodeSettings
from tests.conftest import wait_until
from tests.harmonize.test_worker_support import adt, counts, outbound_keys, query, stage

MESSAGES = 1500


def settings(db: Path, **feed: object) -> NodeSettings:
    return NodeSettings(
        node={"site_id": "test-site"}, store={"path": db, "min_free_bytes": 0}, metrics={"enabled": False},
        harmonize={"workers": 2, "chunk_size": 4},
        feeds=[{"name": "adt", "type": "mllp", "host": "127.0.0.1", "port": 0, **feed}])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_is_restarted_and_every_message_is_harmonized_once(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    ids = stage(db, [adt(f"POOL-{n}", mrn=f"M{n % 11}") for n in range(MESSAGES)])
    registry = CollectorRegistry()
    pool = HarmonizerPool(settings(db), metrics=HarmonizeMetrics(registry), stop_timeout_s=10)
    pool.start()
    try:
        first = pool.pids()
        assert len(first) == 2 and all(first)
        wait_until(lambda: counts(db).get("harmonized", 0) >= MESSAGES // 10, timeout=30, interval=0.005)
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: not alive(first[0]) or pool.pids()[0] != first[0], timeout=10)
        left = query(db, "SELECT count(*) FROM inbound WHERE state = 'staged' AND id % 2 = 0")[0][0]
        assert left > 0, "worker 0 had finished before it was killed: the test proves nothing"

        wait_until(lambda: counts(db) == {"harmonized": MESSAGES}, timeout=30)
        second = pool.pids()
        assert second[0] not in (None, first[0]) and second[1] == first[1]
        assert pool.restarts == 1
        assert registry.get_sample_value("edge_node_harmonize_worker_restarts_total") == 1
        assert registry.get_sample_value("edge_node_harmonize_workers") == 2
    finally:
        pool.stop()
    assert not any(alive(pid) for pid in [*first, *second] if pid)
    assert pool.pids() == [None, None]
    assert registry.get_sample_value("edge_node_harmonize_workers") == 0

    keys = outbound_keys(db)
    assert len(keys) == len(set(keys))  # no resource recorded twice for a message
    per_message = {}
    for inbound_id, kind, _ in keys:
        per_message.setdefault(inbound_id, []).append(kind)
    assert sorted(per_message) == ids  # every message has its outbound rows ...
    assert len({tuple(kinds) for kinds in per_message.values()}) == 1  # ... and the same set (one conversion)
    assert "Patient" in next(iter(per_message.values()))


def test_stop_lets_workers_finish_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    stage(db, [adt("STOP-1")])
    pool = HarmonizerPool(settings(db), stop_timeout_s=10)
    pool.stop()  # never started: nothing to do
    pool.start()
    wait_until(lambda: counts(db) == {"harmonized": 1}, timeout=30)
    pids = pool.pids()
    pool.stop()
    pool.stop()
    assert not any(alive(pid) for pid in pids if pid)
    assert pool.restarts == 0
    with pytest.raises(RuntimeError):
        pool.start()


def test_a_bad_terminology_map_fails_start_and_starts_nothing(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    stage(db, [])
    bad = tmp_path / "map.csv"
    bad.write_text("not,a,header,at,all\n", encoding="utf-8")
    pool = HarmonizerPool(settings(db, terminology=[str(bad)]))
    with pytest.raises(ConfigError, match=r"feeds\.adt\.terminology: .*map\.csv:1: header must be"):
        pool.start()
    assert pool.pids() == [None, None]
    pool.stop()


def test_a_worker_that_exits_with_a_config_error_is_retried_after_the_long_backoff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from node.harmonize import pool as pool_module

    monkeypatch.setattr(pool_module, "RESTART_BACKOFF_MAX_S", 0.3)
    db = tmp_path / "store.db"
    stage(db, [adt("CFG-1"), adt("CFG-2")])  # ids 1 and 2: one per worker
    good = tmp_path / "map.csv"
    good.write_text("source_system,source_code,target_system,target_code\nL,NA,LN,2951-2\n", encoding="utf-8")
    pool = HarmonizerPool(settings(db, terminology=[str(good)]), stop_timeout_s=10)
    pool.start()
    try:
        wait_until(lambda: counts(db) == {"harmonized": 2}, timeout=30)  # both workers have loaded the map
        first = pool.pids()
        good.write_text("broken\n", encoding="utf-8")  # edited on disk while the node runs
        with caplog.at_level(logging.WARNING):
            os.kill(first[0], signal.SIGKILL)
            wait_until(lambda: "exited with a configuration error" in caplog.text, timeout=30)
        assert pool.restarts >= 1
        assert pool.pids()[1] == first[1]  # the other worker keeps its loaded map and runs on
    finally:
        pool.stop()
