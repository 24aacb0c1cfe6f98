"""The pictures against the real MLflow server (issue 21): an evaluation logs the gate's and the calibration picture,
the registered version's description is the model card with the gate picture in it, and every image link is one an
HTTP GET answers with a PNG; a drift window and a canary analysis log theirs where their numbers are."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from infra.settings import Settings, load_settings
from trainers.charts import PNG_SIGNATURE

pytestmark = pytest.mark.integration


@pytest.fixture()
def s(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """The session's MLflow server, a private registered model, a private home and lake."""
    return load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                            "registered_model_name": f"pictures-{uuid.uuid4().hex[:8]}"})


def assert_png(url: str) -> None:
    assert url.startswith("http://") and "/get-artifact?" in url, url
    got = httpx.get(url, timeout=30)
    assert got.status_code == 200, (url, got.status_code, got.text[:300])
    assert got.headers["content-type"] == "image/png" and got.content[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_evaluation_logs_the_pictures_and_the_version_shows_the_card_with_the_gate_picture(s: Settings, qa_feedback_path: Path) -> None:
    from tests.training_fixtures import small_evaluated_run
    from trainers import registry as R
    from trainers.candidate import CALIBRATION_PNG, GATE_PNG, register_candidate
    from trainers.tracking import client

    run_id, out = small_evaluated_run(s, qa_feedback_path, experiment=f"pictures-{s.registered_model_name}")
    assert set(out.pictures) == {"gate", "calibration"}
    for url in out.pictures.values():
        assert_png(url)
    assert {GATE_PNG, CALIBRATION_PNG} <= {a.path for a in client(s).list_artifacts(run_id, "evaluation")}
    assert f"![gate picture]({out.pictures['gate']})" in out.model_card  # the card in Dagster's metadata shows it too
    # a first model with a cheap winner: the baseline rules also read its train split, cross-fit (trainers.crossfit)
    run = client(s).get_run(run_id).data
    assert out.report.pooled is not None and "nested cross-fit" in out.evidence, out.evidence
    assert run.tags["lakeloop.gate.evidence"] == out.evidence and "A first model is gated on more prompts" in out.model_card
    assert {"pooled.pairwise_accuracy", "pooled.paired.length.pairwise_accuracy.lo"} <= set(run.metrics)

    version, created, _ = register_candidate(s, run_id, actor="test", metrics={})
    description = R.version_info(s, version).description
    assert created and description.startswith("# Model card") and len(description) <= R.DESCRIPTION_LIMIT
    assert "## Gate" in description or "*Cut to fit MLflow's" in description
    image = re.search(r"!\[gate picture\]\((http[^)\s]+)\)", description)
    assert image is not None, description[:500]
    assert image.group(1) == out.pictures["gate"]
    assert_png(image.group(1))
    assert register_candidate(s, run_id, actor="test-retry", metrics={})[:2] == (version, False)  # a retry: same version
    assert R.version_info(s, version).description == description


def test_a_drift_window_logs_its_picture_to_its_mlflow_run(s: Settings, tmp_path: Path) -> None:
    from monitors.alerts import LogFileChannel, Notifier
    from monitors.drift_job import CHART_PATH, prepare_reference, run_drift_window
    from tests.monitoring_helpers import make_pairs
    from trainers.tracking import client

    reference = prepare_reference(make_pairs(400, seed=1), embed_sample=0)
    notifier = Notifier([], log=LogFileChannel(tmp_path / "alerts.jsonl"), state_path=tmp_path / "alert-state.json")
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    results = [run_drift_window(s, reference, make_pairs(120, seed=10 + i, long_prompts=i == 1), window_start=t0 + timedelta(hours=i),
                                window_end=t0 + timedelta(hours=i + 1), notifier=notifier, required=2, embed_sample=0)
               for i in range(2)]
    for r in results:
        assert r.mlflow_run_id and r.chart_url
        assert_png(r.chart_url)
        assert CHART_PATH in {a.path for a in client(s).list_artifacts(r.mlflow_run_id, CHART_PATH.rsplit("/", 1)[0])}
    assert results[1].verdict.drifted  # long prompts: the second picture has a drifted window to shade


def _traffic(t0: datetime, looks: int, *, champion: str, canary: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions of both arms (canary ~20% of traffic) and a thumbs verdict on most of them."""
    rng = np.random.default_rng(7)
    n = 60 * looks
    served = [t0 + timedelta(minutes=float(m)) for m in np.sort(rng.uniform(0, 15 * looks, n))]
    version = np.where(rng.random(n) < 0.2, canary, champion)
    satisfied = rng.random(n) < 0.7
    score = np.where(satisfied, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n))
    predictions = pd.DataFrame({"response_id": [f"r{i}" for i in range(n)], "model_version": version, "score": score,
                                "latency_ms": 3.0, "served_at": [t.isoformat() for t in served]})
    feedback = pd.DataFrame({"response_id": predictions["response_id"], "event_type": "thumbs", "value": np.where(satisfied, 1, -1),
                             "occurred_at": [(t + timedelta(minutes=2)).isoformat() for t in served]})
    return predictions, feedback


def test_a_canary_analysis_logs_its_picture_to_the_canary_versions_run(s: Settings) -> None:
    from monitors.canary import analyze_window
    from monitors.canary_job import CanaryResult, log_canary_chart
    from monitors.decision import Hold, RolloutPolicy
    from monitors.rollout import RolloutStatus
    from trainers.tracking import client

    c = client(s)
    exp = c.get_experiment_by_name("pictures") or c.get_experiment(c.create_experiment("pictures"))
    run_id = c.create_run(exp.experiment_id, run_name="canary-model").info.run_id
    c.create_registered_model(s.registered_model_name)
    champion = c.create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=None).version
    canary = c.create_model_version(s.registered_model_name, source=f"runs:/{run_id}/model", run_id=run_id).version
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    looks = [t0 + timedelta(minutes=15 * (i + 1)) for i in range(6)]
    predictions, feedback = _traffic(t0, 6, champion=str(champion), canary=str(canary))
    policy = RolloutPolicy()
    comparison = analyze_window(predictions, feedback, champion_version=str(champion), canary_version=str(canary), look_times=looks,
                                config=policy.comparison_config())
    status = RolloutStatus(str(champion), str(canary), None, 0.1)
    result = CanaryResult(comparison, Hold("inconclusive"), status, status, None)
    url = log_canary_chart(s, result, predictions, look_times=looks, until=looks[-1], applied=True, policy=policy)
    assert url is not None and len(comparison.looks) == len(looks)
    assert_png(url)
    assert f"canary/v{canary}-20260301T013000Z.png" in {a.path for a in c.list_artifacts(run_id, "canary")}
    no_run = CanaryResult(comparison, Hold("inconclusive"), RolloutStatus(str(canary), str(champion), None, 0.1), status, None)
    assert log_canary_chart(s, no_run, predictions, look_times=looks, until=looks[-1], applied=True, policy=policy) is None
