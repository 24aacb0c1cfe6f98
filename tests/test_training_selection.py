"""Candidates compete (trainers/selection.py, trainers/lexical.py), cluster-paired intervals (trainers/evaluate.py)
and the gate's paired rules (trainers/gate.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.training_fixtures import gold_frames, write_gold
from trainers import evaluate as E
from trainers import lexical as L
from trainers import selection as S
from trainers.gate import GateConfig, decide_gate


def _frames(qa: Path, questions: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    ex, pr = (t.to_pandas() for t in gold_frames(qa, questions=questions, passages=True))
    return ex, pr


def _toy(n_prompts: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Answers with 'grounded' beat answers with 'vague' in every pair; thumbs say the same."""
    rng = np.random.default_rng(0)
    ex, pr = [], []
    for i in range(n_prompts):
        filler = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon"], size=5))
        good, bad = f"grounded answer {filler} {i}", f"vague answer {filler} {i}"
        ex += [{"prompt": f"q{i}", "response": good, "label": 1.0, "cluster_id": f"c{i}"},
               {"prompt": f"q{i}", "response": bad, "label": 0.0, "cluster_id": f"c{i}"}]
        pr.append({"prompt": f"q{i}", "chosen": good, "rejected": bad, "is_tie": False, "cluster_id": f"c{i}"})
    return pd.DataFrame(ex), pd.DataFrame(pr)


# ---- lexical candidates -------------------------------------------------------------------------------
@pytest.mark.parametrize("family", L.FAMILIES)
def test_lexical_candidates_learn_pairs_and_survive_save_and_load(family: str, tmp_path: Path) -> None:
    ex, pr = _toy()
    if family == "length_support":  # its features cannot see the words: make the winner longer instead
        pr = pr.assign(chosen=pr["chosen"] + " with more words")
        ex = ex.assign(response=[r + (" with more words" if y else "") for r, y in zip(ex["response"], ex["label"], strict=True)])
    scorer = L.fit(family, ex, pr, C=1.0)  # type: ignore[arg-type]
    probs, ch, rj = E.score_eval(scorer, ex, pr)
    assert E.pairwise_accuracy(ch, rj) == 1.0 and ((probs >= 0) & (probs <= 1)).all()
    loaded = L.load(L.save(scorer, tmp_path / family))
    assert L.is_lexical(tmp_path / family)
    np.testing.assert_allclose(loaded(ex["prompt"].tolist(), ex["response"].tolist()), probs)


def test_memoized_fits_share_a_vocabulary_and_give_the_same_models_and_scores(qa_feedback_path: Path) -> None:
    """Inside ``lexical.memoized`` families fit on the same rows share one TF-IDF vocabulary, each text is vectorized
    once per vocabulary, and every weight and score equals a fit without the memo; the memo ends with the block."""
    from unittest import mock

    ex, pr = _frames(qa_feedback_path, questions=40)
    folds = S.cv_folds(ex, pr, k=2, seed=0)
    plain = [L.fit_grid(f, fold.fit_examples, fold.fit_pairs, list(S.GRIDS[f])) for fold in folds for f in ("tfidf_pairwise", "hybrid")]
    from sklearn.feature_extraction.text import TfidfVectorizer

    analysed: list[int] = []
    transform = TfidfVectorizer.transform
    with mock.patch.object(TfidfVectorizer, "transform", lambda self, docs: analysed.append(len(docs)) or transform(self, docs)):
        with L.memoized():
            memo = [L.fit_grid(f, fold.fit_examples, fold.fit_pairs, list(S.GRIDS[f])) for fold in folds for f in ("tfidf_pairwise", "hybrid")]
            assert memo[0][0].vectorizer is memo[1][0].vectorizer and memo[0][0].vectorizer is not memo[2][0].vectorizer
            scored = [S.val_scored(m[0], fold) for m, fold in zip(memo[::2], folds, strict=True)]
            again = [S.val_scored(m[0], fold) for m, fold in zip(memo[::2], folds, strict=True)]
    texts = lambda ex, pr: set(ex["response"]) | set(S._non_tie(pr)["chosen"]) | set(S._non_tie(pr)["rejected"])  # noqa: E731
    held = sum(len(texts(fold.val_examples, fold.val_pairs) - texts(fold.fit_examples, fold.fit_pairs)) for fold in folds)
    assert sum(analysed) == held  # the fit texts came with the fit; each other held-out text was vectorized once
    for got, want in zip(memo, plain, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a.coef, b.coef)
            assert a.bias == b.bias
    for s, t, m, fold in zip(scored, again, plain[::2], folds, strict=True):
        np.testing.assert_array_equal(s.chosen, S.val_scored(m[0], fold).chosen)
        np.testing.assert_array_equal(s.chosen, t.chosen)
    assert L._MEMO.get() is None


