"""The main job on autopilot: the platform runs the loop; this script only plays the app and narrates.

It starts the platform with autopilot on (the supervised ingestors and every sensor of the loop), then:
1. sends the feedback backlog collected before lakeloop to Kafka, and waits while the daemon ingests, curates,
   trains, gates and registers the first model; the first model becomes champion by itself only if it beats the
   baselines (else it waits, an alert says why, and the demo steps in as an operator would, in the MLflow
   registry: an external change the daemon records and does not fight);
2. plays stationary live traffic through `lakeloop serve` for a drift window (no drift alert expected);
3. plays drifted traffic (an app release that cuts answers) until the drift alert fires; the daemon retrains on
   what it curated, gates the candidate and puts it on canary; traffic goes on and the canary is analysed
   every window until Promote or Rollback (or the demo's window budget ends: Hold);
4. meanwhile (while that canary is in flight) an app release logs inverted thumbs for a while (a bad stretch of
   data): the next model trained on it must be stopped by the gate, or wait for the canary in flight and then be
   rolled back by its own canary analysis.

It never launches a run or moves an alias for the daemon: everything it says about the loop comes from the
Dagster instance (runs with their sensor and trigger tags, materializations), the promotion ledger and the
alerts the webhook receiver got.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from infra import jars, services
from infra.settings import Settings
from orchestration.demo import (
    DemoConfig,
    DemoSummary,
    ServeProcess,
    _backlog,
    _lake_facts,
    _produce,
    _question_order,
)
from orchestration.demo_receiver import AlertReceiver
from trainers.config import TrainConfig

Say = Callable[[str], None]
ACTOR = "operator:demo"


@dataclass(frozen=True)
class AutopilotDemoConfig:
    base: DemoConfig
    tick_seconds: int = 5
    drift_window_minutes: float = 0.5  # ~2.5 bursts, ~80 scored answers per window (thresholds are calibrated to the window's size)
    canary_window_minutes: float = 1.0  # ~80 labelled conversations a window (both arms): the paired canary test rolls a
    # canary 10 points worse back within 2 windows in ~93% of simulated cases (bench/bench_canary.py, section d; 60 a window: ~83%)
    chunk_questions: int = 12  # questions per traffic burst (4 scored answers each: 1 verdict and 6 preferences per question)
    chunk_every_s: float = 9.0  # one burst this often: ~320 scored answers and ~80 labelled conversations per minute
    first_model_timeout_s: float = 900.0
    retrain_timeout_s: float = 900.0  # a retraining with every candidate took up to 574 s on 2 busy cores (--encoder)
    max_drift_windows: int = 4
    max_canary_windows: int = 6
    bad_stretch_questions: int = 400  # the bad release's share must be large enough to make a bad model
    # the demo's knobs of the loop (settings of the platform it starts)
    # ~200 eval prompts of the 500-question backlog: on qa_feedback the best scorers beat the length baseline by ~0.05-0.07
    # pairwise, and the cluster-paired 95% interval is ~+-0.065 wide at 120 prompts, ~+-0.05 at 200
    eval_fraction: float = 0.4
    retrain_min_new_rows: int = 1000  # the backlog and the bad release retrain; live traffic alone does not, drift does
    promote_after_labels: int = 60  # labelled conversations judged by both models (paired design): under one window here


CHEAP_CANDIDATES = ("tfidf_pairwise", "length_support", "hybrid")


def autopilot_base(data_path: Any, *, encoder: bool = False, **overrides: Any) -> DemoConfig:
    """The app and training sizes of the demo on autopilot: the whole 500-question backlog (the eval split's prompts
    bound how narrow the paired intervals of the first model's gate can be), the baseline rule for the first champion
    applied by autopilot (challengers are gated against the champion). Without ``encoder`` the three cheap candidate
    families compete and the transformer is left out: on 2 busy CPU cores it made the demo's training jobs 191 s and
    574 s long instead of 43 s and 40 s (frozen-layer cache, fine-tune, scoring), and on qa_feedback it does not beat them (the selection
    keeps the simpler model unless the encoder is better by more than a standard error)."""
    base = DemoConfig(data_path=data_path, **{"backlog_questions": 500, **overrides})
    if encoder:
        return base
    return replace(base, train={**base.train, "candidates": list(CHEAP_CANDIDATES)})


@dataclass
class Narrator:
    """Reads what the daemon did from the Dagster instance and tells it once."""

    settings: Settings
    say: Say
    summary: DemoSummary
    seen: dict[str, str] = field(default_factory=dict)  # run id -> last status told

    def instance(self) -> Any:
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.settings.dagster_home))

    def poll(self) -> None:

        with self.instance() as inst:
            records = sorted(inst.get_run_records(), key=lambda r: r.create_timestamp)
            for r in records:
                run = r.dagster_run
                status = run.status.value
                if self.seen.get(run.run_id) == status:
                    continue
                if status in ("QUEUED", "NOT_STARTED", "STARTING") and run.run_id in self.seen:
                    continue
                self.seen[run.run_id] = status
                what = run.job_name + (f" [{run.tags['dagster/partition']}]" if run.tags.get("dagster/partition") else "")
                why = run.tags.get("lakeloop/trigger", "-")
                by = run.tags.get("dagster/sensor_name", "by hand")
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    took = f" in {r.end_time - r.start_time:.0f}s" if r.end_time and r.start_time else ""
                    self.say(f"  [daemon] {what} {status.lower()}{took}")
                    self.summary.facts.setdefault("runs", []).append({"job": run.job_name, "status": status, "sensor": by,
                                                                      "trigger": why, "partition": run.tags.get("dagster/partition")})
                elif status == "STARTED":
                    self.say(f"  [daemon] {what} started by {by} (trigger: {why})")

    def latest(self, asset: str) -> tuple[int, dict[str, Any]] | None:
        """(storage id, metadata) of the latest materialization of ``asset``."""
        import dagster as dg

        with self.instance() as inst:
            recs = inst.fetch_materializations(dg.AssetKey(asset), limit=1).records
        if not recs or recs[0].asset_materialization is None:
            return None
        return recs[0].storage_id, {k: getattr(v, "value", v) for k, v in recs[0].asset_materialization.metadata.items()}

    def of_run(self, asset: str, run_id: str) -> dict[str, Any] | None:
        """Metadata of the latest materialization of ``asset`` by the run ``run_id`` (None: it made none)."""
        import dagster as dg

        with self.instance() as inst:
            recs = inst.fetch_materializations(dg.AssetKey(asset), limit=100).records
        mine = [r for r in recs if r.run_id == run_id and r.asset_materialization is not None]
        if not mine:
            return None
        return {k: getattr(v, "value", v) for k, v in max(mine, key=lambda r: r.storage_id).asset_materialization.metadata.items()}

    def since(self, asset: str, after: int) -> list[dict[str, Any]]:
        """Metadata of every materialization of ``asset`` after storage id ``after``, oldest first."""
        import dagster as dg

        with self.instance() as inst:
            recs = inst.fetch_materializations(dg.AssetKey(asset), limit=100).records
        return [{k: getattr(v, "value", v) for k, v in r.asset_materialization.metadata.items()}
                for r in sorted(recs, key=lambda r: r.storage_id) if r.storage_id > after and r.asset_materialization is not None]

    def wait(self, what: str, done: Callable[[], Any], timeout: float, *, tick: float = 3.0,
             between: Callable[[], None] | None = None) -> Any:
        """Narrate the daemon until ``done()`` is truthy; ``between`` runs each tick (the app's traffic)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            value = done()
            if value:
                return value
            if time.monotonic() > deadline:
                return None
            if between is not None:
                between()
            else:
                time.sleep(tick)


def _aliases(settings: Settings) -> dict[str, str]:
    from monitors import model_store

    return model_store.aliases(settings)


def _alerts(receiver: AlertReceiver, kind: str) -> list[dict[str, Any]]:
    return [a for a in receiver.received if kind in json.dumps(a)[:600]]


class App:
    """The app: scores answers through `lakeloop serve` and sends its users' feedback, in bursts."""

    def __init__(self, settings: Settings, cfg: AutopilotDemoConfig, say: Say) -> None:
        self.settings, self.cfg, self.say = settings, cfg, say
        # questions the backlog did not cover; when it covered all of them, the app's users ask them again (their feedback
        # on answers the lake already holds is dropped as duplicates: only new answers teach the loop something new)
        self.pool = _question_order(cfg.base)[cfg.base.backlog_questions:] or _question_order(cfg.base)
        self.next_q, self.run_id, self.last_burst = 0, 100, 0.0
        self.drifted = False
        self.answers = "full"  # "two_sentences": the bad release's answers, once its widget is fixed
        self.invert_thumbs = False
        self.totals = {"requests": 0, "events": 0}

    def burst(self) -> None:
        """One burst of traffic when it is due, else a short sleep."""
        from feedback.producer import FeedbackProducer
        from feedback.simulate import Scorer, SimConfig, simulate

        wait = self.last_burst + self.cfg.chunk_every_s - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 3.0))
            return
        self.last_burst = time.monotonic()
        qs = tuple(self.pool[(self.next_q + k) % len(self.pool)] for k in range(self.cfg.chunk_questions))
        self.next_q += self.cfg.chunk_questions
        self.run_id += 1
        producer = FeedbackProducer(self.settings)
        send = producer.send if not self.invert_thumbs else (lambda e, **kw: producer.send(_inverted(e), **kw))
        try:
            stats = simulate(self.cfg.base.data_path, SimConfig(questions=qs, drift_after=0.0 if self.drifted else None,
                                                                seed=self.cfg.base.seed + self.run_id, run_id=self.run_id,
                                                                passages=self.cfg.base.passages, answers=self.answers),
                             send=send, scorer=Scorer(self.settings.serve_url), say=self.say, progress_every=0)
            producer.flush()
        finally:
            producer.close()
        self.totals["requests"] += stats.requests
        self.totals["events"] += stats.events


