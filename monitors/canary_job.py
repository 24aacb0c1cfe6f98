"""One canary analysis end to end: load, compare, decide (pure), act through the rollout module, draw, alert.

By default the analysis is pooled: every prediction served since the canary started (its latest ``canary``
entry in the promotion ledger) and all the feedback on them that has arrived, with looks at every window
boundary back to the start, so the always-valid tests of ``monitors.sequential`` keep their level however
many windows are analysed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import httpx
import pandas as pd

from infra import links as ui_links
from infra.errors import ConfigError, ServiceError
from infra.settings import Settings
from monitors import rollout
from monitors.alerts import Alert, Delivery, Notifier
from monitors.canary import CanaryComparison, Replay, analyze_window
from monitors.decision import (
    Decision,
    Hold,
    Promote,
    Rollback,
    RolloutPolicy,
    decide_rollout,
)
from monitors.windows import Source, load_window

log = logging.getLogger("lakeloop.monitors.canary_job")
MAX_LOOKS = 1000  # looks reconstructed back to the canary's start; older boundaries are dropped


def policy_from_settings(settings: Settings, **overrides: object) -> RolloutPolicy:
    try:
        steps = tuple(float(s) for s in settings.canary_steps.split(",") if s.strip())
        kwargs: dict[str, object] = {"equivalence_feedback": settings.canary_promote_after_labels, **overrides}
        return RolloutPolicy(steps=steps, **kwargs)  # type: ignore[arg-type]
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
    chart_url: str | None = None  # http URL of this analysis's picture in the canary's training run (None: not logged)


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
    look_times: Sequence[datetime] | None = None,
    picture: Callable[[CanaryResult], str | None] | None = None,
    replay: Replay | None = None,
) -> CanaryResult:
    """Compare, decide and act on predictions and feedback already loaded. ``look_times``: the analyses so
    far (the last one now) when the data is pooled since the canary started; None: the data is one look.
    ``picture``: draws and logs the analysis (after acting, before alerting: a promote or rollback alert links it as
    ``canary_picture``) and returns its http URL; one that fails leaves the alert without it, saying why.
    ``replay``: scores texts with a version, for the paired design (``monitors.canary.paired_labels``); None: the arms."""
    before = rollout.read_status(settings)
    if before.canary is None or before.champion is None:
        return CanaryResult(None, Hold("no canary in flight"), before, before, None)
    compare = lambda replay: analyze_window(  # noqa: E731
        predictions, feedback, champion_version=before.champion, canary_version=before.canary, counters=counters,
        look_times=look_times, config=policy.comparison_config(), replay=replay)
    try:
        comparison = compare(replay)
    except Exception as exc:  # noqa: BLE001 - a model that fails to load or score: the arms are still compared
        if replay is None:
            raise
        log.warning("canary v%s: the paired design could not score the labels (%s: %s); comparing the arms instead",
                    before.canary, type(exc).__name__, str(exc)[:300])
        comparison = compare(None)
    decision = decide_rollout(comparison, policy, current_share=before.canary_share)
    after, delivery = before, None
    if apply and not isinstance(decision, Hold):
        after = rollout.apply_decision(settings, decision, canary_version=before.canary, actor=actor, metrics=comparison.metrics())
    result = CanaryResult(comparison, decision, before, after, None)
    chart_url, chart_note = _draw_picture(picture, result) if picture is not None else (None, None)
    if apply and (isinstance(decision, Rollback) or (isinstance(decision, Promote) and decision.final)):
        all_links = {"canary_model": ui_links.mlflow_model_version(settings, before.canary),
                     "champion_model": ui_links.mlflow_model_version(settings, before.champion), "canary_picture": chart_url,
                     **(links or {})}
        details = {k: round(v, 4) for k, v in comparison.metrics().items()} | ({"picture": chart_note} if chart_note else {})
        if isinstance(decision, Rollback):
            alert = Alert("rollback", f"canary v{before.canary} rolled back: {decision.reason}", "critical", details, all_links,
                          dedup_key=f"rollback:{before.canary}")
        else:
            alert = Alert("promote", f"v{before.canary} promoted to champion (was v{before.champion}): {decision.reason}", "info",
                          details, all_links, dedup_key=f"promote:{before.canary}")
        delivery = notifier.notify(alert)
    return replace(result, delivery=delivery, chart_url=chart_url)


def _draw_picture(picture: Callable[[CanaryResult], str | None], result: CanaryResult) -> tuple[str | None, str | None]:
    """(the picture's URL, None) or (None, why not): the decision is already carried out, and its alert goes out anyway."""
    try:
        return picture(result), None
    except ServiceError as exc:
        note = f"not logged ({exc.message})"
        log.warning("canary v%s: the analysis picture was %s", result.before.canary, note)
    except Exception as exc:  # noqa: BLE001 - a bug in the drawing must not silence a rollback alert: logged with its traceback
        note = f"not drawn ({type(exc).__name__}: {exc})"[:300]
        log.warning("canary v%s: the analysis picture was %s", result.before.canary, note, exc_info=True)
    return None, note


def canary_started_at(settings: Settings, canary_version: str) -> datetime | None:
    """When ``canary_version`` last became the canary: the latest promotion-ledger entry setting alias
    ``canary`` to it for this model (read only); None when the ledger has no such entry."""
    from trainers.registry import ledger_entries

    ledger = ledger_entries(settings)
    if ledger.empty:
        return None
    mine = ledger[(ledger["model_name"] == settings.registered_model_name) & (ledger["alias"] == "canary")
                  & (ledger["action"] == "set") & (ledger["to_version"].astype(str) == str(canary_version))]
    if mine.empty:
        return None
    return pd.Timestamp(mine["at"].max()).to_pydatetime()


def look_times_between(start: datetime, until: datetime, step: timedelta, *, max_looks: int = MAX_LOOKS) -> list[datetime]:
    """Looks every ``step`` back from ``until`` to just after ``start`` (oldest first, ``until`` last): the
    analyses a canary analysed once per window has had. At most ``max_looks``."""
    if step <= timedelta(0):
        raise ValueError(f"the step between looks must be positive, got {step}")
    out = [until]
    while len(out) < max_looks and out[-1] - step > start:
        out.append(out[-1] - step)
    return out[::-1]


def run_canary_window(
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime,
    notifier: Notifier,
    policy: RolloutPolicy | None = None,
    source: Source = "lake",
    feedback_until: datetime | None = None,
    actor: str = "canary-analysis",
    apply: bool = True,
    links: Mapping[str, str] | None = None,
    pooled: bool = True,
) -> CanaryResult:
    """Analyse the canary at ``until`` and act on the decision.

    ``pooled`` (default): predictions served since the canary started (promotion ledger) up to ``until``,
    with feedback up to ``feedback_until`` (default until), looked at once per window of ``until - since``
    (``settings.canary_window_minutes`` without ``since``) back to the start. If the ledger does not know
    the canary's start, the window [since, until) is the only data (logged). ``pooled=False``: predictions
    served in [since, until) as one look (not valid when repeated every window).
    Records of a Kafka window that the ingestor would reject are skipped; ``invalid_records`` counts them."""
    step = (until - since) if since is not None else timedelta(minutes=settings.canary_window_minutes)
    start, look_times = since if since is not None else until - step, None
    if pooled:
        status = rollout.read_status(settings)
        started = canary_started_at(settings, status.canary) if status.canary is not None else None
        if started is not None:
            start = started
        elif status.canary is not None:
            log.warning("no promotion-ledger entry for canary v%s: analysing the window since %s only", status.canary, start)
        if start < until:
            look_times = look_times_between(start, until, step)
    if start >= until:
        raise ValueError(f"window start {start} is not before its end {until}")
    window = load_window(settings, since=start, until=until, feedback_until=feedback_until, source=source)
    rules = policy or policy_from_settings(settings)

    def picture(result: CanaryResult) -> str | None:  # after acting: a picture never holds a rollback back
        return log_canary_chart(settings, result, window.predictions, look_times=look_times or [until], until=until, applied=apply,
                                policy=rules)

    result = analyze_and_act(
        settings, window.predictions, window.feedback, policy=rules, notifier=notifier, actor=actor,
        counters=service_counters(settings), apply=apply, links=links, look_times=look_times, picture=picture,
        replay=registry_replay(settings) if settings.canary_paired else None,
    )
    return replace(result, invalid_records=dict(window.invalid))


def registry_replay(settings: Settings) -> Replay:
    """Scores texts with a registered version (loaded once per analysis, from our own registry): the paired design's
    scorer. A version that fails to load or score raises, and the analysis falls back to comparing the arms."""
    from monitors.serve import predict_scores

    loaded: dict[str, object] = {}

    def replay(version: str, texts: pd.DataFrame) -> object:
        if version not in loaded:
            from monitors import model_store

            loaded[version] = model_store.load_pyfunc(settings, version)
        return predict_scores(loaded[version], texts[["prompt", "response"]])

    return replay


def decision_label(decision: Decision) -> str:
    """What a decision did, in a few words, for the picture."""
    if isinstance(decision, Promote):
        return "Promote to champion" if decision.final else f"Promote to {decision.to_share or 0:.0%}"
    return type(decision).__name__


def log_canary_chart(settings: Settings, result: CanaryResult, predictions: pd.DataFrame, *, look_times: Sequence[datetime],
                     until: datetime, applied: bool, policy: RolloutPolicy) -> str | None:
    """The analysis drawn (``monitors.charts.canary_chart``: agreement per arm with its always-valid interval at each
    look, the difference's confidence sequence, the canary's share of served predictions per window, the canary's
    start and this decision) and logged to the canary version's training run as ``canary/v<canary>-<until>.png``
    (the analysis has no MLflow run of its own); -> its http URL. None when that version has no run."""
    from monitors import model_store
    from monitors.canary import served_shares
    from monitors.charts import CanaryEvent, CanaryLook, canary_chart
    from trainers.tracking import log_run_png

    comparison, canary, champion = result.comparison, result.before.canary, result.before.champion
    if comparison is None or canary is None or champion is None:
        return None
    view = model_store.version_view(settings, canary)
    if view is None or view.run_id is None:
        log.info("canary v%s has no MLflow run: its analysis picture is not logged", canary)
        return None
    shares: Sequence[float | None] = [None] * len(look_times)
    if "served_at" in predictions.columns:
        shares = served_shares(predictions, champion_version=champion, canary_version=canary, look_times=look_times)
    looks = [CanaryLook(t, c, s) for t, c, s in zip(look_times, comparison.looks, shares, strict=True)]
    started = canary_started_at(settings, canary)
    label = decision_label(result.decision) + ("" if applied or isinstance(result.decision, Hold) else " (not applied)")
    events = [*([CanaryEvent(started, "canary start")] if started is not None else []), CanaryEvent(until, label)]
    paired = comparison.paired_looks if len(comparison.paired_looks) == len(looks) else None
    png = canary_chart(looks, events=events, config=policy.comparison_config(), title=f"Canary v{canary} vs champion v{champion}",
                       paired=paired)
    stamp = pd.Timestamp(until).tz_convert("UTC") if pd.Timestamp(until).tzinfo else pd.Timestamp(until)
    return log_run_png(settings, view.run_id, png, f"canary/v{canary}-{stamp:%Y%m%dT%H%M%SZ}.png")
