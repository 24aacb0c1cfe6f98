"""Drift: a stationary replay with a fixed seed raises no alert; a traffic switch raises one, with its
report, within K windows. Real Evidently, real Delta table, real local HTTP receiver. Size-aware thresholds on
the real qa_feedback data: small stationary windows are not flagged, cut answers are; the calibration itself."""

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
    assert "report" not in alerts[0]["links"] and "MLflow logging is off" in alerts[0]["details"]["report"]  # said in words
    report = results[first].report_path
    assert report is not None and "Value Drift for column prompt_chars" in report.read_text()
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
    import httpx
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
    assert md["report"].value.startswith(s.tracking_uri + "/#/experiments/")  # the MLflow page that shows it
    got = httpx.get(md["report_file"].value, timeout=30)  # what that page loads
    assert got.status_code == 200 and "<html" in got.text.lower()
    arts = mlflow.MlflowClient(s.tracking_uri).list_artifacts(md["mlflow_run_id"].value, "drift_report")
    html = [a.path for a in arts if a.path.endswith(".html")]
    assert len(html) == 1 and md["report"].value.endswith(f"/artifacts/{html[0]}")
    from deltalake import DeltaTable

    rows = DeltaTable(table_uri(s, "monitoring/drift_metrics")).to_pandas()
    assert {"emb_centroid_cos", "prompt_chars", "score"} <= set(rows["metric"])


# ---- size-aware thresholds on the real qa_feedback data ----------------------------------------------------
# Reference: the gold rows of 400 questions (as curation writes them: thumbs -> pointwise examples, corrections and
# preferences -> pairs), 600 rows sampled as the demo does. Windows: 4 scored answers per held-out question joined
# with the users' real feedback, through the same functions the drift job uses (current_frame, featurize).

HELD_OUT = 100


def fixed_scorer(frame: pd.DataFrame) -> np.ndarray:
    """A scorer fitted on none of these questions (so scores are stationary by construction)."""
    words = frame["response"].fillna("").str.split().str.len().to_numpy(dtype=float)
    return 1.0 / (1.0 + np.exp(-(words - 60.0) / 25.0))


