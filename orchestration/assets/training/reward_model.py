"""`reward_model`: fine-tune the reward model on the gold tables, in its own process via Dagster Pipes.

The asset pins the gold tables' current Delta versions into the run config, launches
``python -m trainers.train`` through ``PipesSubprocessClient`` (the same entry point runs on Kubernetes
through dagster-k8s's ``PipesK8sClient``: see trainers/k8s/), and streams its logs and result back here.
The orchestrator never holds the accelerator; a crashed trainer fails this step, not Dagster."""

import sys

import dagster as dg

from orchestration.assets.training.resources import TrainingResource, mlflow_run_url
from orchestration.resources import LakeloopSettings
from trainers.train import pin_versions


@dg.asset(
    group_name="training",
    owners=["team:ml"],
    kinds={"pytorch", "mlflow"},
    deps=[dg.AssetKey("gold_training_examples"), dg.AssetKey("gold_preference_pairs")],
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
) -> dg.MaterializeResult:
    settings = lakeloop.load()
    cfg = pin_versions(training.config(), settings)
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
    metadata["mlflow_run"] = mlflow_run_url(settings.tracking_uri, str(run_id))
    metadata["train_config"] = dg.MetadataValue.json(cfg.model_dump())
    return dg.MaterializeResult(metadata=metadata)
