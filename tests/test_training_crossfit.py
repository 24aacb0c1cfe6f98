"""trainers.crossfit: a first model's out-of-fold evidence from its train split, by nested cross-fitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.training_fixtures import gold_frames
from trainers import crossfit as X
from trainers import evaluate as E
from trainers import selection as S

CHEAP = ("tfidf_pairwise", "length_support", "hybrid")


def _splits(qa: Path, questions: int) -> tuple[tuple[pd.DataFrame, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]:
    ex, pr = (t.to_pandas() for t in gold_frames(qa, questions=questions, passages=True, eval_percent=40))
    part = lambda frame, split: frame[frame.split == split].reset_index(drop=True)
    return (part(ex, "train"), part(pr, "train")), (part(ex, "eval"), part(pr, "eval"))


def _clusters(*frames: pd.DataFrame) -> set[str]:
    return set().union(*(set(E._clusters(f)) for f in frames))


def test_each_train_prompt_is_scored_once_by_a_recipe_and_baselines_that_never_saw_it(qa_feedback_path: Path,
                                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = _splits(qa_feedback_path, 120)
    fitted_on: list[set[str]] = []
    for name, module in (("recipe", X), ("fit_baselines", X.E)):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda ex, pr, *a, _real=real, **k: (fitted_on.append(_clusters(ex, pr)), _real(ex, pr, *a, **k))[1])
    oof = X.out_of_fold(*train, ("encoder", *CHEAP), seed=13)
    assert oof is not None and oof.folds == S.CV_FOLDS and set(oof.winners) <= set(CHEAP)  # the encoder is never cross-fit
    held = [_clusters(f.val_examples, f.val_pairs) for f in S.cv_folds(*train, seed=13)]
    assert len(fitted_on) == 2 * len(held)  # the recipe and the baselines, once per fold
    for i, fold in enumerate(held):  # what scored a fold was fit without it (the recipe's own tuning included)
        assert not fold & fitted_on[2 * i] and not fold & fitted_on[2 * i + 1]
        assert fitted_on[2 * i] | fold == _clusters(*train)
    assert sorted(E._clusters(oof.pairs)) == sorted(E._clusters(S._non_tie(train[1])))  # every non-tie pair once
    assert len(oof.examples) == len(train[0]) and set(oof.scored) == {"candidate", "baseline:constant", "baseline:length", "baseline:tfidf_lr"}
    assert all(len(s.chosen) == len(oof.pairs) and len(s.probs) == len(oof.examples) for s in oof.scored.values())


def test_pooling_the_train_split_narrows_the_paired_intervals_and_keeps_the_eval_scores(qa_feedback_path: Path) -> None:
    train, evalset = _splits(qa_feedback_path, 200)
    sel = S.compete(*train, families=CHEAP, seed=13)
    report = E.full_report(sel.fitted[sel.winner], train, evalset, n_boot=300)
    oof = X.out_of_fold(*train, CHEAP, seed=13)
    assert oof is not None
    pr_eval = S._non_tie(evalset[1])
    metrics, diffs = X.pooled_paired(report.scored, evalset[0], pr_eval, oof, n_boot=300)
    width = lambda e: e.hi - e.lo
    pooled, alone = diffs["baseline:length"]["pairwise_accuracy"], report.paired["length"]["pairwise_accuracy"]
    assert width(pooled) < 0.85 * width(alone), (pooled, alone)  # 2.5x the prompts: ~1/sqrt(2.5) the width
    assert metrics["candidate"]["pairwise_accuracy"].n == len(pr_eval) + len(oof.pairs)
    # the pooled accuracy is the shipped model's eval pairs and the recipe's out-of-fold pairs, counted together
    shipped, recipe = report.scored["candidate"], oof.scored["candidate"]
    chosen, rejected = np.concatenate([shipped.chosen, recipe.chosen]), np.concatenate([shipped.rejected, recipe.rejected])
    assert metrics["candidate"]["pairwise_accuracy"].value == pytest.approx(E.pairwise_accuracy(chosen, rejected))
    assert metrics["candidate"]["pairwise_accuracy"].value != pytest.approx(report.metrics["pairwise_accuracy"].value)


def test_no_cheap_family_or_too_few_prompts_means_no_cross_fit(qa_feedback_path: Path) -> None:
    train, _ = _splits(qa_feedback_path, 120)
    assert X.out_of_fold(*train, ("encoder",)) is None
    prompts = sorted(_clusters(*train))
    keep = lambda n: [f[np.isin(E._clusters(f), prompts[:n])].reset_index(drop=True) for f in train]
    enough = S.CV_FOLDS * S.MIN_VALIDATION_CLUSTERS  # 5 folds of at least 5 prompts
    assert X.out_of_fold(*keep(enough - 1), CHEAP) is None
    assert X.out_of_fold(*keep(enough), CHEAP) is not None


@pytest.mark.parametrize(("winner", "recipe", "embeds"), [
    ("hybrid", ["tfidf_pairwise", "length_support", "hybrid"], False),
    ("hybrid_encoder", ["tfidf_pairwise", "length_support", "hybrid", "hybrid_encoder"], True),
])
def test_a_first_models_cross_fit_runs_the_encoder_families_only_when_one_won(winner: str, recipe: list[str], embeds: bool,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe is the run's candidates without the families that run the base encoder, unless the winner is one:
    hybrid_encoder's embedding pass over the whole train split is paid only when it won."""
    from trainers import candidate as C
    from trainers import tracking as T

    seen: dict[str, object] = {}
    monkeypatch.setattr(T, "client", lambda settings: None)
    monkeypatch.setattr(T, "train_config", lambda client, run_id: {"candidates": ["encoder", "tfidf_pairwise", "length_support", "hybrid",
                                                                                   "hybrid_encoder"], "max_length": 64})
    monkeypatch.setattr(X, "out_of_fold", lambda ex, pr, families, *, seed, embedder: seen.update(families=families, embedder=embedder))
    C.cross_fit_evidence(None, "run", (pd.DataFrame(), pd.DataFrame()), family=winner)  # type: ignore[arg-type]
    assert seen["families"] == recipe and (seen["embedder"] is not None) == embeds
    if embeds:
        assert seen["embedder"].max_length == 64  # type: ignore[attr-defined]