def test_hybrid_encoders_fold_threads_embed_each_text_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cold embedding cache the selection embeds every text once before the fold threads start (they would
    each embed their own share, mostly the same texts, at the same time)."""
    from trainers import embeddings

    embeddings.clear_cache()
    embedded: list[int] = []
    real = embeddings.Embedder._embed
    monkeypatch.setattr(embeddings.Embedder, "_embed", lambda self, p, r, progress: embedded.append(len(p)) or real(self, p, r, progress))
    ex, pr = _toy(30)
    sel = S.compete(ex, pr, families=("hybrid", "hybrid_encoder"), seed=0, cv=3)
    assert sel.cv_folds == 3 and "hybrid_encoder" in sel.best
    assert embedded == [len(set(zip(ex["prompt"], ex["response"], strict=True)) | set(zip(pr["prompt"], pr["chosen"], strict=True))
                            | set(zip(pr["prompt"], pr["rejected"], strict=True)))]
    embeddings.clear_cache()


def test_pairs_alone_train_a_ranker_without_a_bias() -> None:
    _, pr = _toy()
    none = pd.DataFrame(columns=["prompt", "response", "label"])
    scorer = L.fit("tfidf_pairwise", none, pr)
    _, ch, rj = E.score_eval(scorer, none, pr)
    assert E.pairwise_accuracy(ch, rj) == 1.0 and scorer.bias == 0.0


def test_the_pyfunc_serves_a_lexical_winner_through_the_same_predict(tmp_path: Path) -> None:
    from trainers.pyfunc import ARTIFACT_KEY, RewardPyfunc, local_scorer

    ex, pr = _toy()
    path = L.save(L.fit("tfidf_pairwise", ex, pr), tmp_path / "m")
    model = RewardPyfunc()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(path)}))
    out = model.predict(None, pd.DataFrame({"prompt": ["q1", "q1"], "response": [ex["response"][2], ex["response"][3]]}))
    assert list(out.columns) == ["score"] and out["score"][0] > out["score"][1]
    np.testing.assert_allclose(local_scorer(path)(["q1"], [ex["response"][2]]), out["score"][:1])


def test_the_pyfunc_serves_a_hybrid_encoder_from_its_own_folder(tmp_path: Path) -> None:
    """A saved hybrid_encoder carries the encoder's files (the trust digest covers them) and scores from them alone."""
    from trainers import embeddings
    from trainers.pyfunc import ARTIFACT_KEY, RewardPyfunc
    from trainers.registry import artifact_files, pickle_files

    ex, pr = _toy()
    scorer = L.fit("hybrid_encoder", ex, pr, embedder=embeddings.default_embedder(max_length=32))
    path = L.save(scorer, tmp_path / "m")
    assert {"embedder/model.safetensors", "embedder/config.json", "lexical_model.json"} <= set(artifact_files(path))
    assert pickle_files(path) == []
    embeddings.clear_cache()
    model = RewardPyfunc()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(path)}))
    assert Path(model.lexical.embedder.folder) == path / "embedder" and model.lexical.embedder.max_length == 32
    out = model.predict(None, pd.DataFrame({"prompt": ex["prompt"], "response": ex["response"]}))
    np.testing.assert_allclose(out["score"], scorer(ex["prompt"].tolist(), ex["response"].tolist()), rtol=1e-5)
    with pytest.raises(Exception, match="needs its encoder files"):
        L.from_dict(L.to_dict(scorer))  # no folder: says where the encoder files should be


