"""The demos run Dagster in their own process and export a platform's settings for it (``use_instance``): inside a
longer-lived process (a test session) that export must end with them. CI once trained the wrong candidates because the
soak's ``LAKELOOP_TRAIN_CONFIG`` outlived it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.settings import load_settings
from orchestration.materialize import environment_restored, use_instance


def test_use_instance_inside_environment_restored_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKELOOP_TRAIN_CONFIG", '{"epochs": 1}')
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    before = dict(os.environ)
    settings = load_settings(home=tmp_path, train_config='{"candidates": ["hybrid"]}')
    with environment_restored():
        use_instance(settings)
        assert os.environ["LAKELOOP_TRAIN_CONFIG"] == '{"candidates": ["hybrid"]}' and os.environ["DAGSTER_HOME"]
    assert dict(os.environ) == before


def test_environment_restored_also_when_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKELOOP_SERVE_PORT", raising=False)
    with pytest.raises(RuntimeError), environment_restored():
        os.environ["LAKELOOP_SERVE_PORT"] = "1"
        raise RuntimeError("a demo step failed")
    assert "LAKELOOP_SERVE_PORT" not in os.environ
