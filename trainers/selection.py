"""Candidates compete on the TRAIN split, never the eval split (the callers pass the train split's rows only).

- The cheap families (``trainers.lexical``) are compared by ``CV_FOLDS``-fold cross-validation over the train split's
  prompt clusters: each point of a family's grid is fit on the other folds and scores the held-out one, and the
  objective is read on the pooled out-of-fold scores. Every train prompt is validation evidence once, so the choice
  among families that differ by a few points is ~2x less noisy than on one carved split of 20% (a single split of
  ~60 prompts let a family that is no better than the TF-IDF baseline win in 2 of 8 splits of qa_feedback).
- The encoder trains once, on the fit part of a split carved from the train split by prompt cluster (``carve``), and
  competes with the best cheap family on that validation part (the cheap family fit on the same fit part).

The objective is the gate's primary metric, pairwise accuracy (AUC of the thumbs when there are no pairs); ties go to
the cheaper family (``FAMILY_ORDER``), and the encoder must beat the best cheap family by more than one standard error
of the paired difference (the one-standard-error rule).
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainers import evaluate as E
from trainers import lexical as L

VALIDATION_SHARE = 0.2
MIN_VALIDATION_CLUSTERS = 5
CV_FOLDS = 5
FAMILY_ORDER = ("length_support", "tfidf_pairwise", "hybrid", "hybrid_encoder", "encoder")  # cheapest first: wins a tie
# families that run the base encoder (to score, and hybrid_encoder to fit): each must beat the best family that does not
# by more than one standard error of the paired difference (the one-standard-error rule), else the cheaper one wins
ENCODER_FAMILIES = ("hybrid_encoder", "encoder")
GRIDS: dict[str, tuple[dict[str, float], ...]] = {
    "tfidf_pairwise": tuple({"C": c} for c in (0.3, 1.0, 3.0, 10.0)),
    "length_support": tuple({"C": c} for c in (0.1, 1.0, 10.0)),
    "hybrid": tuple({"C": c, "dense_scale": d} for c in (0.3, 1.0, 3.0) for d in (1.0, 3.0)),
    "hybrid_encoder": tuple({"C": c, "dense_scale": d, "embed_scale": e} for c in (0.3, 1.0, 3.0) for d in (1.0, 3.0) for e in (1.0, 3.0)),
}
# hybrid_encoder after the hybrid: the hybrid's chosen point with the embedding at each of these scales (3 fits per fold
# instead of the 12 of its own grid; a fit with the 384 dense columns costs ~5x the hybrid's)
EMBED_SCALES = (1.0, 3.0, 10.0)


def grid(family: str, best: dict[str, "Trial"] | None = None) -> tuple[dict[str, float], ...]:
    """The points ``family`` is tuned over: its ``GRIDS`` entry, or for hybrid_encoder, once the hybrid is tuned
    (``best``), the hybrid's chosen point at each of ``EMBED_SCALES`` (staged: the lexical part's regularization is the
    hybrid's; only the embedding's weight is new)."""
    if family == "hybrid_encoder" and best and "hybrid" in best:
        return tuple({**best["hybrid"].params, "embed_scale": e} for e in EMBED_SCALES)
    return GRIDS[family]


def tuning_order(families: Sequence[str]) -> list[str]:
    """``families`` in ``FAMILY_ORDER`` (hybrid before hybrid_encoder, whose grid starts from the hybrid's point)."""
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(families, key=lambda f: order.get(f, len(order)))


@dataclass(frozen=True)
class Carved:
    fit_examples: pd.DataFrame
    fit_pairs: pd.DataFrame
    val_examples: pd.DataFrame
    val_pairs: pd.DataFrame

    @property
    def has_validation(self) -> bool:
        return len(self.val_examples) + len(self.val_pairs) > 0


def _cluster(frame: pd.DataFrame) -> pd.Series:
    return frame["cluster_id"].astype(str) if "cluster_id" in frame.columns else frame["prompt"].astype(str)


def carve(examples: pd.DataFrame, pairs: pd.DataFrame, *, share: float = VALIDATION_SHARE, seed: int = 13) -> Carved:
    """Hold out ``share`` of the prompt clusters of the train split (a stable hash of the cluster id and seed), so a
    prompt never straddles fit and validation. Fewer than ``MIN_VALIDATION_CLUSTERS`` held-out clusters: no
    validation split (everything is fit)."""
    clusters = sorted(set(_cluster(examples)) | set(_cluster(pairs)))
    held = {c for c in clusters if int(hashlib.sha256(f"val:{seed}:{c}".encode()).hexdigest()[:12], 16) % 10_000 < share * 10_000}
    if len(held) < MIN_VALIDATION_CLUSTERS or len(held) == len(clusters):
        return Carved(examples.reset_index(drop=True), pairs.reset_index(drop=True), examples.iloc[:0], pairs.iloc[:0])
    in_ex, in_pr = _cluster(examples).isin(held), _cluster(pairs).isin(held)
    return Carved(examples[~in_ex].reset_index(drop=True), pairs[~in_pr].reset_index(drop=True),
                  examples[in_ex].reset_index(drop=True), pairs[in_pr].reset_index(drop=True))


def cv_folds(examples: pd.DataFrame, pairs: pd.DataFrame, *, k: int = CV_FOLDS, seed: int = 13) -> list[Carved]:
    """``k`` (fit, held-out) splits of these rows by prompt cluster (a stable hash of cluster id and seed): each cluster
    is held out exactly once. Fewer than ``MIN_VALIDATION_CLUSTERS`` clusters per fold: no folds."""
    clusters = sorted(set(_cluster(examples)) | set(_cluster(pairs)))
    if k < 2 or len(clusters) < k * MIN_VALIDATION_CLUSTERS:
        return []
    fold = {c: int(hashlib.sha256(f"cv:{seed}:{c}".encode()).hexdigest()[:12], 16) % k for c in clusters}
    ex_fold, pr_fold = _cluster(examples).map(fold), _cluster(pairs).map(fold)
    return [Carved(examples[ex_fold != f].reset_index(drop=True), pairs[pr_fold != f].reset_index(drop=True),
                   examples[ex_fold == f].reset_index(drop=True), pairs[pr_fold == f].reset_index(drop=True)) for f in range(k)]


def _held_out(folds: Sequence[Carved]) -> Carved:
    """The held-out parts of ``folds`` stacked (the rows the pooled out-of-fold scores belong to)."""
    cat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Carved(folds[0].fit_examples.iloc[:0], folds[0].fit_pairs.iloc[:0], cat([f.val_examples for f in folds]),
                  cat([f.val_pairs for f in folds]))


def _pooled(parts: Sequence[E.Scored]) -> E.Scored:
    return E.Scored(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("probs", "chosen", "rejected")))


