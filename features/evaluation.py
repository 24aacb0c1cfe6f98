"""Ground truth for the near-duplicate stage: exact Jaccard of word-shingle sets, and precision/recall.

Used by the tests and the benchmark to measure MinHash LSH (ours and datasketch's) on the same labelled set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"(?:[0-9a-z_]|[^\x00-\x7f])+")  # the tokenization of features.minhash


def shingles(text: str, k: int) -> set[str]:
    words = _WORD.findall(text.lower())
    if not words:
        return set()
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def true_pairs(texts: Sequence[str], *, k: int, threshold: float) -> set[tuple[int, int]]:
    """All pairs (i < j) whose exact shingle-set Jaccard is at least ``threshold`` (sparse matrix product)."""
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    rows, cols = [], []
    sizes = np.zeros(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        s = shingles(t, k)
        sizes[i] = len(s)
        for sh in s:
            rows.append(i)
            cols.append(vocab.setdefault(sh, len(vocab)))
    x = csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(texts), max(len(vocab), 1)))
    inter = (x @ x.T).tocoo()
    i, j, v = inter.row, inter.col, inter.data
    keep = i < j
    i, j, v = i[keep], j[keep], v[keep]
    jac = v / (sizes[i] + sizes[j] - v)
    ok = jac >= threshold - 1e-12
    return set(zip(i[ok].tolist(), j[ok].tolist()))


def precision_recall(predicted: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "predicted": len(predicted), "true": len(truth)}


def perturb(text: str, rng: random.Random, *, rate: float) -> str:
    """A near-duplicate: each word dropped, replaced or doubled with probability ``rate``."""
    out = []
    for w in text.split(" "):
        x = rng.random()
        if x < rate / 3:
            continue
        if x < 2 * rate / 3:
            out.append(rng.choice(["the", "a", "new", "also", "very", "its", "then"]))
        elif x < rate:
            out += [w, w]
        else:
            out.append(w)
    return " ".join(out)


def labelled_corpus(questions: list[dict], *, variants: int, rate: float, seed: int = 0) -> list[str]:
    """qa_feedback answers (question + prediction k: real near-duplicates among a question's predictions) plus
    ``variants`` perturbed copies of random answers at word-edit rates up to ``rate``."""
    rng = random.Random(seed)
    base = [q["question"] + "\n" + q[f"prediction {k}"] for q in questions for k in (1, 2, 3, 4)]
    extra = [perturb(rng.choice(base), rng, rate=rng.uniform(0.0, rate)) for _ in range(variants)]
    return base + extra
