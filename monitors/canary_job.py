"""One canary analysis window end to end: load, compare, decide (pure), act through the rollout module, alert."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import httpx
import pandas as pd

from infra.errors import ConfigError
from infra.settings import Settings
from monitors import model_store, rollout
from monitors.alerts import Alert, Delivery, Notifier
from monitors.canary import CanaryComparison, analyze_window
from monitors.decision import Decision, Hold, Promote, Rollback, RolloutPolicy, decide_rollout
from monitors.windows import Source, load_window


def policy_from_settings(settings: Settings, **overrides: object) -> RolloutPolicy:
    try:
        steps = tuple(float(s) for s in settings.canary_steps.split(",") if s.strip())
        return RolloutPolicy(steps=steps, **overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"bad canary_steps {settings.canary_steps!r}: {exc}", hint="e.g. LAKELOOP_CANARY_STEPS=0.1,0.5") from None


def service_counters(settings: Settings, *, timeout: float = 2.0) -> dict[str, tuple[int, int]] | None:
    """(requests, errors) per version since the scoring service started; None when it is not reachable."""
    try:
        body = httpx.get(f"{settings.serve_url}/stats", timeout=timeout).raise_for_status().json()
    except httpx.HTTPError:
        return None
    return {v: (int(n), int(body["errors"].get(v, 0))) for v, n in body["requests"].items()}


@dataclass(frozen=True)
class CanaryResult:
    comparison: CanaryComparison | None  # None: no canary
    decision: Decision
    before: rollout.RolloutStatus
    after: rollout.RolloutStatus
    delivery: Delivery | None
    invalid_records: Mapping[str, int] = field(default_factory=dict)  # topic -> records skipped (Kafka windows)


def analyze_and_act(
    settings: Settings,
    predictions: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    policy: RolloutPolicy,
    notifier: Notifier,
    actor: str = "canary-analysis",
    counters: Mapping[str, tuple[int, int]] | None = None,
    apply: bool = True,
    links: Mapping[str, str] | None = None,
) -> CanaryResult:
    before = rollout.read_status(settings)
    if before.canary is None or before.champion is None:
        return CanaryResult(None, Hold("no canary in flight"), before, before, None)
    comparison = analyze_window(
        predictions, feedback, champion_version=before.champion, canary_version=before.canary, counters=counters
    )
    decision = decide_rollout(comparison, policy, current_share=before.canary_share)
    after, delivery = before, None
    if apply and not isinstance(decision, Hold):
        after = rollout.apply_decision(settings, decision, canary_version=before.canary, actor=actor, metrics=comparison.metrics())
        url = model_store.model_url(settings, before.canary)
        all_links = {"canary_model": url, "champion_model": model_store.model_url(settings, before.champion), **(links or {})}
        details = {k: round(v, 4) for k, v in comparison.metrics().items()}
        if isinstance(decision, Rollback):
            alert = Alert("rollback", f"canary v{before.canary} rolled back: {decision.reason}", "critical", details, all_links,
                          dedup_key=f"rollback:{before.canary}")
            delivery = notifier.notify(alert)
        elif isinstance(decision, Promote) and decision.final:
            alert = Alert("promote", f"v{before.canary} promoted to champion (was v{before.champion}): {decision.reason}", "info",
                          details, all_links, dedup_key=f"promote:{before.canary}")
            delivery = notifier.notify(alert)
    return CanaryResult(comparison, decision, before, after, delivery)


def run_canary_window(
    settings: Settings,
    *,
    since: datetime,
    until: datetime,
    notifier: Notifier,
    policy: RolloutPolicy | None = None,
    source: Source = "lake",
    feedback_until: datetime | None = None,
    actor: str = "canary-analysis",
    apply: bool = True,
    links: Mapping[str, str] | None = None,
) -> CanaryResult:
    """Predictions served in [since, until) and the feedback on them up to ``feedback_until`` (default until).
    Records of a Kafka window that the ingestor would reject are skipped; ``invalid_records`` counts them."""
    window = load_window(settings, since=since, until=until, feedback_until=feedback_until, source=source)
    result = analyze_and_act(
        settings, window.predictions, window.feedback, policy=policy or policy_from_settings(settings), notifier=notifier,
        actor=actor, counters=service_counters(settings), apply=apply, links=links,
    )
    return replace(result, invalid_records=dict(window.invalid))
