"""Settings: defaults, env vars, lakeloop.toml, and clear errors for wrong values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.errors import ConfigError
from infra.settings import load_settings
from infra.tables import TABLES, table_status, table_uri


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No LAKELOOP_* from the session (the platform fixture exports its ports) and a fresh cwd."""
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("LAKELOOP_"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_defaults_bind_loopback_and_standard_ports(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = load_settings()
    assert s.home == tmp_path / ".lakeloop"
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.tracking_uri == "http://127.0.0.1:5000"
    assert s.dagster_url == "http://127.0.0.1:3000"
    assert s.lake == str(tmp_path / ".lakeloop" / "lake")


@pytest.mark.parametrize(
    ("env", "attr", "expected"),
    [
        ({"LAKELOOP_KAFKA_PORT": "19092"}, "bootstrap_servers", "127.0.0.1:19092"),
        ({"LAKELOOP_KAFKA_BOOTSTRAP": "broker:9092"}, "bootstrap_servers", "broker:9092"),
        ({"LAKELOOP_MLFLOW_PORT": "5555"}, "tracking_uri", "http://127.0.0.1:5555"),
        ({"LAKELOOP_DAGSTER_PORT": "3100"}, "dagster_url", "http://127.0.0.1:3100"),
        # beyond loopback the webserver there is read-only: lakeloop's clients use the writable one on loopback
        ({"LAKELOOP_BIND_HOST": "0.0.0.0", "LAKELOOP_DAGSTER_LOCAL_PORT": "3100"}, "dagster_url", "http://127.0.0.1:3100"),
        ({"LAKELOOP_LAKE_ROOT": "s3://bucket/lake"}, "lake", "s3://bucket/lake"),
        ({"LAKELOOP_ENGINE": "spark"}, "engine", "spark"),
    ],
)
def test_env_overrides(clean_env: pytest.MonkeyPatch, tmp_path: Path, env: dict, attr: str, expected: str) -> None:
    monkeypatch = clean_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert getattr(load_settings(), attr) == expected


def test_toml_file_and_precedence(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch = clean_env
    (tmp_path / "lakeloop.toml").write_text('kafka_port = 29092\nmlflow_port = 5999\n')
    monkeypatch.setenv("LAKELOOP_MLFLOW_PORT", "6001")
    s = load_settings()
    assert s.kafka_port == 29092  # from the file
    assert s.mlflow_port == 6001  # env beats the file
    assert load_settings(mlflow_port=7000).mlflow_port == 7000  # flags beat env


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LAKELOOP_KAFKA_PORT": "not-a-port"}, "kafka_port"),
        ({"LAKELOOP_KAFKA_PORT": "70000"}, "kafka_port"),
        ({"LAKELOOP_ENGINE": "dask"}, "engine"),
    ],
)
def test_wrong_values_give_one_clear_error(clean_env: pytest.MonkeyPatch, tmp_path: Path, env: dict, needle: str) -> None:
    monkeypatch = clean_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert needle in exc.value.message
    assert "LAKELOOP_" in (exc.value.hint or "")


def test_unknown_key_in_toml_is_rejected(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "lakeloop.toml").write_text("kafka_prot = 1\n")
    with pytest.raises(ConfigError, match="kafka_prot"):
        load_settings()


def test_table_registry_uris_and_status(settings) -> None:
    names = [t.name for t in TABLES]
    assert len(names) == len(set(names))
    assert table_uri(settings, "bronze/feedback_events").endswith("/lake/bronze/feedback_events")
    with pytest.raises(KeyError, match="known tables"):
        table_uri(settings, "bronze/nope")
    assert all(row.version is None for row in table_status(settings))
