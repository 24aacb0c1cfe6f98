"""The training resource (run config, gate thresholds, retrain trigger) and the Pipes client that
launches the trainer as its own process. ``resources()`` is what ``build_definitions()`` adds."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from infra import links
from infra.errors import ConfigError
from infra.settings import Settings
from trainers.config import TrainConfig, load_config
from trainers.gate import GateConfig


# TrainConfig fields that name files or tables: from settings only (LAKELOOP_TRAIN_CONFIG, lakeloop.toml), never
# from a run's config, which anyone who can launch a run chooses (docs/SECURITY.md)
SETTINGS_ONLY_FIELDS = frozenset({"lake_root", "output_dir", "base_model"})


class TrainingResource(dg.ConfigurableResource):
    """How the training group trains, evaluates and gates. ``train_config`` is JSON of TrainConfig fields laid over
    the settings' ``train_config``; it may not set the fields that name files (``SETTINGS_ONLY_FIELDS``)."""

    train_config: str = "{}"
    gate_must_beat_baselines: bool = True
    gate_slice_tolerance: float = 0.05
    gate_min_slice_n: int = 30
    gate_cross_fit: bool = True
    n_boot: int = 1000
    max_eval_clusters: int | None = None
    retrain_min_new_rows: int = 500
    actor: str = "dagster:training"

    @classmethod
    def for_deployment(cls) -> "TrainingResource":
        """Training as the settings say (LAKELOOP_TRAIN_CONFIG, LAKELOOP_GATE_MUST_BEAT_BASELINES, ...), read when the
        definitions load: the daemon's autopilot runs train with them; run config still overrides per run."""
        from infra.errors import ConfigError as _ConfigError
        from infra.settings import load_settings

        try:
            s = load_settings()
        except _ConfigError:
            return cls()
        return cls(gate_must_beat_baselines=s.gate_must_beat_baselines, n_boot=s.eval_n_boot,
                   gate_slice_tolerance=s.gate_slice_tolerance, gate_cross_fit=s.gate_cross_fit,
                   retrain_min_new_rows=s.retrain_min_new_rows)

    def config(self, settings: Settings | None = None, **overrides: Any) -> TrainConfig:
        """The settings' train_config (trusted: it may name paths), then this resource's (a run's config) over it."""
        base = _json_object(settings.train_config if settings is not None else "{}", "setting train_config (LAKELOOP_TRAIN_CONFIG)")
        run = _json_object(self.train_config, "training resource train_config")
        named = sorted(SETTINGS_ONLY_FIELDS & run.keys())
        if named:
            raise ConfigError(f"a run's train_config may not set {', '.join(named)}: fields that name files come from the "
                              "settings only", hint="set them in LAKELOOP_TRAIN_CONFIG or lakeloop.toml's train_config")
        return load_config({**base, **run}, **overrides)

    def gate(self) -> GateConfig:
        return GateConfig(must_beat_baselines=self.gate_must_beat_baselines, slice_tolerance=self.gate_slice_tolerance,
                          min_slice_n=self.gate_min_slice_n)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not JSON: {exc}", hint="pass a JSON object of TrainConfig fields") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} is not a JSON object", hint="pass a JSON object of TrainConfig fields")
    return data


def resources() -> dict[str, Any]:
    return {"training": TrainingResource.for_deployment(), "pipes_subprocess_client": dg.PipesSubprocessClient(forward_stdio=True)}


def latest_metadata(context: dg.AssetExecutionContext, key: str) -> dict[str, Any]:
    """Metadata values of the latest materialization of ``key`` (how the group hands over the run id)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise ConfigError(f"asset {key} has never been materialized", hint=f"materialize {key} first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def url_or_text(url: str | None, missing: str) -> dg.MetadataValue:
    return dg.MetadataValue.url(url) if url else dg.MetadataValue.text(missing)


def mlflow_run_url(settings: Settings, run_id: str) -> dg.MetadataValue:
    return url_or_text(links.mlflow_run(settings, run_id), f"run {run_id} (MLflow at {settings.tracking_uri} has no web pages)")
