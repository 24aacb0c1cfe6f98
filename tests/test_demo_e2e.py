"""A shortened `lakeloop demo` against the real services, asserting the loop's outcomes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_run(platform, dagster_platform, kafka, mlflow_server, qa_feedback_path, tmp_path_factory):
    from orchestration.demo import DemoConfig, render_summary, run_demo

    # Its own lake, topics and registered model: the platform is shared with the rest of the session.
    settings = platform.settings.model_copy(update={
        "lake_root": str(tmp_path_factory.mktemp("e2e") / "lake"), "feedback_topic": "e2e.feedback",
        "predictions_topic": "e2e.predictions", "registered_model_name": "e2e-reward"})
    cfg = DemoConfig(
        data_path=qa_feedback_path,
        backlog_questions=150,
        live_questions=15,
        drift_window_questions=13,  # >= 50 scored answers per window, the drift check's minimum
        canary_window_questions=70,  # ~35 verdicts per arm at 50%: the analysis needs 30
        # A few CPU minutes of training: too little to be held to beating the baselines, which the
        # training tests and bench/bench_training.py measure on their own.
        train={"epochs": 2, "max_length": 64, "batch_size": 16, "max_train_examples": 200, "max_train_pairs": 300},
        n_boot=100,
        gate_must_beat_baselines=False,
    )
    summary = run_demo(settings, cfg, say=print)  # gives the session's environment back (environment_restored)
    print(render_summary(settings, summary))
    return settings, summary


def test_a_champion_exists_with_lineage_to_a_gold_table_version(demo_run) -> None:
    from deltalake import DeltaTable
    from mlflow import MlflowClient

    from infra.tables import table_uri

    settings, summary = demo_run
    client = MlflowClient(settings.tracking_uri)
    champion = client.get_model_version_by_alias(settings.registered_model_name, "champion")
    tags = champion.tags
    version_keys = [k for k in tags if "version" in k and "examples" in k]
    assert version_keys, f"no gold table version in the champion's tags: {tags}"
    pinned = int(tags[version_keys[0]])
    gold = DeltaTable(table_uri(settings, "gold/training_examples"), version=pinned)
    assert gold.count() > 0


def test_the_regressing_canary_was_rolled_back_and_the_champion_stayed(demo_run) -> None:
    settings, summary = demo_run
    first_champion = summary.facts["first_model"]["version"]
    assert summary.facts["final_aliases"] == {"champion": first_champion, "canary": None}
    assert any(d == "Rollback" for d, _ in summary.decisions), summary.decisions


def test_a_drift_alert_was_delivered(demo_run) -> None:
    settings, summary = demo_run
    assert any("drift" in json.dumps(a).lower() for a in summary.alerts), summary.alerts
    assert any("rolled back" in json.dumps(a).lower() for a in summary.alerts), summary.alerts


def test_dead_letters_and_bronze_account_for_every_event(demo_run) -> None:
    settings, summary = demo_run
    tables = summary.facts["tables"]
    assert tables["bronze/feedback_events"]["rows"] > 1000
    assert tables["bronze/dead_letters"]["rows"] > 0
    assert tables["bronze/predictions"]["rows"] > 0


def test_screenshot_of_the_asset_graph_after_the_demo(demo_run, tmp_path) -> None:
    from tests.ui_screenshot import screenshot_asset_graph

    settings, _ = demo_run
    out = screenshot_asset_graph(settings.dagster_url, tmp_path / "asset-graph.png")
    assert out.stat().st_size > 20_000
    (REPO_ROOT / "docs").mkdir(exist_ok=True)
    (REPO_ROOT / "docs" / "asset-graph.png").write_bytes(out.read_bytes())
