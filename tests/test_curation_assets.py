"""The curation group in Dagster: definitions load, the group materializes in process with its checks and
metadata, a failing blocking check stops downstream assets, and a launch through the webserver's GraphQL API
(as the UI does) succeeds with the metadata in place."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from infra.errors import ConfigError
from infra.tables import table_uri
from orchestration.assets import curation
from orchestration.assets.curation.resources import CurationResource
from orchestration.resources import LakeloopSettings
from tests.pinned_settings import PinnedSettings
from tests.curation_fixtures import START, qa_events, write_bronze


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lake's key, from the environment as in a deployment (a run's config cannot set it)."""
    monkeypatch.setenv("LAKELOOP_PSEUDONYM_KEY", "k" * 32)


DAY = START.isoformat()
CURATION_ASSETS = ["silver_feedback", "gold_training_examples", "gold_preference_pairs"]


def _run(settings, qa_feedback_path: Path, **resource_kw):
    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=30, days=1))
    return dg.materialize(
        [*curation.defs.assets, *curation.defs.asset_checks], partition_key=DAY, raise_on_error=False,
        resources={"lakeloop": PinnedSettings(home=str(settings.home)), "curation": CurationResource(**resource_kw)},
    )


def test_definitions_load_with_the_curation_group_and_blocking_checks() -> None:
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for name in CURATION_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "curation" and node.partitions_def is not None and node.description
    assert dg.AssetKey("bronze_feedback_events") in graph.get(dg.AssetKey("silver_feedback")).parent_keys
    checks = {k.name: k for k in graph.asset_check_keys if k.asset_key.path[0] in CURATION_ASSETS}
    assert {"silver_no_pii", "silver_schema_contract", "silver_reference_late", "schema_contract", "no_pii", "no_split_leakage", "min_rows", "duplicate_rate"} <= set(checks)
    assert "curation" in defs.resources