class QaFeedback:
    def __init__(self, path: Path) -> None:
        from feedback.qa_feedback import load_events, read_questions

        self.questions = read_questions(path)
        ev = pd.DataFrame(load_events(path))
        ev["q"] = ev["conversation_id"].str.rsplit("-", n=1).str[1].astype(int)
        self.events = ev
        perm = np.random.default_rng(42).permutation(len(self.questions))
        self.reference_q, self.held_out = sorted(perm[HELD_OUT:].tolist()), sorted(perm[:HELD_OUT].tolist())

    def gold(self, qids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
        ev = self.events[self.events["q"].isin(qids)]
        th = ev[ev["event_type"] == "thumbs"]
        examples = pd.DataFrame({"prompt": th["prompt"], "response": th["response"], "label": (th["value"] + 1) / 2, "split": "train"})
        pr = ev[ev["event_type"].isin(["preference", "correction"])]
        is_c, b = pr["event_type"] == "correction", pr["preferred"] == "b"
        pairs = pd.DataFrame({
            "prompt": pr["prompt"],
            "chosen": np.where(is_c, pr["corrected_response"], np.where(b, pr["response_b"], pr["response"])),
            "rejected": np.where(is_c, pr["response"], np.where(b, pr["response"], pr["response_b"])),
            "source": pr["event_type"], "split": "train"})
        return examples, pairs

    def reference(self, sample: int = 600) -> pd.DataFrame:
        from monitors.windows import reference_rows

        raw = reference_rows(*self.gold(self.reference_q), sample=sample, seed=0)
        raw["score"] = fixed_scorer(raw)
        return featurize(raw)

    def window(self, qids: list[int], *, drifted: bool = False, seed: int = 0) -> pd.DataFrame:
        """The demo's traffic: 4 answers per question, then its users' feedback; ``drifted`` is the demo's
        release that cuts answers to their first sentence (feedback.simulate)."""
        import random

        from feedback.simulate import _drifted_feedback, first_sentence
        from monitors.windows import current_frame

        rng, preds, fb = random.Random(seed), [], []
        for i in qids:
            q = self.questions[i]
            for k in range(1, 5):
                text = q[f"prediction {k}"]
                preds.append({"response_id": f"qa-resp-0-{i:03d}-p{k}", "prompt": q["question"], "model_version": "1",
                              "response": first_sentence(text) if drifted else text})
            events = self.events[self.events["q"] == i].drop(columns="q").to_dict("records")
            fb += _drifted_feedback(events, rng) if drifted else events
        p = pd.DataFrame(preds)
        p["score"] = fixed_scorer(p)
        return current_frame(p, pd.DataFrame(fb))

    def sample(self, n: int, seed: int) -> list[int]:
        return sorted(np.random.default_rng(seed).choice(self.held_out, n, replace=False).tolist())


@pytest.fixture(scope="module")
def qa(qa_feedback_path: Path) -> QaFeedback:
    return QaFeedback(qa_feedback_path)


@pytest.fixture(scope="module")
def qa_reference(qa: QaFeedback) -> pd.DataFrame:
    return qa.reference()


def test_stationary_windows_of_real_feedback_are_not_flagged(qa: QaFeedback, qa_reference: pd.DataFrame) -> None:
    verdicts = [check_drift(qa_reference, featurize(qa.window(qa.sample(40, seed)))) for seed in range(10)]
    assert sum(v.drifted for v in verdicts) <= 1, [v.summary() for v in verdicts]
    v = verdicts[0]
    assert v.n_current == 160 and {c.window_clusters for c in v.columns if c.group != "feedback"} == {40}
    assert all(c.threshold >= c.floor for c in v.columns) and any(c.threshold > c.floor for c in v.columns)
    assert "calibrated for this window size" in v.summary() and "(40 prompts)" in v.summary()
    # the fixed thresholds alone flag most of these windows: the false alarms this calibration removes
    fixed = [check_drift(qa_reference, featurize(qa.window(qa.sample(40, seed))), config=DriftConfig(calibrate=False))
             for seed in range(10)]
    assert sum(f.drifted for f in fixed) >= 5


def test_drifted_windows_of_cut_answers_are_flagged(qa: QaFeedback, qa_reference: pd.DataFrame, tmp_path: Path) -> None:
    verdicts = [check_drift(qa_reference, featurize(qa.window(qa.sample(15, seed), drifted=True, seed=seed)),
                            report_html=tmp_path / f"{seed}.html") for seed in range(10)]
    assert all(v.groups.get("data") for v in verdicts), [v.summary() for v in verdicts]
    for v in verdicts:
        drifted = {c.column for c in v.columns if c.drifted}
        assert {"response_chars", "response_words"} <= drifted, v.summary()
    by_col = {c.column: c for c in verdicts[0].columns}
    assert "response_chars (wasserstein" in verdicts[0].summary() and "calibrated for this window size" in verdicts[0].summary()
    html = (tmp_path / "0.html").read_text()  # Evidently got the calibrated threshold: its report shows it
    assert f"The drift threshold is {by_col['response_chars'].threshold:0.2f}" in html


def test_feedback_flags_of_live_windows_match_the_reference(qa: QaFeedback, qa_reference: pd.DataFrame) -> None:
    w = qa.window(qa.sample(40, 0))
    p1 = w["response_id"].str.endswith("-p1")
    # only the answer with pointwise feedback (thumbs, correction) carries flags; preference-only answers do not
    assert w.loc[p1, ["thumbs_down", "corrected"]].notna().all().all()
    assert w.loc[~p1, ["thumbs_down", "corrected"]].isna().all().all()
    ref_rate, cur_rate = qa_reference["corrected"].mean(), w["corrected"].mean()
    assert ref_rate > 0.8 and abs(ref_rate - cur_rate) < 0.1  # about every first answer was corrected, in both
    assert qa_reference["thumbs_down"].notna().sum() == qa_reference["corrected"].notna().sum()


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("r", "thumbs", -1.0)], {"r": (1.0, 0.0)}),
        ([("r", "thumbs", 1.0), ("r", "correction", None)], {"r": (0.0, 1.0)}),
        ([("r", "correction", None)], {"r": (np.nan, 1.0)}),  # corrected, no verdict on thumbs
        ([("r", "rating", 2.0)], {"r": (1.0, 0.0)}),  # rating 1-2: unhappy, as curation labels it (< 0.5)
        ([("r", "rating", 3.0)], {"r": (0.0, 0.0)}),  # rating 3 -> label 0.5: not thumbs-down
        ([("r", "thumbs", -1.0), ("r", "thumbs", 1.0), ("r", "thumbs", 1.0)], {"r": (0.0, 0.0)}),  # mean label 2/3
        ([("r", "preference", None)], {}),  # preference only: no flags (NaN after the join), like pair responses
        ([("a", "preference", None), ("b", "thumbs", 1.0)], {"b": (0.0, 0.0)}),
    ],
)
def test_feedback_flags_are_defined_for_pointwise_feedback_only(events: list, expected: dict) -> None:
    from monitors.windows import feedback_flags

    fb = pd.DataFrame([{"event_id": f"e{i}", "event_type": t, "response_id": r, "value": v,
                        "occurred_at": f"2026-01-01T00:00:0{i}Z"} for i, (r, t, v) in enumerate(events)])
    got = {row.response_id: (row.thumbs_down, row.corrected) for row in feedback_flags(fb).itertuples()}
    assert got.keys() == expected.keys()
    for rid, (td, corr) in expected.items():
        assert (np.isnan(got[rid][0]) if np.isnan(td) else got[rid][0] == td) and got[rid][1] == corr


