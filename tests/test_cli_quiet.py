"""Command output stays readable: third-party progress bars, warnings and links are off unless the user set them, for
every command (the CLI's root callback), and a model card prints as the markdown it is."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


# ---- what the commands print: their own lines only ----------------------------------------------------------

NOISE = ("Warning", "warnings.warn", "it/s]", "%|", "Downloading artifacts", "View run")  # warnings, tqdm bars, MLflow links


@pytest.mark.parametrize("args", [["--help"], ["status"], ["lineage", "--help"], ["drift", "--help"]])
def test_commands_print_no_third_party_warnings_or_progress_bars(args: list[str], tmp_path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_") and k not in QUIET_ENV}
    env |= {"LAKELOOP_HOME": str(tmp_path / "home"), "LAKELOOP_CONFIG": str(tmp_path / "none.toml")}
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in ((0, 1) if args == ["status"] else (0,)), done.stderr  # status: 1 when a service is down
    assert done.stderr == "" and done.stdout.strip()
    assert [n for n in NOISE if n in done.stdout] == [], done.stdout


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:
    """A private home for in-process command runs, and the CLI's cached settings forgotten before and after."""
    from orchestration.commands.common import settings

    monkeypatch.setenv("LAKELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LAKELOOP_CONFIG", str(tmp_path / "none.toml"))
    settings.cache_clear()
    yield
    settings.cache_clear()


def test_every_command_turns_third_party_output_off(monkeypatch: pytest.MonkeyPatch, cli: None) -> None:
    from typer.testing import CliRunner

    from orchestration.cli import app

    for key in QUIET_ENV:  # set, then removed: the test's end puts back what was there before
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    result = CliRunner().invoke(app, ["tables"])
    assert result.exit_code == 0, result.output
    assert {k: os.environ.get(k) for k in QUIET_ENV} == QUIET_ENV


def test_evaluate_prints_the_model_card_as_written(monkeypatch: pytest.MonkeyPatch, cli: None) -> None:
    """The card is markdown: its image alt texts are not console markup (``![gate picture](...)`` stays whole)."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from orchestration.cli import app
    from trainers import candidate

    card = "# Model card\n\n![gate picture](http://mlflow:5000/get-artifact?path=evaluation%2Fgate.png&run_uuid=r1)\n"
    decision = SimpleNamespace(passed=True, summary=lambda: "passed")
    monkeypatch.setattr(candidate, "evaluate_candidate", lambda *a, **k: SimpleNamespace(model_card=card, decision=decision))
    result = CliRunner().invoke(app, ["evaluate", "r1"])
    assert result.exit_code == 0, result.output
    assert card in result.output and "gate: passed" in result.output