def test_group_materializes_with_metadata_and_passing_checks(settings, qa_feedback_path) -> None:
    result = _run(settings, qa_feedback_path)
    assert result.success
    mats = {e.asset_key.path[0]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert set(mats) == set(CURATION_ASSETS)
    for meta in mats.values():
        assert meta["dagster/row_count"].value > 0 and meta["delta_version"].value == 0
        assert len(meta["table_content_hash"].value) == 64 and "drops_by_reason" in meta
    assert mats["gold_preference_pairs"]["dropped_near_duplicate"].value > 0  # real near-dup predictions of qa_feedback
    evals = result.get_asset_check_evaluations()
    assert len(evals) == 14 and all(e.passed for e in evals), [(e.asset_check_key.name, e.description) for e in evals if not e.passed]


def test_a_failing_blocking_check_stops_the_downstream_assets(settings, qa_feedback_path) -> None:
    result = _run(settings, qa_feedback_path, min_silver_rows=10**6)
    assert not result.success
    failed = [e.asset_check_key.name for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == ["silver_min_rows"]
    materialized = {e.asset_key.path[0] for e in result.get_asset_materialization_events()}
    assert materialized == {"silver_feedback"}
    from deltalake import DeltaTable

    assert not DeltaTable.is_deltatable(table_uri(settings, "gold/training_examples"))


def test_a_late_reference_event_is_reported_and_stops_nothing(settings, qa_feedback_path) -> None:
    from tests.test_curation_pipeline import ev

    late = ev(900, day=START, response_id="resp-not-scored", prompt="", response="", model_name="", model_version="")
    write_bronze(table_uri(settings, "bronze/feedback_events"), [late], first_offset=10_000)
    result = _run(settings, qa_feedback_path)
    assert result.success  # a warning, not a gate
    mats = {e.asset_key.path[0]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    silver = mats["silver_feedback"]
    assert (silver["reference_pending"].value, silver["reference_late"].value, silver["reference_joined"].value) == (1, 1, 0)
    (check,) = [e for e in result.get_asset_check_evaluations() if e.asset_check_key.name == "silver_reference_late"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "1 reference feedback event(s) waited over 60 min" in (check.description or "")


# ---- through the real webserver --------------------------------------------------------------------
LAUNCH = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
MATS = """query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { ... on Asset { assetMaterializations(limit: 1) {
  runId partition metadataEntries { label ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } } } } }"""


def _gql(url: str, query: str, variables: dict) -> dict:
    r = requests.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    r.raise_for_status()
    body = r.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


@pytest.mark.integration
@pytest.mark.slow
def test_materialize_the_curation_group_through_the_webserver_graphql_api(dagster_platform, qa_feedback_path) -> None:
    s = dagster_platform
    write_bronze(table_uri(s, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=25, days=1))
    params = {
        "selector": {"repositoryLocationName": "lakeloop", "repositoryName": "__repository__", "pipelineName": "__ASSET_JOB",
                     "assetSelection": [{"path": [a]} for a in CURATION_ASSETS]},
        "mode": "default", "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DAY}]},
    }
    out = _gql(s.dagster_url, LAUNCH, {"p": params})["launchPipelineExecution"]
    assert out["__typename"] == "LaunchRunSuccess", out
    run_id = out["run"]["runId"]
    deadline, status = time.monotonic() + 600, "QUEUED"
    while time.monotonic() < deadline and status not in ("SUCCESS", "FAILURE", "CANCELED"):
        time.sleep(2)
        status = _gql(s.dagster_url, STATUS, {"id": run_id})["runOrError"]["status"]
    assert status == "SUCCESS", f"run {run_id} ended {status}; see {s.dagster_url}/runs/{run_id}"
    for asset in CURATION_ASSETS:
        mat = _gql(s.dagster_url, MATS, {"k": {"path": [asset]}})["assetOrError"]["assetMaterializations"][0]
        meta = {e["label"]: e.get("intValue", e.get("text")) for e in mat["metadataEntries"]}
        assert mat["runId"] == run_id and mat["partition"] == DAY
        assert meta["rows_out"] > 0 and "table_content_hash" in meta and "delta_version" in meta, meta


def test_pseudonym_key_from_the_environment_or_a_local_dev_key_file(settings, monkeypatch) -> None:
    from orchestration.assets.curation.resources import KEY_ENV, dev_key_file

    monkeypatch.delenv(KEY_ENV, raising=False)
    dev = CurationResource()
    key = dev.key(settings)
    assert len(key) >= 32 and dev.key(settings) == key and dev_key_file(settings).stat().st_mode & 0o077 == 0
    monkeypatch.setenv(KEY_ENV, "s" * 32)

    @dg.asset
    def probe(curation: CurationResource) -> str:
        return curation.key(settings).decode()

    result = dg.materialize([probe], resources={"curation": CurationResource()})
    assert result.output_for_node("probe") == "s" * 32  # read in the run, from its environment


def test_a_run_config_cannot_set_the_key_or_paths(settings) -> None:
    """Whoever can launch a run writes its config: it may not choose the pseudonymization key, the home or the lake,
    nor the training fields that name files."""
    from orchestration.assets.training.resources import TrainingResource
    from orchestration.definitions import defs

    resources = defs.resources
    assert "pseudonym_key" not in CurationResource.model_fields
    assert not type(resources["lakeloop"]).model_fields  # no config fields at all
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.materialize([_probe_settings()], resources={"lakeloop": resources["lakeloop"]},
                       run_config={"resources": {"lakeloop": {"config": {"home": "/tmp/elsewhere"}}}})
    for field in ("lake_root", "output_dir", "base_model"):
        with pytest.raises(ConfigError, match=field):
            TrainingResource(train_config=json.dumps({field: "/tmp/x"})).config(settings)
    s = settings.model_copy(update={"train_config": json.dumps({"output_dir": "/tmp/from-settings", "epochs": 3})})
    cfg = TrainingResource(train_config='{"epochs": 1}').config(s)
    assert (cfg.output_dir, cfg.epochs) == ("/tmp/from-settings", 1)  # settings may name paths; a run overrides the rest


def test_production_refuses_the_generated_dev_key(settings, monkeypatch) -> None:
    from orchestration.assets.curation.resources import KEY_ENV

    monkeypatch.delenv(KEY_ENV, raising=False)
    prod = settings.model_copy(update={"deployment": "production"})
    with pytest.raises(ConfigError, match="LAKELOOP_ENV=production") as err:
        CurationResource().key(prod)
    assert KEY_ENV in err.value.hint
    monkeypatch.setenv(KEY_ENV, "p" * 32)
    assert CurationResource().key(prod) == b"p" * 32
    from trainers.checkpoint import KEY_ENV as CKPT_ENV
    from trainers.checkpoint import checkpoint_key

    monkeypatch.delenv(CKPT_ENV, raising=False)
    with pytest.raises(ConfigError, match="LAKELOOP_ENV=production"):
        checkpoint_key(prod)


def _probe_settings() -> dg.AssetsDefinition:
    @dg.asset
    def probe_settings(lakeloop: LakeloopSettings) -> str:
        return str(lakeloop.load().home)

    return probe_settings


def test_config_rejects_unknown_keys_and_bad_minhash_params() -> None:
    from pydantic import ValidationError

    from features.config import CurationConfig, MinHashParams

    with pytest.raises(ValidationError):
        CurationConfig(user_capp=0.2)
    with pytest.raises(ValidationError, match="must divide"):
        MinHashParams(num_perm=128, bands=30)


@pytest.mark.parametrize(("kinds", "empty"), [({"preference"}, "gold_training_examples"), ({"thumbs", "rating"}, "gold_preference_pairs")])
def test_a_one_kind_stream_curates_with_passing_checks(settings, qa_feedback_path, kinds: set[str], empty: str) -> None:
    """A preference-only app has no pointwise rows, a thumbs-and-ratings app no pairs: curation still writes both gold
    tables (one empty, so training can pin it) and the row-count check counts what the stream can produce."""
    events = [e for e in qa_events(qa_feedback_path, n_questions=30, days=1) if e["event_type"] in kinds]
    write_bronze(table_uri(settings, "bronze/feedback_events"), events)
    result = dg.materialize(
        [*curation.defs.assets, *curation.defs.asset_checks], partition_key=DAY, raise_on_error=False,
        resources={"lakeloop": PinnedSettings(home=str(settings.home)), "curation": CurationResource()},
    )
    failed = [(e.asset_check_key.asset_key.path[0], e.asset_check_key.name, e.description)
              for e in result.get_asset_check_evaluations() if not e.passed]
    assert result.success and not failed, failed
    mats = {e.asset_key.path[0]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert mats[empty]["dagster/row_count"].value == 0
    from features import lake

    assert lake.version(table_uri(settings, "gold/training_examples")) is not None
    assert lake.version(table_uri(settings, "gold/preference_pairs")) is not None
