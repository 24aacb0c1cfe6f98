"""Which gold table versions the registered, non-archived model versions pin: what maintenance must keep readable.

A model version pins a table version through its tags, copied from its training run when it is registered
(``trainers.candidate.register_candidate``): ``lakeloop.train_examples.uri`` / ``.version`` and
``lakeloop.preference_pairs.uri`` / ``.version``. A version registered without them (by hand, from a run) is
looked up through its run's tags. Every registered model on the server is read, not only lakeloop's name: any of
them may have learned from this lake. ``registered_versions`` (archived versions too) also answers
`lakeloop lineage table` (``trainers.lineage_report``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from infra.errors import ServiceError
from infra.settings import Settings
from trainers.tracking import client, needs_mlflow, server_answers

# lake table -> the prefix of its lineage tags (``<prefix>.uri``, ``.version``, ``.rows_digest``, ``.curation_hash``)
PIN_TABLES = {"gold/training_examples": "lakeloop.train_examples", "gold/preference_pairs": "lakeloop.preference_pairs"}
# set by `lakeloop forget` (``features.erasure``) on a version whose pinned gold versions held an erased user's rows
ERASED_TAG = "lakeloop.contains_erased_data"
ERASURES_TAG = "lakeloop.erasure_ids"  # comma-separated, oldest first


@dataclass(frozen=True)
class Pin:
    uri: str
    version: int
    model: str  # "<registered model> v<version>"
    table: str = ""  # the lake table name (gold/training_examples), from the tag prefix


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version, archived or not, with the table versions its lineage tags pin."""

    name: str
    version: str
    run_id: str | None
    stage: str  # MLflow's stage ("None", "Staging", "Production", "Archived")
    pins: tuple[Pin, ...]
    erasures: tuple[str, ...] = ()  # the erasures whose user's rows its pinned versions held (``ERASURES_TAG``)

    @property
    def archived(self) -> bool:
        return self.stage.lower() == "archived"


def same_table(a: str, b: str) -> bool:
    """Two spellings of one table URI (``file://`` or not, trailing slashes, ``..``)."""
    def norm(u: str) -> str:
        u = u.removeprefix("file://").rstrip("/")
        return os.path.normpath(u) if "://" not in u else u
    return norm(a) == norm(b)


def pins_from_tags(tags: dict[str, str], model: str) -> list[Pin]:
    out = []
    for table, prefix in PIN_TABLES.items():
        uri_key, version_key = f"{prefix}.uri", f"{prefix}.version"
        if tags.get(uri_key) and str(tags.get(version_key, "")).isdigit():
            out.append(Pin(tags[uri_key], int(tags[version_key]), model, table))
    return out


def pinned_versions(settings: Settings) -> list[Pin]:
    """Every (table URI, version) a registered model version that is not archived pins."""
    if not server_answers(settings.tracking_uri):
        raise ServiceError(f"MLflow at {settings.tracking_uri} does not answer: the versions registered models pin are unknown",
                           hint="start it with `lakeloop up`, then run the maintenance again")
    return [p for mv in registered_versions(settings) if not mv.archived for p in mv.pins]


@needs_mlflow("reading which table versions registered models pin")
def registered_versions(settings: Settings) -> list[RegisteredVersion]:
    """Every version of every registered model on the server, archived ones too, with its pins: the version's
    lineage tags, else its run's (a version registered by hand from a run)."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    out: list[RegisteredVersion] = []
    token = None
    while True:
        page = c.search_model_versions(max_results=1000, page_token=token)
        for mv in page:
            tags = dict(mv.tags or {})
            if not pins_from_tags(tags, "") and mv.run_id:
                try:
                    tags = {**dict(c.get_run(mv.run_id).data.tags), **tags}
                except MlflowException:
                    pass  # the run was deleted: the version names no table
            pins = tuple(pins_from_tags(tags, f"{mv.name} v{mv.version}"))
            out.append(RegisteredVersion(mv.name, str(mv.version), mv.run_id or None, str(mv.current_stage or "None"), pins,
                                         erasures_of(dict(mv.tags or {}))))
        token = page.token
        if not token:
            return out


def pins_of(pins: list[Pin], uri: str) -> dict[int, list[str]]:
    """Version -> the model versions pinning it, for one table."""
    out: dict[int, list[str]] = {}
    for p in pins:
        if same_table(p.uri, uri):
            out.setdefault(p.version, []).append(p.model)
    return dict(sorted(out.items()))


def erasures_of(tags: dict[str, str]) -> tuple[str, ...]:
    """The erasure ids a model version's tags name (empty: it learned from no erased data, as far as is known)."""
    return tuple(e for e in tags.get(ERASURES_TAG, "").split(",") if e)


@needs_mlflow("tagging the model versions that learned from erased data")
def mark_erased(settings: Settings, versions: list[tuple[str, str]], erasure_id: str) -> None:
    """Tag each (registered model, version): ``lakeloop.contains_erased_data=true`` and the erasure id appended to
    ``lakeloop.erasure_ids``. Idempotent."""
    c = client(settings)
    for name, version in versions:
        known = erasures_of(dict(c.get_model_version(name, version).tags or {}))
        c.set_model_version_tag(name, version, ERASED_TAG, "true")
        if erasure_id not in known:
            c.set_model_version_tag(name, version, ERASURES_TAG, ",".join((*known, erasure_id)))
