"""`retrain_on_new_gold`: start the training group when enough new gold rows arrived since the last
trained model (rows counted from the Delta log, no scan)."""

import dagster as dg

from infra.tables import table_uri
from orchestration.assets.training.resources import TrainingResource
from orchestration.resources import LakeloopSettings
from trainers.gate import should_retrain

training_job = dg.define_asset_job("training_job", selection=dg.AssetSelection.groups("training"),
                                   description="Train, evaluate/gate and register the reward model.")


def gold_rows(uri: str) -> int:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        actions = DeltaTable(uri).get_add_actions(flatten=True)
    except TableNotFoundError:
        return 0
    return int(sum(v or 0 for v in actions.column("num_records").to_pylist()))


@dg.sensor(job=training_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrain when gold/training_examples + gold/preference_pairs grew by retrain_min_new_rows.")
def retrain_on_new_gold(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings, training: TrainingResource) -> dg.SensorResult | dg.SkipReason:
    settings = lakeloop.load()
    rows = sum(gold_rows(table_uri(settings, t)) for t in ("gold/training_examples", "gold/preference_pairs"))
    trained = int(context.cursor) if context.cursor else None
    if not should_retrain(rows, trained, min_new_rows=training.retrain_min_new_rows):
        return dg.SkipReason(f"{rows} gold rows; last training at {trained}; need {training.retrain_min_new_rows} new")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"gold-rows-{rows}", tags={"lakeloop/gold_rows": str(rows)})], cursor=str(rows))
