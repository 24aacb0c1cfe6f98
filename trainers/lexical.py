"""The cheap reward-model candidates: one logistic head over sparse and dense features of (prompt, response),
trained the way feedback is scored.

- ``tfidf_pairwise``: TF-IDF of the response (word 1-2 grams, sublinear tf);
- ``length_support``: log characters of the response and its lexical ``support`` by the prompt (standardized);
- ``hybrid``: both, side by side (the dense part scaled by ``dense_scale`` so the sparse part's regularization does
  not crush it);
- ``hybrid_encoder``: the hybrid's features and the encoder's text part beside them: the frozen base encoder's
  embedding of (prompt end, response) (``trainers.embeddings``; scaled by ``embed_scale``). One head over all three,
  so it never needs to be worse than TF-IDF alone; the encoder is not tuned, so it cross-fits like the others. A saved
  one carries the encoder's files in ``embedder/``.

Training rows (Bradley-Terry as a logistic regression without intercept): each non-tie pair gives
``f(chosen) - f(rejected)`` with target 1 and its negation with target 0 (half weight each); each pointwise label
(thumbs) gives ``f(response)`` plus a constant "pointwise" column with its label. The constant column plays the
bias for P(satisfied) and is 0 on pair rows, where a bias cancels. The score is ``sigmoid(w . f + w_bias)``: a
probability, with the same ``(prompts, responses) -> scores`` interface as the encoder model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Family = Literal["tfidf_pairwise", "length_support", "hybrid", "hybrid_encoder"]
FAMILIES: tuple[Family, ...] = ("tfidf_pairwise", "length_support", "hybrid", "hybrid_encoder")
EMBEDDER_DIR = "embedder"  # in a saved hybrid_encoder folder: the frozen encoder's files
MARKER = "lexical.json"  # in a saved folder: says it holds a lexical candidate, not an encoder
MODEL_FILE = "lexical_model.json"  # the fitted scorer as plain JSON (vocabulary, idf, weights): nothing to unpickle
VECTORIZER_PARAMS = ("ngram_range", "min_df", "max_features", "sublinear_tf", "lowercase", "norm", "use_idf", "smooth_idf")


@dataclass
class _Memo:
    vectorizers: dict[str, Any] = field(default_factory=dict)  # digest of the distinct texts a vocabulary was fit on -> it
    rows: dict[int, tuple[Any, dict[str, int], Any]] = field(default_factory=dict)  # id(vectorizer) -> (it, text -> row, rows)


_MEMO: ContextVar[_Memo | None] = ContextVar("lakeloop_lexical_memo", default=None)


@contextlib.contextmanager
def memoized() -> Iterator[None]:
    """Inside this block a TF-IDF vocabulary fit on the same texts is fit once, and each text is vectorized once per
    vocabulary: a selection over folds, grid points and families asks for the same ones again and again (sklearn's
    analysis of each text ran ~200k times for one training of ~4k texts). Exact: a text's TF-IDF row depends on the
    text and the vocabulary only. The memo is dropped when the block ends, so a served model never grows one."""
    token = _MEMO.set(_Memo())
    try:
        yield
    finally:
        _MEMO.reset(token)


def _fit_vectorizer(distinct: list[str]) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    memo = _MEMO.get()
    key = ""
    if memo is not None:
        digest = hashlib.sha256()
        for text in distinct:
            raw = text.encode("utf-8", "surrogatepass")
            digest.update(len(raw).to_bytes(8, "little") + raw)
        key = digest.hexdigest()
    if memo is not None and key in memo.vectorizers:
        return memo.vectorizers[key]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(distinct) >= 50 else 1, max_features=100_000,
                                 sublinear_tf=True, dtype=np.float32)
    if memo is None:
        return vectorizer.fit(distinct)
    rows = vectorizer.fit_transform(distinct).tocsr()  # the same rows transform() gives, kept for the memo
    memo.vectorizers[key] = vectorizer
    memo.rows[id(vectorizer)] = (vectorizer, {t: i for i, t in enumerate(distinct)}, rows)
    return vectorizer


def _tfidf(vectorizer: Any, texts: list[str]) -> Any:
    """``vectorizer.transform(texts)``, from the memo inside ``memoized``."""
    from scipy import sparse

    memo = _MEMO.get()
    if memo is None or not texts:
        return vectorizer.transform(texts)
    _, index, rows = memo.rows.get(id(vectorizer), (vectorizer, {}, None))
    missing = [t for t in dict.fromkeys(texts) if t not in index]
    if missing:
        start = 0 if rows is None else rows.shape[0]
        index.update((t, start + i) for i, t in enumerate(missing))
        new = vectorizer.transform(missing).tocsr()
        rows = new if rows is None else sparse.vstack([rows, new], format="csr")
        memo.rows[id(vectorizer)] = (vectorizer, index, rows)
    return rows[[index[t] for t in texts]]


@functools.lru_cache(maxsize=65_536)
def _support(prompt: str, response: str) -> float:
    from trainers.model import support

    return support(prompt, response)


def dense_features(prompts: list[str], responses: list[str]) -> np.ndarray:
    """log characters of the response, and its lexical support by the prompt (trainers.model.support; each distinct
    (prompt, response) computed once per process: a grid search asks for the same texts many times)."""
    return np.array([[np.log1p(len(r)), _support(p, r)] for p, r in zip(prompts, responses, strict=True)], dtype=float).reshape(-1, 2)


@dataclass
class LexicalScorer:
    """A fitted candidate; call it as ``scorer(prompts, responses) -> P(satisfied)``."""

    family: Family
    params: dict[str, float]
    vectorizer: Any = None
    dense_mean: np.ndarray | None = None
    dense_std: np.ndarray | None = None
    coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bias: float = 0.0
    embedder: Any = None  # trainers.embeddings.Embedder (hybrid_encoder)

    def features(self, prompts: list[str], responses: list[str]) -> Any:
        from scipy import sparse

        parts = []
        if self.vectorizer is not None:
            parts.append(_tfidf(self.vectorizer, responses))
        if self.dense_mean is not None:
            dense = (dense_features(prompts, responses) - self.dense_mean) / self.dense_std * self.params.get("dense_scale", 1.0)
            parts.append(sparse.csr_matrix(dense))
        if self.embedder is not None:
            parts.append(sparse.csr_matrix(self.embedder(prompts, responses) * self.params.get("embed_scale", 1.0)))
        return sparse.hstack(parts, format="csr")

    def logits(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if not len(responses):
            return np.zeros(0)
        return np.asarray(self.features(list(prompts), list(responses)) @ self.coef).ravel() + self.bias

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(prompts, responses)))


def fit(family: Family, examples: pd.DataFrame, pairs: pd.DataFrame, *, C: float = 1.0, dense_scale: float = 1.0,
        embed_scale: float = 1.0, pointwise_weight: float = 1.0, seed: int = 0, embedder: Any = None) -> LexicalScorer:
    """Fit one candidate on the thumbs of ``examples`` and the non-tie ``pairs`` (see the module doc)."""
    return fit_grid(family, examples, pairs, [{"C": C, "dense_scale": dense_scale, "embed_scale": embed_scale}],
                    pointwise_weight=pointwise_weight, seed=seed, embedder=embedder)[0]


def fit_grid(family: Family, examples: pd.DataFrame, pairs: pd.DataFrame, grid: list[dict[str, float]], *,
             pointwise_weight: float = 1.0, seed: int = 0, embedder: Any = None) -> list[LexicalScorer]:
    """One fitted candidate per point of ``grid`` (keys ``C``, ``dense_scale``, ``embed_scale``); the vocabulary and
    the feature rows are built once and shared by the grid."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    pairs = pairs[~pairs["is_tie"].astype(bool)] if len(pairs) else pairs
    texts = examples["response"].tolist() + pairs["chosen"].tolist() + pairs["rejected"].tolist()
    if not texts:
        from infra.errors import DataError

        raise DataError("no training rows for the lexical candidates", hint="curate feedback with thumbs or comparisons first")
    template = LexicalScorer(family, {})
    if family in ("tfidf_pairwise", "hybrid", "hybrid_encoder"):
        template.vectorizer = _fit_vectorizer(list(dict.fromkeys(texts)))
    if family in ("length_support", "hybrid", "hybrid_encoder"):
        prompts = examples["prompt"].tolist() + pairs["prompt"].tolist() * 2
        dense = dense_features(prompts, texts)
        template.dense_mean, template.dense_std = dense.mean(0), np.where(dense.std(0) > 1e-9, dense.std(0), 1.0)
    if family == "hybrid_encoder":  # without an embedder: the default base model at 128 tokens
        from trainers.embeddings import default_embedder

        template.embedder = embedder if embedder is not None else default_embedder()
    # feature rows at dense_scale and embed_scale 1; a grid point rescales the dense columns and the embedding's (the last ones)
    ex_x = template.features(examples["prompt"].tolist(), examples["response"].tolist()) if len(examples) else None
    rows, ys, ws, bias_col = [], [], [], []
    if len(pairs):
        d = template.features(pairs["prompt"].tolist(), pairs["chosen"].tolist()) - template.features(pairs["prompt"].tolist(), pairs["rejected"].tolist())
        rows += [d, -d]
        ys += [np.ones(len(pairs)), np.zeros(len(pairs))]
        ws += [np.full(len(pairs), 0.5)] * 2
        bias_col += [np.zeros(2 * len(pairs))]
    if ex_x is not None:
        rows.append(ex_x)
        ys.append((examples["label"].to_numpy(float) >= 0.5).astype(float))
        ws.append(np.full(len(examples), pointwise_weight))
        bias_col.append(np.ones(len(examples)))
    base_x = sparse.vstack(rows, format="csc")
    y, w = np.concatenate(ys), np.concatenate(ws)
    n_dense = 2 if template.dense_mean is not None else 0
    n_embed = base_x.shape[1] - (len(template.vectorizer.vocabulary_) if template.vectorizer is not None else 0) - n_dense
    out = []
    for point in grid:
        params = {"C": float(point.get("C", 1.0)), "dense_scale": float(point.get("dense_scale", 1.0))}
        if template.embedder is not None:
            params["embed_scale"] = float(point.get("embed_scale", 1.0))
        scorer = LexicalScorer(family, params, template.vectorizer, template.dense_mean, template.dense_std, embedder=template.embedder)
        scale = np.ones(base_x.shape[1])
        if n_dense:
            scale[base_x.shape[1] - n_embed - n_dense : base_x.shape[1] - n_embed] = params["dense_scale"]
        if n_embed:
            scale[base_x.shape[1] - n_embed :] = params["embed_scale"]
        x = sparse.hstack([base_x @ sparse.diags(scale), sparse.csr_matrix(np.concatenate(bias_col)[:, None])], format="csr")
        if len(set(y)) < 2:  # thumbs of one class only and no pairs: nothing to rank; the bias alone
            rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
            scorer.coef, scorer.bias = np.zeros(x.shape[1] - 1), float(np.log(rate / (1 - rate)))
        else:
            # liblinear's dual solver: 5-15x faster than lbfgs on the sparse families (features >> rows); lbfgs for the dense one
            solver = {"solver": "lbfgs", "tol": 1e-4} if family == "length_support" else {"solver": "liblinear", "dual": True, "tol": 1e-4}
            lr = LogisticRegression(C=params["C"], fit_intercept=False, max_iter=2000, random_state=seed, **solver)
            lr.fit(x, y, sample_weight=w)
            scorer.coef, scorer.bias = lr.coef_[0][:-1].astype(float), float(lr.coef_[0][-1])
        out.append(scorer)
    return out


