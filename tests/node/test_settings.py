"""Configuration: TOML + EDGE_NODE_* environment, clear errors naming file and key, exit 78."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.settings import DEFAULT_CONFIG_TOML, FileDropFeed, MLLPFeed, load_settings
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("EDGE_NODE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_and_documents_every_key() -> None:
    settings = load_settings(REPO / "config.example.toml")
    assert settings.node.site_id == "uk-example"
    kinds = {type(feed) for feed in settings.feeds}
    assert kinds == {MLLPFeed, FileDropFeed}
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    text = (REPO / "config.example.toml").read_text()
    # every key of every section model appears in the example (set, or commented out)
    for section in ("node", "store", "metrics", "harmonize", "central"):
        model = type(getattr(settings, section))
        for key in model.model_fields:
            assert f"{key} =" in text, f"[{section}] {key} is not documented in config.example.toml"
    for feed_type in (MLLPFeed, FileDropFeed):
        for key in feed_type.model_fields:
            if key == "tls_key_password":  # filled from tls_key_password_file, never written
                continue
            assert f"{key} =" in text, f"feeds ({feed_type.__name__}) {key} is not documented"
    assert example["feeds"][0]["type"] == "mllp"


def test_embedded_default_when_no_file_is_named() -> None:
    settings = load_settings(None)
    assert settings.store.path == Path("var/edge-node.db")
    assert settings.metrics.port == 9464
    mllp = settings.feeds[0]
    assert isinstance(mllp, MLLPFeed) and (mllp.host, mllp.port) == ("127.0.0.1", 2575)
    inbox = settings.feeds[1]
    assert isinstance(inbox, FileDropFeed) and inbox.path == Path("var/inbox")
    assert tomllib.loads(DEFAULT_CONFIG_TOML)  # it is valid TOML


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[node]\nsite_id = "from-env-file"\n')
    monkeypatch.setenv("EDGE_NODE_CONFIG", str(path))
    assert load_settings(None).node.site_id == "from-env-file"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\npath = "x.db"\nmax_bytez = 3\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "store.max_bytez: unknown key" in str(info.value)


def test_bad_value_in_feed_names_the_feed_index_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[feeds]]\nname = "adt"\ntype = "mllp"\nport = 70000\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"{path}: feeds[0].port:" in str(info.value)


def test_unknown_feed_type_and_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="feeds\\[0\\]"):
        load_settings(write(tmp_path, '[[feeds]]\nname = "a"\ntype = "ftp"\n'))
    twice = '[[feeds]]\nname = "a"\ntype = "mllp"\n[[feeds]]\nname = "a"\ntype = "mllp"\nport = 1\n'
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(write(tmp_path, twice))


def test_tls_half_configured_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        load_settings(write(tmp_path, '[[feeds]]\nname = "a"\ntype = "mllp"\ntls_cert = "c.pem"\n'))


def test_secret_values_are_refused_in_the_file(tmp_path: Path) -> None:
    text = '[[feeds]]\nname = "a"\ntype = "mllp"\ntls_cert = "c"\ntls_key = "k"\ntls_key_password = "pw"\n'
    with pytest.raises(ConfigError, match="tls_key_password_file"):
        load_settings(write(tmp_path, text))


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_settings(path)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[store]\npath = "file.db"\n[metrics]\nport = 1000\n')
    monkeypatch.setenv("EDGE_NODE_STORE__PATH", "env.db")
    settings = load_settings(path)
    assert settings.store.path == Path("env.db")
    assert settings.metrics.port == 1000


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_NODE_METRICS__PORT", "many")
    with pytest.raises(ConfigError, match=r"environment EDGE_NODE_METRICS__PORT: metrics.port"):
        load_settings(None)


def test_misspelt_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_NODE_STROE__PATH", "x.db")
    with pytest.raises(ConfigError, match="EDGE_NODE_STROE__PATH: unknown key"):
        load_settings(None)
    monkeypatch.delenv("EDGE_NODE_STROE__PATH")
    monkeypatch.setenv("EDGE_NODE_STORE__PAHT", "x.db")
    with pytest.raises(ConfigError, match=r"unknown key store.paht"):
        load_settings(None)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=REPO, timeout=60)


def test_check_config_prints_effective_config_with_secret_redacted(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "key.pass").write_text("s3cret-passphrase\n")
    path = write(tmp_path, '[[feeds]]\nname = "adt"\ntype = "mllp"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n'
                           'tls_key_password_file = "key.pass"\n')
    result = run_cli("check-config", "--config", str(path), env={"CREDENTIALS_DIRECTORY": str(creds),
                                                               "EDGE_NODE_METRICS__PORT": "9999"})
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    printed = tomllib.loads(result.stdout)  # the output is itself valid TOML
    assert printed["feeds"][0]["tls_key_password"] == "**********"
    assert printed["metrics"]["port"] == 9999


def test_check_config_exits_78_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[metrics]\nport = "lots"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 78
    assert str(path) in result.stderr and "metrics.port" in result.stderr


def test_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[[feeds]]\nname = "adt"\ntype = "mllp"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n'
                           'tls_key_password_file = "nowhere.pass"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 78
    assert "cannot read secret file" in result.stderr