def tune_cv(family: L.Family, folds: Sequence[Carved], *, seed: int = 0, embedder: Any = None,
            points: Sequence[dict[str, float]] | None = None) -> tuple[Trial, list[Trial], E.Scored]:
    """Each point of ``family``'s grid (``points``, default ``GRIDS``) fit on every fold's fit part and scored on its
    held-out part; the point best on the pooled out-of-fold scores, all trials, and that point's pooled scores (rows in
    ``_held_out(folds)`` order)."""
    points = list(points or GRIDS[family])
    held = _held_out(folds)

    def one(fold: Carved) -> list[E.Scored]:
        return [val_scored(s, fold) for s in L.fit_grid(family, fold.fit_examples, fold.fit_pairs, points, seed=seed, embedder=embedder)]

    # folds in threads: liblinear, most of a fit, runs without the GIL; each task in a copy of this context (the memo)
    with ThreadPoolExecutor(max_workers=max(1, min(len(folds), cores()))) as pool:
        per_fold = list(pool.map(lambda task: task[0].run(one, task[1]), [(contextvars.copy_context(), f) for f in folds]))
    per_point = [[scored[i] for scored in per_fold] for i in range(len(points))]
    trials = [(_trial(family, params, _pooled(parts), held), _pooled(parts)) for params, parts in zip(points, per_point, strict=True)]
    best = max(trials, key=lambda t: t[0].objective)  # first of equals: the grid lists the stronger regularization first
    return best[0], [t for t, _ in trials], best[1]


