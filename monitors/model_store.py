"""Our one wrapper of the MLflow registry for monitoring: read aliases and rollout tags, load pyfunc models.

Alias *changes* never happen here: they go through ``trainers.registry`` (compare-and-set + ledger).
Tags written here are the rollout state on a model version and the canary share on the registered model,
and people's holds (``monitors.overrides``); the training lineage of a version is read here too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from infra.errors import ServiceError
from infra.settings import Settings

Alias = Literal["champion", "canary", "challenger"]
RolloutState = Literal["challenger", "canary", "champion", "rolled_back", "retired"]

SHARE_TAG = "lakeloop.canary_share"  # registered-model tag the service reads
STATE_TAG = "lakeloop.rollout_state"  # model-version tag: where the version stands
HISTORY_TAG = "lakeloop.rollout_history"  # model-version tag: the last transitions, newest last


@functools.cache
def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@functools.cache
def _reachable(tracking_uri: str) -> bool:
    """Fail fast (MLflow's own client retries for minutes) when the tracking server is not there."""
    import httpx

    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        httpx.get(f"{tracking_uri.rstrip('/')}/health", timeout=3.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceError(f"MLflow tracking server at {tracking_uri} is not reachable: {exc}",
                           hint="start it with `lakeloop up`, or set LAKELOOP_MLFLOW_TRACKING_URI") from None
    return True


def client(settings: Settings) -> Any:
    _reachable(settings.tracking_uri)
    return _client(settings.tracking_uri)


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "RESOURCE_DOES_NOT_EXIST" in code or "INVALID_PARAMETER_VALUE" in code or "not found" in str(exc).lower()


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version an alias points at, or None when the alias (or the registered model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(settings.registered_model_name, alias)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise ServiceError(f"MLflow registry at {settings.tracking_uri} failed: {exc}", hint="is `lakeloop up` running?") from exc
    return str(mv.version)


def aliases(settings: Settings) -> dict[str, str]:
    """Every alias of the registered model -> version (empty when the model is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client(settings).get_registered_model(settings.registered_model_name)
    except MlflowException as exc:
        if _not_found(exc):
            return {}
        raise ServiceError(f"MLflow registry at {settings.tracking_uri} failed: {exc}", hint="is `lakeloop up` running?") from exc
    return {k: str(v) for k, v in (rm.aliases or {}).items()}


def canary_share(settings: Settings) -> float:
    """The canary's share of traffic from the registered-model tag (0 when unset or not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client(settings).get_registered_model(settings.registered_model_name)
    except MlflowException as exc:
        if _not_found(exc):
            return 0.0
        raise
    return share_from_tags(rm.tags or {})


def share_from_tags(tags: dict[str, str]) -> float:
    """The canary share a registered model's tags give (0 when unset or not a number), clipped to [0, 1]."""
    raw = tags.get(SHARE_TAG)
    try:
        share = float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return min(max(share, 0.0), 1.0)


def set_canary_share(settings: Settings, share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"canary share must be in [0, 1], got {share}")
    client(settings).set_registered_model_tag(settings.registered_model_name, SHARE_TAG, f"{share:g}")


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    mv = client(settings).get_model_version(settings.registered_model_name, str(version))
    return dict(mv.tags or {})


def mark_version(settings: Settings, version: str, state: RolloutState, *, note: str) -> None:
    """Record a rollout transition on the model version itself, so the MLflow UI shows the truth."""
    c = client(settings)
    name = settings.registered_model_name
    history = version_tags(settings, version).get(HISTORY_TAG, "")
    entries = [e for e in history.split(" | ") if e] + [f"{state}: {note}"]
    c.set_model_version_tag(name, str(version), STATE_TAG, state)
    c.set_model_version_tag(name, str(version), HISTORY_TAG, " | ".join(entries[-8:])[-4900:])


def load_pyfunc(settings: Settings, version: str) -> Any:
    """Load a registered version as an MLflow pyfunc, only if the promotion ledger vouches for its files
    (``trainers.model_trust``: ``UntrustedModelError`` otherwise)."""
    from trainers.model_trust import load_trusted

    return load_trusted(settings, str(version))


# ---- tags, versions and lineage for people's overrides and the drift reference -------------------------
@dataclass(frozen=True)
class RegistryView:
    """One read of the registered model: aliases, tags and MLflow's own timestamp (None: not registered)."""

    aliases: dict[str, str]
    tags: dict[str, str]
    last_updated: datetime | None


@dataclass(frozen=True)
class VersionView:
    """What MLflow keeps about one model version."""

    version: str
    run_id: str | None
    user_id: str | None  # who created the version, when the server runs with auth; empty otherwise
    created: datetime | None
    last_updated: datetime | None
    tags: dict[str, str]


def _ms(ts: int | None) -> datetime | None:
    return datetime.fromtimestamp(ts / 1000, tz=UTC) if ts else None


def registry_view(settings: Settings) -> RegistryView | None:
    from mlflow.exceptions import MlflowException

    try:
        rm = client(settings).get_registered_model(settings.registered_model_name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise ServiceError(f"MLflow registry at {settings.tracking_uri} failed: {exc}", hint="is `lakeloop up` running?") from exc
    return RegistryView({k: str(v) for k, v in (rm.aliases or {}).items()}, dict(rm.tags or {}), _ms(rm.last_updated_timestamp))


def version_view(settings: Settings, version: str) -> VersionView | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version(settings.registered_model_name, str(version))
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise ServiceError(f"MLflow registry at {settings.tracking_uri} failed: {exc}", hint="is `lakeloop up` running?") from exc
    return VersionView(str(mv.version), mv.run_id or None, mv.user_id or None, _ms(mv.creation_timestamp), _ms(mv.last_updated_timestamp), dict(mv.tags or {}))


def all_version_tags(settings: Settings) -> dict[str, dict[str, str]]:
    """version -> its tags, for every version of the registered model (empty when not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).search_model_versions(f"name='{settings.registered_model_name}'")
    except MlflowException as exc:
        if _not_found(exc):
            return {}
        raise ServiceError(f"MLflow registry at {settings.tracking_uri} failed: {exc}", hint="is `lakeloop up` running?") from exc
    return {str(mv.version): dict(mv.tags or {}) for mv in found}


def set_model_tag(settings: Settings, key: str, value: str) -> None:
    client(settings).set_registered_model_tag(settings.registered_model_name, key, value)


def delete_model_tag(settings: Settings, key: str) -> None:
    client(settings).delete_registered_model_tag(settings.registered_model_name, key)  # no-op when unset


def set_version_tag(settings: Settings, version: str, key: str, value: str) -> None:
    client(settings).set_model_version_tag(settings.registered_model_name, str(version), key, value)


def delete_version_tag(settings: Settings, version: str, key: str) -> None:
    client(settings).delete_model_version_tag(settings.registered_model_name, str(version), key)  # no-op when unset


@dataclass(frozen=True)
class PinnedTable:
    """A gold table at the Delta version a model was trained on."""

    name: str  # lake table name, e.g. gold/training_examples
    version: int
    uri: str | None  # as recorded by the training run (None: not recorded)


# lake table -> (lineage tag prefix on the run and the model version, run param of the training config)
_LINEAGE = {"gold/training_examples": ("lakeloop.train_examples", "examples_version"),
            "gold/preference_pairs": ("lakeloop.preference_pairs", "pairs_version")}


def training_pins(settings: Settings, version: str) -> dict[str, PinnedTable]:
    """The gold tables (and their Delta versions) a model version was trained on, as far as MLflow records them.

    The training run sets the lineage tags ``lakeloop.train_examples.{uri,version}`` and
    ``lakeloop.preference_pairs.{uri,version}`` on itself, and ``register_version`` copies them onto the model
    version; the run's params ``examples_version`` / ``pairs_version`` are the pinned config. Looked up in that
    order; a table with none of them is left out (the caller falls back)."""
    mv = version_view(settings, version)
    if mv is None:
        return {}
    run_tags: dict[str, str] = {}
    run_params: dict[str, str] = {}
    if mv.run_id and any(f"{prefix}.version" not in mv.tags for prefix, _ in _LINEAGE.values()):
        from mlflow.exceptions import MlflowException

        try:
            run = client(settings).get_run(mv.run_id)
            run_tags, run_params = dict(run.data.tags), dict(run.data.params)
        except MlflowException as exc:
            if not _not_found(exc):
                raise ServiceError(f"MLflow at {settings.tracking_uri} failed reading run {mv.run_id}: {exc}", hint="is `lakeloop up` running?") from exc
    out = {}
    for name, (prefix, param) in _LINEAGE.items():
        for tags in (mv.tags, run_tags):
            raw = tags.get(f"{prefix}.version")
            if raw is not None and raw.strip().isdigit():
                out[name] = PinnedTable(name, int(raw), tags.get(f"{prefix}.uri") or None)
                break
        else:
            raw = run_params.get(param)
            if raw is not None and raw.strip().isdigit():
                out[name] = PinnedTable(name, int(raw), None)
    return out
