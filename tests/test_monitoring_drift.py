"""Drift: a stationary replay with a fixed seed raises no alert; a traffic switch raises one, with its
report, within K windows. Real Evidently, real Delta table, real local HTTP receiver."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infra.settings import Settings
from monitors import drift_store
from monitors.alerts import AlertPolicy, LogFileChannel, Notifier, WebhookChannel
from monitors.drift import DriftConfig, EmbeddingProjector, check_drift, encode_texts, featurize
from monitors.drift_job import prepare_reference, run_drift_window
from tests.monitoring_helpers import Receiver, make_pairs, train_scorer

K = 3  # drifted windows in a row before the alert
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def scorer():
    return train_scorer(make_pairs(600, seed=1))


def traffic(scorer, n: int, *, seed: int, switched: bool = False) -> pd.DataFrame:
    """Scored traffic with sparse feedback (30%): unhappy users thumb down, some correct."""
    df = make_pairs(n, seed=seed, long_prompts=switched)
    df["score"] = scorer.predict(None, df)["score"].to_numpy()
    rng = np.random.default_rng(seed + 10_000)
    has_fb = rng.random(n) < 0.3
    unhappy = (df["satisfied"] == 0) ^ (rng.random(n) < 0.1)
    df["thumbs_down"] = np.where(has_fb, unhappy.astype(float), np.nan)
    df["corrected"] = np.where(has_fb, (unhappy & (rng.random(n) < 0.3)).astype(float), np.nan)
    return df.drop(columns="satisfied")


def run_windows(settings: Settings, reference, windows: list[pd.DataFrame], url: str, tmp_path: Path):
    notifier = Notifier([WebhookChannel(url, "json")], log=LogFileChannel(tmp_path / "alerts.jsonl"),
                        state_path=tmp_path / "alert-state.json", policy=AlertPolicy(dedup_seconds=3600))
    results = []
    for i, window in enumerate(windows):
        start = T0 + timedelta(hours=i)
        results.append(
            run_drift_window(settings, reference, window, window_start=start, window_end=start + timedelta(hours=1),
                             notifier=notifier, required=K, embed_sample=0, mlflow_logging=False, model_version="1")
        )
    return results


def test_stationary_replay_raises_no_alert(settings: Settings, scorer, tmp_path: Path) -> None:
    reference = prepare_reference(traffic(scorer, 1500, seed=100), embed_sample=0)
    windows = [traffic(scorer, 400, seed=200 + i) for i in range(8)]
    with Receiver() as rx:
        results = run_windows(settings, reference, windows, rx.url(), tmp_path)
        assert rx.received == []
    assert not any(r.streak.triggered for r in results)
    assert sum(r.verdict.drifted for r in results) <= 1, [r.verdict.summary() for r in results]
    assert drift_store.window_history(settings) == [r.verdict.drifted for r in results]


def test_traffic_switch_alerts_with_report_within_k_windows(settings: Settings, scorer, tmp_path: Path) -> None:
    reference = prepare_reference(traffic(scorer, 1500, seed=100), embed_sample=0)
    onset = 3
    windows = [traffic(scorer, 400, seed=300 + i, switched=i >= onset) for i in range(onset + K + 2)]
    with Receiver() as rx:
        results = run_windows(settings, reference, windows, rx.url(), tmp_path)
        alerts = [body for _, body in rx.received]
    first = next(i for i, r in enumerate(results) if r.streak.action == "alert")
    assert first - onset + 1 <= K  # windows from onset to alert, inclusive
    assert sum(r.retrain for r in results) == 1  # retraining asked once per streak
    assert len(alerts) == 1, alerts  # the ongoing streak is de-duplicated
    assert alerts[0]["kind"] == "drift" and "data" in alerts[0]["summary"]
    report = Path(alerts[0]["links"]["report"].removeprefix("file://"))
    assert report.exists() and "Value Drift for column prompt_chars" in report.read_text()
    drifted_cols = {c.column for c in results[first].verdict.columns if c.drifted}
    assert {"prompt_chars", "prompt_words"} <= drifted_cols

    from deltalake import DeltaTable

    from infra.tables import table_uri

    table = DeltaTable(table_uri(settings, "monitoring/drift_metrics")).to_pandas()
    assert table["window_id"].nunique() == len(windows)
    assert set(table["group"]) >= {"data", "prediction", "feedback", "window"}


def test_feedback_drift_alone_is_detected_and_small_windows_are_not_judged(scorer) -> None:
    ref = featurize(traffic(scorer, 1500, seed=100))
    cur_raw = traffic(scorer, 400, seed=401)
    cur_raw["thumbs_down"] = np.where(cur_raw["thumbs_down"].notna(), (np.random.default_rng(0).random(400) < 0.8).astype(float), np.nan)
    v = check_drift(ref, featurize(cur_raw))
    assert v.groups["feedback"] and not v.groups["data"]
    assert v.rates["current_thumbs_down_rate"] > v.rates["reference_thumbs_down_rate"] + 0.3
    small = check_drift(ref, featurize(cur_raw.head(20)))
    assert small.groups == {} and not small.drifted and small.skipped  # too few rows: nothing judged, said so


def test_embedding_drift_uses_the_packaged_encoder(scorer) -> None:
    ref_raw = traffic(scorer, 64, seed=100)
    emb = encode_texts(["what is the tallest volcano", "how do I bake bread"])
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    ref_emb = encode_texts((ref_raw["prompt"] + "\n" + ref_raw["response"]).tolist())
    proj = EmbeddingProjector.fit(ref_emb)
    other = pd.DataFrame({"prompt": ["def f(x): return x * 2  # python code review please"] * 60,
                          "response": ["Sure, here is a refactor using a lambda expression."] * 60})
    same = featurize(ref_raw, embeddings=ref_emb, projector=proj)
    moved = featurize(other, embeddings=encode_texts((other["prompt"] + "\n" + other["response"]).tolist()), projector=proj)
    v = check_drift(same, moved, config=DriftConfig(min_rows=50))
    emb_cols = {c.column: c for c in v.columns if c.column.startswith("emb_")}
    assert set(emb_cols) == {"emb_centroid_cos", "emb_pc1", "emb_pc2"}
    assert emb_cols["emb_centroid_cos"].drifted


@pytest.mark.integration
@pytest.mark.slow
def test_drift_report_asset_end_to_end(mlflow_server: Settings, kafka: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster materializes drift_report: reference = gold/training_examples scored by the champion, window =
    the predictions topic; the report is a metadata link and an MLflow artifact, numbers land in Delta."""
    import uuid

    import dagster as dg
    import mlflow
    from deltalake import write_deltalake

    from feedback.kafka_io import ensure_topic
    from infra.tables import table_uri
    from monitors import rollout
    from monitors.predictions import KafkaPublisher, PredictionRecord, rfc3339_now
    from orchestration.assets.monitoring import drift_report
    from orchestration.assets.monitoring.resources import MonitoringResource
    from orchestration.resources import LakeloopSettings
    from tests.monitoring_helpers import register

    tag = uuid.uuid4().hex[:8]
    s = mlflow_server.model_copy(update={"home": tmp_path / "home", "registered_model_name": f"drift-{tag}",
                                         "predictions_topic": f"predictions-{tag}", "feedback_topic": f"feedback-{tag}"})
    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    ensure_topic(s, s.predictions_topic)
    ensure_topic(s, s.feedback_topic)
    data = make_pairs(600, seed=1)
    model = train_scorer(data)
    rollout.start_canary(s, version=register(s, model), actor="test", reason="first")
    gold = make_pairs(400, seed=5)
    write_deltalake(table_uri(s, "gold/training_examples"), pd.DataFrame({
        "prompt": gold["prompt"], "response": gold["response"], "label": gold["satisfied"],
        "event_types": "thumbs", "split": "train"}))
    pub = KafkaPublisher(s)
    live = make_pairs(200, seed=6, long_prompts=True)  # shifted traffic
    live["score"] = model.predict(None, live)["score"]
    for i, row in live.iterrows():
        pub.publish(PredictionRecord(f"q{i}", f"r{i}", f"c{i}", s.registered_model_name, "1", "champion",
                                     float(row.score), 3.0, row.prompt, row.response, rfc3339_now()))
    pub.flush()
    res = dg.materialize([drift_report], resources={
        "lakeloop": LakeloopSettings(),
        "monitoring": MonitoringResource(source="kafka", window_minutes=10, embed_sample=64, reference_sample=400)})
    md = res.asset_materializations_for_node("drift_report")[0].metadata
    assert md["drifted"].value is True and md["n_current"].value == 200
    report = Path(md["report"].value.removeprefix("file://"))
    assert report.exists()
    arts = mlflow.MlflowClient(s.tracking_uri).list_artifacts(md["mlflow_run_id"].value, "drift_report")
    assert [a.path for a in arts] == [f"drift_report/{report.name}"]
    from deltalake import DeltaTable

    rows = DeltaTable(table_uri(s, "monitoring/drift_metrics")).to_pandas()
    assert {"emb_centroid_cos", "prompt_chars", "score"} <= set(rows["metric"])
