"""MinHash/LSH: determinism, estimates, resolution rules, and precision/recall on a labelled set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features import minhash
from features.config import MinHashParams
from features.evaluation import labelled_corpus, precision_recall, shingles, true_pairs

P = MinHashParams()


def test_signatures_are_deterministic_and_independent_of_batching() -> None:
    texts = ["The quick brown fox jumps over the lazy dog", "Ünïcode wörds ärë wörds too", "", None, "short"]
    a = minhash.signatures(texts, P)
    b = np.concatenate([minhash.signatures(texts[:2], P), minhash.signatures(texts[2:], P)])
    assert a.dtype == np.uint32 and a.shape == (5, P.num_perm)
    assert np.array_equal(a, b)
    assert (a[2] == 0xFFFFFFFF).all() and (a[3] == 0xFFFFFFFF).all()
    # bytes round trip (the index stores signatures as little-endian binary)
    assert np.array_equal(minhash.sig_from_bytes(minhash.sig_to_bytes(a), P.num_perm), a)


def test_estimate_tracks_true_jaccard() -> None:
    words = [f"w{i}" for i in range(400)]
    base = " ".join(words)
    errs = []
    for keep in (400, 350, 300, 200):
        other = " ".join(words[:keep] + [f"x{i}" for i in range(400 - keep)])
        sa, sb = shingles(base, P.shingle), shingles(other, P.shingle)
        true = len(sa & sb) / len(sa | sb)
        sig = minhash.signatures([base, other], P)
        est = float(minhash.estimate_jaccard(sig, np.array([0]), np.array([1]))[0])
        errs.append(abs(est - true))
    assert max(errs) < 0.12, errs


@pytest.mark.parametrize(
    ("rank", "pairs", "fixed", "keep"),
    [
        ([0, 1, 2], [(0, 1), (1, 2)], None, [True, False, True]),  # no chaining: 2 only resembles the dropped 1
        ([2, 1, 0], [(0, 1)], None, [False, True, True]),  # the earliest (lowest rank) survives
        ([0, 1, 2], [(0, 1), (0, 2)], None, [True, False, False]),
        ([1, 0], [(0, 1)], [True, False], [False, True]),  # an older new doc beats an indexed later one (retract)
        ([0, 1, 2], [(1, 2)], [False, True, True], [True, True, True]),  # two indexed docs never drop each other
    ],
)
def test_greedy_keep_rules(rank, pairs, fixed, keep) -> None:
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    got, _ = minhash.greedy_keep(len(rank), i, j, rank=np.array(rank), fixed=None if fixed is None else np.array(fixed))
    assert got.tolist() == keep


def test_components_are_transitive() -> None:
    comp = minhash.components(5, np.array([0, 1]), np.array([1, 2]))
    assert comp[0] == comp[1] == comp[2] and len({comp[3], comp[4], comp[0]}) == 3


def test_near_dup_precision_recall_on_labelled_set(qa_feedback_path) -> None:
    questions = json.loads(qa_feedback_path.read_text())[:150]
    texts = labelled_corpus(questions, variants=300, rate=0.3, seed=1)
    truth = true_pairs(texts, k=P.shingle, threshold=P.threshold)
    sig = minhash.signatures(texts, P)
    i, j = minhash.near_duplicate_pairs(sig, minhash.band_keys(sig, P), P)
    got = precision_recall(set(zip(i.tolist(), j.tolist())), truth)
    print("near-dup stage on the labelled set:", got)
    assert got["true"] > 100  # the set holds real and planted near duplicates
    assert got["precision"] >= 0.9 and got["recall"] >= 0.85, got


def test_real_qa_feedback_near_duplicate_predictions_are_found(qa_feedback_path) -> None:
    questions = json.loads(qa_feedback_path.read_text())
    texts = [q["question"] + "\n" + q[f"prediction {k}"] for q in questions for k in (1, 2, 3, 4)]
    truth = true_pairs(texts, k=P.shingle, threshold=P.threshold)
    sig = minhash.signatures(texts, P)
    i, j = minhash.near_duplicate_pairs(sig, minhash.band_keys(sig, P), P)
    found = set(zip(i.tolist(), j.tolist()))
    assert len(truth) > 50 and all(a // 4 == b // 4 for a, b in truth)  # real near-dups are within a question
    assert len(found & truth) / len(truth) >= 0.85


def test_a_rag_prompts_passages_do_not_make_its_answers_near_duplicates(qa_feedback_path) -> None:
    import polars as pl

    from features.labels import PROMPT_WORDS_IN_DOC, doc_text
    from tests.training_fixtures import gold_frames

    def kept(passages: bool) -> tuple[int, int]:
        pairs = pl.from_arrow(gold_frames(qa_feedback_path, questions=100, passages=passages)[1]).filter(~pl.col("is_tie"))
        texts = doc_text(pairs, "pair")
        if not passages:  # a prompt of at most PROMPT_WORDS_IN_DOC words is read whole, as before the cut
            assert texts.to_list() == (pairs["prompt"] + "\n" + pairs["chosen"] + "\n" + pairs["rejected"]).to_list()
        else:
            heads = [" ".join(p.split(" ")[:PROMPT_WORDS_IN_DOC]) for p in pairs["prompt"].to_list()]
            assert texts.to_list() == [f"{h}\n{c}\n{r}" for h, c, r in zip(heads, pairs["chosen"], pairs["rejected"], strict=True)]
            assert all(len(h) < len(p) for h, p in zip(heads, pairs["prompt"], strict=True))
        sig = minhash.signatures(texts, P)
        i, j = minhash.near_duplicate_pairs(sig, minhash.band_keys(sig, P), P)
        keep, _ = minhash.greedy_keep(len(texts), i, j, rank=np.arange(len(texts)))
        return int(np.sum(keep)), len(texts)

    (bare, n), (rag, n_rag) = kept(False), kept(True)
    # ~3 KB of shared passages read whole left 103 of 651 comparisons; cut to the prompt's head, 456 (question alone: 511)
    assert n == n_rag == 651 and bare == 511 and rag >= 0.85 * bare
