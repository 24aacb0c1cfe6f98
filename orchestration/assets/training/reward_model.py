"""`reward_model`: fine-tune the reward model on the gold tables, in its own process via Dagster Pipes.

The asset pins gold Delta versions whose blocking checks passed (``TrainPins``) into the run config, launches
``python -m trainers.train`` through ``PipesSubprocessClient`` (the same entry point runs on Kubernetes
through dagster-k8s's ``PipesK8sClient``: see trainers/k8s/), and streams its logs and result back here.
The orchestrator never holds the accelerator; a crashed trainer fails this step, not Dagster."""

import sys

import dagster as dg

from infra.settings import Settings

from orchestration.assets.training.pins import GOLD_ASSETS, check_evals, checked_pins
from orchestration.assets.training.resources import TrainingResource, mlflow_run_url
from orchestration.resources import LakeloopSettings


class TrainPins(dg.Config):
    """Gold versions to train on. Unset: the latest versions whose blocking checks passed (trainers.pinning); the
    autopilot sensor always sets them. Gold written outside Dagster (no check has ever run) trains on the latest."""

    examples_version: int | None = None
    pairs_version: int | None = None


def _pins(context: dg.AssetExecutionContext, settings: Settings, config: TrainPins) -> dict[str, int | None]:
    if config.examples_version is not None and config.pairs_version is not None:
        return {"examples_version": config.examples_version, "pairs_version": config.pairs_version}
    pins = checked_pins(context.instance, settings)
    out: dict[str, int | None] = {}
    for field, table in (("examples_version", "gold/training_examples"), ("pairs_version", "gold/preference_pairs")):
        given = getattr(config, field)
        if given is not None:
            out[field] = given
        elif pins[table].version is not None:
            out[field] = pins[table].version
            context.log.info(pins[table].reason)
        elif not check_evals(context.instance, GOLD_ASSETS[table], limit=1):
            context.log.warning("%s was never checked by a Dagster curation run: training on its latest version", table)
            out[field] = None
        else:
            raise dg.Failure(f"no gold version to train on: {pins[table].reason}",
                             metadata={"table": table, "why": pins[table].reason})
    return out


@dg.asset(
    group_name="training",
    owners=["team:ml"],
    kinds={"pytorch", "mlflow"},
    # drift_report: a drift alert leads to retraining (the retrain sensor), so the graph shows monitoring feeding training
    deps=[dg.AssetKey("gold_training_examples"), dg.AssetKey("gold_preference_pairs"), dg.AssetKey("drift_report")],
    description=(
        "A reward model P(user satisfied | prompt, response): all-MiniLM-L6-v2 encoder + scalar head, trained with "
        "pointwise BCE + Bradley-Terry pairs on the train split of the gold tables at pinned Delta versions. "
        "Logged to MLflow with params, per-step metrics, lineage and the pyfunc model."
    ),
)
def reward_model(
    context: dg.AssetExecutionContext,
    lakeloop: LakeloopSettings,
    training: TrainingResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    config: TrainPins,
) -> dg.MaterializeResult:
    settings = lakeloop.load()
    from trainers.train import pin_versions  # torch: imported by the run that trains, not by every code-location load

    cfg = pin_versions(training.config(settings).model_copy(update=_pins(context, settings, config)), settings)
    context.log.info("training on gold/training_examples@%s and gold/preference_pairs@%s", cfg.examples_version, cfg.pairs_version)
    invocation = pipes_subprocess_client.run(
        context=context,
        command=[sys.executable, "-m", "trainers.train"],
        extras={"config": cfg.model_dump()},
        env=settings.env(),
    )
    result = invocation.get_materialize_result()
    metadata = {k: v for k, v in (result.metadata or {}).items()}
    run_id = metadata["run_id"].value if hasattr(metadata["run_id"], "value") else metadata["run_id"]
    metadata["mlflow_run"] = mlflow_run_url(settings, str(run_id))
    metadata["train_config"] = dg.MetadataValue.json(cfg.model_dump())
    return dg.MaterializeResult(metadata=metadata)
