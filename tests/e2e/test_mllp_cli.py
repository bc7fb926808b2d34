"""`edge-node send` and `edge-node status` as real subprocesses against a real `edge-node run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.mllp.conftest import hl7_message, mllp_node_process


def edge_node(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "node", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def as_file(*messages: bytes, blank_lines: bool) -> bytes:
    """Messages written the way people keep them in files: one segment per line (LF)."""
    texts = [m.replace(b"\r", b"\n") for m in messages]
    return (b"\n" if blank_lines else b"").join(texts)


def test_send_exits_0_when_all_get_aa_and_1_when_one_gets_ae_naming_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "good.hl7"
    good.write_bytes(as_file(hl7_message("CLI-1"), hl7_message("CLI-2"), blank_lines=True))
    mixed = tmp_path / "mixed.hl7"
    mixed.write_bytes(as_file(hl7_message("CLI-3"), hl7_message(""), hl7_message("CLI-5"), blank_lines=False))

    with mllp_node_process(tmp_path) as node:
        port = str(node.ports["mllp"])
        all_good = edge_node("send", "--port", port, good, cwd=tmp_path)
        one_bad = edge_node("send", "--port", port, mixed, cwd=tmp_path)
        status = edge_node("status", "--json", "--config", node.config, cwd=tmp_path)
        assert node.stop() == 0

    assert all_good.returncode == 0, all_good.stdout + all_good.stderr
    assert [line.split()[:4] for line in all_good.stdout.splitlines()] == [
        [f"{good}:1", "#1", "CLI-1", "AA"], [f"{good}:5", "#2", "CLI-2", "AA"]]

    assert one_bad.returncode == 1, one_bad.stdout + one_bad.stderr
    lines = [line.split() for line in one_bad.stdout.splitlines()]
    assert [line[:2] for line in lines] == [[f"{mixed}:1", "#1"], [f"{mixed}:4", "#2"], [f"{mixed}:7", "#3"]]
    assert lines[0][2:4] == ["CLI-3", "AA"]
    assert lines[1][2:] == ["?", "AE"]  # no MSH-10 to show; MSA-2 echoes the empty one correctly
    assert lines[2][2:4] == ["CLI-5", "AA"]  # one AE does not stop the rest

    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["feeds"] == {"mllp": {"staged": 4, "failed": 1}}
    assert report["store_bytes"] > 0


def test_send_reads_both_acks_of_an_enhanced_mode_message_with_an_unreadable_header(tmp_path: Path) -> None:
    """The node answers CE then AE (MSH-15/16 = AL/AL, read leniently); the client must take both, or
    every later message of the file is matched with the previous one's ACK."""
    messages = tmp_path / "enhanced.hl7"
    messages.write_bytes(as_file(hl7_message("", msh15="AL", msh16="AL"), hl7_message("ENH-2"),
                                 hl7_message("ENH-3"), blank_lines=False))

    with mllp_node_process(tmp_path) as node:
        result = edge_node("send", "--port", str(node.ports["mllp"]), messages, cwd=tmp_path)
        assert node.stop() == 0

    assert result.returncode == 1
    assert [line.split()[1:] for line in result.stdout.splitlines()] == [
        ["#1", "?", "CE", "AE"], ["#2", "ENH-2", "AA"], ["#3", "ENH-3", "AA"]]


def test_send_exits_non_zero_when_nothing_listens(tmp_path: Path) -> None:
    message = tmp_path / "m.hl7"
    message.write_bytes(hl7_message("NOBODY-1"))
    with mllp_node_process(tmp_path) as node:  # a port that was just in use and is now closed
        port = str(node.ports["mllp"])
        assert node.stop() == 0

    result = edge_node("send", "--port", port, "--timeout", "5", message, cwd=tmp_path)

    assert result.returncode == 1
    assert "cannot connect" in result.stderr
