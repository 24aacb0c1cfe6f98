"""`registered_model`: register the gated run's model in the MLflow registry (once per run, so a retried
step does not add a version) with its lineage as tags, and point `challenger` at it through the
compare-and-set of trainers.registry (which writes the promotion ledger)."""

import dagster as dg

from infra import links
from orchestration.assets.training.resources import TrainingResource, latest_metadata, mlflow_run_url, url_or_text
from orchestration.resources import LakeloopSettings
from trainers.candidate import register_candidate


@dg.asset(
    group_name="training",
    owners=["team:ml"],
    kinds={"mlflow"},
    deps=["model_evaluation"],
    description="The MLflow model version of the latest gated reward model, aliased `challenger` (lineage in its tags).",
)
def registered_model(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, training: TrainingResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    evaluation = latest_metadata(context, "model_evaluation")
    run_id = str(evaluation["run_id"])
    metrics = {k: float(evaluation[k]) for k in ("pairwise_accuracy", "auc") if k in evaluation}
    version, created, change = register_candidate(settings, run_id, actor=f"{training.actor}:{context.run.run_id}", metrics=metrics)
    context.log.info("%s version %s (%s); challenger %s", settings.registered_model_name, version,
                     "new" if created else "already registered", f"moved {change.from_version} -> {change.to_version}" if change else "already there")
    return dg.MaterializeResult(metadata={
        "model_name": settings.registered_model_name,
        "model_version": version,
        "lineage": f"lakeloop lineage model {version} --name {settings.registered_model_name}",  # what it learned from, its gate and rollout
        "created": created,
        "challenger_moved": change is not None,
        "ledger_version": change.ledger_version if change else -1,
        "run_id": run_id,
        "mlflow_run": mlflow_run_url(settings, run_id),
        "model_version_url": url_or_text(links.mlflow_model_version(settings, version), f"{settings.registered_model_name} v{version}"),
    })
