"""The steps after training, as plain functions the Dagster assets and the CLI both call: evaluate a
trained run against the baselines and the current ``champion``, gate it, and register it as
``challenger`` (through the compare-and-set of ``trainers.registry``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from infra import links
from infra.settings import Settings
from infra.storage import storage_options
from trainers import crossfit as X
from trainers import data as D
from trainers import evaluate as E
from trainers import registry as R
from trainers import selection as S
from trainers import tracking as T
from trainers.gate import GateConfig, GateDecision, baseline_tags, decide_gate, gate_tag

LINEAGE_PREFIX = "lakeloop."
CARD, GATE_PNG, CALIBRATION_PNG = "model_card.md", "evaluation/gate.png", "evaluation/calibration.png"  # run artifacts


@dataclass(frozen=True)
class Candidate:
    run_id: str
    model_uri: str
    lineage: dict[str, str]


@dataclass(frozen=True)
class EvalOutcome:
    candidate: Candidate
    report: E.EvalReport
    decision: GateDecision
    champion_version: str | None
    model_card: str
    trusted_split: str = ""  # the champion's own eval split the gate also compared on, or why it did not
    evidence: str = "the eval split"  # what the baseline rules read (a first model: the eval split + the cross-fit train split)
    pictures: dict[str, str] = field(default_factory=dict)  # "gate" | "calibration" -> http URL of the run's PNG artifact


def candidate_from_run(settings: Settings, run_id: str) -> Candidate:
    tags = T.run_tags(settings, run_id)
    if "lakeloop.model_uri" not in tags:
        from infra.errors import DataError

        raise DataError(f"MLflow run {run_id} has no logged reward model", hint="train with track=true (the default) and let the run finish")
    lineage = {k: v for k, v in tags.items() if k.startswith(LINEAGE_PREFIX) and not k.startswith("lakeloop.gate")}
    return Candidate(run_id, tags["lakeloop.model_uri"], lineage)


def _split_frames(settings: Settings, cand: Candidate, split: D.Split, *, max_questions: int | None = None) -> tuple[Any, Any]:
    ex_uri, pr_uri = cand.lineage["lakeloop.train_examples.uri"], cand.lineage["lakeloop.preference_pairs.uri"]
    ex = D.read_gold(ex_uri, D.EXAMPLES, version=int(cand.lineage["lakeloop.train_examples.version"]),
                     storage_options=storage_options(settings, uri=ex_uri))
    pr = D.read_gold(pr_uri, D.PAIRS, version=int(cand.lineage["lakeloop.preference_pairs.version"]),
                     storage_options=storage_options(settings, uri=pr_uri))
    e, p = ex.split(split), pr.split(split)
    if max_questions:
        keep = set(sorted(set(e["cluster_id"]) | set(p["cluster_id"]))[:max_questions])
        e, p = e[e["cluster_id"].isin(keep)], p[p["cluster_id"].isin(keep)]
    return e.reset_index(drop=True), p.reset_index(drop=True)


def _as_tuples(metrics: dict[str, E.Estimate]) -> dict[str, tuple[float, float, float]]:
    return {k: (v.value, v.lo, v.hi) for k, v in metrics.items()}


def _losing_candidates(settings: Settings, run_id: str) -> dict[str, E.Scorer]:
    """The candidates that lost the run's selection (artifacts ``candidates/<family>``), loaded as scorers."""
    import mlflow

    from trainers.pyfunc import local_scorer

    families = [a.path.split("/")[-1] for a in T.client(settings).list_artifacts(run_id, "candidates") if a.is_dir]
    if not families:
        return {}
    mlflow.set_tracking_uri(settings.tracking_uri)
    root = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="candidates")
    from pathlib import Path

    return {f: local_scorer(Path(root) / f) for f in sorted(families)}


PIN_KEYS = ("lakeloop.train_examples.uri", "lakeloop.train_examples.version", "lakeloop.preference_pairs.uri",
            "lakeloop.preference_pairs.version")


def trusted_evalset(settings: Settings, cand: Candidate, champion_run_id: str | None, *,
                    max_questions: int | None = None) -> tuple[tuple[Any, Any] | None, str]:
    """The champion's own pinned eval split, when the candidate was trained on other gold versions: (frames, label),
    or (None, why not). Read at the champion's versions, so rows that arrived later (and their labels) are not in it."""
    if not champion_run_id:
        return None, "the champion has no MLflow run"
    try:
        champ = candidate_from_run(settings, champion_run_id)
    except Exception as exc:  # noqa: BLE001 - a champion registered by hand may lack lineage: the check is skipped, said why
        return None, f"the champion's run has no lineage ({type(exc).__name__})"
    if any(k not in champ.lineage for k in PIN_KEYS):
        return None, "the champion's run does not record its gold versions"
    if all(champ.lineage.get(k) == cand.lineage.get(k) for k in PIN_KEYS):
        return None, "same gold versions as the candidate"
    label = (f"training_examples v{champ.lineage['lakeloop.train_examples.version']}, "
             f"preference_pairs v{champ.lineage['lakeloop.preference_pairs.version']}")
    try:
        frames = _split_frames(settings, champ, "eval", max_questions=max_questions)
    except Exception as exc:  # noqa: BLE001 - e.g. the versions were vacuumed: say so, keep gating on the newer split
        return None, f"the champion's gold versions ({label}) cannot be read: {type(exc).__name__}: {exc}"[:300]
    if frames[0].empty and frames[1].empty:
        return None, f"the champion's eval split ({label}) is empty"
    return frames, label