def _inverted(event: Any) -> Any:
    """The bad release's bug: thumbs logged the wrong way round."""
    if isinstance(event, dict) and event.get("event_type") == "thumbs" and isinstance(event.get("value"), int | float):
        return {**event, "value": -event["value"]}
    return event


def _platform(settings: Settings, say: Say) -> None:
    for name, _, fetched in jars.fetch_jars(settings):
        if fetched:
            say(f"fetched the {name} jars")
    # the daemon and the ingestors read the demo's settings: restart them if an earlier platform runs
    services.down(settings, log=lambda m: None, only=["dagster-daemon", "dagster-webserver", *services.INGEST_SERVICE_NAMES])
    services.up(settings, log=lambda m: say(f"  {m}"))


def run_autopilot_demo(settings: Settings, cfg: AutopilotDemoConfig, *, say: Say = print) -> DemoSummary:
    """The autopilot story; see the module docstring. Leaves the services running; the process environment (which the
    in-process Dagster runs read) is given back as it was."""
    from orchestration.materialize import environment_restored

    with environment_restored():
        return _run_autopilot_demo(settings, cfg, say=say)


def _run_autopilot_demo(settings: Settings, cfg: AutopilotDemoConfig, *, say: Say) -> DemoSummary:
    summary = DemoSummary()
    t0 = time.monotonic()
    base = cfg.base
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    with AlertReceiver(log_path=settings.logs_dir / "alerts-received.jsonl") as receiver:
        settings = settings.model_copy(update={
            "autopilot": True, "autopilot_tick_seconds": cfg.tick_seconds, "alert_webhooks": f"slack+{receiver.url}",
            "curation_min_new_rows": 300, "curation_debounce_minutes": 0.25, "retrain_min_new_rows": cfg.retrain_min_new_rows,
            "retrain_cooldown_minutes": 0.0, "curation_eval_fraction": cfg.eval_fraction,
            "canary_promote_after_labels": cfg.promote_after_labels, "canary_window_minutes": cfg.canary_window_minutes,
            "drift_window_minutes": cfg.drift_window_minutes, "drift_windows_to_alert": base.drift_windows_to_alert,
            "canary_steps": base.canary_steps, "train_config": json.dumps(base.train), "eval_n_boot": base.n_boot,
            "gate_must_beat_baselines": base.gate_must_beat_baselines, "drift_reference_sample": base.reference_sample,
        })
        summary.facts["receiver"] = receiver.url
        summary.facts["settings"] = settings  # what the platform ran with (tests read the instance and registry with it)
        from orchestration.materialize import use_instance

        use_instance(settings)  # this process reads the platform's Dagster instance (the summary's lake facts)
        _platform(settings, say)
        from orchestration.automation import set_autopilot

        states = set_autopilot(settings, True)  # an instance switched off earlier: the demo is about autopilot
        candidates = base.train.get("candidates") or list(TrainConfig.model_fields["candidates"].default)
        summary.add("0. autopilot", f"on: {sum(s.running for s in states)}/{len(states)} automations running, "
                    f"ingestors supervised by `lakeloop up`; each training's candidates: {', '.join(candidates)}"
                    + ("" if "encoder" in candidates else " (`lakeloop demo --encoder` adds the transformer)"), say)
        narrator = Narrator(settings, say, summary)
        first = _phase_backlog(settings, cfg, summary, narrator, receiver, say)
        if first is None:
            summary.facts["elapsed_s"] = round(time.monotonic() - t0, 1)
            return summary
        with ServeProcess(settings) as serve:
            serve.wait_for_version("champion", first)
            app = App(settings, cfg, say)
            _phase_stationary(settings, cfg, summary, narrator, app, say)
            canary = _phase_drift(settings, cfg, summary, narrator, receiver, app, serve, say)
            if canary is not None:
                bad = _send_bad_release(settings, cfg, summary, narrator, say)  # its curation and training overlap the canary
                _watch_canary(settings, cfg, summary, narrator, app, canary, "8", say)
                _widget_fixed(app, summary, say)
                _phase_bad_stretch(settings, cfg, summary, narrator, receiver, app, serve, bad, say)
            summary.facts["traffic"] = dict(app.totals)
        summary.alerts = list(receiver.received)
    summary.facts["elapsed_s"] = round(time.monotonic() - t0, 1)
    summary.facts.update(_lake_facts(settings))
    return summary


