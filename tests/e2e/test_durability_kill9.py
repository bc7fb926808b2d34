"""kill -9 at random moments under load: every AA'd message survives, exactly once.

Four sender threads, each a stop-and-wait MLLP client with its own stream of unique messages, talk to a
real `edge-node run` process that is SIGKILLed 50-400 ms after each READY and restarted on the same
store file. A sender that loses its connection reconnects (to the new port) and resends the message it
had no ACK for, as real senders do; the store's dedup answers such a resend with the stored ACK.

What a SIGKILL tests: the process dies at any instruction (mid-commit, between COMMIT and the ACK
write, while the WAL is being written or checkpointed), but the kernel keeps the page cache, so this is
the crash-consistency of SQLite's WAL plus the node's ACK-after-commit rule, not power loss.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from tests.conftest import wait_until
from tests.node_process import NodeProcess, mllp_only_config

from .test_durability_support import BlockingMLLPClient, adt_message, assert_acked_stored_once, close_pipes

SENDERS = 4
KILLS = 25
KILL_DELAY_S = (0.05, 0.4)
AFTER_LAST_RESTART = 25
"""AAs each sender must get from the last node before the senders stop."""


class Target:
    """The current MLLP port, shared by the controller and the senders; None while the node is down."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.port: int | None = None
        self.generation = 0

    def up(self, port: int) -> None:
        with self._cond:
            self.port = port
            self.generation += 1
            self._cond.notify_all()

    def down(self) -> None:
        with self._cond:
            self.port = None

    def current(self) -> tuple[int | None, int]:
        with self._cond:
            return self.port, self.generation

    def wait_for_restart(self, seen: int, timeout: float) -> None:
        """Until a node newer than generation `seen` is up (or `timeout`: retry anyway)."""
        with self._cond:
            self._cond.wait_for(lambda: self.port is not None and self.generation != seen, timeout)


class Sender(threading.Thread):
    """Sends its own messages one by one until `stop` is set; resends after a connection failure."""

    def __init__(self, name: str, run: str, target: Target, stop: threading.Event) -> None:
        super().__init__(name=f"sender-{name}", daemon=True)
        self.sender = name
        self.run_id = run
        self.target = target
        self.stop = stop
        self.acked: dict[str, bytes] = {}
        self.sent: set[str] = set()
        self.resends = 0
        self.resent_at: dict[str, float] = {}
        """Resent messages: when the last (answered) attempt started, by control id."""
        self.connection_errors = 0
        self.unexpected: list[str] = []
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test, never as an unhandled thread exception
            self.crash = exc

    def _loop(self) -> None:
        client: BlockingMLLPClient | None = None
        seq = 0
        pending: tuple[str, bytes] | None = None
        try:
            while True:
                if pending is None:
                    if self.stop.is_set():
                        return
                    seq += 1
                    pending = adt_message(self.sender, seq, self.run_id)
                control_id, raw = pending
                port, generation = self.target.current()
                try:
                    if port is None:
                        raise ConnectionRefusedError("node is down")
                    if client is None:
                        client = BlockingMLLPClient(port, timeout=10.0)
                    if control_id in self.sent:
                        self.resends += 1
                        self.resent_at[control_id] = time.time()
                    self.sent.add(control_id)
                    ack = client.exchange(raw)
                except OSError:
                    self.connection_errors += 1
                    if client is not None:
                        client.close()
                        client = None
                    self.target.wait_for_restart(generation, timeout=2.0)
                    continue  # resend the same bytes
                if ack.code == "AA" and ack.control_id == control_id:
                    self.acked[control_id] = raw
                    pending = None
                else:
                    self.unexpected.append(f"{control_id}: {ack}")
                    return
        finally:
            if client is not None:
                client.close()


def test_kill9_under_load_loses_no_acknowledged_message(tmp_path: Path, record_property) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    run_id = f"K{seed % 10_000:04d}"
    config = mllp_only_config(metrics=False)
    store = tmp_path / "node.db"
    target = Target()
    stop = threading.Event()
    senders = [Sender(f"S{n}", run_id, target, stop) for n in range(SENDERS)]
    started = time.monotonic()

    node = NodeProcess(tmp_path, config)  # raises unless READY
    target.up(node.ports["mllp"])
    for sender in senders:
        sender.start()
    kills = 0
    acks_per_life: list[int] = []
    try:
        for _ in range(KILLS):
            before = sum(len(s.acked) for s in senders)
            time.sleep(rng.uniform(*KILL_DELAY_S))
            assert node.proc.poll() is None, "node died by itself:\n" + node.log
            status = node.kill()
            target.down()
            close_pipes(node)
            assert status == -9
            kills += 1
            acks_per_life.append(sum(len(s.acked) for s in senders) - before)
            assert not any(s.crash or s.unexpected for s in senders), [(s.crash, s.unexpected) for s in senders]
            node = NodeProcess(tmp_path, config)  # must come back READY on the killed store
            assert "mllp" in node.ports
            target.up(node.ports["mllp"])

        # Let the senders finish against the last node, then stop them between two messages.
        floor = {s.sender: len(s.acked) for s in senders}
        wait_until(lambda: all(len(s.acked) >= floor[s.sender] + AFTER_LAST_RESTART or s.crash or s.unexpected
                               for s in senders), timeout=20)
        stop.set()
        for sender in senders:
            sender.join(20)
            assert not sender.is_alive()
        assert node.stop() == 0, node.log
    finally:
        stop.set()
        target.down()
        node.kill()
        close_pipes(node)

    for sender in senders:
        assert sender.crash is None, f"{sender.name} crashed: {sender.crash!r}"
        assert not sender.unexpected, f"{sender.name} got answers other than AA: {sender.unexpected[:5]}"
    acked = {control_id: raw for s in senders for control_id, raw in s.acked.items()}
    rows = assert_acked_stored_once(store, acked)
    # Senders resend until AA and stop only between messages: the store holds exactly what was AA'd.
    assert set(rows) == set(acked) == {c for s in senders for c in s.sent}

    resends = sum(s.resends for s in senders)
    errors = sum(s.connection_errors for s in senders)
    # A resent message whose row was received before its last attempt started was committed by a node
    # that was killed before its ACK reached the sender: the store's dedup answered the resend.
    replayed = sum(1 for s in senders for control_id, at in s.resent_at.items()
                   if rows[control_id][0].received_at < at)
    print(f"\nkill -9 durability: seed={seed} kills={kills} AA={len(acked)} (per node life {acks_per_life}) "
          f"resends={resends} (answered from the store: {replayed}) connection errors={errors} "
          f"in {time.monotonic() - started:.1f} s")
    for name, value in (("seed", seed), ("kills", kills), ("acks", len(acked)), ("resends", resends),
                        ("resends_answered_from_store", replayed)):
        record_property(name, value)  # in the JUnit XML report (--junitxml)
    assert kills >= 20
    assert resends > 0, "no message was ever in flight at a kill: the test did not test anything"
