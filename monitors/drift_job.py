"""One drift window end to end: featurize, check (Evidently), store numbers, judge the streak, alert.

Plain functions with plain inputs; the Dagster asset and `lakeloop drift` are thin adapters over these. The HTML
report is logged to MLflow and linked there (an http page any browser that reaches the platform opens); when MLflow
cannot take it, the check still stores its numbers and alerts, and says in words where the report is. The drift
picture is logged to the window's run before the alert, so the alert links it (``drift_picture``); a picture that
cannot be logged leaves the alert without that link and with the reason in its details.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from infra import links as ui_links
from infra.errors import ServiceError
from infra.settings import Settings
from monitors import drift_store
from monitors.alerts import Alert, Delivery, Notifier
from monitors.drift import DriftConfig, DriftVerdict, EmbeddingProjector, check_drift, encode_texts, featurize, pair_texts
from monitors.streak import StreakVerdict, judge_streak

EXPERIMENT = "lakeloop-monitoring"
REPORT_ARTIFACT_DIR = "drift_report"
CHART_WINDOWS = 24  # windows the drift picture shows
CHART_PATH = f"{REPORT_ARTIFACT_DIR}/drift_per_column.png"  # beside the HTML report in the window's MLflow run
log = logging.getLogger(__name__)


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
class MlflowRecord:
    """Where one window's numbers and report went in MLflow."""

    run_id: str
    experiment_id: str
    report_artifact: str | None  # artifact path of the HTML report in the run

    def link_map(self, settings: Settings) -> dict[str, str]:
        """``mlflow_run``; with a report, ``report`` (the MLflow page that shows it) and ``report_file`` (its bytes)."""
        out = {"mlflow_run": ui_links.mlflow_run(settings, self.run_id, experiment_id=self.experiment_id)}
        if self.report_artifact:
            out["report"] = ui_links.mlflow_artifact(settings, experiment_id=self.experiment_id, run_id=self.run_id,
                                                  path=self.report_artifact)
            out["report_file"] = ui_links.mlflow_artifact_file(settings, run_id=self.run_id, path=self.report_artifact)
        return ui_links.checked(out)


@dataclass(frozen=True)
class DriftWindowResult:
    verdict: DriftVerdict
    streak: StreakVerdict
    delivery: Delivery | None
    report_path: Path | None  # the HTML on the machine that ran the check (not a link: see report_links)
    delta_version: int
    mlflow_run_id: str | None
    report_links: Mapping[str, str] = field(default_factory=dict)  # mlflow_run, report, report_file (http)
    report_note: str | None = None  # why there is no report link, in words
    chart_url: str | None = None  # http URL of the drift picture in the window's MLflow run (None: not logged)
    chart_note: str | None = None  # why there is no picture although the window was logged to MLflow, in words

    @property
    def report_url(self) -> str | None:
        return self.report_links.get("report")

    @property
    def retrain(self) -> bool:
        """Ask for retraining exactly once per streak, when it first reaches the required length."""
        return self.streak.action == "alert"


def log_to_mlflow(settings: Settings, verdict: DriftVerdict, *, window_id: str, report: Path | None) -> MlflowRecord:
    """Numbers as metrics, the HTML report as an artifact. Raises ServiceError, at once, when MLflow does not answer."""
    import mlflow

    from trainers.tracking import client, reachable, server_answers

    if not server_answers(settings.tracking_uri):
        raise ServiceError(f"MLflow at {settings.tracking_uri} is not reachable", hint="start it with `lakeloop up`")
    client(settings)  # tracking URI and bounded HTTP retries
    with reachable(settings, "logging a drift window"):
        exp = mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"drift {window_id}") as run:
            mlflow.set_tags({"lakeloop.kind": "drift", "lakeloop.window": window_id, "lakeloop.drifted": str(verdict.drifted)})
            mlflow.log_metrics({f"drift_{c.column}": c.score for c in verdict.columns}
                               | {f"drift_threshold_{c.column}": c.threshold for c in verdict.columns} | dict(verdict.rates))
            if report is not None:
                mlflow.log_artifact(str(report), artifact_path=REPORT_ARTIFACT_DIR)
    artifact = f"{REPORT_ARTIFACT_DIR}/{report.name}" if report is not None else None
    return MlflowRecord(run.info.run_id, exp.experiment_id, artifact)