def _phase_backlog(settings: Settings, cfg: AutopilotDemoConfig, summary: DemoSummary, narrator: Narrator,
                   receiver: AlertReceiver, say: Say) -> str | None:
    from monitors import model_store

    t = time.monotonic()
    sent, bad = _produce(settings, _backlog(cfg.base), cfg.base)
    summary.add("1. feedback backlog", f"{sent} events of {cfg.base.backlog_questions} questions sent to Kafka ({bad} malformed); "
                "the daemon takes it from here", say)
    done = narrator.wait("a first model", lambda: (_aliases(settings).get("champion") or _alerts(receiver, "autopilot_waiting")
                                                   or _alerts(receiver, "gate_failed")), cfg.first_model_timeout_s)
    if done and not _aliases(settings).get("champion") and not _alerts(receiver, "autopilot_waiting"):
        why = _alerts(receiver, "gate_failed")[0].get("text", "")[:400]
        summary.add("2. first model refused", f"the gate refused the first model (the baseline rule is on): {why}", say)
        return None
    if not done:
        summary.add("2. first model", f"nothing registered after {cfg.first_model_timeout_s:.0f}s: see the Dagster UI's runs "
                    f"and sensor ticks ({settings.dagster_url}/automation)", say)
        return None
    summary.facts["time_to_first_model_s"] = round(time.monotonic() - t, 1)  # backlog sent -> gated model registered
    ev = (narrator.latest("model_evaluation") or (0, {}))[1]
    aliases = _aliases(settings)
    version = aliases.get("champion") or aliases.get("challenger")
    summary.facts["first_model"] = {**{k: v for k, v in ev.items() if k != "model_card"}, "version": version}
    figures = (f"pairwise accuracy {ev.get('pairwise_accuracy', float('nan')):.3f} {ev.get('pairwise_accuracy_ci', '')}, AUC "
               f"{ev.get('auc', float('nan')):.3f}; baselines: length {ev.get('baseline_length_pairwise_accuracy', float('nan')):.3f}, "
               f"TF-IDF {ev.get('baseline_tfidf_lr_pairwise_accuracy', float('nan')):.3f}")
    if "pooled_minus_length_pairwise" in ev:  # a cheap first model: the baseline rules read the cross-fit train split too
        figures += (f"; with its train split cross-fit: pairwise {ev['pooled_pairwise_accuracy']:.3f}, minus length "
                    f"{ev['pooled_minus_length_pairwise']:+.3f} {ev['pooled_minus_length_pairwise_ci']}, minus TF-IDF "
                    f"{ev.get('pooled_minus_tfidf_lr_pairwise', float('nan')):+.3f} {ev.get('pooled_minus_tfidf_lr_pairwise_ci', '')}")
    if aliases.get("champion"):
        summary.add("2. first champion", f"v{version} by the daemon in {time.monotonic() - t:.0f}s: it beats the baselines ({figures})", say)
        summary.add("3. operator", "not needed: autopilot made the first champion itself (a person can still move the alias in "
                    "the MLflow registry: the daemon records that as external and serves it)", say)
        summary.decisions.append(("Champion", f"v{version}: first model, beats the baselines (daemon)"))
        return str(version)
    why = _alerts(receiver, "autopilot_waiting")[0].get("text", "")[:300]
    summary.add("2. first model waits", f"v{version} gated and registered by the daemon in {time.monotonic() - t:.0f}s, but no "
                f"champion: it does not beat the baselines ({figures}). Alert: {why}", say)
    # The operator steps in, in the MLflow registry as a person would: the daemon records it, alerts, and serves it.
    model_store.client(settings).set_registered_model_alias(settings.registered_model_name, "champion", str(version))
    ext = narrator.wait("the external change", lambda: _alerts(receiver, "external_change"), 120)
    summary.add("3. operator", f"made v{version} champion in the MLflow registry; the daemon "
                + ("recorded it in the ledger as external and alerted" if ext else "did not notice within 120s"), say)
    summary.decisions.append(("Champion", f"v{version}: set by an operator in MLflow (recorded as external)"))
    return str(version)


