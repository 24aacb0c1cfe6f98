"""Candidates compete on a validation split carved from the TRAIN split by prompt cluster: it picks each cheap
family's hyperparameters and then the winner among the families (the encoder included, when the trainer passes its
validation scores). Nothing here ever receives the eval split: the callers pass the train split's rows only.

The objective is the gate's primary metric, pairwise accuracy on the validation pairs (AUC of the thumbs when there
are no pairs); ties go to the cheaper family (``FAMILY_ORDER``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainers import evaluate as E
from trainers import lexical as L

VALIDATION_SHARE = 0.2
MIN_VALIDATION_CLUSTERS = 5
FAMILY_ORDER = ("length_support", "tfidf_pairwise", "hybrid", "encoder")  # cheapest first: wins a tie
GRIDS: dict[str, tuple[dict[str, float], ...]] = {
    "tfidf_pairwise": tuple({"C": c} for c in (0.3, 1.0, 3.0, 10.0)),
    "length_support": tuple({"C": c} for c in (0.1, 1.0, 10.0)),
    "hybrid": tuple({"C": c, "dense_scale": d} for c in (0.3, 1.0, 3.0) for d in (1.0, 3.0)),
}


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


def tune(family: L.Family, carved: Carved, *, seed: int = 0) -> tuple[Trial, list[Trial], E.Scored | None, L.LexicalScorer | None]:
    """Fit ``family`` on the fit part for each point of its grid: the best on validation, all trials, its validation
    scores and the fitted scorer (None without a validation split)."""
    if not carved.has_validation:
        params = GRIDS[family][len(GRIDS[family]) // 2]
        return Trial(family, params, float("nan"), float("nan")), [], None, None
    trials: list[tuple[Trial, E.Scored, L.LexicalScorer]] = []
    for params, scorer in zip(GRIDS[family], L.fit_grid(family, carved.fit_examples, carved.fit_pairs, list(GRIDS[family]), seed=seed), strict=True):
        s = val_scored(scorer, carved)
        trials.append((_trial(family, params, s, carved), s, scorer))
    best = max(trials, key=lambda t: t[0].objective)  # first of equals: the grid lists the stronger regularization first
    return best[0], [t for t, _, _ in trials], best[1], best[2]


def tuned(family: L.Family, examples: pd.DataFrame, pairs: pd.DataFrame, *, seed: int = 0, share: float = VALIDATION_SHARE) -> L.LexicalScorer:
    """``family`` with its hyperparameters chosen on a validation split carved from these (training) rows, refit on all."""
    best, _, _, _ = tune(family, carve(examples, pairs, share=share, seed=seed), seed=seed)
    return L.fit(family, examples, pairs, seed=seed, **best.params)


@dataclass
class Selection:
    winner: str
    best: dict[str, Trial]  # per family: its best validation trial
    trials: list[Trial]
    fitted: dict[str, L.LexicalScorer]  # every cheap family: the winner refit on the whole train split, the others as validated
    margins: dict[str, E.Estimate] = field(default_factory=dict)  # winner minus each other family, val pairwise (cluster-paired)
    validation: tuple[int, int, int] = (0, 0, 0)  # validation clusters, examples, non-tie pairs

    def summary(self) -> str:
        if not self.validation[0]:
            return f"{self.winner} (no validation split: too few prompt clusters in the train split; the first of the families trained)"
        lines = [f"{self.winner} won on validation ({self.validation[0]} prompt clusters, {self.validation[1]} labelled answers, "
                 f"{self.validation[2]} pairs; objective pairwise accuracy, AUC without pairs):"]
        for fam in sorted(self.best, key=lambda f: -self.best[f].objective):
            t = self.best[fam]
            m = self.margins.get(fam)
            margin = f"; winner - it {m.value:+.3f} [{m.lo:+.3f}, {m.hi:+.3f}]" if m is not None and math.isfinite(m.value) else ""
            lines.append(f"- {fam}{' (winner)' if fam == self.winner else ''}: pairwise {_value(t.pairwise_accuracy)}, AUC {_value(t.auc)}, "
                         f"params {t.params}{margin}")
        return "\n".join(lines)


def _value(v: float) -> str:
    """A validation metric as the summary writes it: a metric the stream cannot give (no pairs, or no labelled answers of
    both kinds) is "not measured", never "nan"."""
    return f"{v:.3f}" if math.isfinite(v) else "not measured"


def compete(examples: pd.DataFrame, pairs: pd.DataFrame, *, families: Sequence[str], carved: Carved | None = None,
            encoder_val: Callable[[list[str], list[str]], np.ndarray] | None = None, seed: int = 0,
            share: float = VALIDATION_SHARE, n_boot: int = 500) -> Selection:
    """Tune each cheap family in ``families`` on validation, add the encoder's validation scores (``encoder_val``, a
    scorer trained on ``carved.fit_*`` only), pick the winner, and refit the winner, when cheap, on all of
    ``examples``/``pairs`` (the train split) with its chosen parameters; the others stay as validated (fit part)."""
    carved = carved or carve(examples, pairs, share=share, seed=seed)
    best: dict[str, Trial] = {}
    trials: list[Trial] = []
    scored: dict[str, E.Scored] = {}
    fitted: dict[str, L.LexicalScorer] = {}
    for fam in families:
        if fam == "encoder":
            if encoder_val is None:
                continue
            if carved.has_validation:
                s = val_scored(encoder_val, carved)
                best[fam], scored[fam] = _trial(fam, {}, s, carved), s
            else:
                best[fam] = Trial(fam, {}, float("nan"), float("nan"))
            trials.append(best[fam])
            continue
        best[fam], fam_trials, s, scorer = tune(fam, carved, seed=seed)  # type: ignore[arg-type]
        trials += fam_trials
        if s is not None and scorer is not None:
            scored[fam], fitted[fam] = s, scorer
    if not best:
        from infra.errors import ConfigError

        raise ConfigError(f"no candidate family to select from in {list(families)}", hint=f"use some of {FAMILY_ORDER}")
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    if carved.has_validation:
        winner = max(best, key=lambda f: (best[f].objective, -order.get(f, 99)))
    else:
        winner = next(f for f in families if f in best)
    margins: dict[str, E.Estimate] = {}
    if carved.has_validation and winner in scored:
        vp = _non_tie(carved.val_pairs)
        ve = carved.val_examples
        _, diffs = E.paired_metrics(scored, ve["label"].to_numpy(float), E._clusters(ve), E._clusters(vp), reference=winner,
                                    n_boot=n_boot, seed=seed)
        key = "pairwise_accuracy" if len(vp) else "auc"
        margins = {f: d[key] for f, d in diffs.items()}
    if winner != "encoder":
        fitted[winner] = L.fit(winner, examples, pairs, seed=seed, **best[winner].params)  # type: ignore[arg-type]
    n_val = len(set(_cluster(carved.val_examples)) | set(_cluster(carved.val_pairs)))
    return Selection(winner, best, trials, fitted, margins, (n_val, len(carved.val_examples), len(_non_tie(carved.val_pairs))))


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