def cross_fit_evidence(settings: Settings, run_id: str, train: tuple[Any, Any], *, family: str) -> tuple[Any, str]:
    """A first model's out-of-fold evidence from its train split (``trainers.crossfit``): (OutOfFold, "") or (None, why
    not). The recipe is the run's own: the candidate families and seed of the TrainConfig it logged."""
    if family == "encoder":
        return None, "not cross-fit: the encoder won the selection (one fine-tune per fold)"
    cfg = T.train_config(T.client(settings), run_id) or {}
    if cfg.get("flip_labels"):
        return None, "not cross-fit: a flip_labels run (its recipe learns inverted labels)"
    from trainers.config import TrainConfig
    from trainers.embeddings import embedder_for

    # the recipe's families that do not run the base encoder, and the winner: like the fine-tuned encoder, hybrid_encoder
    # is cross-fit only when it won (its embedding pass over the whole train split would be paid for a family that lost)
    families = [f for f in cfg.get("candidates") or [family] if f == family or f not in S.ENCODER_FAMILIES]
    defaults = TrainConfig.model_fields
    embedder = embedder_for(families, cfg.get("base_model") or defaults["base_model"].default,
                            int(cfg.get("max_length") or defaults["max_length"].default))  # as the training read the texts
    oof = X.out_of_fold(*train, families, seed=int(cfg.get("seed", 13)), embedder=embedder)
    return (oof, "") if oof is not None else (None, "not cross-fit: too few prompt clusters in the train split for the folds")


def evaluate_candidate(settings: Settings, run_id: str, *, gate: GateConfig | None = None, n_boot: int = 1000,
                       max_eval_clusters: int | None = None, cross_fit: bool = True) -> EvalOutcome:
    """Score the candidate, the baselines, the champion and the candidates that lost the selection on the
    candidate's pinned eval split (cluster bootstrap, paired); gate (default GateConfig()); log all to MLflow.

    A first model (no champion) whose winner is a cheap family is judged against the baselines on more prompts when
    ``cross_fit``: the eval split and the train split scored out of fold by the same recipe (``trainers.crossfit``)."""
    gate = gate or GateConfig()
    cand = candidate_from_run(settings, run_id)
    tags = T.run_tags(settings, run_id)
    train, evalset = _split_frames(settings, cand, "train"), _split_frames(settings, cand, "eval", max_questions=max_eval_clusters)
    champ_version = R.get_alias_version(settings, "champion")
    champion = None
    if champ_version is not None:
        mv = R.version_info(settings, champ_version)
        from trainers.model_trust import load_trusted

        champion = R.as_scorer(load_trusted(settings, champ_version))  # only the files the ledger vouches for
        T.set_run_tags(settings, run_id, {"lakeloop.gate.champion_version": champ_version, "lakeloop.gate.champion_run": mv.run_id})
    scorer = R.load_scorer(cand.model_uri)
    report = E.full_report(scorer, train, evalset, n_boot=n_boot, champion=champion,
                           others=_losing_candidates(settings, run_id))
    evidence = "the eval split"
    if champion is None and cross_fit:
        oof, why_not = cross_fit_evidence(settings, run_id, train, family=tags.get("lakeloop.candidate.family", "encoder"))
        if oof is not None:
            report.pooled = X.pooled_evidence(report.scored, evalset, oof, n_boot=n_boot)
            evidence = report.pooled.evidence()
        else:
            evidence = f"the eval split ({why_not})"
    T.set_run_tags(settings, run_id, {"lakeloop.gate.evidence": evidence[:5000]})
    champ_report = report.champion
    if champ_report is not None:
        T.log_run_metrics(settings, run_id, champ_report.flat(prefix="champion"))
    trusted = champion_on_trusted = None
    trusted_label, trusted_note = "", "no champion"
    if champion is not None:
        frames, trusted_label = trusted_evalset(settings, cand, mv.run_id, max_questions=max_eval_clusters)
        if frames is not None:
            champ_metrics, diffs = E.champion_comparison(scorer, champion, frames, n_boot=n_boot)
            trusted, champion_on_trusted = _as_tuples(diffs), _as_tuples(champ_metrics)
            T.log_run_metrics(settings, run_id, {f"trusted_delta_{k}": v.value for k, v in diffs.items() if math.isfinite(v.value)})
        trusted_note = trusted_label if frames is not None else f"not used: {trusted_label}"
        T.set_run_tags(settings, run_id, {"lakeloop.gate.trusted_split": trusted_note})
    # the baseline rules read the pooled evidence of a cross-fit first model, the eval split's otherwise
    base_report = report.pooled or report
    baseline_values = {b: _as_tuples(m) for b, m in base_report.baselines.items()}
    paired = {r: _as_tuples(m) for r, m in report.paired.items()} | {r: _as_tuples(m) for r, m in base_report.paired.items()}
    decision = decide_gate(
        _as_tuples(report.metrics), _as_tuples(champ_report.metrics) if champ_report else None,
        baselines=baseline_values, candidate_slices=report.slices, champion_slices=champ_report.slices if champ_report else None,
        config=gate, paired=paired, class_counts=base_report.class_counts, trusted=trusted, champion_on_trusted=champion_on_trusted,
        trusted_label=trusted_label,
    )
    # the baseline rule on its own, whatever the gate's config: a first champion must beat the baselines (autopilot)
    baselines = decide_gate(_as_tuples(report.metrics), None, baselines=baseline_values, candidate_slices={}, champion_slices=None,
                            config=replace(gate, must_beat_baselines=True), paired=paired, class_counts=base_report.class_counts)
    T.set_run_tags(settings, run_id, baseline_tags(baselines))
    pictures = log_pictures(settings, run_id, report, decision)
    card = E.model_card(report, name=f"{settings.registered_model_name} (run {run_id})", lineage={k: v for k, v in cand.lineage.items() if k != "lakeloop.selection"}, gate=f"{decision.summary()}\n\nThe baseline rules read {evidence}.",
                        family=tags.get("lakeloop.candidate.family", "encoder"), selection=tags.get("lakeloop.selection", ""),
                        pictures={f"{k} picture": url for k, url in pictures.items()})
    T.log_run_metrics(settings, run_id, report.flat())
    T.set_run_tags(settings, run_id, gate_tag(decision))
    T.log_run_text(settings, run_id, card, CARD)
    T.log_run_text(settings, run_id, json.dumps(report.to_dict(), indent=1), "evaluation/report.json")
    return EvalOutcome(cand, report, decision, champ_version, card, trusted_note, evidence, pictures)


