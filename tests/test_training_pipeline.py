"""The training group end to end against the real MLflow server: a real few-step CPU training launched
through Dagster Pipes, evaluation + gate, registration as `challenger` with lineage; a retry registers no
second version; a label-flipped model is stopped by the blocking gate and no alias moves."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from infra.settings import Settings, load_settings
from orchestration.assets.training import defs as training_defs
from orchestration.assets.training.model_evaluation import GATE
from orchestration.assets.training.resources import TrainingResource
from orchestration.resources import LakeloopSettings
from tests.pinned_settings import PinnedSettings
from tests.training_fixtures import write_gold
from trainers import data as D
from trainers import registry as R
from trainers.tracking import client

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SMALL = {"max_length": 64, "batch_size": 4, "max_steps": 4, "freeze_layers": 4, "head_lr": 5e-3, "checkpoint_every": 2,
         "log_every": 1, "num_threads": 2, "max_train_examples": 24, "max_train_pairs": 40}
ASSETS = list(training_defs.assets or [])


class World:
    def __init__(self, settings: Settings, instance: dg.DagsterInstance, home: Path) -> None:
        self.settings, self.instance, self.home = settings, instance, home

    def materialize(self, *, train: dict[str, Any], must_beat_baselines: bool) -> dg.ExecuteInProcessResult:
        resources = {
            "lakeloop": PinnedSettings(home=str(self.home), lake_root=self.settings.lake),
            "training": TrainingResource(train_config=json.dumps({**SMALL, "experiment": f"t5-{self.settings.registered_model_name}", **train}),
                                         gate_must_beat_baselines=must_beat_baselines, n_boot=200),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        }
        return dg.materialize(ASSETS, resources=resources, instance=self.instance, raise_on_error=False)


@pytest.fixture(scope="module")
def world(mlflow_server: Settings, tmp_path_factory: pytest.TempPathFactory, qa_feedback_path: Path) -> Iterator[World]:
    home = tmp_path_factory.mktemp("training-home")
    name = f"lakeloop-reward-t5-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAKELOOP_REGISTERED_MODEL_NAME", name)  # a private registered model on the shared server
        settings = load_settings(**{**mlflow_server.model_dump(), "home": home, "lake_root": str(home / "lake"), "registered_model_name": name})
        write_gold(settings.lake, qa_feedback_path, questions=60)
        with dg.DagsterInstance.ephemeral() as instance:
            yield World(settings, instance, home)


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    mats = result.asset_materializations_for_node(key)
    assert mats, f"{key} was not materialized"
    return {k: v.value for k, v in mats[-1].metadata.items()}


@pytest.fixture(scope="module")
def first(world: World) -> dg.ExecuteInProcessResult:
    result = world.materialize(train={}, must_beat_baselines=False)
    assert result.success
    return result


def test_group_trains_evaluates_and_registers_challenger_with_lineage(world: World, first: dg.ExecuteInProcessResult) -> None:
    s = world.settings
    trained, evaluated, registered = (_meta(first, k) for k in ("reward_model", "model_evaluation", "registered_model"))
    run_id, version = str(trained["run_id"]), str(registered["model_version"])
    assert trained["steps"] == 4 and str(trained["mlflow_run"]).endswith(run_id)
    assert evaluated["gate_passed"] is True and 0 <= evaluated["pairwise_accuracy"] <= 1 and "Model card" in evaluated["model_card"]
    assert registered["created"] is True and str(registered["model_version_url"]).endswith(f"/versions/{version}")
    assert R.get_alias_version(s, "challenger") == version and R.get_alias_version(s, "champion") is None

    c = client(s)
    run = c.get_run(run_id)
    assert run.data.params["max_steps"] == "4" and run.data.tags["lakeloop.gate"] == "passed"
    assert len(c.get_metric_history(run_id, "loss")) == 4 and "eval.auc" in run.data.metrics
    inputs = run.inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"training_examples@v0", "preference_pairs@v0"}
    assert any(json.loads(i.dataset.source)["path"].endswith(D.EXAMPLES) for i in inputs)
    assert "model_card.md" in [a.path for a in c.list_artifacts(run_id)]

    mv = R.version_info(s, version)  # the version carries the lineage: re-reading the table gives the same rows
    ex = D.read_gold(mv.tags["lakeloop.train_examples.uri"], D.EXAMPLES, version=int(mv.tags["lakeloop.train_examples.version"]))
    seen = ex.split("train").sort_values("example_id").head(SMALL["max_train_examples"])
    assert D.rows_digest(seen, "example_id") == mv.tags["lakeloop.train_examples.rows_digest"]
    assert mv.tags["lakeloop.git_commit"] and mv.tags["lakeloop.train_examples.curation_hash"] != "none"

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{s.registered_model_name}@challenger")
    out = model.predict(pd.DataFrame({"prompt": ["Who wrote Hamlet?", "q"], "response": ["William Shakespeare wrote Hamlet.", "no idea"]}))
    assert list(out.columns) == ["score"] and out["score"].between(0, 1).all()
    ledger = R.ledger_entries(s)
    assert len(ledger[(ledger.model_name == s.registered_model_name) & (ledger.alias == "challenger")]) == 1


def test_retried_run_registers_exactly_one_version(world: World, first: dg.ExecuteInProcessResult) -> None:
    again = world.materialize(train={}, must_beat_baselines=False)
    assert again.success
    run_id = str(_meta(first, "reward_model")["run_id"])
    assert str(_meta(again, "reward_model")["run_id"]) == run_id  # same config + data: the finished run, not a new one
    registered = _meta(again, "registered_model")
    assert registered["created"] is False and registered["challenger_moved"] is False
    versions = client(world.settings).search_model_versions(f"name='{world.settings.registered_model_name}' and run_id='{run_id}'")
    assert len(versions) == 1


def test_label_flipped_model_is_stopped_by_the_gate_and_aliases_do_not_move(world: World, first: dg.ExecuteInProcessResult) -> None:
    s = world.settings
    version = str(_meta(first, "registered_model")["model_version"])
    R.set_alias_cas(s, "champion", None, version, actor="test", reason="first champion")
    before = {a: R.get_alias_version(s, a) for a in R.ALIASES}
    ledger_before = len(R.ledger_entries(s))

    bad = world.materialize(train={"flip_labels": True, "max_steps": 10, "head_lr": 1e-2}, must_beat_baselines=True)
    assert not bad.success
    gate = [c for c in bad.get_asset_check_evaluations() if c.check_name == GATE]
    assert gate and gate[0].passed is False
    assert not bad.asset_materializations_for_node("registered_model")
    assert {a: R.get_alias_version(s, a) for a in R.ALIASES} == before
    assert len(R.ledger_entries(s)) == ledger_before
    run_id = str(_meta(bad, "reward_model")["run_id"])
    assert client(s).get_run(run_id).data.tags["lakeloop.gate"] == "failed"