def test_reference_rows_define_flags_like_live_windows() -> None:
    from monitors.windows import reference_rows

    examples = pd.DataFrame({"prompt": ["q1", "q2"], "response": ["a1", "a2"], "label": [0.0, 1.0], "split": "train"})
    pairs = pd.DataFrame({  # (prompt, chosen, rejected, source): a1 is corrected; a3 is corrected and lost a preference
        "prompt": ["q1", "q1", "q3", "q3"], "chosen": ["a1 fixed", "a1", "a3 fixed", "c3"], "rejected": ["a1", "b1", "a3", "a3"],
        "source": ["correction", "preference", "preference", "correction"], "split": "train"})
    ref = reference_rows(examples, pairs).set_index("response")
    assert ref.loc["a1", "thumbs_down"] == 1.0 and ref.loc["a1", "corrected"] == 1.0  # rated and corrected
    assert ref.loc["a2", "thumbs_down"] == 0.0 and ref.loc["a2", "corrected"] == 0.0
    assert np.isnan(ref.loc["a3", "thumbs_down"]) and ref.loc["a3", "corrected"] == 1.0  # corrected (and preferred against)
    assert ref.loc[["b1", "a3 fixed"], ["thumbs_down", "corrected"]].isna().all().all()  # preference-only responses
    assert "a1 fixed" not in ref.index and "c3" not in ref.index  # the human-written side of a correction is never served
    assert len(ref) == 5


# ---- the calibration itself ---------------------------------------------------------------------------------
def clustered(n_clusters: int, *, seed: int, method: str, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows in clusters of 1-6 sharing a cluster effect (like answers to one prompt)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_clusters)
    keys = np.repeat(rng.integers(0, 2**62, n_clusters), sizes)
    effect = np.repeat(rng.normal(size=n_clusters), sizes)
    x = effect + 0.5 * rng.normal(size=len(keys)) + shift
    if method == "jensenshannon":
        x = (x > 1.0).astype(float)
    return x, keys


@pytest.mark.parametrize("method", ["wasserstein", "jensenshannon"])
@pytest.mark.parametrize("n", [20, 300])
def test_drift_score_is_evidentlys(method: str, n: int) -> None:
    from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
    from evidently.legacy.calculations.stattests.wasserstein_distance_norm import _wasserstein_distance_norm
    from evidently.legacy.core import ColumnType

    from monitors.drift import drift_score

    ref, _ = clustered(400, seed=1, method=method)
    cur, _ = clustered(n, seed=2, method=method, shift=0.3)
    evidently = (_wasserstein_distance_norm(pd.Series(ref), pd.Series(cur), ColumnType.Numerical, 0.1) if method == "wasserstein"
                 else _jensenshannon(pd.Series(ref), pd.Series(cur), ColumnType.Categorical, 0.1))[0]
    assert drift_score(method, ref, cur) == pytest.approx(evidently, rel=1e-9)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "window_clusters", "floor", "max_false_alarms"),
    [
        ("wasserstein", 10, 0.1, 0.04),
        ("wasserstein", 40, 0.1, 0.04),
        ("wasserstein", 150, 0.1, 0.04),
        ("jensenshannon", 15, 0.1, 0.04),
        ("jensenshannon", 60, 0.05, 0.04),
    ],
)
def test_null_threshold_keeps_false_alarms_rare_at_any_window_size(method: str, window_clusters: int, floor: float,
                                                                     max_false_alarms: float) -> None:
    """Fresh windows from the reference's population exceed the calibrated threshold about 1% of the time
    (quantile 0.99), whatever their size; the same windows with rows taken as independent (no clusters) do not."""
    from monitors.drift import drift_score, null_threshold

    ref, keys = clustered(500, seed=7, method=method)
    nt = null_threshold(ref, keys, method=method, window_clusters=window_clusters, floor=floor)  # type: ignore[arg-type]
    naive = null_threshold(ref, np.arange(len(ref)), method=method, window_clusters=int(window_clusters * 3.5), floor=0.0)  # type: ignore[arg-type]
    assert nt.threshold == max(floor, nt.null_quantile) and nt.window_clusters == window_clusters and nt.reference_clusters == 500
    scores = np.array([drift_score(method, ref, clustered(window_clusters, seed=100 + i, method=method)[0])  # type: ignore[arg-type]
                       for i in range(150)])
    assert (scores >= nt.threshold).mean() <= max_false_alarms
    assert (scores >= naive.threshold).mean() > 0.04  # ignoring the clusters would alarm far more often