# ---- validation split and selection -------------------------------------------------------------------
def test_validation_is_carved_from_the_given_rows_by_cluster(qa_feedback_path: Path) -> None:
    ex, pr = _frames(qa_feedback_path)
    train_ex, train_pr = ex[ex.split == "train"], pr[pr.split == "train"]
    carved = S.carve(train_ex, train_pr, share=0.2, seed=13)
    val = set(carved.val_examples["cluster_id"]) | set(carved.val_pairs["cluster_id"])
    fit = set(carved.fit_examples["cluster_id"]) | set(carved.fit_pairs["cluster_id"])
    assert val and fit and not val & fit
    assert val <= set(train_ex["cluster_id"]) | set(train_pr["cluster_id"])
    assert len(carved.fit_examples) + len(carved.val_examples) == len(train_ex)
    assert S.carve(train_ex, train_pr, share=0.2, seed=13).val_pairs.equals(carved.val_pairs)  # deterministic
    assert not S.carve(train_ex.head(3), train_pr.head(3), share=0.2).has_validation  # too few clusters: no selection


def test_selection_picks_the_family_best_on_validation_and_says_by_how_much() -> None:
    ex, pr = _toy(60)
    pr = pr.assign(chosen=pr["chosen"] + " with more words")  # length and words both tell
    sel = S.compete(ex, pr, families=("tfidf_pairwise", "length_support"), seed=0, n_boot=50)
    assert sel.winner in ("tfidf_pairwise", "length_support")
    assert sel.best[sel.winner].objective == max(t.objective for t in sel.best.values())
    assert sel.winner in sel.fitted and "won: the cheap families by" in sel.summary()
    # an encoder that ranks validation pairs backwards loses, and the margin says so
    worst = lambda p, r: np.array([0.0 if "grounded" in x else 1.0 for x in r])
    sel = S.compete(ex, pr, families=("encoder", "tfidf_pairwise"), encoder_val=worst, seed=0, n_boot=50)
    assert sel.winner == "tfidf_pairwise" and sel.best["encoder"].pairwise_accuracy == 0.0
    assert sel.margins["encoder"].lo > 0


def test_cross_validation_folds_hold_each_prompt_cluster_out_once() -> None:
    ex, pr = _toy(60)
    folds = S.cv_folds(ex, pr, k=5, seed=13)
    assert len(folds) == 5
    held = [set(f.val_examples["cluster_id"]) | set(f.val_pairs["cluster_id"]) for f in folds]
    assert sorted(c for h in held for c in h) == sorted(set(ex["cluster_id"]))  # every cluster held out exactly once
    for f, h in zip(folds, held, strict=True):
        assert h and not h & (set(f.fit_examples["cluster_id"]) | set(f.fit_pairs["cluster_id"]))
    assert S.cv_folds(ex.head(20), pr.head(10), k=5) == []  # fewer than 5 clusters per fold: no folds


def test_cheap_families_are_chosen_on_pooled_out_of_fold_scores_and_the_encoder_on_validation() -> None:
    ex, pr = _toy(60)
    sel = S.compete(ex, pr, families=("tfidf_pairwise", "length_support"), seed=0, n_boot=50)
    assert sel.cv_folds == 5 and sel.validation[0] == 60  # every train prompt was held out once
    # "grounded" answers are also the longer ones: both families rank every pair, and a tie goes to the cheaper one
    assert sel.best["tfidf_pairwise"].pairwise_accuracy == sel.best["length_support"].pairwise_accuracy == 1.0
    assert sel.winner == "length_support"
    ex2, pr2 = ex.assign(response=ex["response"].str.replace("vague", "unproven")), pr.assign(
        rejected=pr["rejected"].str.replace("vague", "unproven"))
    sel = S.compete(ex2, pr2, families=("tfidf_pairwise", "length_support"), seed=0, n_boot=50)
    assert sel.winner == "tfidf_pairwise" and sel.margins["length_support"].lo > 0  # as long as "grounded": only the words tell
    perfect = lambda p, r: np.array([1.0 if "grounded" in x else 0.0 for x in r])
    sel = S.compete(ex2, pr2, families=("encoder", "tfidf_pairwise"), encoder_val=perfect, seed=0, n_boot=50)
    assert sel.winner == "tfidf_pairwise" and "did not beat tfidf_pairwise" in sel.summary()  # a tie on validation: the cheaper
    assert "(5-fold CV)" in sel.summary() and "(validation)" in sel.summary()


