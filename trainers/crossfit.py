"""Out-of-fold evidence for a first model's recipe, from the train split, by nested cross-fitting.

A first model has no champion to beat, only baselines, and its eval split is a share of few prompts: on the demo's
500-question backlog the eval split holds ~200 prompts and the cluster-paired 95% interval of "model minus length
baseline" is ~+-0.05 wide, about the size of the real effect (~+0.04 to +0.06 pairwise on qa_feedback). The train
split's prompts can add evidence without the eval split ever choosing anything: each of ``CV_FOLDS`` folds of the
train split's prompt clusters is scored by the *whole recipe* trained on the other folds: the cheap families tuned
and the best picked on a validation part carved from those folds (``selection.tune``; nested: the held-out fold never
chooses), the winner fit on those folds; the baselines are fit on the same folds. The pooled out-of-fold scores
estimate what the recipe learns from ~80% of the train split; the shipped model learned from all of it, so the
estimate is, if anything, conservative for it.

Only cheap winners (``trainers.lexical`` families) are cross-fit: an encoder winner would need one fine-tune per fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainers import evaluate as E
from trainers import lexical as L
from trainers import selection as S


@dataclass(frozen=True)
class OutOfFold:
    scored: dict[str, E.Scored]  # "candidate" (the recipe) and "baseline:<name>", rows of examples/pairs below
    examples: pd.DataFrame  # the held-out folds' labelled answers, stacked
    pairs: pd.DataFrame  # the held-out folds' non-tie pairs, stacked
    folds: int
    winners: tuple[str, ...]  # the family the recipe picked in each fold


def recipe(examples: pd.DataFrame, pairs: pd.DataFrame, families: Sequence[str], *, seed: int = 0,
           embedder: Any = None) -> tuple[str, L.LexicalScorer]:
    """The cheap part of the selection as one recipe: every family's grid tuned on a validation part carved from these
    rows (``selection.carve``), the best on its objective (ties to the cheaper family; hybrid_encoder only beyond one
    standard error, ``selection.best_cheap``), refit on all these rows."""
    carved = S.carve(examples, pairs, seed=seed)
    tuned: dict[str, Any] = {}
    best: dict[str, S.Trial] = {}
    for f in S.tuning_order(families):  # hybrid_encoder's grid starts from the hybrid's chosen point (selection.grid)
        tuned[f] = S.tune(f, carved, seed=seed, embedder=embedder, points=S.grid(f, best))  # type: ignore[arg-type]
        best[f] = tuned[f][0]
    winner, _ = S.best_cheap(best, {f: t[2] for f, t in tuned.items() if t[2] is not None}, carved, seed=seed)
    return winner, L.fit(winner, examples, pairs, seed=seed, embedder=embedder, **best[winner].params)  # type: ignore[arg-type]


def out_of_fold(examples: pd.DataFrame, pairs: pd.DataFrame, families: Sequence[str], *, k: int = S.CV_FOLDS,
                seed: int = 0, embedder: Any = None) -> OutOfFold | None:
    """The recipe's and the baselines' out-of-fold scores over the train split's prompt clusters (module doc); None
    when there are no cheap families or too few clusters for ``k`` folds."""
    cheap = [f for f in families if f != "encoder"]
    folds = S.cv_folds(examples, pairs, k=k, seed=seed) if cheap else []
    if not folds:
        return None
    parts: dict[str, list[E.Scored]] = {}
    winners = []
    with L.memoized():  # a fold's families and baselines share their TF-IDF vocabulary and rows (exact)
        for fold in folds:
            winner, model = recipe(fold.fit_examples, fold.fit_pairs, cheap, seed=seed, embedder=embedder)
            winners.append(winner)
            for name, scorer in {"candidate": model, **{f"baseline:{b}": s for b, s in E.fit_baselines(fold.fit_examples, fold.fit_pairs, seed=seed).items()}}.items():
                parts.setdefault(name, []).append(S.val_scored(scorer, fold))
    parts = {name: p for name, p in parts.items() if len(p) == len(folds)}  # e.g. no length baseline in a one-class fold
    held = S._held_out(folds)
    return OutOfFold({name: S._pooled(p) for name, p in parts.items()}, held.val_examples.reset_index(drop=True),
                     S._non_tie(held.val_pairs), len(folds), tuple(winners))


def pooled_paired(eval_scored: dict[str, E.Scored], eval_examples: pd.DataFrame, eval_pairs: pd.DataFrame, oof: OutOfFold, *,
                  n_boot: int = 1000, seed: int = 0) -> tuple[dict[str, dict[str, E.Estimate]], dict[str, dict[str, E.Estimate]]]:
    """The eval split's scores (the shipped model and the baselines fit on the train split) and the out-of-fold ones
    pooled, every prompt cluster of both splits resampled alike: (metrics, candidate minus each other), as
    ``evaluate.paired_metrics`` gives them. Scorers missing on either side are left out."""
    names = [n for n in eval_scored if n in oof.scored]
    scored = {n: E.Scored(*(np.concatenate([getattr(eval_scored[n], a), getattr(oof.scored[n], a)]) for a in ("probs", "chosen", "rejected")))
              for n in names}
    labels = np.concatenate([eval_examples["label"].to_numpy(float), oof.examples["label"].to_numpy(float)])
    ex_clusters = np.concatenate([E._clusters(eval_examples), E._clusters(oof.examples)])
    pr_clusters = np.concatenate([E._clusters(eval_pairs), E._clusters(oof.pairs)])
    return E.paired_metrics(scored, labels, ex_clusters, pr_clusters, reference="candidate", n_boot=n_boot, seed=seed)


def pooled_evidence(eval_scored: dict[str, E.Scored], evalset: tuple[pd.DataFrame, pd.DataFrame], oof: OutOfFold, *,
                    n_boot: int = 1000) -> E.Pooled:
    """``pooled_paired`` of the eval split (``evalset``'s rows, ties dropped as ``evaluate.full_report`` does) and the
    out-of-fold scores, as the evaluation report keeps it: the candidate's metrics, the baselines' and the candidate minus
    each baseline, with the class counts and prompt counts of both parts."""
    ex_eval, pr_eval = evalset[0].reset_index(drop=True), S._non_tie(evalset[1].reset_index(drop=True))
    metrics, diffs = pooled_paired(eval_scored, ex_eval, pr_eval, oof, n_boot=n_boot)
    labels = np.concatenate([ex_eval["label"].to_numpy(float), oof.examples["label"].to_numpy(float)])
    prompts = lambda *frames: len(set().union(*(set(E._clusters(f)) for f in frames)))
    baselines = lambda d: {k.split(":", 1)[1]: v for k, v in d.items() if k.startswith("baseline:")}
    return E.Pooled(metrics["candidate"], baselines(metrics), baselines(diffs), (int((labels >= 0.5).sum()), int((labels < 0.5).sum())),
                    prompts(ex_eval, pr_eval), prompts(oof.examples, oof.pairs), oof.folds, oof.winners)

