"""The rollout state machine: challenger -> canary (traffic steps) -> champion, or rollback.

Every alias change goes through ``trainers.registry`` (compare-and-set + promotion ledger); every
transition is also a tag on the model version; the canary's traffic share is a registered-model tag that
the scoring service polls. The decision itself is the pure ``decide_rollout`` (``monitors.decision``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

from infra.errors import DataError, MissingDependencyError
from infra.settings import Settings
from monitors import model_store
from monitors.decision import Decision, Hold, Promote, Rollback, RolloutPolicy, decide_rollout, next_step

__all__ = [
    "Decision", "Hold", "Promote", "Rollback", "RolloutPolicy", "RolloutStatus", "apply_decision",
    "decide_rollout", "promote", "read_status", "rollback", "start_canary",
]


@dataclass(frozen=True)
class RolloutStatus:
    champion: str | None
    canary: str | None
    challenger: str | None
    canary_share: float


def _registry() -> ModuleType:
    try:
        from trainers import registry
    except ImportError as exc:
        raise MissingDependencyError(
            "trainers.registry (compare-and-set aliases + promotion ledger) is not importable",
            hint="it comes with the training package; reinstall lakeloop (`pip install -e .`)",
        ) from exc
    return registry


def read_status(settings: Settings) -> RolloutStatus:
    a = model_store.aliases(settings)
    share = model_store.canary_share(settings) if a.get("canary") else 0.0
    return RolloutStatus(a.get("champion"), a.get("canary"), a.get("challenger"), share)


def _metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items()}


def start_canary(
    settings: Settings,
    *,
    version: str | None = None,
    policy: RolloutPolicy = RolloutPolicy(),
    actor: str,
    reason: str,
) -> RolloutStatus:
    """challenger -> canary at the first traffic step. Without a champion the version simply becomes champion."""
    reg = _registry()
    status = read_status(settings)
    version = str(version or status.challenger or "")
    if not version:
        raise DataError("no version given and no `challenger` alias to start a canary from", hint="train and gate a model first, or pass --version")
    if status.canary is not None:
        raise DataError(f"version {status.canary} is already the canary", hint="promote or roll it back first (`lakeloop promote` / `lakeloop rollback`)")
    if status.champion is None:
        reg.set_alias_cas(settings, "champion", None, version, actor=actor, reason=f"first champion: {reason}", metrics={})
        model_store.mark_version(settings, version, "champion", note=f"{actor}: first champion")
        return read_status(settings)
    model_store.set_canary_share(settings, 0.0)  # the alias moves before any traffic does
    reg.set_alias_cas(settings, "canary", None, version, actor=actor, reason=reason, metrics={})
    if status.challenger == version:
        reg.delete_alias_cas(settings, "challenger", version, actor=actor, reason="moved to canary", metrics={})
    share = policy.steps[0]
    model_store.set_canary_share(settings, share)
    model_store.mark_version(settings, version, "canary", note=f"{actor}: {share:.0%} traffic ({reason})")
    return read_status(settings)


def retire_challenger(settings: Settings, version: str, *, actor: str, reason: str) -> RolloutStatus:
    """Take a waiting challenger out of the rollout (its alias removed, the version tagged why); it stays registered."""
    reg = _registry()
    reg.delete_alias_cas(settings, "challenger", version, actor=actor, reason=f"retired: {reason}", metrics={})
    model_store.mark_version(settings, version, "retired", note=f"{actor}: {reason}")
    return read_status(settings)


def _the_canary(status: RolloutStatus, expected: str | None, *, doing: str, hint: str) -> str:
    """The canary version to ``doing``; refuses when there is none or it is not the one the caller looked at."""
    if status.canary is None:
        raise DataError(f"there is no canary to {doing}", hint=hint)
    if expected is not None and str(expected) != status.canary:
        raise DataError(f"the canary is version {status.canary}, not {expected}", hint="re-read `lakeloop rollout status`")
    return status.canary


def promote(
    settings: Settings,
    *,
    actor: str,
    reason: str,
    expected_canary: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> RolloutStatus:
    """canary -> champion (compare-and-set on both aliases); the old champion is retired, not deleted."""
    reg = _registry()
    status = read_status(settings)
    version = _the_canary(status, expected_canary, doing="promote", hint="start one with `lakeloop promote --start` from the challenger")
    old = status.champion
    # Drop the canary first (compare-and-set): of racing promoters only one gets past this line, and a
    # loser changes nothing. For a moment the old champion serves everything, which is always safe.
    reg.delete_alias_cas(settings, "canary", version, actor=actor, reason=f"promoting to champion: {reason}", metrics=_metrics(metrics))
    model_store.set_canary_share(settings, 0.0)
    reg.set_alias_cas(settings, "champion", old, version, actor=actor, reason=reason, metrics=_metrics(metrics))
    model_store.mark_version(settings, version, "champion", note=f"{actor}: {reason}")
    if old is not None:
        model_store.mark_version(settings, old, "retired", note=f"{actor}: replaced by v{version}")
    return read_status(settings)


def rollback(
    settings: Settings,
    *,
    actor: str,
    reason: str,
    expected_canary: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> RolloutStatus:
    """Canary traffic to 0 at once, then drop the canary alias; the champion is not touched."""
    reg = _registry()
    version = _the_canary(read_status(settings), expected_canary, doing="roll back", hint="`lakeloop rollout status` shows the aliases")
    model_store.set_canary_share(settings, 0.0)
    reg.delete_alias_cas(settings, "canary", version, actor=actor, reason=f"rollback: {reason}", metrics=_metrics(metrics))
    model_store.mark_version(settings, version, "rolled_back", note=f"{actor}: {reason}")
    return read_status(settings)


def step_up(settings: Settings, share: float, *, actor: str, reason: str) -> RolloutStatus:
    """Give the canary more traffic (an allowed step); no alias moves."""
    status = read_status(settings)
    if status.canary is None:
        raise DataError("there is no canary to step up", hint="start one from the challenger first")
    model_store.set_canary_share(settings, share)
    model_store.mark_version(settings, status.canary, "canary", note=f"{actor}: {share:.0%} traffic ({reason})")
    return read_status(settings)


def apply_decision(
    settings: Settings,
    decision: Decision,
    *,
    canary_version: str,
    actor: str,
    metrics: Mapping[str, float] | None = None,
) -> RolloutStatus:
    """Carry out a decision for ``canary_version`` (refuses if the canary moved meanwhile)."""
    status = read_status(settings)
    if status.canary != str(canary_version):
        raise DataError(
            f"the canary changed from {canary_version} to {status.canary} during analysis",
            hint="nothing was done; the next analysis window will look at the new canary",
        )
    if isinstance(decision, Rollback):
        return rollback(settings, actor=actor, reason=decision.reason, expected_canary=canary_version, metrics=metrics)
    if isinstance(decision, Promote):
        if decision.final:
            return promote(settings, actor=actor, reason=decision.reason, expected_canary=canary_version, metrics=metrics)
        return step_up(settings, decision.to_share or 0.0, actor=actor, reason=decision.reason)
    return status


def next_share(policy: RolloutPolicy, status: RolloutStatus) -> float | None:
    return next_step(policy, status.canary_share)
