"""The shipped unit stays hardened and consistent with the CLI."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "edge-node.service"


def test_unit_is_type_notify_and_never_restarts_on_config_errors() -> None:
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "RestartPreventExitStatus=78" in text
    assert "edge-node run --config" in text and "edge-node check-config --config" in text
    assert "LoadCredential=" in text and "Environment=" not in text  # secrets only as credentials


def test_systemd_analyze_security_scores_below_1_5() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=15", str(UNIT)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