def _judged(report: dict[str, Any]) -> bool:
    """A report that judged some group of signals: one over too few rows (the window closed before the traffic landed)
    judges nothing and says so."""
    return (report.get("n_current") or 0) > 0 and bool(report.get("groups"))


def _report_stall_s(cfg: AutopilotDemoConfig) -> float:
    """How long to wait for the next drift report, with no drift check queued or running, before saying the drift
    checks stalled. Not a budget for the outcome: the demo counts judged windows, so a slow machine (a drift check took
    90 s on 2 busy cores, 3.5 min at load 9) only makes the windows longer (the sensor's next window covers the traffic
    since the last report)."""
    return 2 * cfg.drift_window_minutes * 60 + 300


MAX_REPORT_WAIT_S = 1800.0  # a drift report, however busy the daemon: past this the checks are stuck, not slow


def _drift_check_busy(narrator: Narrator) -> bool:
    """Whether a drift check run is queued or running (the daemon is working on the next report)."""
    import dagster as dg

    with narrator.instance() as inst:
        return bool(inst.get_runs(dg.RunsFilter(job_name="drift_check", statuses=[
            dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]),
            limit=1))


def _wait_report(cfg: AutopilotDemoConfig, narrator: Narrator, app: App, what: str, done: Callable[[], Any]) -> Any:
    """``narrator.wait`` for a drift report: the stall guard (``_report_stall_s``) starts over while a drift check is
    queued or running, so a slow check is waited for and only checks that stopped end the wait (or MAX_REPORT_WAIT_S).
    The soak of 2026-12-07 evening gave up on the stationary report 34 s before a 3.5-minute check delivered it."""
    deadline = time.monotonic() + MAX_REPORT_WAIT_S
    while True:
        got = narrator.wait(what, done, min(_report_stall_s(cfg), max(1.0, deadline - time.monotonic())), between=app.burst)
        if got or time.monotonic() >= deadline or not _drift_check_busy(narrator):
            return got