def test_the_encoder_wins_only_by_more_than_one_standard_error() -> None:
    """The one-standard-error rule: the encoder, ~100x the serving cost of a cheap family, must beat the best of them by
    more than the noise of the carved validation part."""
    ex, pr = _toy(60)
    rng = np.random.default_rng(1)  # the better answer is marked by a word no other prompt shares: no lexical rule can learn it
    marks = {f"q{i}": (f"w{rng.integers(10**9)}", f"w{rng.integers(10**9)}") for i in range(60)}
    good = pr["prompt"].map(lambda q: f"answer {marks[q][0]}")
    bad = pr["prompt"].map(lambda q: f"answer {marks[q][1]}")
    pr = pr.assign(chosen=good, rejected=bad)
    ex = pd.concat([ex.iloc[0::2].assign(response=good.to_numpy()), ex.iloc[1::2].assign(response=bad.to_numpy())]).sort_index()
    winners = set(good)
    knows = lambda p, r: np.array([1.0 if x in winners else 0.0 for x in r])
    sel = S.compete(ex, pr, families=("encoder", "tfidf_pairwise", "length_support"), encoder_val=knows, seed=0, n_boot=200)
    assert sel.winner == "encoder" and "beat" in sel.summary() and "by more than one standard error" in sel.summary()
    assert sel.best["encoder"].pairwise_accuracy == 1.0 and max(sel.best[f].pairwise_accuracy for f in ("tfidf_pairwise", "length_support")) < 0.8
    # right on one validation prompt more than half: ahead of the cheap family, but not beyond the noise of ~12 validation prompts
    val = sorted(set(S.carve(ex, pr, seed=0).val_pairs["prompt"]))
    right = set(val[: len(val) // 2 + 1])
    partly = lambda p, r: np.array([float((x in winners) == (q in right)) for q, x in zip(p, r, strict=True)])
    sel = S.compete(ex, pr, families=("encoder", "length_support"), encoder_val=partly, seed=0, n_boot=200)
    gain, se = (float(v) for v in re.search(r": ([+-][\d.]+), SE ([\d.]+)\)", sel.summary()).groups())
    assert sel.winner == "length_support" and 0 < gain <= se, sel.summary()


class _Embedder:
    """A stand-in for the frozen encoder's text part: ``knows`` (the better answers) get one direction, the others
    another, as a sentence encoder that understands them would; without ``knows`` every answer gets noise."""

    max_length = 16

    def __init__(self, knows: set[str] | None) -> None:
        self.knows, self.rng = knows, np.random.default_rng(7)
        self.noise: dict[str, np.ndarray] = {}

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if self.knows is None:
            return np.stack([self.noise.setdefault(r, self.rng.normal(size=8)) for r in responses]) if responses else np.zeros((0, 8))
        return np.array([[1.0, 0.0] if r in self.knows else [0.0, 1.0] for r in responses]).reshape(-1, 2)


def test_hybrid_encoder_wins_only_by_more_than_one_standard_error() -> None:
    """The encoder's text part beside the sparse and dense ones: it wins when its embedding tells what no word or length
    can (the better answer's mark is a word no other prompt shares), and the cheaper family wins a tie."""
    ex, pr = _toy(60)
    rng = np.random.default_rng(1)
    marks = {f"q{i}": (f"w{rng.integers(10**9)}", f"w{rng.integers(10**9)}") for i in range(60)}
    good, bad = (pr["prompt"].map(lambda q, k=k: f"answer {marks[q][k]}") for k in (0, 1))
    pr = pr.assign(chosen=good, rejected=bad)
    ex = pd.concat([ex.iloc[0::2].assign(response=good.to_numpy()), ex.iloc[1::2].assign(response=bad.to_numpy())]).sort_index()
    sel = S.compete(ex, pr, families=("tfidf_pairwise", "length_support", "hybrid", "hybrid_encoder"), seed=0, n_boot=200,
                    embedder=_Embedder(set(good)))
    assert sel.winner == "hybrid_encoder" and "hybrid_encoder beat" in sel.summary(), sel.summary()
    assert sel.best["hybrid_encoder"].pairwise_accuracy == 1.0 and sel.best["tfidf_pairwise"].pairwise_accuracy < 0.8
    # staged: hybrid_encoder is tuned at the hybrid's chosen point, over the embedding's scale only
    assert [t.params for t in sel.trials if t.family == "hybrid_encoder"] == [
        {**sel.best["hybrid"].params, "embed_scale": e} for e in S.EMBED_SCALES]
    assert sel.fitted["hybrid_encoder"].params["embed_scale"] in S.EMBED_SCALES
    # a first model's cross-fit evidence runs the same recipe with the run's embedder
    from trainers import crossfit as X

    oof = X.out_of_fold(ex, pr, ["tfidf_pairwise", "hybrid_encoder"], embedder=_Embedder(set(good)))
    assert oof is not None and set(oof.winners) == {"hybrid_encoder"}, oof.winners
    # the toy's own words tell every pair: hybrid ties it and is cheaper (noise in the embedding cannot help)
    ex, pr = _toy(60)
    sel = S.compete(ex, pr, families=("tfidf_pairwise", "hybrid_encoder"), seed=0, n_boot=200, embedder=_Embedder(None))
    assert sel.winner == "tfidf_pairwise", sel.summary()


@pytest.mark.parametrize(("keep", "unmeasured"), [("pairs", "AUC"), ("ratings", "pairwise")])
def test_a_one_kind_stream_selection_says_not_measured_never_nan(keep: str, unmeasured: str) -> None:
    """Comparisons or corrections alone give no AUC, ratings alone no pairwise accuracy: the summary (the run's tag and
    the model card's selection section) says so in words."""
    ex, pr = _toy(60)
    if keep == "pairs":
        ex = ex.iloc[:0]
    else:
        ex, pr = ex.assign(label=ex["label"].map({1.0: 0.75, 0.0: 0.25})), pr.iloc[:0]  # ratings 4 and 2
    summary = S.compete(ex, pr, families=("tfidf_pairwise", "length_support"), seed=0, n_boot=50).summary()
    assert " won: " in summary and "nan" not in summary.lower()
    assert f"{unmeasured} not measured" in summary


def _eval_scrambled(lake: str) -> None:
    """Rewrite the eval split of both gold tables: labels flipped, pairs swapped, texts replaced."""
    from deltalake import write_deltalake

    from trainers import data as D

    for name in (D.EXAMPLES, D.PAIRS):
        frame = D.read_gold(f"{lake}/{name}", name, version=0).frame
        ev = frame["split"] == "eval"
        if name == D.EXAMPLES:
            frame.loc[ev, "label"] = 1.0 - frame.loc[ev, "label"]
            frame.loc[ev, "response"] = "EVAL " + frame.loc[ev, "response"]
        else:
            frame.loc[ev, ["chosen", "rejected"]] = frame.loc[ev, ["rejected", "chosen"]].to_numpy()
        write_deltalake(f"{lake}/{name}", frame, mode="overwrite")


def test_selection_never_looks_at_the_eval_split(qa_feedback_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real trainer's selection is the same when the eval split is scrambled, and no scorer of the selection
    is ever asked about an eval text."""
    from infra.settings import load_settings
    from trainers.config import TrainConfig
    from trainers.train import train

    seen: list[str] = []
    real = E.score_eval

    def spy(scorer, examples, pairs):  # noqa: ANN001, ANN202
        seen.extend(examples["response"].tolist() + pairs["chosen"].tolist() + pairs["rejected"].tolist())
        return real(scorer, examples, pairs)

    monkeypatch.setattr(S.E, "score_eval", spy)
    results = []
    for k, scramble in enumerate((False, True)):
        lake = str(tmp_path / f"lake{k}")
        write_gold(lake, qa_feedback_path, questions=100, passages=True)
        if scramble:
            _eval_scrambled(lake)
            ev_ex, ev_pr = (t.to_pandas() for t in gold_frames(qa_feedback_path, questions=100, passages=True))
            eval_texts = set(ev_ex[ev_ex.split == "eval"]["response"]) | set(ev_pr[ev_pr.split == "eval"]["chosen"])
            eval_texts |= {"EVAL " + t for t in eval_texts}
            train_texts = set(ev_ex[ev_ex.split == "train"]["response"]) | set(ev_pr[ev_pr.split == "train"]["chosen"])
            eval_texts -= train_texts  # an answer text can recur across questions
        cfg = TrainConfig(lake_root=lake, output_dir=str(tmp_path / f"run{k}"), track=False, examples_version=0, pairs_version=0,
                          candidates=("tfidf_pairwise", "length_support", "hybrid"))
        results.append(train(cfg, load_settings(home=tmp_path / "home"), say=lambda m: None))
    assert results[0].winner == results[1].winner and results[0].selection == results[1].selection
    assert seen and not set(seen) & eval_texts


def test_the_encoder_trains_on_the_fit_part_and_competes(qa_feedback_path: Path, tmp_path: Path) -> None:
    from infra.settings import load_settings
    from trainers.config import TrainConfig
    from trainers.train import train

    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=60, passages=True)
    cfg = TrainConfig(lake_root=lake, output_dir=str(tmp_path / "run"), track=False, examples_version=0, pairs_version=0, max_steps=2,
                      max_length=32, batch_size=4, candidates=("encoder", "length_support"))
    lines: list[str] = []
    result = train(cfg, load_settings(home=tmp_path / "home"), say=lines.append)
    assert "encoder" in result.selection and "length_support" in result.selection and result.winner in ("encoder", "length_support")
    carved = S.carve(*(t.to_pandas().query("split == 'train'") for t in gold_frames(qa_feedback_path, questions=60, passages=True)), seed=13)
    assert any(f"training {len(carved.fit_examples)} examples + {len(carved.fit_pairs)} pairs" in m for m in lines)
    assert (Path(result.output_dir) / "candidates" / "length_support" / L.MARKER).exists()
    # the encoder was scored on the validation part from the frozen cache; its validation figure is the saved model's
    assert any("outside the encoder's fit part" in m for m in lines) and not any("scoring the saved model whole" in m for m in lines), lines
    from trainers.model import load_reward_model, score

    saved, tok, max_length = load_reward_model(Path(result.output_dir) / "model")
    vp = carved.val_pairs[~carved.val_pairs["is_tie"].astype(bool)]
    chosen = score(saved, tok, vp["prompt"].tolist(), vp["chosen"].tolist(), max_length=max_length)
    rejected = score(saved, tok, vp["prompt"].tolist(), vp["rejected"].tolist(), max_length=max_length)
    assert f"- encoder{' (winner)' if result.winner == 'encoder' else ''}: pairwise {E.pairwise_accuracy(np.array(chosen), np.array(rejected)):.3f}" in result.selection


def test_hybrid_encoder_reads_the_encoders_frozen_cache(qa_feedback_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside the encoder, hybrid_encoder's embeddings come from the encoder's frozen bottom blocks (computed once per
    text) finished by the base encoder's top block: the selection runs no embedding pass of its own, and the embeddings
    are the ones a direct pass (the pyfunc's, at serving) computes."""
    from infra.settings import load_settings
    from trainers import embeddings
    from trainers.config import TrainConfig
    from trainers.train import train

    embeddings.clear_cache()
    direct: list[int] = []
    real = embeddings.Embedder._embed
    monkeypatch.setattr(embeddings.Embedder, "_embed", lambda self, p, r, progress: direct.append(len(p)) or real(self, p, r, progress))
    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=60, passages=True)
    cfg = TrainConfig(lake_root=lake, output_dir=str(tmp_path / "run"), track=False, examples_version=0, pairs_version=0, max_steps=2,
                      max_length=32, batch_size=4, candidates=("encoder", "hybrid", "hybrid_encoder"))
    lines: list[str] = []
    result = train(cfg, load_settings(home=tmp_path / "home"), say=lines.append)
    assert "hybrid_encoder" in result.selection and any("hybrid_encoder: embedded" in m and "from the frozen cache" in m for m in lines), lines
    assert direct == [], "the selection ran an embedding pass of its own"
    ex, pr = (t.to_pandas().query("split == 'train'") for t in gold_frames(qa_feedback_path, questions=60, passages=True))
    prompts = [*ex["prompt"][:10], *pr["prompt"][:10]]
    responses = [*ex["response"][:10], *pr["rejected"][:10]]
    embedder = embeddings.default_embedder(max_length=32)
    from_cache = embedder(prompts, responses)
    embeddings.clear_cache()
    fresh = embedder(prompts, responses)
    assert direct == [len(set(zip(prompts, responses, strict=True)))] and np.allclose(from_cache, fresh, atol=1e-5), np.abs(from_cache - fresh).max()
    embeddings.clear_cache()


# ---- cluster-paired intervals -------------------------------------------------------------------------
def test_cluster_bootstrap_moves_a_clusters_rows_together_and_pairs_scorers() -> None:
    ex_c = np.array(["a", "a", "b"])
    pr_c = np.array(["a", "b", "b", "c"])
    w_ex, w_pr = E.cluster_weights(ex_c, pr_c, n_boot=200, seed=0)
    assert (w_ex[:, 0] == w_ex[:, 1]).all() and (w_ex[:, 0] == w_pr[:, 0]).all() and (w_pr[:, 1] == w_pr[:, 2]).all()
    assert np.allclose(w_ex.sum(1) * 0 + (w_ex[:, [0, 2]].sum(1) + w_pr[:, 3]), 3)  # a + b + c counts sum to 3 clusters


def test_one_big_prompt_widens_the_interval_and_a_scorer_minus_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    # 20 prompts: one with 200 pairs all right, 19 with 5 pairs each at chance
    clusters = np.array(["big"] * 200 + [f"c{i}" for i in range(19) for _ in range(5)])
    hit = np.r_[np.ones(200), rng.integers(0, 2, size=95)].astype(float)
    s = E.Scored(np.zeros(0), hit, np.full(len(hit), 0.5))
    metrics, diffs = E.paired_metrics({"m": s, "same": s}, np.zeros(0), np.array([], dtype=str), clusters, reference="m", n_boot=300)
    by_cluster = metrics["m"]["pairwise_accuracy"]
    by_row = E.bootstrap(E.pairwise_accuracy, (hit, np.full(len(hit), 0.5)), n_boot=300, seed=0)
    assert by_cluster.hi - by_cluster.lo > 2 * (by_row.hi - by_row.lo)
    d = diffs["same"]["pairwise_accuracy"]
    assert (d.value, d.lo, d.hi) == (0.0, 0.0, 0.0)


def test_auc_draws_equal_weighted_roc_auc() -> None:
    rng = np.random.default_rng(0)
    y, p = (rng.random(150) < 0.3).astype(float), np.round(rng.random(150), 1)
    w = rng.integers(0, 3, size=(4, 150)).astype(float)
    np.testing.assert_allclose(E.auc_draws(y, p, w), [E.auc(y, p, x) for x in w])


def test_full_report_pairs_the_candidate_with_baselines_champion_and_losers(qa_feedback_path: Path) -> None:
    ex, pr = (t.to_pandas() for t in gold_frames(qa_feedback_path, questions=80))
    train = (ex[ex.split == "train"], pr[pr.split == "train"])
    evalset = (ex[ex.split == "eval"].reset_index(drop=True), pr[pr.split == "eval"].reset_index(drop=True))
    shorter = lambda p, r: np.array([1.0 / (1 + len(x)) for x in r])
    report = E.full_report(shorter, train, evalset, n_boot=100, champion=shorter, others={"same": shorter})
    assert set(report.paired) == {"constant", "length", "tfidf_lr", "champion", "same"}
    assert report.paired["champion"]["pairwise_accuracy"].value == 0.0 and report.champion is not None
    acc = report.metrics["pairwise_accuracy"].value
    assert math.isclose(report.paired["constant"]["pairwise_accuracy"].value, acc - 0.5)
    card = E.model_card(report, name="m", lineage={}, family="tfidf_pairwise", selection="tfidf_pairwise won")
    assert "model - tfidf_lr" in card and "tfidf_pairwise won" in card and "| same |" in card
    assert "paired.length.pairwise_accuracy.lo" in report.flat()


# ---- the gate on paired intervals ---------------------------------------------------------------------
C = {"pairwise_accuracy": (0.60, 0.57, 0.63), "auc": (0.7, 0.6, 0.8)}
BASE = {"constant": {}, "length": {}, "tfidf_lr": {}}
WIN = (0.05, 0.02, 0.08)
LEVEL = (-0.01, -0.04, 0.02)
LOSE = (-0.06, -0.09, -0.03)


def _paired(length=WIN, constant=WIN, tfidf=LEVEL, auc=LEVEL, champion=None):  # noqa: ANN001, ANN202
    out = {"constant": {"pairwise_accuracy": constant, "auc": auc}, "length": {"pairwise_accuracy": length, "auc": auc},
           "tfidf_lr": {"pairwise_accuracy": tfidf, "auc": auc}}
    if champion is not None:
        out["champion"] = {"pairwise_accuracy": champion}
    return out


@pytest.mark.parametrize(
    ("paired", "counts", "champion", "config", "passed", "why"),
    [
        (_paired(), (40, 40), None, GateConfig(), True, ""),
        (_paired(length=LEVEL), (40, 40), None, GateConfig(), False, "does not beat baseline length"),  # level is not a win
        (_paired(length=LOSE), (40, 40), None, GateConfig(), False, "does not beat baseline length"),  # loses to length
        (_paired(constant=LEVEL), (40, 40), None, GateConfig(), False, "does not beat baseline constant"),
        (_paired(tfidf=LOSE), (40, 40), None, GateConfig(), False, "worse than baseline tfidf_lr beyond"),
        (_paired(tfidf=WIN), (40, 40), None, GateConfig(), True, ""),
        (_paired(auc=LOSE), (40, 40), None, GateConfig(), False, "auc is worse than baseline"),
        (_paired(auc=LOSE), (10, 300), None, GateConfig(), True, ""),  # too few of a class: AUC not judged
        (_paired(length=LOSE, tfidf=LOSE), (40, 40), None, GateConfig(must_beat_baselines=False), True, ""),
        (_paired(champion=LEVEL), (40, 40), {"pairwise_accuracy": (0.61, 0.58, 0.64)}, GateConfig(), True, ""),
        (_paired(champion=LOSE), (40, 40), {"pairwise_accuracy": (0.66, 0.63, 0.69)}, GateConfig(), False, "worse than champion"),
        # a challenger answers to the champion (the baseline rules proved the first model): level with it passes even where
        # it does not beat length on its own eval split; worse than the champion fails whatever the baselines say
        (_paired(champion=LEVEL, length=LOSE, tfidf=LOSE), (40, 40), {"pairwise_accuracy": (0.61, 0.58, 0.64)}, GateConfig(), True, ""),
        (_paired(champion=LOSE, length=WIN), (40, 40), {"pairwise_accuracy": (0.66, 0.63, 0.69)}, GateConfig(), False, "worse than champion"),
        ({"constant": {}, "length": {}, "tfidf_lr": {}}, (40, 40), None, GateConfig(), False, "does not beat baseline constant"),
    ],
)
def test_gate_on_paired_intervals(paired, counts, champion, config, passed, why) -> None:  # noqa: ANN001
    decision = decide_gate(C, champion, baselines=BASE, candidate_slices={}, champion_slices={} if champion else None, config=config,
                           paired=paired, class_counts=counts)
    assert decision.passed is passed, decision.summary()
    assert why in decision.summary()
