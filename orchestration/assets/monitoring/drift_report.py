"""`drift_report`: one window of live traffic against the champion's own pinned gold data (Evidently 0.7).

Thin adapter over ``monitors.drift_job.run_drift_window``: report link and verdict go to metadata, the
numbers to monitoring/drift_metrics, the HTML to MLflow (the link opens it there; without MLflow the metadata says
so in words); a streak of drifted windows alerts and sets
``retrain`` so the retraining sensor can ask for a new reward model.
"""

import dagster as dg

from infra import links
from infra.errors import DataError
from monitors import model_store
from monitors.alerts import notifier_from_settings
from monitors.drift_job import Reference, prepare_reference, run_drift_window
from monitors.reference_cache import cached_reference
from monitors.windows import current_frame, load_window, score_frame, training_reference
from orchestration.assets.monitoring.resources import MonitoringResource, WindowConfig
from orchestration.resources import LakeloopSettings


@dg.asset(
    group_name="monitoring",
    kinds={"evidently", "delta", "mlflow"},
    owners=["team:ml-platform"],
    description="Drift of the last window (text descriptors, embeddings, scores, feedback) vs the gold versions the champion was trained on (scores: its held-out split).",
)
def drift_report(
    context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, monitoring: MonitoringResource,
    config: WindowConfig,
) -> dg.MaterializeResult:
    settings = lakeloop.load()
    champion = model_store.alias_version(settings, "champion")
    if champion is None:
        raise DataError("no champion model to monitor", hint="promote a model first (`lakeloop promote --start`)")
    since, until = config.window(monitoring.window_minutes)

    def build() -> Reference:
        reference_raw = training_reference(settings, sample=monitoring.reference_sample, version=champion)
        reference_raw["score"] = score_frame(model_store.load_pyfunc(settings, champion), reference_raw)
        return prepare_reference(reference_raw, embed_sample=monitoring.embed_sample)

    reference, cached = cached_reference(settings, champion, sample=monitoring.reference_sample, embed_sample=monitoring.embed_sample,
                                         build=build)
    context.log.info("reference: %d rows of the champion's pinned gold data (v%s; scores on its held-out split)%s",
                     len(reference.features), champion, " from the cache of earlier checks" if cached else "")

    window = load_window(settings, since=since, until=until, source=monitoring.source)
    current = current_frame(window.predictions, window.feedback)
    context.log.info("window %s .. %s: %s", since, until, window.summary())

    result = run_drift_window(
        settings, reference, current, window_start=since, window_end=until, notifier=notifier_from_settings(settings),
        embed_sample=monitoring.embed_sample, model_version=champion, run_id=context.run_id,
        links={"dagster_run": links.dagster_run(settings, context.run_id)},
    )
    v = result.verdict
    metadata: dict[str, object] = {
        "drifted": v.drifted,
        "groups": dg.MetadataValue.json(dict(v.groups)),
        "summary": v.summary(),
        "n_current": v.n_current,
        "n_reference": v.n_reference,
        "streak": result.streak.length,
        "streak_action": result.streak.action,
        "retrain": result.retrain,
        "champion_version": champion,
        "invalid_records_skipped": window.invalid_total,  # Kafka windows: records the ingestor would reject
        "drift_metrics_version": result.delta_version,
        "columns": dg.MetadataValue.md(
            "| column | group | method | score | threshold | drifted |\n|---|---|---|---|---|---|\n"
            + "\n".join(f"| {c.column} | {c.group} | {c.method} | {c.score:.4f} | {c.threshold:g} | {c.drifted} |" for c in v.columns)
        ),
    }
    for name, url in result.report_links.items():  # report (the MLflow page showing it), report_file, mlflow_run
        metadata[name] = dg.MetadataValue.url(url)
    if result.report_url is None:
        metadata["report"] = dg.MetadataValue.text(result.report_note or "no report")
    if result.mlflow_run_id:
        metadata["mlflow_run_id"] = result.mlflow_run_id
    if result.chart_url:  # each column's score vs threshold over the last windows, from the MLflow run
        metadata["drift_picture"] = dg.MetadataValue.md(f"![drift per column, last windows]({result.chart_url})")
    elif result.chart_note:
        metadata["drift_picture"] = dg.MetadataValue.text(result.chart_note)
    if result.delivery is not None:
        metadata["alert"] = result.delivery.status
    return dg.MaterializeResult(metadata=metadata)