def _embed_once(examples: pd.DataFrame, pairs: pd.DataFrame, embedder: Any) -> None:
    """Every text hybrid_encoder's folds will ask for, embedded here first: the fold threads then find them cached
    instead of each running the encoder on its own share (most of them the same texts). A no-op beside the encoder,
    whose frozen cache already embedded them (``trainers.train._share_frozen_cache``)."""
    from trainers.embeddings import default_embedder

    pairs = _non_tie(pairs)
    prompts = [*examples["prompt"], *pairs["prompt"], *pairs["prompt"]]
    responses = [*examples["response"], *pairs["chosen"], *pairs["rejected"]]
    if responses:
        (embedder if embedder is not None else default_embedder())(prompts, responses)


def cores() -> int:
    """Cores this process may run on (affinity/cgroup aware where the OS tells): the selection's fold threads, and
    torch's thread pool in training (``trainers.train``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _non_tie(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[~pairs["is_tie"].astype(bool)].reset_index(drop=True) if len(pairs) else pairs


def objective(pairwise: float, auc: float) -> float:
    return pairwise if math.isfinite(pairwise) else auc if math.isfinite(auc) else float("-inf")


@dataclass(frozen=True)
class Trial:
    family: str
    params: dict[str, float]
    pairwise_accuracy: float
    auc: float

    @property
    def objective(self) -> float:
        return objective(self.pairwise_accuracy, self.auc)


def val_scored(scorer: E.Scorer, carved: Carved) -> E.Scored:
    return E.Scored(*E.score_eval(scorer, carved.val_examples, _non_tie(carved.val_pairs)))


def _trial(family: str, params: dict[str, float], s: E.Scored, carved: Carved) -> Trial:
    y = carved.val_examples["label"].to_numpy(float)
    return Trial(family, params, E.pairwise_accuracy(s.chosen, s.rejected), E.auc(y, s.probs))


def tune(family: L.Family, carved: Carved, *, seed: int = 0, embedder: Any = None,
         points: Sequence[dict[str, float]] | None = None) -> tuple[Trial, list[Trial], E.Scored | None, L.LexicalScorer | None]:
    """Fit ``family`` on the fit part for each point of its grid (``points``, default ``GRIDS``): the best on
    validation, all trials, its validation scores and the fitted scorer (None without a validation split)."""
    points = list(points or GRIDS[family])
    if not carved.has_validation:
        params = points[len(points) // 2]
        return Trial(family, params, float("nan"), float("nan")), [], None, None
    trials: list[tuple[Trial, E.Scored, L.LexicalScorer]] = []
    for params, scorer in zip(points, L.fit_grid(family, carved.fit_examples, carved.fit_pairs, points, seed=seed,
                                                 embedder=embedder), strict=True):
        s = val_scored(scorer, carved)
        trials.append((_trial(family, params, s, carved), s, scorer))
    best = max(trials, key=lambda t: t[0].objective)  # first of equals: the grid lists the stronger regularization first
    return best[0], [t for t, _, _ in trials], best[1], best[2]


def tuned(family: L.Family, examples: pd.DataFrame, pairs: pd.DataFrame, *, seed: int = 0, share: float = VALIDATION_SHARE) -> L.LexicalScorer:
    """``family`` with its hyperparameters chosen on a validation split carved from these (training) rows, refit on all."""
    best, _, _, _ = tune(family, carve(examples, pairs, share=share, seed=seed), seed=seed)
    return L.fit(family, examples, pairs, seed=seed, **best.params)


def best_family(best: dict[str, Trial]) -> str:
    """The family whose trial is best on the objective; a tie goes to the cheaper family (``FAMILY_ORDER``)."""
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return max(best, key=lambda f: (best[f].objective, -order.get(f, 99)))


def best_cheap(best: dict[str, Trial], scored: dict[str, E.Scored], where: Carved, *, n_boot: int = 500,
               seed: int = 0) -> tuple[str, str]:
    """The best cheap family (``best_family``), where hybrid_encoder wins only if it beats the best of the others by
    more than one standard error of the paired difference on ``where``'s validation rows (``scored``: their scores);
    and that comparison in words ("" when there was none)."""
    top = best_family(best)
    rivals = {f: t for f, t in best.items() if f not in ENCODER_FAMILIES and f in scored}
    if top not in ENCODER_FAMILIES or not rivals or top not in scored:
        return top, ""
    rival = best_family(rivals)
    gain, se = _gain(scored, top, rival, where, n_boot=n_boot, seed=seed)
    won = gain > se
    return (top if won else rival), (f"{top} {'beat' if won else 'did not beat'} {rival} by more than one standard error "
                                     f"({gain:+.3f}, SE {se:.3f})")


@dataclass
class Selection:
    winner: str
    best: dict[str, Trial]  # per family: its best validation trial
    trials: list[Trial]
    fitted: dict[str, L.LexicalScorer]  # every cheap family: the winner refit on the whole train split, the others as validated
    margins: dict[str, E.Estimate] = field(default_factory=dict)  # winner minus each other family, val pairwise (cluster-paired)
    validation: tuple[int, int, int] = (0, 0, 0)  # validation clusters, examples, non-tie pairs
    cv_folds: int = 0  # cheap families compared by this many folds of cross-validation over the train split (0: on validation)
    encoder: str = ""  # the encoder against the best cheap family on the carved validation split, in words

    def summary(self) -> str:
        if not self.validation[0]:
            return f"{self.winner} (no validation split: too few prompt clusters in the train split; the first of the families trained)"
        how = (f"the cheap families by {self.cv_folds}-fold cross-validation over the train split's {self.validation[0]} prompt "
               f"clusters ({self.validation[1]} labelled answers, {self.validation[2]} pairs, each held out once)"
               if self.cv_folds else f"on validation ({self.validation[0]} prompt clusters, {self.validation[1]} labelled answers, "
               f"{self.validation[2]} pairs)")
        lines = [f"{self.winner} won: {how}; objective pairwise accuracy, AUC without pairs" + (f"; {self.encoder}" if self.encoder else "") + ":"]
        for fam in sorted(self.best, key=lambda f: -self.best[f].objective):
            t = self.best[fam]
            m = self.margins.get(fam)
            margin = f"; winner - it {m.value:+.3f} [{m.lo:+.3f}, {m.hi:+.3f}]" if m is not None and math.isfinite(m.value) else ""
            where = f" ({self.cv_folds}-fold CV)" if self.cv_folds and fam != "encoder" else " (validation)" if self.cv_folds else ""
            lines.append(f"- {fam}{' (winner)' if fam == self.winner else ''}: pairwise {_value(t.pairwise_accuracy)}, AUC {_value(t.auc)}"
                         f"{where}, params {t.params}{margin}")
        return "\n".join(lines)


def _value(v: float) -> str:
    """A validation metric as the summary writes it: a metric the stream cannot give (no pairs, or no labelled answers of
    both kinds) is "not measured", never "nan"."""
    return f"{v:.3f}" if math.isfinite(v) else "not measured"


def compete(examples: pd.DataFrame, pairs: pd.DataFrame, *, families: Sequence[str], carved: Carved | None = None,
            encoder_val: Callable[[list[str], list[str]], np.ndarray] | None = None, seed: int = 0,
            share: float = VALIDATION_SHARE, n_boot: int = 500, cv: int = CV_FOLDS, embedder: Any = None) -> Selection:
    """Pick the winner among ``families`` on the train split (module doc): the cheap ones by ``cv``-fold
    cross-validation (their grids too; on ``carved``'s validation part when the train split has too few clusters for
    folds), the encoder (``encoder_val``: a scorer trained on ``carved.fit_*`` only) against the best cheap family on
    ``carved``'s validation part. The winner, when cheap, is refit on all of ``examples``/``pairs`` with its chosen
    parameters; the other cheap families are kept as fit on ``carved``'s fit part."""
    with L.memoized():  # the folds and families share their TF-IDF vocabularies and rows (exact, see lexical.memoized)
        return _compete(examples, pairs, families=families, carved=carved, encoder_val=encoder_val, seed=seed, share=share,
                        n_boot=n_boot, cv=cv, embedder=embedder)


