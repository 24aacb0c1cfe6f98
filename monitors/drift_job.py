"""One drift window end to end: featurize, check (Evidently), store numbers, judge the streak, alert.

Plain functions with plain inputs; the Dagster asset and `lakeloop drift` are thin adapters over these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from infra.settings import Settings
from monitors import drift_store
from monitors.alerts import Alert, Delivery, Notifier
from monitors.drift import DriftConfig, DriftVerdict, EmbeddingProjector, check_drift, encode_texts, featurize, pair_texts
from monitors.streak import StreakVerdict, judge_streak

EXPERIMENT = "lakeloop-monitoring"


@dataclass(frozen=True)
class Reference:
    features: pd.DataFrame
    projector: EmbeddingProjector | None


def _sample_index(n: int, k: int, seed: int) -> np.ndarray:
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _featurize(raw: pd.DataFrame, projector: EmbeddingProjector | None, embed_sample: int, seed: int) -> pd.DataFrame:
    if projector is None or embed_sample <= 0:
        return featurize(raw)
    idx = _sample_index(len(raw), embed_sample, seed)
    # embedded rows first, so the embedding projections line up with them
    ordered = pd.concat([raw.iloc[idx], raw.drop(raw.index[idx])]).reset_index(drop=True)
    return featurize(ordered, embeddings=encode_texts(pair_texts(ordered.iloc[: len(idx)])), projector=projector)


def prepare_reference(raw: pd.DataFrame, *, embed_sample: int = 256, seed: int = 0) -> Reference:
    """Featurize the reference once (prompt, response, score, feedback flags) and fit the projector.

    The ``embed_sample`` rows are encoded once and split in two: the projector is fitted on one half and the
    reference's embedding features come from the other half. Rows the projector was fitted on sit closer to
    its centroid and spread more along its components than any new row would, a bias a stationary window
    would show as embedding drift.
    """
    if embed_sample <= 0:
        return Reference(featurize(raw), None)
    idx = _sample_index(len(raw), embed_sample, seed)
    if len(idx) < 6:
        raise ValueError(f"embed_sample={embed_sample} leaves {len(idx)} reference rows to embed; need at least 6")
    emb = encode_texts(pair_texts(raw.iloc[idx]))
    projector = EmbeddingProjector.fit(emb[0::2])
    held = idx[1::2]
    # embedded (held-out) rows first, so the embedding projections line up with them
    ordered = pd.concat([raw.iloc[held], raw.drop(raw.index[held])]).reset_index(drop=True)
    return Reference(featurize(ordered, embeddings=emb[1::2], projector=projector), projector)


@dataclass(frozen=True)
class DriftWindowResult:
    verdict: DriftVerdict
    streak: StreakVerdict
    delivery: Delivery | None
    report_path: Path | None
    delta_version: int
    mlflow_run_id: str | None

    @property
    def retrain(self) -> bool:
        """Ask for retraining exactly once per streak, when it first reaches the required length."""
        return self.streak.action == "alert"


def log_to_mlflow(settings: Settings, verdict: DriftVerdict, *, window_id: str, report: Path | None) -> tuple[str, str]:
    """Numbers as metrics, the HTML report as an artifact; returns (run id, run URL)."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    exp = mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"drift {window_id}") as run:
        mlflow.set_tags({"lakeloop.kind": "drift", "lakeloop.window": window_id, "lakeloop.drifted": str(verdict.drifted)})
        mlflow.log_metrics({f"drift_{c.column}": c.score for c in verdict.columns}
                           | {f"drift_threshold_{c.column}": c.threshold for c in verdict.columns} | dict(verdict.rates))
        if report is not None:
            mlflow.log_artifact(str(report), artifact_path="drift_report")
    return run.info.run_id, f"{settings.tracking_uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"


def run_drift_window(
    settings: Settings,
    reference: Reference,
    current_raw: pd.DataFrame,
    *,
    window_start: datetime,
    window_end: datetime,
    notifier: Notifier,
    config: DriftConfig = DriftConfig(),
    required: int | None = None,
    embed_sample: int = 256,
    seed: int = 0,
    model_version: str | None = None,
    mlflow_logging: bool = True,
    links: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> DriftWindowResult:
    """Check one window against the reference; append to monitoring/drift_metrics; alert on a streak."""
    window_id = f"{window_start:%Y%m%dT%H%M%S}-{window_end:%Y%m%dT%H%M%S}"
    current = _featurize(current_raw.reset_index(drop=True), reference.projector, embed_sample, seed)
    report = settings.artifacts_dir / "drift" / f"{window_id}.html"
    verdict = check_drift(reference.features, current, config=config, report_html=report)
    report = verdict.report_html
    mlflow_run, mlflow_url = (None, None)
    if mlflow_logging:
        mlflow_run, mlflow_url = log_to_mlflow(settings, verdict, window_id=window_id, report=report)
    rows = drift_store.verdict_rows(
        verdict, window_start=window_start, window_end=window_end, model_version=model_version,
        report_uri=report.as_uri() if report else None, run_id=run_id or mlflow_run,
    )
    version = drift_store.append_verdict(settings, rows)
    streak = judge_streak(drift_store.window_history(settings), required=required or settings.drift_windows_to_alert)
    delivery = None
    if streak.triggered:
        all_links = {**({"report": report.as_uri()} if report else {}), **({"mlflow_run": mlflow_url} if mlflow_url else {}), **(links or {})}
        groups = sorted(g for g, d in verdict.groups.items() if d) or ["earlier windows"]
        delivery = notifier.notify(
            Alert(
                kind="drift",
                severity="warning",
                summary=f"drift ({', '.join(groups)}) for {streak.length} windows in a row on {settings.registered_model_name}",
                details={"window": window_id, "verdict": verdict.summary(), "model_version": model_version or "-",
                         **{k: round(v, 4) for k, v in verdict.rates.items()}},
                links=all_links,
                dedup_key=f"drift:{settings.registered_model_name}:{model_version}",
            )
        )
    return DriftWindowResult(verdict, streak, delivery, report, version, mlflow_run)