def log_pictures(settings: Settings, run_id: str, report: E.EvalReport, decision: GateDecision) -> dict[str, str]:
    """The gate's picture (candidate vs champion vs baselines, per slice) and the reliability diagram as PNG
    artifacts of the run; -> "gate" | "calibration" -> http URL (none for a tracking URI that is not http)."""
    from trainers import charts as C

    name = f"{settings.registered_model_name} (run {run_id[:8]})"
    pngs = {GATE_PNG: C.gate_chart(report, verdict=decision.summary(), title=f"Gate: {name}"),
            CALIBRATION_PNG: C.calibration_chart(report.reliability, title=f"Calibration on the eval split: {name}")}
    urls = {path: T.log_run_png(settings, run_id, png, path) for path, png in pngs.items()}
    return {key: url for key, path in (("gate", GATE_PNG), ("calibration", CALIBRATION_PNG)) if (url := urls[path])}


def register_candidate(settings: Settings, run_id: str, *, actor: str, metrics: dict[str, float]) -> tuple[str, bool, R.AliasChange | None]:
    """Register the gated run's model once (idempotent on the run), its model card as the version's description, and
    point ``challenger`` at it."""
    tags = T.run_tags(settings, run_id)
    if tags.get("lakeloop.gate") != "passed":
        from infra.errors import DataError

        raise DataError(f"run {run_id} did not pass the gate ({tags.get('lakeloop.gate', 'not evaluated')})", hint="only gated runs are registered")
    cand = candidate_from_run(settings, run_id)
    version, created = R.register_version(settings, run_id=run_id, model_uri=cand.model_uri, tags={**cand.lineage, "lakeloop.gate": "passed"},
                                          actor=actor)
    card = T.run_text(settings, run_id, CARD)  # None: a run gated without a card (tagged by hand)
    if card is not None:  # the card (with the gate's picture under its title) is what the version's page shows
        url = links.mlflow_artifact_file(settings, run_id=run_id, path=CARD)
        R.describe_version(settings, version, R.fit_description(card, more=f"the whole card: [{CARD}]({url})" if url else
                                                                f"the whole card: artifact {CARD} of run {run_id}"))
    current = R.get_alias_version(settings, "challenger")
    change = None
    if current != version:
        change = R.set_alias_cas(settings, "challenger", current, version, actor=actor, reason=f"gate passed for run {run_id}", metrics=metrics)
    return version, created, change