def _phase_stationary(settings: Settings, cfg: AutopilotDemoConfig, summary: DemoSummary, narrator: Narrator, app: App,
                      say: Say) -> None:
    start = (narrator.latest("drift_report") or (0, {}))[0]
    # a full window of stationary traffic, then the first report that judged a window of it
    window_s = cfg.drift_window_minutes * 60
    narrator.wait("stationary window", lambda: False, window_s + cfg.chunk_every_s, between=app.burst)
    got = _wait_report(cfg, narrator, app, "the stationary drift report",
                       lambda: [d for d in narrator.since("drift_report", start) if _judged(d)])
    d = got[0] if got else {}
    summary.add("4. stationary traffic", f"{app.totals['requests']} requests scored by the champion; drift check: "
                f"drifted={d.get('drifted')} ({str(d.get('summary', 'no report'))[:300]})", say)
    summary.facts["stationary_drift"] = {k: d.get(k) for k in ("drifted", "streak", "alert", "n_current")}


def _wait_drift_alert(cfg: AutopilotDemoConfig, narrator: Narrator, receiver: AlertReceiver, app: App) -> tuple[bool, int]:
    """Drifted traffic until the drift alert, or until ``max_drift_windows`` windows with traffic were judged without
    one, or the drift checks stall. Returns (alerted, judged windows)."""
    start = (narrator.latest("drift_report") or (0, {}))[0]
    judged = lambda: sum(_judged(d) for d in narrator.since("drift_report", start))
    seen, alerted = 0, False
    while seen < cfg.max_drift_windows and not alerted:
        got = _wait_report(cfg, narrator, app, "the drift alert or the next drift report",
                           lambda: _alerts(receiver, "drift") or judged() > seen)
        if not got:
            break
        alerted, seen = bool(_alerts(receiver, "drift")), judged()
    return alerted, seen