def _compete(examples: pd.DataFrame, pairs: pd.DataFrame, *, families: Sequence[str], carved: Carved | None,
             encoder_val: Callable[[list[str], list[str]], np.ndarray] | None, seed: int, share: float, n_boot: int, cv: int,
             embedder: Any) -> Selection:
    carved = carved or carve(examples, pairs, share=share, seed=seed)
    folds = cv_folds(examples, pairs, k=cv, seed=seed) if carved.has_validation else []
    cheap = tuning_order([f for f in families if f != "encoder"])
    if "hybrid_encoder" in cheap and folds:
        _embed_once(examples, pairs, embedder)
    best: dict[str, Trial] = {}
    trials: list[Trial] = []
    cv_scored: dict[str, E.Scored] = {}
    for fam in cheap:
        if folds:
            best[fam], fam_trials, cv_scored[fam] = tune_cv(fam, folds, seed=seed, embedder=embedder, points=grid(fam, best))  # type: ignore[arg-type]
        else:
            best[fam], fam_trials, _, _ = tune(fam, carved, seed=seed, embedder=embedder, points=grid(fam, best))  # type: ignore[arg-type]
        trials += fam_trials
    val: dict[str, E.Scored] = {}  # scores on the carved validation part
    if "encoder" in families and encoder_val is not None:
        if carved.has_validation:
            val["encoder"] = val_scored(encoder_val, carved)  # the encoder is scored once: its inference is the costly part
            best["encoder"] = _trial("encoder", {}, val["encoder"], carved)
        else:
            best["encoder"] = Trial("encoder", {}, float("nan"), float("nan"))
        trials.append(best["encoder"])
    if not best:
        from infra.errors import ConfigError

        raise ConfigError(f"no candidate family to select from in {list(families)}", hint=f"use some of {FAMILY_ORDER}")
    # every cheap family as fit on the fit part (its chosen point) and scored on the validation part: the encoder's rivals
    fitted: dict[str, L.LexicalScorer] = {}
    if carved.has_validation:
        for fam in cheap:
            fitted[fam] = L.fit(fam, carved.fit_examples, carved.fit_pairs, seed=seed, embedder=embedder, **best[fam].params)  # type: ignore[arg-type]
            val[fam] = val_scored(fitted[fam], carved)
    encoder_note = ""
    if not carved.has_validation:
        winner = next(f for f in families if f in best)
    else:
        pool, where = (cv_scored, _held_out(folds)) if folds else (val, carved)
        top_cheap, encoder_note = (best_cheap({f: best[f] for f in cheap if f in best}, pool, where, n_boot=n_boot, seed=seed)
                                   if cheap else (None, ""))
        winner = top_cheap or "encoder"
        if "encoder" in best and top_cheap is not None:
            on_val = lambda f: _trial(f, {}, val[f], carved).objective
            gain, se = _gain(val, "encoder", top_cheap, carved, n_boot=n_boot, seed=seed)
            if gain > se:
                winner = "encoder"
            encoder_note = (f"{encoder_note}; " if encoder_note else "") + (
                f"the encoder {'beat' if winner == 'encoder' else 'did not beat'} {top_cheap} by more than one standard "
                f"error on a validation part carved from the train split ({on_val('encoder'):.3f} vs "
                f"{on_val(top_cheap):.3f}: {gain:+.3f}, SE {se:.3f})")
    # the winner's margins over the other cheap families on the pooled out-of-fold scores and over the encoder on the
    # validation part; when the encoder won (or without folds), over every family on the validation part
    pooled = bool(folds) and winner in cv_scored
    held = _held_out(folds) if pooled else carved
    margins: dict[str, E.Estimate] = {}
    scored = cv_scored if pooled else val
    if carved.has_validation and winner in scored:
        vp, ve = _non_tie(held.val_pairs), held.val_examples
        key = "pairwise_accuracy" if len(vp) else "auc"
        _, diffs = E.paired_metrics(scored, ve["label"].to_numpy(float), E._clusters(ve), E._clusters(vp), reference=winner,
                                    n_boot=n_boot, seed=seed)
        margins = {f: d[key] for f, d in diffs.items()}
        if pooled and "encoder" in val:
            vp, ve = _non_tie(carved.val_pairs), carved.val_examples
            _, diffs = E.paired_metrics({winner: val[winner], "encoder": val["encoder"]}, ve["label"].to_numpy(float), E._clusters(ve),
                                        E._clusters(vp), reference=winner, n_boot=n_boot, seed=seed)
            margins["encoder"] = diffs["encoder"]["pairwise_accuracy" if len(vp) else "auc"]
    if winner != "encoder":
        fitted[winner] = L.fit(winner, examples, pairs, seed=seed, embedder=embedder, **best[winner].params)  # type: ignore[arg-type]
    n_clusters = len(set(_cluster(held.val_examples)) | set(_cluster(held.val_pairs))) if carved.has_validation else 0
    return Selection(winner, best, trials, fitted, margins, (n_clusters, len(held.val_examples), len(_non_tie(held.val_pairs))),
                     cv_folds=len(folds), encoder=encoder_note)