def to_dict(scorer: LexicalScorer) -> dict[str, Any]:
    """The fitted scorer as JSON-able plain values (lists of floats: ``json`` writes floats that read back exactly)."""
    vec = None
    if scorer.vectorizer is not None:
        v = scorer.vectorizer
        vec = {"params": {k: getattr(v, k) for k in VECTORIZER_PARAMS}, "dtype": np.dtype(v.dtype).name,
               "vocabulary": {t: int(i) for t, i in v.vocabulary_.items()}, "idf": [float(x) for x in v.idf_]}
    arr = lambda a: None if a is None else [float(x) for x in np.asarray(a).ravel()]  # noqa: E731
    emb = None if scorer.embedder is None else {"folder": EMBEDDER_DIR, "max_length": int(scorer.embedder.max_length), "pooling": "mean"}
    return {"format": 1, "family": scorer.family, "params": scorer.params, "vectorizer": vec, "dense_mean": arr(scorer.dense_mean),
            "dense_std": arr(scorer.dense_std), "coef": arr(scorer.coef), "bias": float(scorer.bias), "embedder": emb}


def from_dict(data: dict[str, Any], *, folder: Path | None = None) -> LexicalScorer:
    """The scorer ``to_dict`` wrote, rebuilt without running any stored code; a hybrid_encoder's encoder files are
    read from ``folder`` (the saved model's folder)."""
    vectorizer = None
    if data["vectorizer"] is not None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        v = data["vectorizer"]
        params = dict(v["params"])
        params["ngram_range"] = tuple(params["ngram_range"])
        vectorizer = TfidfVectorizer(**params, dtype=np.dtype(v["dtype"]).type, vocabulary=v["vocabulary"])
        vectorizer.idf_ = np.asarray(v["idf"], dtype=np.float64)
    embedder = None
    if data.get("embedder"):
        from infra.errors import DataError
        from trainers.embeddings import Embedder

        where = None if folder is None else Path(folder) / data["embedder"]["folder"]
        if where is None or not (where / "model.safetensors").exists():
            raise DataError(f"the {data['family']} model needs its encoder files in {where or '(no folder given)'}",
                            hint="load it from its saved folder (trainers.lexical.load), which carries them in embedder/")
        embedder = Embedder(where, max_length=int(data["embedder"]["max_length"]))
    arr = lambda a: None if a is None else np.asarray(a, dtype=float)  # noqa: E731
    return LexicalScorer(data["family"], dict(data["params"]), vectorizer, arr(data["dense_mean"]), arr(data["dense_std"]),
                         np.asarray(data["coef"], dtype=float), float(data["bias"]), embedder=embedder)


def save(scorer: LexicalScorer, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if scorer.embedder is not None:
        from trainers.embeddings import save_folder

        save_folder(scorer.embedder, path / EMBEDDER_DIR)
    (path / MODEL_FILE).write_text(json.dumps(to_dict(scorer)))
    (path / MARKER).write_text(json.dumps({"family": scorer.family, "params": scorer.params}))
    return path


def is_lexical(path: Path) -> bool:
    return (Path(path) / MARKER).exists()


def load(path: Path) -> LexicalScorer:
    from infra.errors import DataError

    file = Path(path) / MODEL_FILE
    if not file.exists():
        old = " (it holds lexical.joblib: a pickle from before lakeloop stopped unpickling models)" if (Path(path) / "lexical.joblib").exists() else ""
        raise DataError(f"{path} does not hold a lexical candidate as JSON{old}", hint="re-train the model")
    return from_dict(json.loads(file.read_text()), folder=Path(path))
