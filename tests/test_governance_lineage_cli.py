"""Issue 17: two-way lineage. `lakeloop lineage model <version>` (what a registered version learned from, its gate and
rollout history) and `lakeloop lineage table <name>` (which versions learned from a gold table).

Unit tests drive ``trainers.lineage_report`` over a fake MLflow client and a real promotion ledger in ``tmp_path``; the
integration test trains, evaluates and registers a model on the real MLflow server, then reads both commands' --json."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from typer.testing import CliRunner

from infra.errors import ConfigError, DataError, ServiceError
from infra.ports import free_port
from infra.settings import Settings, load_settings
from infra.tables import table_uri
from trainers import lineage_guard as G
from trainers import lineage_report as L
from trainers import registry as R

NAME = "lakeloop-reward"


# ---- a fake MLflow client: the calls lineage_report and lineage_guard make ---------------------------------
@dataclass
class FakeVersion:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    current_stage: str = "None"
    aliases: list[str] = field(default_factory=list)


class Paged(list):
    token = None


def _gone(what: str) -> MlflowException:
    return MlflowException(f"{what} not found", error_code=RESOURCE_DOES_NOT_EXIST)


class FakeMlflow:
    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], FakeVersion] = {}
        self.runs: dict[str, SimpleNamespace] = {}
        self.artifacts: dict[tuple[str, str], str] = {}

    def add(self, mv: FakeVersion) -> None:
        self.versions[(mv.name, mv.version)] = mv

    def alias(self, name: str, alias: str, version: str) -> None:
        for mv in self.versions.values():
            if mv.name == name and alias in mv.aliases:
                mv.aliases.remove(alias)
        self.versions[(name, version)].aliases.append(alias)

    def get_model_version(self, name: str, version: str) -> FakeVersion:
        if (name, str(version)) not in self.versions:
            raise _gone(f"{name} v{version}")
        return self.versions[(name, str(version))]

    def get_model_version_by_alias(self, name: str, alias: str) -> FakeVersion:
        for mv in self.versions.values():
            if mv.name == name and alias in mv.aliases:
                return mv
        raise _gone(f"alias {alias}")

    def get_registered_model(self, name: str) -> SimpleNamespace:
        mine = [mv for mv in self.versions.values() if mv.name == name]
        if not mine:
            raise _gone(f"registered model {name}")
        return SimpleNamespace(name=name, aliases={a: mv.version for mv in mine for a in mv.aliases})

    def search_registered_models(self, max_results: int = 100) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in sorted({n for n, _ in self.versions})]

    def search_model_versions(self, filter_string: str | None = None, max_results: int = 1000, page_token: str | None = None) -> Paged:
        found = Paged(mv for mv in self.versions.values() if filter_string is None or f"name='{mv.name}'" == filter_string)
        return found

    def get_run(self, run_id: str) -> SimpleNamespace:
        if run_id not in self.runs:
            raise _gone(f"run {run_id}")
        return self.runs[run_id]

    def list_artifacts(self, run_id: str, path: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(path=p) for (r, p) in self.artifacts if r == run_id and p.startswith(f"{path}/")]

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        out = Path(dst) / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.artifacts[(run_id, path)])
        return str(out)


def _lineage_tags(s: Settings, examples: int, pairs: int) -> dict[str, str]:
    """The lineage tags a training run sets (trainers.train._start_tracker) and registration copies."""
    return {"lakeloop.train_examples.uri": table_uri(s, "gold/training_examples"), "lakeloop.train_examples.version": str(examples),
            "lakeloop.train_examples.curation_hash": "c" * 64, "lakeloop.train_examples.rows_digest": "d" * 64,
            "lakeloop.preference_pairs.uri": table_uri(s, "gold/preference_pairs"), "lakeloop.preference_pairs.version": str(pairs),
            "lakeloop.preference_pairs.curation_hash": "none", "lakeloop.preference_pairs.rows_digest": "e" * 64,
            "lakeloop.git_commit": "abc123", "lakeloop.candidate.family": "hybrid"}


def _ledger(s: Settings, *rows: tuple[str, str, str | None, str | None, str]) -> None:
    """Promotion-ledger entries (model, alias, from, to, actor), written as trainers.registry writes them."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    write_deltalake(table_uri(s, R.LEDGER), pa.Table.from_pylist([{
        "at": t0 + timedelta(minutes=n), "model_name": m, "alias": a, "action": "set" if to else "delete", "from_version": fr,
        "to_version": to, "actor": actor, "reason": f"step {n}", "metrics": "{}", "ledger_read_version": n,
    } for n, (m, a, fr, to, actor) in enumerate(rows)], schema=R.LEDGER_SCHEMA), mode="append")