def _phase_drift(settings: Settings, cfg: AutopilotDemoConfig, summary: DemoSummary, narrator: Narrator,
                 receiver: AlertReceiver, app: App, serve: ServeProcess, say: Say) -> str | None:
    app.drifted = True
    t_onset = time.monotonic()
    alerted, judged = _wait_drift_alert(cfg, narrator, receiver, app)
    if not alerted:
        summary.add("5. drifted traffic", f"no drift alert after {judged} judged windows"
                    + ("" if judged >= cfg.max_drift_windows else f" (no drift report for {_report_stall_s(cfg):.0f}s)"), say)
        return None
    t_alert = time.monotonic() - t_onset
    summary.facts["time_to_drift_alert_s"] = round(t_alert, 1)
    summary.facts["drift_reports_to_alert"] = judged
    summary.add("5. drift alert", f"cut answers from a new app release: alert after {t_alert:.0f}s, at drift report {judged} "
                f"judged since the onset (windows of {cfg.drift_window_minutes * 60:.0f}s, longer while a check runs)", say)
    before = _aliases(settings)
    canary = narrator.wait("a retrained candidate on canary", lambda: _aliases(settings).get("canary"), cfg.retrain_timeout_s,
                           between=app.burst)
    ev = (narrator.latest("model_evaluation") or (0, {}))[1]
    if not canary:
        summary.add("6. retraining", f"no canary after {cfg.retrain_timeout_s:.0f}s (gate passed: {ev.get('gate_passed')}); "
                    f"aliases {_aliases(settings)}", say)
        return None
    summary.facts["time_to_canary_after_alert_s"] = round(time.monotonic() - t_onset - t_alert, 1)
    summary.add("6. retraining", f"the daemon retrained on the curated drifted feedback: v{canary} passed the gate "
                f"(pairwise {ev.get('pairwise_accuracy', float('nan')):.3f} vs champion v{before.get('champion')}) and went "
                f"to canary at {float(settings.canary_steps.split(',')[0]):.0%} of traffic", say)
    serve.wait_for_version("canary", canary)
    return str(canary)


def _watch_canary(settings: Settings, cfg: AutopilotDemoConfig, summary: DemoSummary, narrator: Narrator, app: App,
                  canary: str, step: str, say: Say) -> None:
    seen = (narrator.latest("rollout_decision") or (0, {}))[0]
    for w in range(cfg.max_canary_windows):
        got = narrator.wait("a canary analysis", lambda seen=seen: (narrator.latest("rollout_decision") or (0, {}))[0] > seen,
                            cfg.canary_window_minutes * 60 + 300, between=app.burst)
        if not got:
            break
        seen, r = narrator.latest("rollout_decision") or (seen, {})
        summary.decisions.append((str(r.get("decision")), str(r.get("reason"))))
        summary.add(f"{step}. canary window {w + 1}", f"{r.get('decision')}: {r.get('reason')}", say)
        if _aliases(settings).get("canary") != canary:
            break
    a = _aliases(settings)
    summary.add(f"{step}. outcome", f"champion v{a.get('champion')}; canary {('v' + a['canary']) if a.get('canary') else 'none'}", say)


