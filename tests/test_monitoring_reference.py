"""The drift reference is the champion's own training data: the gold tables at the Delta versions its training
run pinned (lineage tags on the model version, else the run's params), not the latest; when those versions are
not recorded or were vacuumed, the latest tables, with a warning. Real MLflow server, real Delta tables."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pandas as pd
import pytest

from infra.settings import Settings, load_settings
from infra.tables import table_uri
from monitors import model_store
from monitors.windows import training_reference
from trainers.tracking import client

pytestmark = pytest.mark.integration


def write_gold(s: Settings, tag: str, *, mode: str = "overwrite") -> None:
    """One version of each gold table, its rows marked with ``tag``."""
    from deltalake import write_deltalake

    examples = pd.DataFrame({"prompt": [f"{tag} q{i}" for i in range(3)], "response": [f"{tag} a{i}" for i in range(3)],
                             "label": [1.0, 0.0, 1.0], "split": ["train", "train", "eval"]})
    pairs = pd.DataFrame({"prompt": [f"{tag} q9"], "chosen": [f"{tag} good"], "rejected": [f"{tag} bad"],
                          "source": ["preference"], "split": ["train"]})
    write_deltalake(table_uri(s, "gold/training_examples"), examples, mode=mode)
    write_deltalake(table_uri(s, "gold/preference_pairs"), pairs, mode=mode)


@pytest.fixture()
def lake(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """A private lake whose gold tables have two versions (0: "old" rows, 1: "new" rows) and a private model."""
    s = load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                         "registered_model_name": f"ref-{uuid.uuid4().hex[:8]}"})
    client(s).create_registered_model(s.registered_model_name)
    write_gold(s, "old")
    write_gold(s, "new")
    return s


def version_with(s: Settings, *, tags: dict[str, str] | None = None, run_id: str | None = None) -> str:
    return str(client(s).create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=run_id, tags=tags).version)


def lineage(s: Settings, examples: int, pairs: int) -> dict[str, str]:
    """The tags ``register_version`` copies from the training run onto the model version."""
    return {"lakeloop.train_examples.uri": table_uri(s, "gold/training_examples"), "lakeloop.train_examples.version": str(examples),
            "lakeloop.preference_pairs.uri": table_uri(s, "gold/preference_pairs"), "lakeloop.preference_pairs.version": str(pairs)}


def responses(frame: pd.DataFrame) -> set[str]:
    return set(frame["response"])


def test_the_reference_is_the_pinned_version_not_the_latest(lake: Settings, caplog: pytest.LogCaptureFixture) -> None:
    champion = version_with(lake, tags=lineage(lake, 0, 0))
    with caplog.at_level(logging.WARNING, logger="lakeloop.monitors.windows"):
        pinned = training_reference(lake, version=champion)
    assert responses(pinned) == {"old a0", "old a1", "old a2", "old good", "old bad"}  # version 0
    assert pinned.set_index("response").loc["old a1", "thumbs_down"] == 1.0
    assert pinned.set_index("response")["split"].to_dict()["old a2"] == "eval"  # held out: the score reference (score_frame)
    assert not [r for r in caplog.records if r.name == "lakeloop.monitors.windows"]
    assert responses(training_reference(lake)) == {"new a0", "new a1", "new a2", "new good", "new bad"}  # no version: the latest


def test_the_pins_come_from_the_run_when_the_version_has_no_lineage_tags(lake: Settings) -> None:
    c = client(lake)
    run = c.create_run(c.create_experiment(f"ref-{uuid.uuid4().hex[:8]}"))
    c.log_param(run.info.run_id, "examples_version", "0")  # the pinned training config, as `lakeloop train` logs it
    c.log_param(run.info.run_id, "pairs_version", "1")
    version = version_with(lake, run_id=run.info.run_id)
    pins = model_store.training_pins(lake, version)
    assert {k: p.version for k, p in pins.items()} == {"gold/training_examples": 0, "gold/preference_pairs": 1}
    assert responses(training_reference(lake, version=version)) == {"old a0", "old a1", "old a2", "new good", "new bad"}


def test_without_recorded_versions_the_latest_with_a_warning(lake: Settings, caplog: pytest.LogCaptureFixture) -> None:
    version = version_with(lake)
    with caplog.at_level(logging.WARNING, logger="lakeloop.monitors.windows"):
        ref = training_reference(lake, version=version)
    assert responses(ref) == {"new a0", "new a1", "new a2", "new good", "new bad"}
    assert sum("records no Delta version" in r.getMessage() for r in caplog.records) == 2


def test_a_vacuumed_pinned_version_falls_back_to_the_latest_with_a_warning(lake: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from deltalake import DeltaTable

    champion = version_with(lake, tags=lineage(lake, 0, 0))
    for name in ("gold/training_examples", "gold/preference_pairs"):
        DeltaTable(table_uri(lake, name)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with caplog.at_level(logging.WARNING, logger="lakeloop.monitors.windows"):
        ref = training_reference(lake, version=champion)
    assert responses(ref) == {"new a0", "new a1", "new a2", "new good", "new bad"}
    assert sum("cannot be read" in r.getMessage() for r in caplog.records) == 2
