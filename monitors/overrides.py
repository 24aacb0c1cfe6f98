"""People stay in charge of the rollout: holds, and alias changes made by hand in MLflow.

**Hold.** The tag ``lakeloop.hold`` (set in the MLflow UI, or ``lakeloop hold``) stops the autopilot:

- on a model version: the autopilot makes no alias or traffic change that touches that version;
- on the registered model: nothing moves at all.

Its value is the reason; an empty value, ``false`` or ``0`` is no hold. ``holds`` reads both levels in two
MLflow calls and ``is_held`` answers for the versions a move would touch. Holds bind the autopilot only: a
person's ``lakeloop promote`` / ``rollback`` is not stopped by them.

**External alias changes.** ``detect_external_changes`` compares MLflow's aliases with the promotion ledger's
latest entry per alias; a difference that lakeloop did not make (a person moved an alias in the MLflow UI or
API) is appended to the ledger with actor ``external``, the canary share is kept consistent, and the change is
returned so the caller alerts. The scoring service already follows MLflow (it re-reads the aliases every
``serve_poll_seconds``), so what a person set is what serves; this module makes the ledger and the autopilot
agree with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING

from infra.errors import MissingDependencyError
from infra.settings import Settings
from monitors import model_store

if TYPE_CHECKING:
    from trainers.registry import LedgerHead

log = logging.getLogger("lakeloop.monitors.overrides")

HOLD_TAG = "lakeloop.hold"
ALIASES = ("champion", "canary", "challenger")  # the aliases lakeloop owns (trainers.registry.ALIASES)
_NOT_A_HOLD = {"", "false", "0"}


# ---- holds -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Holds:
    """The holds in force: on the registered model (stops everything), and per model version."""

    model: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)  # version -> reason

    def __bool__(self) -> bool:
        return self.model is not None or bool(self.versions)


def hold_reason(value: str | None) -> str | None:
    """The reason a ``lakeloop.hold`` tag value gives, or None when it is no hold (unset, empty, false, 0)."""
    if value is None or value.strip().lower() in _NOT_A_HOLD:
        return None
    return value.strip()


def holds_from_tags(model_tags: Mapping[str, str], version_tags: Mapping[str, Mapping[str, str]]) -> Holds:
    """``Holds`` from the registered model's tags and each version's tags (pure)."""
    versions = {str(v): r for v, tags in version_tags.items() if (r := hold_reason(tags.get(HOLD_TAG))) is not None}
    return Holds(hold_reason(model_tags.get(HOLD_TAG)), versions)


def is_held(holds: Holds, *versions: str | int | None) -> str | None:
    """Why a move touching ``versions`` must not happen (None: it may). Pass every version the move touches:
    the one that moves and the one it replaces (e.g. canary and champion for a promotion). A hold on the
    registered model holds every move, with or without versions."""
    if holds.model is not None:
        return f"the registered model is on hold: {holds.model}"
    for v in versions:
        if v is not None and (reason := holds.versions.get(str(v))) is not None:
            return f"version {v} is on hold: {reason}"
    return None


def holds(settings: Settings) -> Holds:
    """The holds set in the MLflow registry now (none when the model is not registered)."""
    view = model_store.registry_view(settings)
    if view is None:
        return Holds()
    return holds_from_tags(view.tags, model_store.all_version_tags(settings))


def set_hold(settings: Settings, reason: str, *, version: str | int | None = None) -> None:
    """Hold a model version, or (``version`` None) the whole registered model."""
    if hold_reason(reason) is None:
        raise ValueError(f"a hold needs a reason (not empty, 'false' or '0'), got {reason!r}")
    if version is None:
        model_store.set_model_tag(settings, HOLD_TAG, reason.strip())
    else:
        model_store.set_version_tag(settings, str(version), HOLD_TAG, reason.strip())


def clear_hold(settings: Settings, *, version: str | int | None = None) -> None:
    """Lift the hold on a model version, or (``version`` None) on the registered model; no-op when none."""
    if version is None:
        model_store.delete_model_tag(settings, HOLD_TAG)
    else:
        model_store.delete_version_tag(settings, str(version), HOLD_TAG)


# ---- alias changes lakeloop did not make ---------------------------------------------------------------
@dataclass(frozen=True)
class ExternalChange:
    """An alias that MLflow shows at a value the ledger did not have, now recorded with actor ``external``.

    When and who, as far as MLflow tells: MLflow stores an alias as (model, alias, version) only. Setting or
    deleting one records no time and no user, and does not bump the registered model's or the version's
    ``last_updated_timestamp`` (MLflow 2.x-3.x). So the change happened after ``not_before`` (the ledger's
    previous entry for the alias) and before ``detected_at``; ``mlflow`` adds what MLflow does keep, for
    context: the new version's ``user_id`` (its *creator*, and only when the server runs with auth), its
    creation and last-update times, and the registered model's last update.
    """

    model_name: str
    alias: str
    from_version: str | None  # the ledger's value before (None: unset or never recorded)
    to_version: str | None  # MLflow's value now (None: the alias was removed)
    detected_at: datetime
    not_before: datetime | None
    ledger_version: int  # the Delta version of the ledger commit that recorded it
    mlflow: Mapping[str, str]
    note: str  # what lakeloop did about it, for the alert

    def summary(self) -> str:
        what = f"set to v{self.to_version}" if self.to_version else "removed"
        was = f"v{self.from_version}" if self.from_version else "unset"
        return f"{self.model_name}@{self.alias} {what} outside lakeloop (was {was}); {self.note}"


@dataclass(frozen=True)
class Difference:
    alias: str
    ledger_value: str | None
    mlflow_value: str | None
    head: LedgerHead | None


def differences(mlflow_aliases: Mapping[str, str], heads: Mapping[str, LedgerHead], *, now: datetime,
                settle_seconds: float) -> list[Difference]:
    """The aliases where MLflow disagrees with the ledger's latest entry (pure).

    Not a difference: MLflow still shows the value *before* the ledger's latest entry, and that entry is less
    than ``settle_seconds`` old: a lakeloop promoter has written the ledger and is about to call MLflow (it
    writes the ledger first). Older than that, the promoter died or a person put the old value back; either
    way MLflow's value is what serves, and it is recorded. An alias the ledger never saw differs when MLflow
    has it."""
    out = []
    for alias in ALIASES:
        seen = mlflow_aliases.get(alias)
        head = heads.get(alias)
        recorded = head.to_version if head is not None else None
        if seen == recorded:
            continue
        if head is not None and seen == head.from_version and (now - head.at).total_seconds() < settle_seconds:
            continue
        out.append(Difference(alias, recorded, seen, head))
    return out


def _registry() -> ModuleType:
    try:
        from trainers import registry
    except ImportError as exc:
        raise MissingDependencyError(
            "trainers.registry (the promotion ledger) is not importable",
            hint="it comes with the training package; reinstall lakeloop (`pip install -e .`)",
        ) from exc
    return registry


def _mlflow_details(settings: Settings, view: model_store.RegistryView, version: str | None) -> dict[str, str]:
    details = {"model_last_updated": view.last_updated.isoformat() if view.last_updated else ""}
    mv = model_store.version_view(settings, version) if version else None
    if mv is not None:
        details.update(version_user_id=mv.user_id or "", version_created=mv.created.isoformat() if mv.created else "",
                       version_last_updated=mv.last_updated.isoformat() if mv.last_updated else "")
    return {k: v for k, v in details.items() if v}


def _reason(d: Difference) -> str:
    was = f"v{d.ledger_value}" if d.ledger_value else "unset"
    now = f"v{d.mlflow_value}" if d.mlflow_value else "unset"
    text = f"changed outside lakeloop: MLflow shows {now}, the ledger had {was}"
    if d.head is not None and d.mlflow_value == d.head.from_version:
        text += (f"; the ledger's last entry ({d.head.actor} at {d.head.at:%Y-%m-%d %H:%M:%S}Z) moved it away from {now}: "
                 "a person put it back, or that lakeloop change never reached MLflow")
    return text


def _settle(settings: Settings, diffs: list[Difference], aliases: Mapping[str, str], share: float) -> dict[str, str]:
    """Keep the rollout state consistent with what a person did; -> alias -> what was done (for the alert)."""
    notes: dict[str, str] = {}
    holders = {v: a for a, v in aliases.items() if a in ALIASES}
    for d in diffs:
        done = []
        if d.mlflow_value is not None:
            model_store.mark_version(settings, d.mlflow_value, d.alias, note=f"external: {d.alias} set by hand in MLflow")  # type: ignore[arg-type]
        old = d.ledger_value
        if old is not None and old not in holders:
            state = {"canary": "rolled_back", "champion": "retired"}.get(d.alias)
            if state is not None:
                model_store.mark_version(settings, old, state, note=f"external: {d.alias} alias moved away by hand")  # type: ignore[arg-type]
        if d.alias == "canary" and d.mlflow_value is None:
            # no canary, no canary traffic (as promote/rollback leave it). Only for a detected removal, after the
            # ledger commit: a share written on every look could undo a start_canary running at the same moment.
            if share > 0:
                model_store.set_canary_share(settings, 0.0)
            done.append(f"canary share set to 0 (was {share:.0%})" if share > 0 else "canary share already 0")
        elif d.alias == "canary":
            done.append(f"the canary keeps the current share ({share:.0%})" + (": it gets no traffic until a step gives it some" if share == 0 else ""))
        elif d.alias == "champion" and aliases.get("canary"):
            done.append(f"canary v{aliases['canary']} left in flight at {share:.0%} traffic")
        if d.alias == "champion" and d.mlflow_value is None:
            done.append("no champion: the scoring service answers 503 until one is set")
        notes[d.alias] = "; ".join(done) or "recorded"
    return notes


def detect_external_changes(settings: Settings, *, settle_seconds: float = 60.0, attempts: int = 3) -> list[ExternalChange]:
    """Record alias changes lakeloop did not make, keep the canary share consistent, and return them.

    Reads MLflow first and the ledger second (a promoter writes the ledger first, so it cannot slip between
    the two reads unseen), appends every difference (``differences``) to the ledger in one compare-and-set
    commit (``trainers.registry.record_external``), and only after that commit: a canary alias gone by hand
    -> canary share 0 (the service ignores the share without a canary anyway); the versions involved get
    their rollout-state tag. A champion moved by hand while a
    canary is in flight leaves the canary as it is. Idempotent: a second call finds nothing new. When a
    promoter or another detector writes the ledger meanwhile, compares again (up to ``attempts`` times)."""
    reg = _registry()
    for attempt in range(attempts):
        view = model_store.registry_view(settings)
        if view is None:
            return []
        ledger_version, heads = reg.ledger_heads(settings)
        now = datetime.now(UTC)
        share = model_store.share_from_tags(view.tags)  # the same read as the aliases
        diffs = differences(view.aliases, heads, now=now, settle_seconds=settle_seconds)
        if not diffs:
            return []
        details = {d.alias: _mlflow_details(settings, view, d.mlflow_value) for d in diffs}
        entries = [reg.ExternalEntry(d.alias, d.ledger_value, d.mlflow_value, _reason(d), details[d.alias]) for d in diffs]
        try:
            recorded = reg.record_external(settings, entries, ledger_version=ledger_version)
        except reg.AliasConflictError:
            log.info("the ledger moved while comparing it with MLflow (attempt %d of %d); comparing again", attempt + 1, attempts)
            continue
        notes = _settle(settings, diffs, view.aliases, share)
        changes = [ExternalChange(settings.registered_model_name, d.alias, d.ledger_value, d.mlflow_value, now,
                                  d.head.at if d.head is not None else None, recorded, details[d.alias], notes[d.alias]) for d in diffs]
        for c in changes:
            log.warning("%s", c.summary())
        return changes
    raise reg.AliasConflictError(f"the promotion ledger kept moving while comparing it with MLflow ({attempts} attempts)",
                                 hint="promoters are busy; the next check will record what is left")