@pytest.mark.parametrize(
    ("window_clusters", "floor", "expect_floor"),
    [(5, 0.1, False), (50, 0.1, False), (5_000, 0.1, True), (50_000, 0.1, True), (50, 5.0, True)],
)
def test_null_threshold_shrinks_with_the_window_down_to_the_floor(window_clusters: int, floor: float, expect_floor: bool) -> None:
    from monitors.drift import null_threshold

    ref, keys = clustered(3000, seed=3, method="wasserstein")
    nt = null_threshold(ref, keys, method="wasserstein", window_clusters=window_clusters, floor=floor)
    smaller = null_threshold(ref, keys, method="wasserstein", window_clusters=max(1, window_clusters // 10), floor=0.0)
    assert (nt.threshold == floor) is expect_floor
    assert smaller.null_quantile > nt.null_quantile  # ten times fewer prompts: a wider null
    assert nt.drawn_clusters <= window_clusters and nt.drawn_clusters * 3.5 <= 2000 * 1.5  # null windows stay small
    again = null_threshold(ref, keys, method="wasserstein", window_clusters=window_clusters, floor=floor)
    assert again == nt  # seeded: the same window gets the same threshold


@pytest.mark.parametrize(("method", "window_clusters"), [("wasserstein", 5), ("wasserstein", 40), ("jensenshannon", 5), ("jensenshannon", 40)])
def test_null_threshold_scores_each_draw_as_evidently_would(method: str, window_clusters: int) -> None:
    """The vectorized null equals Evidently's score on the same draws: each of 20 draws is a reference of K whole
    prompts and a window of k whole prompts, both with replacement (drawn in that order from the seeded rng)."""
    from monitors.drift import drift_score, null_threshold

    values, keys = clustered(120, seed=1, method=method)
    codes = pd.factorize(keys)[0]
    order, sizes = np.argsort(codes, kind="stable"), np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(3)

    def draw(k: int) -> list[np.ndarray]:
        return [np.concatenate([order[starts[j]: starts[j] + sizes[j]] for j in row]) for row in rng.integers(len(sizes), size=(20, k))]

    refs, wins = draw(len(sizes)), draw(window_clusters)
    brute = [drift_score(method, values[r], values[w]) for r, w in zip(refs, wins, strict=True)]  # type: ignore[arg-type]
    nt = null_threshold(values, codes, method=method, window_clusters=window_clusters, floor=0.0, resamples=20, seed=3)  # type: ignore[arg-type]
    assert nt.null_quantile == pytest.approx(float(np.quantile(brute, 0.99)), rel=1e-9)


def test_the_score_reference_is_the_held_out_split(caplog: pytest.LogCaptureFixture) -> None:
    """Text and flags come from both splits; the champion's scores from the rows it did not train on, unless too
    few are held out (then every row, with a warning)."""
    import logging

    from monitors.windows import HELD_OUT_MIN_ROWS, reference_rows, score_frame

    class Model:
        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"score": frame["response"].str.len() / 100.0})

    def gold(n_eval: int) -> pd.DataFrame:
        examples = pd.DataFrame({"prompt": [f"q{i}" for i in range(200)], "response": [f"a{i}" for i in range(200)],
                                 "label": 1.0, "split": ["eval"] * n_eval + ["train"] * (200 - n_eval)})
        return reference_rows(examples, pd.DataFrame(columns=["prompt", "chosen", "rejected", "source", "split"]), sample=120)

    ref = gold(HELD_OUT_MIN_ROWS)
    assert ref["split"].value_counts().to_dict() == {"train": 120, "eval": HELD_OUT_MIN_ROWS}  # each split sampled apart
    scores = score_frame(Model(), ref)
    held_out = (ref["split"] == "eval").to_numpy()
    assert np.isfinite(scores[held_out]).all() and np.isnan(scores[~held_out]).all()
    few = gold(HELD_OUT_MIN_ROWS - 1)
    with caplog.at_level(logging.WARNING, logger="lakeloop.monitors.windows"):
        assert np.isfinite(score_frame(Model(), few)).all()
    assert "includes the rows the model was trained on" in caplog.text
    assert np.isfinite(score_frame(Model(), few.drop(columns="split"))).all()  # no split: every row


