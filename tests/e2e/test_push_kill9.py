"""A real `edge-node run` with harmonizer workers pushing to the real central test server, SIGKILLed several
times in the middle of its pushes and restarted on the same store: in the end central holds every
resource exactly as the newest message made it, each patient's versions arrived in message order, and
nothing is pending, lost or stored twice.

The kernel keeps the page cache over a SIGKILL, so this is the crash-consistency of the push stage's
commit-after-confirmation rule (plus SQLite's WAL), not power loss.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.central.server import CentralFHIRServer
from tests.conftest import wait_until
from tests.harmonize.test_worker_support import adt, counts, query, stage
from tests.node_process import NodeProcess, mllp_only_config
from tests.push.test_worker_support import assert_delivered, batches, states

PATIENTS = 20
MESSAGES = 300
KILLS = 5
CANARY = "Canaryfamily"


def push_config(central: CentralFHIRServer, *, workdir: Path, harmonize: str = "workers = 2\nchunk_size = 8",
                **central_keys: object) -> str:
    """A node config: one MLLP feed `mllp`, harmonizer workers, and `[central]` towards `central`."""
    keys: dict[str, object] = {**central.node_settings(workdir / "central-client"), "connect_timeout_s": 2,
                               "read_timeout_s": 5, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
                               "batch_max_wait_s": 0, **central_keys}
    lines = "".join(f"{key} = {value!r}\n" if isinstance(value, str) else f"{key} = {value}\n"
                    for key, value in keys.items())
    return mllp_only_config(harmonize=harmonize).replace("[[feeds]]", f"[central]\n{lines}[[feeds]]", 1)


def messages() -> list[bytes]:
    """MESSAGES ADT messages for PATIENTS patients, interleaved: each one renames its patient (a new
    Patient version) and updates the patient's current visit (Encounter)."""
    result = []
    for n in range(MESSAGES):
        patient = n % PATIENTS
        visit = f"V{patient}-{n // (PATIENTS * 5)}"
        result.append(adt(f"K9-{n}", trigger="A01" if n < PATIENTS else "A08", mrn=f"MRN{patient}",
                          name=f"{CANARY}^Given{n}", extra=f"PV1|1|I|STATION{patient % 3}^1^1||||||||||||||||{visit}"))
    return result


def test_sigkill_during_pushes_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    stage(db, messages(), feed="mllp")
    rng = random.Random(9)
    with CentralFHIRServer(shutdown_timeout=0.5) as central:
        central.latency(0.03)
        config = push_config(central, workdir=tmp_path, batch_max_entries=8, concurrency=2)
        logs: list[str] = []
        kills = 0
        while kills < KILLS:
            node = NodeProcess(tmp_path, config)
            try:
                before = len(central.requests)
                wait_until(lambda before=before: len(central.requests) >= before + 3, timeout=30, interval=0.005)
                time.sleep(rng.uniform(0.05, 0.4))
                assert states(db).get("pending", 0) > 0, "all pushed before the kill: the test proves nothing"
            finally:
                node.kill()
                logs.append(node.log)
            kills += 1

        node = NodeProcess(tmp_path, config)
        try:
            wait_until(lambda: counts(db) == {"harmonized": MESSAGES} and states(db).get("pending", 0) == 0
                       and len(states(db)) == 1, timeout=120, interval=0.1)
            assert node.stop() == 0
        finally:
            if node.proc.poll() is None:
                node.kill()
            logs.append(node.log)

        assert_delivered(db, central)
        audit = batches(db)
        assert sum(1 for b in audit if b["outcome"] == "interrupted") >= 1  # batches were in flight at a kill
        assert {b["outcome"] for b in audit} <= {"ok", "interrupted"}
        resent = query(db, "SELECT count(*) FROM outbound WHERE attempts > 1")[0][0]
        patients = [key for key in central.resources if key[0] == "Patient"]
        assert len(patients) == PATIENTS
        for key in patients:  # the newest name, and versions only ever moved forward
            history = central.version_sequence(*key)
            givens = [int(version["name"][0]["given"][0].removeprefix("Given")) for version in history]
            assert givens == sorted(givens) and givens[-1] >= MESSAGES - PATIENTS
    print(f"kills={kills} bundles={len(central.requests)} resent_rows={resent}")
    assert not any(CANARY in text for text in logs)  # no patient data in any log


def test_sigterm_with_a_hanging_central_exits_within_the_shutdown_timeout_and_keeps_the_rows(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    stage(db, messages()[:PATIENTS], feed="mllp")
    with CentralFHIRServer(shutdown_timeout=0.5) as central:
        central.hang(times=None)
        config = push_config(central, workdir=tmp_path, read_timeout_s=60, batch_max_entries=8).replace(
            "shutdown_timeout_s = 10", "shutdown_timeout_s = 1")
        node = NodeProcess(tmp_path, config)
        try:
            wait_until(lambda: len(central.requests) >= 2, timeout=30)  # both batches hang
            started = time.monotonic()
            assert node.stop(timeout=15) == 0
            took = time.monotonic() - started
        finally:
            if node.proc.poll() is None:
                node.kill()
    assert took < 5, f"shutdown took {took:.1f} s"
    assert "abandoning them (their resources stay pending)" in node.log
    assert states(db).get("pushed", 0) == 0 and states(db)["pending"] > 0
    audit = batches(db)
    assert [b["outcome"] for b in audit].count("abandoned") == 2
