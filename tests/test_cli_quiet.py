"""The demo's narration stays readable: third-party progress bars and links are off unless the user set them."""

from __future__ import annotations

import os

import pytest

from orchestration.commands.common import QUIET_ENV, quiet_third_party_output


def test_quiet_output_defaults_do_not_override_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user's choice wins
    quiet_third_party_output()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True
