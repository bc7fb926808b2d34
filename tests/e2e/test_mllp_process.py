"""A real `edge-node run` process behind its MLLP port: graceful stop under load, the HTTP endpoint, and
no patient data in its log."""

from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.mllp.ack import AckCode
from connectors.mllp.framing import START_BLOCK, frame
from node import __version__
from node.model import MessageState
from node.store.reader import StoreReader
from tests.conftest import wait_until
from tests.mllp.conftest import BlockingConnection, hl7_message, mllp_node_process
from tests.node_process import mllp_only_config


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from Prometheus text format (label order does not matter)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class SendLoop(threading.Thread):
    """Sends fresh messages stop-and-wait until the connection breaks; remembers every AA."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acked: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        with BlockingConnection(self.port) as connection:
            n = 0
            while True:
                control_id = f"LOOP-{n:06d}"
                try:
                    [ack] = connection.exchange(hl7_message(control_id))
                except (ConnectionError, TimeoutError) as exc:
                    self.error = exc
                    return
                assert (ack.code, ack.control_id) == (AckCode.AA, control_id)
                self.acked.append(control_id)
                n += 1


def test_sigterm_during_a_send_loop_keeps_every_acked_message_exits_0_and_closes_the_port(
        tmp_path: Path) -> None:
    with mllp_node_process(tmp_path) as node:
        port = node.ports["mllp"]
        loop = SendLoop(port)
        loop.start()
        wait_until(lambda: len(loop.acked) >= 200, timeout=20)

        code = node.stop()
        loop.join(10)

    assert code == 0, node.log
    assert not loop.is_alive()
    assert isinstance(loop.error, ConnectionError), loop.error  # closed at once, not timed out
    with StoreReader(tmp_path / "node.db") as reader:
        stored = {row.control_id: row for row in reader.messages("mllp", limit=1_000_000)}
    missing = [control_id for control_id in loop.acked if control_id not in stored]
    assert not missing, f"{len(missing)} AA'd messages not in the store, first {missing[:3]}"
    assert all(stored[c].state == MessageState.STAGED and stored[c].raw == hl7_message(c) for c in loop.acked)
    assert len(stored) - len(loop.acked) <= 1  # at most the one in flight when the connection closed
    assert port_is_closed(port)


def test_healthz_and_metrics_of_a_running_node(tmp_path: Path) -> None:
    with mllp_node_process(tmp_path) as node:
        with BlockingConnection(node.ports["mllp"]) as connection:
            for n in range(3):
                assert connection.exchange(hl7_message(f"M-{n}"))[0].code == AckCode.AA
        health = http_get(node.ports["metrics"], "/healthz")
        ready = http_get(node.ports["metrics"], "/readyz")
        status, exposition = http_get(node.ports["metrics"], "/metrics")
        assert node.stop() == 0

    assert health == (200, "ok\n")
    assert ready == (200, "ok\n")
    assert status == 200
    values = samples(exposition)

    def value(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    assert value("edge_node_messages_received_total", feed="mllp") == 3
    assert value("edge_node_acks_total", code="AA", feed="mllp") == 3
    assert value("edge_node_inbound_messages", feed="mllp", state="staged") == 3
    assert value("edge_node_inbound_messages", feed="mllp", state="failed") == 0
    assert value("edge_node_store_bytes") > 0
    assert sum(v for (name, _), v in values.items() if name == "edge_node_store_commit_seconds_count") >= 1
    assert any(name == "edge_node_store_commit_seconds_bucket" for name, _ in values)
    assert value("edge_node_build_info", version=__version__) == 1


CANARIES = ("Canarysurname", "Canarygiven", "MRN-CANARY-123", "19450203")


def canary_messages() -> list[tuple[bytes, int]]:
    """(message, ACK frames expected): messages carrying patient data canaries, well-formed and broken
    in the ways that could make the node log something."""
    name, mrn = "Canarysurname^Canarygiven", "MRN-CANARY-123"
    pid = f"PID|1||{mrn}^^^SITE^PI||{name}||19450203|F"
    return [
        (hl7_message("CAN-1", name=name, mrn=mrn), 1),
        (hl7_message("CAN-2", name=name, mrn=mrn, msh15="AL", msh16="AL"), 2),
        (hl7_message("", name=name, mrn=mrn), 1),  # MSH-10 missing: AE 101
        ((pid + "\rMSH|^~\\&|KIS|SITE\r").encode(), 1),  # first segment is not MSH: AE 100
        (f"MSH|^~\\\\&|KIS|SITE|EDGE|NODE|20240102||ADT^A01|CAN-5|P|2.5\r{pid}\r".encode(), 1),  # bad MSH-2
        (hl7_message("CAN-6", name="Canarysurname^G\xfcnter", mrn=mrn, charset="KLINGON", encoding="latin-1"), 1),
        (hl7_message("CAN-7", name=name, mrn=mrn, charset="UNICODE UTF-8").replace(
            b"Canarygiven", b"Canarygiven\xff\xfe"), 1),  # declared UTF-8, is not
        (hl7_message("CAN-1", name=name, mrn=mrn), 1),  # a resend
    ]


def test_no_patient_data_reaches_the_log(tmp_path: Path) -> None:
    config = mllp_only_config() + "max_message_bytes = 4096\nidle_timeout_s = 0.5\n"
    with mllp_node_process(tmp_path, config) as node:
        port = node.ports["mllp"]
        with BlockingConnection(port) as connection:
            connection.send(b"junk Canarysurname MRN-CANARY-123\r\n")
            for payload, frames in canary_messages():
                codes = [a.code for a in connection.exchange(payload, frames)]
                assert codes[0] in (AckCode.AA, AckCode.AE, AckCode.CA), codes
        with BlockingConnection(port) as connection:  # oversize: AR, connection closed, warning logged
            connection.send(START_BLOCK + hl7_message("CAN-BIG", name="Canarysurname", mrn="MRN-CANARY-123",
                                                      extra="OBX|1|TX|||" + "Canarysurname " * 500))
            assert connection.read_frame()
        with BlockingConnection(port) as connection:  # half-open: closed by the idle sweep
            connection.send(START_BLOCK + hl7_message("CAN-HALF", name="Canarysurname")[:120])
            with pytest.raises(ConnectionError):
                connection.read_frame()
        connection = BlockingConnection(port)
        connection.send(frame(hl7_message("CAN-LAST", name="Canarysurname", mrn="MRN-CANARY-123")))
        # ... and a connection cut while its message is being handled
        connection.close()
        wait_until(lambda: "closing idle connection" in node.log and "over max_message_bytes" in node.log)
        assert node.stop() == 0

    assert "edge-node ready" in node.log  # the log was captured
    leaked = [line for line in node.log_lines if any(canary in line for canary in CANARIES)]
    assert not leaked, "patient data in the log:\n" + "\n".join(leaked)