def _report_note(settings: Settings, report: Path | None, logged: MlflowRecord | None, why: str) -> str | None:
    if report is None:
        return "no HTML report for this window"
    if logged is not None and ui_links.mlflow_base(settings) is not None:
        return None
    if logged is not None:
        why = f"MLflow at {settings.tracking_uri} has no web pages to link (set LAKELOOP_MLFLOW_PUBLIC_URL)"
    return f"report not linked: {why}; the HTML is at {report} on the machine that ran the check"


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
    logged: MlflowRecord | None = None
    why = "MLflow logging is off for this check"
    if mlflow_logging:
        try:
            logged = log_to_mlflow(settings, verdict, window_id=window_id, report=report)
        except ServiceError as exc:  # the numbers still go to the lake and the alert still goes out, saying so
            why = f"not logged to MLflow ({exc.message})"
            log.warning("drift window %s: %s", window_id, why)
    report_links = logged.link_map(settings) if logged else {}
    note = _report_note(settings, report, logged, why)
    rows = drift_store.verdict_rows(
        verdict, window_start=window_start, window_end=window_end, model_version=model_version,
        report_uri=report_links.get("report"), run_id=run_id or (logged.run_id if logged else None),
    )
    version = drift_store.append_verdict(settings, rows)
    streak = judge_streak(drift_store.window_history(settings), required=required or settings.drift_windows_to_alert)
    chart_url, chart_note = None, None
    if logged is not None:  # before the alert, which links it; one that cannot be drawn or logged does not hold it back
        try:
            chart_url = log_drift_chart(settings, logged.run_id, required=streak.required)
        except ServiceError as exc:
            chart_note = f"not logged ({exc.message})"
            log.warning("drift window %s: the drift picture was %s", window_id, chart_note)
        except Exception as exc:  # noqa: BLE001 - a bug in the drawing must not silence the alert: logged with its traceback
            chart_note = f"not drawn ({type(exc).__name__}: {exc})"[:300]
            log.warning("drift window %s: the drift picture was %s", window_id, chart_note, exc_info=True)
    delivery = None
    if streak.triggered:
        all_links = {**report_links, "drift_picture": chart_url, **(links or {})}
        groups = sorted(g for g, d in verdict.groups.items() if d) or ["earlier windows"]
        delivery = notifier.notify(
            Alert(
                kind="drift",
                severity="warning",
                summary=f"drift ({', '.join(groups)}) for {streak.length} windows in a row on {settings.registered_model_name}",
                details={"window": window_id, "verdict": verdict.summary(), "model_version": model_version or "-",
                         **{k: round(v, 4) for k, v in verdict.rates.items()}, **({"report": note} if note else {}),
                         **({"picture": chart_note} if chart_note else {})},
                links=all_links,
                dedup_key=f"drift:{settings.registered_model_name}:{model_version}",
            )
        )
    return DriftWindowResult(verdict, streak, delivery, report, version, logged.run_id if logged else None, report_links, note,
                             chart_url=chart_url, chart_note=chart_note)


def log_drift_chart(settings: Settings, run_id: str, *, required: int, windows: int = CHART_WINDOWS) -> str | None:
    """The last ``windows`` windows of monitoring/drift_metrics (this one included) drawn per column against their
    thresholds (``monitors.charts.drift_chart``), logged to the window's MLflow run; -> the picture's http URL."""
    from monitors.charts import drift_chart
    from trainers.tracking import log_run_png

    png = drift_chart(drift_store.recent_rows(settings, windows=windows + required), required=required, last=windows,
                      title=f"Drift of {settings.registered_model_name}'s traffic per column")
    return log_run_png(settings, run_id, png, CHART_PATH)
