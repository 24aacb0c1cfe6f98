"""`lakeloop materialize` records its runs in the platform's Dagster instance; `lakeloop curate` runs the steps."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events, write_bronze


@pytest.fixture()
def cli_home(settings, monkeypatch, qa_feedback_path):
    from orchestration.commands import common

    monkeypatch.setenv("LAKELOOP_HOME", str(settings.home))
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))  # restored after the test
    monkeypatch.delenv("LAKELOOP_PSEUDONYM_KEY", raising=False)
    common.settings.cache_clear()
    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=10, days=1))
    yield settings
    common.settings.cache_clear()


def test_materialize_runs_show_in_the_platform_instance(cli_home) -> None:
    import dagster as dg

    from orchestration.cli import app

    result = CliRunner().invoke(app, ["materialize", "--select", "group:curation", "--partition", START.isoformat()])
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    instance = dg.DagsterInstance.from_config(str(cli_home.dagster_home))
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].is_success and runs[0].tags["dagster/partition"] == START.isoformat()
    mat = instance.get_latest_materialization_event(dg.AssetKey("gold_training_examples"))
    assert mat is not None and mat.asset_materialization.metadata["rows_out"].value > 0
    bad = CliRunner().invoke(app, ["materialize", "--select", "group:no_such_group"])
    assert bad.exit_code != 0 and "matches no materializable asset" in str(bad.exception)


def test_curate_command_runs_every_day(cli_home) -> None:
    from orchestration.cli import app

    result = CliRunner().invoke(app, ["curate"])
    assert result.exit_code == 0, result.output
    assert "gold/preference_pairs" in result.output and START.isoformat() in result.output


def test_curate_command_reports_reference_events_that_wait(cli_home) -> None:
    from orchestration.cli import app
    from tests.test_curation_pipeline import ev

    ref = ev(900, day=START, response_id="resp-not-scored", prompt="", response="", model_name="", model_version="")
    write_bronze(table_uri(cli_home, "bronze/feedback_events"), [ref], first_offset=10_000)
    result = CliRunner().invoke(app, ["curate", "--day", START.isoformat()])
    assert result.exit_code == 0, result.output
    assert "1 reference event(s) wait for their prediction (kept in bronze)" in result.output
    assert "1 reference feedback event(s) waited over 60 min" in result.output  # ingested in 2026-01: long ago