def test_embedded_text_keeps_the_response_of_a_long_prompt() -> None:
    from monitors.drift import EMBED_PROMPT_WORDS, pair_texts

    frame = pd.DataFrame({"prompt": ["Who wrote it?\n\nPassages:\n[1] " + "word " * 2000], "response": ["An answer."]})
    (text,) = pair_texts(frame)
    assert text.startswith("Who wrote it? Passages: [1] word") and text.endswith("\nAn answer.")
    assert len(text.split()) == EMBED_PROMPT_WORDS + 2


def test_signal_flags_are_defined_like_the_verdict_flags_on_both_sides() -> None:
    """A response's implicit signals become ``signal_<name>`` flags where it has pointwise feedback, in a live window
    (the events' ``name``) and in the reference (gold's ``signals`` column): the same rows, the same meaning."""
    from monitors.windows import feedback_flags, reference_rows

    fb = pd.DataFrame([
        {"event_id": "e1", "event_type": "thumbs", "response_id": "r1", "value": 1.0, "name": None},
        {"event_id": "e2", "event_type": "signal", "response_id": "r1", "value": 1.0, "name": "copy"},
        {"event_id": "e3", "event_type": "thumbs", "response_id": "r2", "value": -1.0, "name": None},
        {"event_id": "e4", "event_type": "signal", "response_id": "r2", "value": 1.0, "name": "regenerate"},
        {"event_id": "e5", "event_type": "signal", "response_id": "r3", "value": 9.5, "name": "dwell"},  # no verdict: no row
    ])
    flags = feedback_flags(fb).set_index("response_id")
    assert list(flags.index) == ["r1", "r2"]
    assert flags.loc["r1", ["signal_copy", "signal_regenerate"]].tolist() == [1.0, 0.0]
    assert flags.loc["r2", ["signal_copy", "signal_regenerate", "signal_dwell"]].tolist() == [0.0, 1.0, 0.0]
    examples = pd.DataFrame({"prompt": ["q1", "q2", "q3"], "response": ["a1", "a2", "a3"], "label": [1.0, 0.0, 1.0],
                             "signals": ["copy", "dwell,regenerate", None], "split": "train"})
    ref = reference_rows(examples, pd.DataFrame(columns=["prompt", "chosen", "rejected", "source", "split"])).set_index("response")
    assert ref.loc["a1", ["signal_copy", "signal_regenerate"]].tolist() == [1.0, 0.0]
    assert ref.loc["a2", ["signal_copy", "signal_regenerate", "signal_dwell"]].tolist() == [0.0, 1.0, 1.0]
    assert ref.loc["a3", ["signal_copy", "signal_regenerate", "signal_dwell", "signal_abandon"]].tolist() == [0.0] * 4
    old = reference_rows(examples.drop(columns="signals"), pd.DataFrame(columns=["prompt", "chosen", "rejected", "source", "split"]))
    assert (old["signal_copy"] == 0.0).all()  # gold from before signals: none seen


def test_a_signal_is_compared_only_when_an_app_sends_it_and_its_rate_can_drift() -> None:
    """No signal anywhere: no signal column is planned, reported or rated (the verdict flags are). A window whose
    users regenerate 40% of answers against 5% in the reference drifts on feedback."""
    from monitors.drift import DriftConfig, check_drift

    rng = np.random.default_rng(0)
    n = 400

    def frame(regenerate: float) -> pd.DataFrame:
        f = pd.DataFrame({"prompt": [f"question {i % 50}" for i in range(n)], "response": ["an answer of some words"] * n})
        from monitors.drift import featurize

        out = featurize(f)
        out["thumbs_down"] = (rng.random(n) < 0.3).astype(float)
        out["corrected"] = 0.0
        for flag in ("signal_copy", "signal_dwell", "signal_abandon"):
            out[flag] = 0.0
        out["signal_regenerate"] = (rng.random(n) < regenerate).astype(float)
        return out

    quiet = check_drift(frame(0.0), frame(0.0), config=DriftConfig(calibrate=False))
    assert not any(c.column.startswith("signal_") for c in quiet.columns)
    assert not any(k.startswith(("current_signal", "reference_signal")) for k in quiet.rates)
    assert {"thumbs_down", "corrected"} <= {c.column for c in quiet.columns}
    drifted = check_drift(frame(0.05), frame(0.40), config=DriftConfig(calibrate=False))
    regen = next(c for c in drifted.columns if c.column == "signal_regenerate")
    assert regen.drifted and drifted.groups["feedback"] and drifted.rates["current_signal_regenerate_rate"] > 0.3
    assert not any(c.column == "signal_copy" for c in drifted.columns)