@pytest.fixture()
def fake(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> FakeMlflow:
    """Two versions of lakeloop-reward (v1 archived, v2 champion from a full training run), one of another model,
    and one that pins a table of another lake."""
    f = FakeMlflow()
    v2_tags = {**_lineage_tags(settings, 4, 3), "lakeloop.gate": "passed"}
    f.add(FakeVersion(NAME, "1", "run-1", _lineage_tags(settings, 2, 2), current_stage="Archived"))
    f.add(FakeVersion(NAME, "2", "run-2", v2_tags))
    f.add(FakeVersion("other-model", "7", None, _lineage_tags(settings, 4, 1)))
    f.add(FakeVersion("elsewhere", "1", None, {**_lineage_tags(settings, 4, 3), "lakeloop.train_examples.uri": "/another/lake/gold/training_examples"}))
    f.alias(NAME, "champion", "2")
    f.runs["run-2"] = SimpleNamespace(data=SimpleNamespace(
        tags={**v2_tags, "lakeloop.gate.reasons": "-", "lakeloop.beats_baselines": "true", "lakeloop.rollout_state": "champion"},
        params={"seed": "13", "candidates": "('hybrid',)"},
        metrics={"eval.pairwise_accuracy": 0.61, "eval.pairwise_accuracy.lo": 0.55, "eval.pairwise_accuracy.hi": 0.67, "eval.auc": float("nan")}))
    f.artifacts[("run-2", L.CONFIG_ARTIFACT)] = json.dumps({"candidates": ["hybrid"], "seed": 13, "examples_version": 4, "pairs_version": 3})
    for module in (L, G):
        monkeypatch.setattr(module, "client", lambda s: f)
    monkeypatch.setattr(L, "server_answers", lambda uri, timeout=3.0: True)
    return f


def test_model_lineage_gathers_data_config_metrics_gate_and_rollout(settings: Settings, fake: FakeMlflow) -> None:
    _ledger(settings, (NAME, "challenger", None, "2", "dagster:r1"), (NAME, "canary", None, "2", "autopilot"),
            ("other-model", "champion", None, "2", "someone"), (NAME, "champion", "1", "2", "autopilot"),
            (NAME, "challenger", "3", "4", "autopilot"))
    m = L.model_lineage(settings, "champion")  # an alias resolves to its version
    assert (m.model, m.version, m.run_id, m.aliases, m.archived, m.rollout_state) == (NAME, "2", "run-2", ("champion",), False, "champion")
    assert (m.family, m.git_commit) == ("hybrid", "abc123")
    ex, pr = m.tables
    assert (ex.table, ex.version, ex.rows_digest, ex.curation_hash) == ("gold/training_examples", 4, "d" * 64, "c" * 64)
    assert (pr.table, pr.version, pr.curation_hash) == ("gold/preference_pairs", 3, None)  # "none": not recorded
    assert m.gate == L.GateResult("passed", "-", True)
    assert m.config == {"candidates": ["hybrid"], "seed": 13, "examples_version": 4, "pairs_version": 3}
    assert m.config_uri == f"runs:/run-2/{L.CONFIG_ARTIFACT}" and m.params["seed"] == "13"
    assert m.metrics["eval.pairwise_accuracy"] == 0.61 and m.metrics["eval.auc"] is None  # NaN is not a number in JSON
    # the ledger's moves to and from v2 of this model, oldest first; other models' and versions' entries left out
    assert [(h.alias, h.from_version, h.to_version, h.actor) for h in m.history] == [
        ("challenger", None, "2", "dagster:r1"), ("canary", None, "2", "autopilot"), ("champion", "1", "2", "autopilot")]
    data = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert data["tables"][0]["version"] == 4 and data["history"][0]["at"].startswith("2026-12-06T10:00:00")
    text = L.format_model(m)
    for said in ("lakeloop-reward v2  (champion; rollout state champion)", "family       hybrid",
                 "gate         passed (beats baselines: yes)", "gold/training_examples  v4    rows dddddddddddd…",
                 "pairwise_accuracy  0.610 [0.550, 0.670]", "candidates=hybrid seed=13", "champion     1 -> 2    autopilot: step 3"):
        assert said in text, text
    assert "auc" not in text.split("eval metrics")[1].split("config")[0]  # a NaN metric is not shown as a number


def test_a_version_without_a_run_and_before_any_alias_move(settings: Settings, fake: FakeMlflow) -> None:
    m = L.model_lineage(settings, "1")
    assert m.archived and m.run_id == "run-1" and m.config is None and m.metrics == {} and m.history == ()  # run-1 was deleted
    assert m.tables[0].version == 2 and m.gate == L.GateResult(None, None, None)
    assert not Path(table_uri(settings, R.LEDGER)).exists()  # reading the history creates no ledger
    text = L.format_model(m)
    assert "lakeloop-reward v1  (no alias; stage Archived)" in text and "rollout: no alias has moved" in text
    assert "gate         not evaluated (beats baselines: not recorded)" in text and "config       not recorded" in text


@pytest.mark.parametrize(("ref", "name", "error", "message", "hint"), [
    ("9", NAME, DataError, "lakeloop-reward has no version 9", "its versions: 1-2; e.g. `lakeloop lineage model 2 --name lakeloop-reward`"),
    ("1", "nope", DataError, "no registered model 'nope'", "pass --name with one of: elsewhere, lakeloop-reward, other-model"),
    ("canary", NAME, DataError, "lakeloop-reward has no canary alias now", "`lakeloop aliases`"),
    ("champion", "nope", DataError, "no registered model 'nope'", "pass --name"),
    ("latest", NAME, ConfigError, "neither a model version nor an alias", "champion, challenger, canary"),
])
def test_model_lineage_errors_say_what_exists(settings: Settings, fake: FakeMlflow, ref: str, name: str, error: type, message: str, hint: str) -> None:
    with pytest.raises(error, match=message) as err:
        L.model_lineage(settings, ref, model_name=name)
    assert hint in (err.value.hint or "")


def test_table_lineage_lists_learners_with_aliases_and_status(settings: Settings, fake: FakeMlflow) -> None:
    write_deltalake(table_uri(settings, "gold/training_examples"), pa.table({"x": [1]}))
    for _ in range(4):
        write_deltalake(table_uri(settings, "gold/training_examples"), pa.table({"x": [1]}), mode="append")  # v0..v4
    t = L.table_lineage(settings, "training_examples")
    assert (t.table, t.latest, t.version) == ("gold/training_examples", 4, None)
    assert [(x.model, x.version, x.table_version, x.archived, x.aliases) for x in t.models] == [
        (NAME, "1", 2, True, ()), (NAME, "2", 4, False, ("champion",)), ("other-model", "7", 4, False, ())]  # not "elsewhere"
    only = L.table_lineage(settings, "gold/training_examples", version=2)
    assert [(x.model, x.version) for x in only.models] == [(NAME, "1")]
    assert json.loads(json.dumps(only.to_dict()))["models"][0]["archived"] is True
    text = L.format_table(t)
    assert "gold/training_examples (latest v4, " in text and "lakeloop-reward v2  table v4    registered  champion" in text
    assert "lakeloop-reward v1  table v2    archived    -" in text
    assert "no registered model version learned from it" in L.format_table(L.table_lineage(settings, "training_examples", version=0))
    with pytest.raises(DataError, match=r"gold/training_examples has no version 5 \(latest: v4\)") as err:
        L.table_lineage(settings, "training_examples", version=5)
    assert "0..4" in (err.value.hint or "")
    pairs = L.table_lineage(settings, "preference_pairs")  # not in this lake yet: what MLflow says is still shown
    assert pairs.latest is None and [x.table_version for x in pairs.models] == [3, 2, 3, 1]


@pytest.mark.parametrize(("name", "full", "message"), [
    ("training_examples", "gold/training_examples", None), ("gold/preference_pairs/", "gold/preference_pairs", None),
    ("silver/feedback", None, "models do not learn from silver/feedback directly"),
    ("gold/nope", None, "unknown table 'gold/nope'"), ("nope", None, "unknown table 'nope'"),
])
def test_gold_table_names(name: str, full: str | None, message: str | None) -> None:
    if full:
        assert L.gold_table(name) == full
    else:
        with pytest.raises(ConfigError, match=message) as err:
            L.gold_table(name)
        assert "lakeloop lineage table gold/training_examples" in (err.value.hint or "")


def test_the_guard_still_pins_only_versions_that_are_not_archived(settings: Settings, fake: FakeMlflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(G, "server_answers", lambda uri, timeout=3.0: True)
    pins = {(p.model, p.table, p.version) for p in G.pinned_versions(settings)}
    assert (f"{NAME} v2", "gold/training_examples", 4) in pins and not any(m == f"{NAME} v1" for m, _, _ in pins)
    assert len(G.registered_versions(settings)) == 4


@pytest.mark.parametrize(("numbers", "text"), [([1], "1"), ([1, 2, 3, 5], "1-3, 5"), ([2, 4, 5], "2, 4-5")])
def test_span(numbers: list[int], text: str) -> None:
    assert L._span(numbers) == text


def test_when_mlflow_does_not_answer_both_commands_say_how_to_fix_it(settings: Settings) -> None:
    s = load_settings(**{**settings.model_dump(), "mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})  # nothing listens
    for call in (lambda: L.model_lineage(s, "3"), lambda: L.table_lineage(s, "training_examples")):
        with pytest.raises(ServiceError, match="does not answer") as err:
            call()
        assert "lakeloop up" in (err.value.hint or "")


def test_the_cli_prints_error_and_fix_and_exits_2(settings: Settings) -> None:
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "lakeloop"
    env = {**os.environ, **settings.env(), "LAKELOOP_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    out = subprocess.run([str(exe), "lineage", "model", "3"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "error: MLflow at" in out.stderr and "fix: start it with `lakeloop up`" in out.stderr, out.stderr


def test_help_explains_both_commands() -> None:
    from orchestration.cli import app

    said = " ".join(CliRunner().invoke(app, ["lineage", "--help"], terminal_width=200).output.split())
    assert "What a model version learned from" in said and "model versions that learned from a gold table" in said
    said = " ".join(CliRunner().invoke(app, ["lineage", "model", "--help"], terminal_width=200).output.split())
    assert all(w in said for w in ("champion", "canary", "`lakeloop lineage model 3`", "--json", "--name", "promotion ledger"))


# ---- against the real MLflow server ------------------------------------------------------------------------
@pytest.fixture()
def lin(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """The session's MLflow server, a private registered model and a private lake."""
    return load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                            "registered_model_name": f"lin-{uuid.uuid4().hex[:8]}"})


def _cli(s: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    from orchestration.cli import app
    from orchestration.commands import common

    for k, v in {**s.env(), **common.QUIET_ENV}.items():  # the command sets QUIET_ENV: restored after the test
        monkeypatch.setenv(k, v)
    common.settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), terminal_width=200)
    finally:
        common.settings.cache_clear()


@pytest.mark.integration
@pytest.mark.slow
def test_lineage_commands_on_a_trained_evaluated_registered_model(lin: Settings, qa_feedback_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.training_fixtures import write_gold
    from trainers.candidate import evaluate_candidate, register_candidate
    from trainers.config import TrainConfig
    from trainers.gate import GateConfig
    from trainers.tracking import client
    from trainers.train import train

    s = lin
    write_gold(s.lake, qa_feedback_path, questions=24)  # both gold tables at v0
    cfg = TrainConfig(candidates=("length_support",), validation_share=0.0, experiment=f"lin-{s.registered_model_name}",
                      output_dir=str(s.home / "run"), num_threads=1)
    run_id = train(cfg, s, say=lambda m: None).run_id
    evaluate_candidate(s, run_id, gate=GateConfig(must_beat_baselines=False), n_boot=50)
    version, created, change = register_candidate(s, run_id, actor="test", metrics={})
    assert created and change is not None
    # a later gold version that an archived version pinned
    write_gold(s.lake, qa_feedback_path, questions=8, offset=24)
    c = client(s)
    old = c.create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=None, tags={
        "lakeloop.train_examples.uri": table_uri(s, "gold/training_examples"), "lakeloop.train_examples.version": "1",
        "lakeloop.preference_pairs.uri": table_uri(s, "gold/preference_pairs"), "lakeloop.preference_pairs.version": "1"})
    c.transition_model_version_stage(s.registered_model_name, old.version, "Archived")

    out = _cli(s, monkeypatch, "lineage", "model", version, "--json")
    assert out.exit_code == 0, out.output
    m = json.loads(out.stdout)
    tags = c.get_run(run_id).data.tags
    assert (m["model"], m["version"], m["run_id"], m["aliases"], m["archived"]) == (s.registered_model_name, version, run_id, ["challenger"], False)
    assert [(t["table"], t["version"], t["rows_digest"]) for t in m["tables"]] == [
        ("gold/training_examples", 0, tags["lakeloop.train_examples.rows_digest"]), ("gold/preference_pairs", 0, tags["lakeloop.preference_pairs.rows_digest"])]
    assert m["git_commit"] == tags["lakeloop.git_commit"] and m["family"] == "length_support"
    assert m["gate"] == {"result": "passed", "reasons": tags["lakeloop.gate.reasons"], "beats_baselines": tags["lakeloop.beats_baselines"] == "true"}
    assert m["config"]["candidates"] == ["length_support"] and m["config"]["examples_version"] == 0
    assert 0 <= m["metrics"]["eval.pairwise_accuracy"] <= 1 and m["params"]["seed"] == str(cfg.seed)
    assert [(h["alias"], h["from_version"], h["to_version"], h["actor"]) for h in m["history"]] == [("challenger", None, version, "test")]
    plain = _cli(s, monkeypatch, "lineage", "model", "challenger")
    assert plain.exit_code == 0 and f"{s.registered_model_name} v{version}  (challenger)" in plain.output, plain.output

    out = _cli(s, monkeypatch, "lineage", "table", "gold/training_examples", "--json")
    assert out.exit_code == 0, out.output
    t = json.loads(out.stdout)
    assert (t["table"], t["latest"]) == ("gold/training_examples", 1)
    assert [(x["version"], x["table_version"], x["archived"], x["aliases"]) for x in t["models"]] == [
        (version, 0, False, ["challenger"]), (str(old.version), 1, True, [])]
    only = json.loads(_cli(s, monkeypatch, "lineage", "table", "training_examples", "--version", "0", "--json").stdout)
    assert [x["version"] for x in only["models"]] == [version]

    for absent in ("99", "0"):
        missing = _cli(s, monkeypatch, "lineage", "model", absent)
        assert isinstance(missing.exception, DataError) and f"its versions: {version}-{old.version}" in (missing.exception.hint or ""), missing.output
