"""The main job: the whole loop end to end on embedded defaults, with the real qa_feedback data.

Phase 1: the backlog of feedback collected before lakeloop goes to Kafka, is ingested, curated and
trains the first reward model, which passes the gate against the baselines and becomes champion; live
traffic is then scored by the scoring service and its users' real feedback flows in.
Phase 2: the traffic drifts (a new app release with cut answers) until the drift alert fires; a
regressing candidate (trained on label-flipped data) is stopped by the gate, an operator overrides the
gate and puts it on canary anyway, and the canary analysis rolls it back: the champion stays.

Every stage runs as a Dagster materialization or a plain function on the same lake, MLflow server and
Dagster instance that the UIs show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from infra import jars, services
from infra.errors import ServiceError
from infra.settings import Settings
from orchestration.demo_receiver import AlertReceiver
from orchestration.materialize import RunOutcome, environment_restored, materialize

Say = Callable[[str], None]
ACTOR = "lakeloop-demo"


@dataclass(frozen=True)
class DemoConfig:
    data_path: Path
    backlog_questions: int = 400  # phase 1 history (questions 0..N-1)
    live_questions: int = 40  # stationary live traffic, scored by the champion
    drift_window_questions: int = 15  # questions per drift window in phase 2
    canary_window_questions: int = 70  # questions per canary analysis window (one thumbs verdict each)
    malformed_share: float = 0.01
    seed: int = 7
    # the apps log the whole RAG prompt: the question and its grounding passages (feedback.qa_feedback.rag_prompt),
    # which the reward model's support feature reads (TrainConfig.support_feature; docs/design/training.md, "Quality with grounding")
    passages: bool = True
    # CPU budget: one epoch over the backlog's train split; the frozen bottom layers run once per distinct text
    # (TrainConfig.cache_frozen) and the top block + head train on the cache. Eval: every eval cluster (curation
    # holds out ~10% of the prompts; a cap would leave AUC with a handful of thumbs-ups).
    # qa_feedback has ~30 thumbs-ups beside thousands of comparisons that disagree with them on length: the thumbs
    # fit the length prior and calibration, the pairs the text, raters' length bias is a term of the comparisons, and
    # the text part's per-prompt level is pinned to 0 (TrainConfig.rater_length_bias / pointwise_trains_text /
    # pair_center_weight; docs/design/training.md, "Two training options").
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 1, "max_length": 128, "batch_size": 16, "rater_length_bias": True,
                                                           "pointwise_trains_text": False, "probe_steps": 300, "head_l2": 0.01,
                                                           "pair_center_weight": 1.0})
    max_eval_clusters: int | None = None
    n_boot: int = 300
    # The shipped gate: a first model must beat the length baseline and a constant and be no worse than TF-IDF
    # (paired intervals; a cheap first model's train split is cross-fit too); challengers answer to the champion.
    gate_must_beat_baselines: bool = True
    reference_sample: int = 600  # training rows scored by the champion as drift reference
    drift_windows_to_alert: int = 2
    max_drift_windows: int = 4
    max_canary_windows: int = 3
    canary_steps: str = "0.5"


@dataclass
class DemoSummary:
    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, what happened)
    runs: list[RunOutcome] = field(default_factory=list)
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (decision, reason)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, stage: str, what: str, say: Say) -> None:
        self.stages.append((stage, what))
        say(f"[bold]{stage}[/]: {what}")


class ServeProcess:
    """`lakeloop serve` as a child process, for the simulated app to call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServeProcess":
        log = open(self.settings.logs_dir / "serve.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, **self.settings.env()}
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve"], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError("the scoring service exited while starting", hint=f"see {self.settings.logs_dir / 'serve.log'}")
            try:
                if requests.get(f"{self.settings.serve_url}/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise ServiceError("the scoring service did not become ready in 180s", hint=f"see {self.settings.logs_dir / 'serve.log'}")

    def wait_for_version(self, alias: str, version: str | None, timeout: float = 60.0) -> None:
        """Wait until the service's poller has picked up an alias change."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"{self.settings.serve_url}/readyz", timeout=2).json()
                if str(ready.get(alias) or "") == str(version or ""):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1.0)

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------------------------------------
# helpers over the lake, the Dagster instance and the registry
# ---------------------------------------------------------------------------------------------
def _rows(settings: Settings, table: str) -> int:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from infra.storage import storage_options
    from infra.tables import table_uri

    try:
        return DeltaTable(table_uri(settings, table), storage_options=storage_options(settings)).count()
    except TableNotFoundError:
        return 0


def _version(settings: Settings, table: str) -> int | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from infra.storage import storage_options
    from infra.tables import table_uri

    try:
        return DeltaTable(table_uri(settings, table), storage_options=storage_options(settings)).version()
    except TableNotFoundError:
        return None


def _event_days(settings: Settings) -> list[str]:
    """The days (event time) that bronze holds: the curation partitions worth running."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from infra.storage import storage_options
    from infra.tables import table_uri

    col = DeltaTable(table_uri(settings, "bronze/feedback_events"), storage_options=storage_options(settings)).to_pyarrow_table(columns=["event_date"])["event_date"]
    return sorted(str(d) for d in pc.unique(col).to_pylist())


def _metadata(asset: str) -> dict[str, Any]:
    import dagster as dg

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def _training_run_config(cfg: DemoConfig, **train_overrides: Any) -> dict[str, Any]:
    return {"resources": {"training": {"config": {
        "train_config": json.dumps({**cfg.train, **train_overrides}), "n_boot": cfg.n_boot,
        "max_eval_clusters": cfg.max_eval_clusters,
        "gate_must_beat_baselines": cfg.gate_must_beat_baselines}}}}


def _window_config(asset: str, since: datetime, until: datetime, cfg: DemoConfig) -> dict[str, Any]:
    return {"ops": {asset: {"config": {"since": since.isoformat(), "until": until.isoformat()}}},
            "resources": {"monitoring": {"config": {"reference_sample": cfg.reference_sample}}}}


def _question_order(cfg: DemoConfig) -> list[int]:
    """The qa_feedback questions in a seeded random order. The backlog, then live, drifted and canary traffic
    take consecutive slices of it, so every phase sees the same kind of questions (the file's last questions
    differ from the rest: more thumbs-up, longer prompts)."""
    import random

    from feedback.qa_feedback import read_questions

    order = list(range(len(read_questions(cfg.data_path))))
    random.Random(cfg.seed).shuffle(order)
    return order


def _backlog(cfg: DemoConfig) -> list[dict[str, Any]]:
    from feedback.qa_feedback import load_events

    keep = set(_question_order(cfg)[: cfg.backlog_questions])
    return [e for e in load_events(cfg.data_path, passages=cfg.passages) if int(e["conversation_id"].rsplit("-", 1)[1]) in keep]


def _produce(settings: Settings, events: list[Any], cfg: DemoConfig) -> tuple[int, int]:
    """Send events, replacing ``malformed_share`` of them with broken payloads. Returns (sent, malformed)."""
    import random

    from feedback.producer import FeedbackProducer
    from feedback.simulate import MALFORMED_KINDS, malformed

    rng = random.Random(cfg.seed)
    producer = FeedbackProducer(settings)
    bad = 0
    try:
        for e in events:
            if rng.random() < cfg.malformed_share:
                producer.send(malformed(e, MALFORMED_KINDS[rng.randrange(len(MALFORMED_KINDS))]), key=e["conversation_id"])
                bad += 1
            else:
                producer.send(e)
        producer.flush()
    finally:
        producer.close()
    return len(events), bad


def _ingest(settings: Settings, say: Say, summary: DemoSummary) -> None:
    summary.runs += materialize(settings, "group:feedback", say=say)


def _traffic(settings: Settings, cfg: DemoConfig, *, first: int, count: int, run_id: int, drifted: bool, say: Say) -> Any:
    """Simulated traffic over the questions at positions ``first`` .. ``first + count`` of ``_question_order``."""
    from feedback.producer import FeedbackProducer
    from feedback.simulate import Scorer, SimConfig, simulate

    producer = FeedbackProducer(settings)
    try:
        questions = tuple(_question_order(cfg)[first : first + count])
        stats = simulate(cfg.data_path, SimConfig(questions=questions, drift_after=0.0 if drifted else None,
                                                  malformed_share=cfg.malformed_share, seed=cfg.seed + run_id, run_id=run_id,
                                                  passages=cfg.passages),
                         send=producer.send, scorer=Scorer(settings.serve_url), say=say, progress_every=0)
        producer.flush()
    finally:
        producer.close()
    return stats


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def _phase1(settings: Settings, cfg: DemoConfig, summary: DemoSummary, say: Say) -> str:
    """Backlog -> bronze -> curation -> first reward model -> gate -> champion. Returns the champion version."""
    from monitors import rollout

    backlog = _backlog(cfg)
    sent, bad = _produce(settings, backlog, cfg)
    summary.add("1. feedback backlog", f"{sent} events of {cfg.backlog_questions} questions sent to Kafka "
                f"({bad} replaced by malformed payloads)", say)
    _ingest(settings, say, summary)
    summary.add("2. ingestion", f"bronze/feedback_events {_rows(settings, 'bronze/feedback_events')} rows, "
                f"bronze/dead_letters {_rows(settings, 'bronze/dead_letters')} rows", say)
    days = _event_days(settings)
    summary.runs += materialize(settings, "group:curation", partitions=days, say=say)
    summary.add("3. curation", f"{len(days)} day partitions; gold/training_examples v{_version(settings, 'gold/training_examples')} "
                f"({_rows(settings, 'gold/training_examples')} rows), gold/preference_pairs "
                f"v{_version(settings, 'gold/preference_pairs')} ({_rows(settings, 'gold/preference_pairs')} rows)", say)
    outcomes = materialize(settings, "group:training", run_config=_training_run_config(cfg), say=say)
    summary.runs += outcomes
    reg = _metadata("registered_model")
    if not all(o.success for o in outcomes) or not reg:
        raise ServiceError("the first reward model did not pass training, evaluation and the gate",
                           hint=f"open the failed run in the Dagster UI: {outcomes[-1].url if outcomes else settings.dagster_url}")
    version = str(reg["model_version"])
    ev = _metadata("model_evaluation")
    summary.facts["first_model"] = {**{k: v for k, v in ev.items() if k != "model_card"}, "version": version}
    against = ("the baselines" if cfg.gate_must_beat_baselines
               else "the gate without the baseline rule (a few CPU minutes of training; baselines shown beside)")
    summary.add("4. training + gate", f"reward model v{version}: pairwise accuracy {ev.get('pairwise_accuracy', float('nan')):.3f} "
                f"{ev.get('pairwise_accuracy_ci', '')}, AUC {ev.get('auc', float('nan')):.3f} {ev.get('auc_ci', '')}; "
                f"passed {against}; alias challenger", say)
    status = rollout.start_canary(settings, version=version, actor=ACTOR, reason="first model: gate passed against baselines")
    summary.decisions.append(("Promote", f"v{version} -> champion: first model, no champion to compare with; passed {against}"))
    summary.add("5. rollout", f"v{status.champion} is the first champion", say)
    return version


def _phase_live(settings: Settings, cfg: DemoConfig, summary: DemoSummary, serve: ServeProcess, say: Say) -> None:
    since = datetime.now(timezone.utc)
    stats = _traffic(settings, cfg, first=cfg.backlog_questions, count=cfg.live_questions, run_id=1, drifted=False, say=say)
    _ingest(settings, say, summary)
    until = datetime.now(timezone.utc)
    summary.add("6. live traffic", stats.summary(), say)
    summary.runs += materialize(settings, "drift_report", run_config=_window_config("drift_report", since, until, cfg), say=say)
    d = _metadata("drift_report")
    summary.add("7. drift check (stationary)", f"drifted={d.get('drifted')}: {d.get('summary')}", say)


def _phase_drift(settings: Settings, cfg: DemoConfig, summary: DemoSummary, receiver: AlertReceiver, say: Say) -> None:
    first = cfg.backlog_questions + cfg.live_questions
    for w in range(cfg.max_drift_windows):
        since = datetime.now(timezone.utc)
        start = first + w * cfg.drift_window_questions
        if start >= 500:
            start = first  # out of fresh questions: replay them with new ids
        stats = _traffic(settings, cfg, first=start, count=cfg.drift_window_questions, run_id=10 + w, drifted=True, say=say)
        _ingest(settings, say, summary)
        until = datetime.now(timezone.utc)
        summary.runs += materialize(settings, "drift_report", run_config=_window_config("drift_report", since, until, cfg), say=say)
        d = _metadata("drift_report")
        summary.add(f"8. drifted window {w + 1}", f"{stats.requests} requests; drifted={d.get('drifted')} streak={d.get('streak')} "
                    f"alert={d.get('alert', '-')}: {d.get('summary')}", say)
        if any(a.get("kind") == "drift" or "drift" in json.dumps(a)[:400] for a in receiver.received):
            summary.add("9. drift alert", f"delivered to the webhook receiver after {w + 1} drifted windows", say)
            return
    summary.add("9. drift alert", f"not delivered after {cfg.max_drift_windows} windows", say)


def _phase_bad_candidate(settings: Settings, cfg: DemoConfig, summary: DemoSummary, serve: ServeProcess,
                         receiver: AlertReceiver, say: Say) -> None:
    from monitors import rollout
    from trainers import registry
    from trainers.candidate import candidate_from_run

    champion = rollout.read_status(settings).champion
    outcomes = materialize(settings, "group:training", run_config=_training_run_config(cfg, flip_labels=True, run_name="reward-model-flipped"),
                           say=say)
    summary.runs += outcomes
    ev = _metadata("model_evaluation")
    failed = [c for o in outcomes for c in o.failed_checks]
    summary.add("10. regressing candidate", f"trained on label-flipped data; gate passed: {ev.get('gate_passed')} "
                f"(failed checks: {', '.join(failed) or 'none'}); aliases unchanged: champion v{rollout.read_status(settings).champion}", say)
    run_id = str(ev["run_id"])
    cand = candidate_from_run(settings, run_id)
    version, _ = registry.register_version(settings, run_id=run_id, model_uri=cand.model_uri,
                                           tags={**cand.lineage, "lakeloop.gate": "failed", "lakeloop.override": "operator put it on canary"},
                                           actor="operator:demo")
    from monitors.canary_job import policy_from_settings

    rollout.start_canary(settings, version=version, policy=policy_from_settings(settings), actor="operator:demo",
                         reason="gate overridden by an operator (demo)")
    serve.wait_for_version("canary", version)
    summary.add("11. operator override", f"v{version} put on canary at {rollout.read_status(settings).canary_share:.0%} of traffic", say)
    for w in range(cfg.max_canary_windows):
        since = datetime.now(timezone.utc)
        stats = _traffic(settings, cfg, first=cfg.backlog_questions, count=cfg.canary_window_questions, run_id=20 + w, drifted=False, say=say)
        _ingest(settings, say, summary)
        until = datetime.now(timezone.utc)
        summary.runs += materialize(settings, "rollout_decision", run_config=_window_config("rollout_decision", since, until, cfg), say=say)
        r = _metadata("rollout_decision")
        summary.decisions.append((str(r.get("decision")), str(r.get("reason"))))
        summary.add(f"12. canary window {w + 1}", f"{stats.summary()}; decision {r.get('decision')}: {r.get('reason')}", say)
        if rollout.read_status(settings).canary is None:
            break
    status = rollout.read_status(settings)
    summary.facts["final_aliases"] = {"champion": status.champion, "canary": status.canary}
    summary.add("13. outcome", f"champion v{status.champion} (was v{champion}); canary {status.canary or 'none'}", say)


def run_demo(settings: Settings, cfg: DemoConfig, *, say: Say = print) -> DemoSummary:
    """The whole loop; see the module docstring. Leaves the services running; the process environment (which the
    in-process Dagster runs read) is given back as it was."""
    with environment_restored():
        return _run_demo(settings, cfg, say=say)


def _run_demo(settings: Settings, cfg: DemoConfig, *, say: Say) -> DemoSummary:
    summary = DemoSummary()
    t0 = time.monotonic()
    for name, _, fetched in jars.fetch_jars(settings):
        if fetched:
            say(f"fetched the {name} jars")
    # The demo still drives each step itself (issue 15's autopilot demo is not written yet), so the platform runs
    # with autopilot off: no continuous ingestors, every sensor stopped, nothing moves unless the demo moves it.
    settings = settings.model_copy(update={"autopilot": False})
    services.up(settings, log=lambda m: say(f"  {m}"))
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    with AlertReceiver(log_path=settings.logs_dir / "alerts-received.jsonl") as receiver:
        settings = settings.model_copy(update={
            "alert_webhooks": f"slack+{receiver.url}", "drift_windows_to_alert": cfg.drift_windows_to_alert,
            "canary_steps": cfg.canary_steps})
        summary.facts["receiver"] = receiver.url
        _phase1(settings, cfg, summary, say)
        with ServeProcess(settings) as serve:
            _phase_live(settings, cfg, summary, serve, say)
            _phase_drift(settings, cfg, summary, receiver, say)
            _phase_bad_candidate(settings, cfg, summary, serve, receiver, say)
        summary.alerts = list(receiver.received)
    summary.facts["elapsed_s"] = round(time.monotonic() - t0, 1)
    summary.facts.update(_lake_facts(settings))
    return summary


def _lake_facts(settings: Settings) -> dict[str, Any]:
    silver = _metadata("silver_feedback")
    return {
        "tables": {t: {"rows": _rows(settings, t), "version": _version(settings, t)} for t in (
            "bronze/feedback_events", "bronze/dead_letters", "bronze/predictions", "silver/feedback",
            "gold/training_examples", "gold/preference_pairs", "monitoring/drift_metrics", "registry/promotion_ledger")},
        "silver": {k: v for k, v in silver.items() if isinstance(v, (int, float, str)) and len(str(v)) < 200},
    }


def render_summary(settings: Settings, summary: DemoSummary, *, services_stay_up: bool = True) -> str:
    """The closing summary: what happened at each stage and where to look in the UIs."""
    lines = ["", "=" * 78, "lakeloop demo: summary", "=" * 78]
    lines += [f"  {stage:<28} {what}" for stage, what in summary.stages]
    lines += ["", "Tables (rows, Delta version = dataset version for gold):"]
    for name, t in summary.facts.get("tables", {}).items():
        lines.append(f"  {name:<28} {t['rows']:>8} rows   v{'-' if t['version'] is None else t['version']}")
    silver = summary.facts.get("silver", {})
    pii = {k: v for k, v in silver.items() if k.startswith("pii_") and k != "pii_by_type"}  # pii_found, pii_<type>
    dups = {k: v for k, v in silver.items() if "dup" in k}
    if pii:
        lines.append("  PII redacted:  " + ", ".join(f"{k}={v}" for k, v in sorted(pii.items())))
    if dups:
        lines.append("  duplicates:    " + ", ".join(f"{k}={v}" for k, v in sorted(dups.items())))
    first = summary.facts.get("first_model", {})
    if first:
        lines += ["", f"First reward model v{first.get('version')} on the pinned eval set (95% bootstrap intervals):"]
        for k in sorted(first):
            if k.endswith("_ci") or not isinstance(first[k], float):
                continue
            if any(s in k for s in ("pairwise_accuracy", "auc", "log_loss", "calibration")):
                ci = first.get(f"{k}_ci", "")
                lines.append(f"  {k:<44} {first[k]:.3f} {ci}")
    lines += ["", "Rollout decisions:"] + [f"  {d:<10} {r}" for d, r in summary.decisions]
    lines += ["", f"Alerts delivered to the local webhook receiver ({summary.facts.get('receiver')}): {len(summary.alerts)}"]
    for a in summary.alerts:
        text = a.get("text") or a.get("summary") or json.dumps(a)[:160]
        lines.append(f"  - {str(text).splitlines()[0][:150]}")
    lines += ["", f"Dagster UI  {settings.dagster_url}   (asset groups feedback, curation, training, monitoring; runs)",
              f"MLflow UI   {settings.tracking_uri}   (experiment lakeloop-reward; model {settings.registered_model_name} and its aliases)",
              f"Took {summary.facts.get('elapsed_s')}s. " + ("Services are still up: `lakeloop down` stops them."
                                                              if services_stay_up else "Stopping the services (--down).")]
    return "\n".join(lines)