def bad_release_events(cfg: AutopilotDemoConfig, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """What a buggy app release logs: its answers are cut to two sentences (texts the lake has not seen, so curation's
    de-duplication keeps them: replayed feedback on known texts would be dropped as duplicates of the earlier events)
    and its feedback widget swapped the buttons: thumbs and preferences the wrong way round. Timed over the last
    minutes (the release is live now). Once the widget is fixed, the release's users give the same feedback the right
    way round (``SimConfig(answers="two_sentences")``): that is what the canary of a model trained on this judges on."""
    from feedback.qa_feedback import load_events
    from feedback.simulate import two_sentence_feedback

    now = now or datetime.now(timezone.utc)
    keep = set(_question_order(cfg.base)[: cfg.bad_stretch_questions])
    events = two_sentence_feedback([e for e in load_events(cfg.base.data_path, copies=2, passages=cfg.base.passages)
                                    if e["event_id"].startswith("qaf1-1-") and int(e["conversation_id"].rsplit("-", 1)[1]) in keep
                                    and e["event_type"] != "correction"])
    out = []
    for n, e in enumerate(events):
        e = {**e, "occurred_at": (now - timedelta(seconds=(len(events) - n) / 5)).isoformat().replace("+00:00", "Z"),
             "metadata": {**(e.get("metadata") or {}), "release": "v3-new-feedback-widget"}}
        if e["event_type"] == "thumbs":
            e["value"] = -e["value"]
        elif e["event_type"] == "preference" and e.get("preferred") in ("a", "b"):
            e["preferred"] = "b" if e["preferred"] == "a" else "a"
        out.append(e)
    return out


@dataclass
class BadRelease:
    sent_at: float
    runs_before: set[str]  # training runs that existed (any status) when the bad data was sent
    holds: dict[str, bool] = field(default_factory=dict)  # training run id -> its pinned gold holds the release's rows


def _training_runs(narrator: Narrator) -> dict[str, Any]:
    """run id -> run (status, tags) of every training run in the instance."""
    import dagster as dg

    with narrator.instance() as inst:
        return {r.run_id: r for r in inst.get_runs(dg.RunsFilter(job_name="training_job"))}


def gold_holds_app(settings: Settings, gold_versions: str, app_id: str) -> bool:
    """Whether the gold tables at ``gold_versions`` (a training run's ``lakeloop/gold_versions`` tag: "examples,pairs")
    hold rows of ``app_id``."""
    from deltalake import DeltaTable

    from infra.storage import storage_options
    from infra.tables import table_uri

    for name, version in zip(("gold/training_examples", "gold/preference_pairs"), gold_versions.split(","), strict=True):
        uri = table_uri(settings, name)
        rows = DeltaTable(uri, version=int(version), storage_options=storage_options(settings, uri=uri)).to_pyarrow_table(
            columns=["app_id"], filters=[("app_id", "=", app_id)])
        if rows.num_rows:
            return True
    return False


def _bad_trainings(settings: Settings, narrator: Narrator, bad: BadRelease) -> dict[str, Any]:
    """The training runs that read the bad release's data: requested after it was sent AND pinned to gold versions that
    hold its rows. A retraining requested meanwhile for another reason (a drift alert waiting for the canary in flight,
    new rows of other apps) pins gold without them and is not the bad candidate (the soak of 2026-12-07 evening took
    such a drift retraining, rightly promoted, for it)."""
    from feedback.simulate import TWO_SENTENCE_APP

    out = {}
    for run_id, run in _training_runs(narrator).items():
        if run_id in bad.runs_before or "lakeloop/gold_versions" not in run.tags:
            continue
        if run_id not in bad.holds:
            bad.holds[run_id] = gold_holds_app(settings, run.tags["lakeloop/gold_versions"], TWO_SENTENCE_APP)
        if bad.holds[run_id]:
            out[run_id] = run
    return out


def _send_bad_release(settings: Settings, cfg: AutopilotDemoConfig, summary: DemoSummary, narrator: Narrator, say: Say) -> BadRelease:
    """Meanwhile (the canary is in flight) a buggy app release logs a stretch of inverted feedback."""
    runs_before = set(_training_runs(narrator))
    t = time.monotonic()
    sent, _ = _produce(settings, bad_release_events(cfg), replace(cfg.base, malformed_share=0.0))
    summary.add("7. bad release", f"meanwhile another app release (answers cut to two sentences) logged {sent} feedback events of "
                f"{cfg.bad_stretch_questions} questions with thumbs and preferences swapped by a widget bug; the daemon curates and "
                "retrains on it", say)
    return BadRelease(t, runs_before)


def _widget_fixed(app: App, summary: DemoSummary, say: Say) -> None:
    """The bad release's widget is fixed: its users (two-sentence answers) now give the right feedback, and the
    app's traffic is theirs from here on. A canary of a model trained on the inverted stretch is judged on it."""
    app.drifted, app.answers = False, "two_sentences"
    summary.add("8b. widget fixed", "the bad release's feedback widget is fixed: from here on the live traffic is that release's "
                "(answers cut to two sentences) with its users' feedback the right way round", say)


def _phase_bad_stretch(settings: Settings, cfg: AutopilotDemoConfig, summary: DemoSummary, narrator: Narrator,
                       receiver: AlertReceiver, app: App, serve: ServeProcess, bad: BadRelease, say: Say) -> None:
    # the training that reads the bad data is requested once curation has put it in gold, and may queue behind one that
    # was already running: wait for it to be requested, then give it retrain_timeout_s of its own
    if not narrator.wait("a training on the bad stretch", lambda: _bad_trainings(settings, narrator, bad), cfg.retrain_timeout_s,
                         between=app.burst):
        summary.add("9. bad candidate", f"no retraining on the bad release's data requested within {cfg.retrain_timeout_s:.0f}s", say)
        return
    finished = lambda: next((run_id for run_id, run in _bad_trainings(settings, narrator, bad).items()
                             if run.status.value in ("SUCCESS", "FAILURE")), None)
    run_id = narrator.wait("a model trained on the bad stretch", finished, cfg.retrain_timeout_s, between=app.burst)
    if not run_id:
        summary.add("9. bad candidate", f"no retraining finished within {cfg.retrain_timeout_s:.0f}s of its request", say)
        return
    narrator.poll()
    summary.facts["time_to_judge_bad_data_s"] = round(time.monotonic() - bad.sent_at, 1)  # bad data sent -> its model gated
    ev = narrator.of_run("model_evaluation", run_id) or {}
    registered = lambda: str((narrator.of_run("registered_model", run_id) or {}).get("model_version") or "") or None
    if not ev.get("gate_passed"):
        # the people on call hear of it: the gate's alert (gate_failure_alert, one autopilot tick)
        alerted = narrator.wait("the gate's alert", lambda: _alerts(receiver, "gate_failed"), 4 * cfg.tick_seconds + 10, between=app.burst)
        summary.add("9. bad candidate", f"stopped by the gate: pairwise {ev.get('pairwise_accuracy', float('nan')):.3f} on its eval split; "
                    f"{str(ev.get('gate_reasons'))[:300]}; champion stays v{_aliases(settings).get('champion')}; "
                    + ("gate_failed alert delivered" if alerted else f"no gate_failed alert within {4 * cfg.tick_seconds + 10}s"), say)
        summary.decisions.append(("Stopped", "the gate refused the model trained on the bad release's data"))
        summary.facts["bad_candidate"] = {"stopped_by": "gate"}
        return
    version = narrator.wait("the bad candidate registered", registered, 120, between=app.burst)
    if not version:
        summary.add("9. bad candidate", f"passed the gate but no new challenger or canary appeared: aliases {_aliases(settings)}", say)
        return
    summary.facts["bad_candidate"] = {"version": version}
    summary.add("9. bad candidate", f"v{version} passed the gate (pairwise {ev.get('pairwise_accuracy', float('nan')):.3f} on an eval "
                "split that holds the bad labels too); it waits for the canary in flight, then the canary analysis judges it on "
                "live traffic", say)
    canary = narrator.wait("the bad candidate on canary", lambda: _aliases(settings).get("canary") == version and version,
                           cfg.max_canary_windows * cfg.canary_window_minutes * 60 + 180, between=app.burst)
    if not canary:
        summary.add("10. bad candidate", f"v{version} did not reach canary: aliases {_aliases(settings)}", say)
        return
    serve.wait_for_version("canary", version)
    _watch_canary(settings, cfg, summary, narrator, app, version, "10", say)