def _gain(scored: dict[str, E.Scored], costly: str, cheaper: str, carved: Carved, *, n_boot: int, seed: int) -> tuple[float, float]:
    """``costly`` minus ``cheaper`` on ``carved``'s validation rows (the objective's metric) and the standard error of
    that difference (cluster-paired bootstrap). A family that runs the encoder wins only by more than one standard
    error (the one-standard-error rule: the simpler model unless the costlier one is better beyond noise): the
    fine-tuned encoder costs ~100x the CPU to serve and cannot be cross-fit for a first model's gate
    (``trainers.crossfit``); hybrid_encoder runs the base encoder on every answer it scores."""
    vp, ve = _non_tie(carved.val_pairs), carved.val_examples
    _, diffs = E.paired_metrics({costly: scored[costly], cheaper: scored[cheaper]}, ve["label"].to_numpy(float), E._clusters(ve),
                                E._clusters(vp), reference=costly, n_boot=n_boot, seed=seed)
    d = diffs[cheaper]["pairwise_accuracy" if len(vp) else "auc"]
    if not math.isfinite(d.value):
        return float("-inf"), 0.0
    se = (d.hi - d.lo) / 3.92 if math.isfinite(d.hi - d.lo) else float("inf")
    return d.value, se


def selection_params(sel: Selection) -> dict[str, Any]:
    """Each family's chosen hyperparameters, as flat MLflow params."""
    return {f"candidate.{f}.{k}": v for f, t in sel.best.items() for k, v in t.params.items()}


def selection_metrics(sel: Selection) -> dict[str, float]:
    """Each family's validation metrics and the winner's paired margins, as flat MLflow metrics (finite only)."""
    out = {}
    for f, t in sel.best.items():
        out[f"val.{f}.pairwise_accuracy"] = t.pairwise_accuracy
        out[f"val.{f}.auc"] = t.auc
    for f, m in sel.margins.items():
        out.update({f"val.winner_minus.{f}": m.value, f"val.winner_minus.{f}.lo": m.lo, f"val.winner_minus.{f}.hi": m.hi})
    return {k: v for k, v in out.items() if math.isfinite(v)}
