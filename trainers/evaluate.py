"""Evaluation on the pinned eval split: pairwise accuracy (preference pairs), AUC, log-loss and
calibration error (pointwise labels), each with a bootstrap 95% interval, per slice, beside two baselines
(response length; TF-IDF + logistic regression), and a markdown model card. Any scorer works: the
candidate, the current champion, a baseline -- all are ``(prompts, responses) -> P(satisfied)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

Scorer = Callable[[list[str], list[str]], np.ndarray]
LENGTH_BUCKETS = ((0, 300, "short<300c"), (300, 700, "medium300-700c"), (700, 1200, "long700-1200c"), (1200, 10**9, "xlong>=1200c"))


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int


@dataclass
class EvalReport:
    metrics: dict[str, Estimate]
    slices: dict[str, tuple[float, int]]  # "metric|dimension=value" -> (value, n)
    baselines: dict[str, dict[str, Estimate]] = field(default_factory=dict)

    def flat(self, prefix: str = "eval") -> dict[str, float]:
        """Finite numbers only, for MLflow (a failed metric is absent, never 0.0)."""
        out: dict[str, float] = {}
        for name, e in self.metrics.items():
            out.update({f"{prefix}.{name}": e.value, f"{prefix}.{name}.lo": e.lo, f"{prefix}.{name}.hi": e.hi})
        for b, ms in self.baselines.items():
            out.update({f"baseline.{b}.{name}": e.value for name, e in ms.items()})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": {k: asdict(v) for k, v in self.metrics.items()}, "slices": {k: list(v) for k, v in self.slices.items()},
                "baselines": {b: {k: asdict(v) for k, v in ms.items()} for b, ms in self.baselines.items()}}


# ---- metrics ------------------------------------------------------------------------------------------
def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected))) if len(chosen) else float("nan")


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = labels >= 0.5
    return float(roc_auc_score(y, probs)) if 0 < y.sum() < len(y) else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))) if len(p) else float("nan")


def calibration_error(labels: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    if not len(probs):
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    return float(sum(abs(probs[which == b].mean() - labels[which == b].mean()) * (which == b).sum() for b in range(bins) if (which == b).any()) / len(probs))


def bootstrap(fn: Callable[..., float], arrays: tuple[np.ndarray, ...], *, n_boot: int, seed: int) -> Estimate:
    """``fn(*arrays)`` with a 95% interval from ``n_boot`` resamples of rows (the same rows from every array, so
    ``fn = lambda *a: metric(*a[:k]) - metric(*a[k:])`` over two scorers' arrays gives a paired difference)."""
    n = len(arrays[0])
    value = fn(*arrays) if n else float("nan")
    if n < 2 or not math.isfinite(value):
        return Estimate(value, float("nan"), float("nan"), n)
    rng = np.random.default_rng(seed)
    draws = [fn(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, size=(n_boot, n))]
    draws = [d for d in draws if math.isfinite(d)]
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
    return Estimate(float(value), float(lo), float(hi), n)


def length_bucket(text: str) -> str:
    return next(name for lo, hi, name in LENGTH_BUCKETS if lo <= len(text) < hi)


def score_eval(scorer: Scorer, examples: pd.DataFrame, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scorer call over every text: pointwise probs, chosen scores, rejected scores."""
    prompts = examples["prompt"].tolist() + pairs["prompt"].tolist() * 2
    responses = examples["response"].tolist() + pairs["chosen"].tolist() + pairs["rejected"].tolist()
    s = np.asarray(scorer(prompts, responses), dtype=float)
    n, m = len(examples), len(pairs)
    return s[:n], s[n : n + m], s[n + m :]


def evaluate(scorer: Scorer, examples: pd.DataFrame, pairs: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> EvalReport:
    """Metrics with intervals and per-slice values; ``pairs`` should hold non-tie pairs only."""
    probs, ch, rj = score_eval(scorer, examples, pairs)
    y = examples["label"].to_numpy(dtype=float)
    metrics = {
        "pairwise_accuracy": bootstrap(pairwise_accuracy, (ch, rj), n_boot=n_boot, seed=seed),
        "auc": bootstrap(auc, (y, probs), n_boot=n_boot, seed=seed + 1),
        "log_loss": bootstrap(log_loss, (y, probs), n_boot=n_boot, seed=seed + 2),
        "calibration_error": bootstrap(calibration_error, (y, probs), n_boot=n_boot, seed=seed + 3),
    }
    slices: dict[str, tuple[float, int]] = {}
    ex = examples.assign(_p=probs, length=examples["response"].map(length_bucket), event_type=examples["event_types"])
    for dim in ("event_type", "app_id", "model_name", "length"):
        for val, g in ex.groupby(dim):
            slices[f"auc|{dim}={val}"] = (auc(g["label"].to_numpy(float), g["_p"].to_numpy()), len(g))
    pr = pairs.assign(_c=ch, _r=rj, length=pairs["chosen"].map(length_bucket), event_type=pairs["source"])
    for dim in ("event_type", "app_id", "model_name", "length"):
        for val, g in pr.groupby(dim):
            slices[f"pairwise_accuracy|{dim}={val}"] = (pairwise_accuracy(g["_c"].to_numpy(), g["_r"].to_numpy()), len(g))
    return EvalReport(metrics, slices)


# ---- baselines ----------------------------------------------------------------------------------------
def baseline_rows(examples: pd.DataFrame, pairs: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    """Pointwise labels plus every non-tie pair as chosen=1, rejected=0 (the baselines' training set)."""
    pairs = pairs[~pairs["is_tie"].astype(bool)]
    prompts = examples["prompt"].tolist() + pairs["prompt"].tolist() * 2
    texts = examples["response"].tolist() + pairs["chosen"].tolist() + pairs["rejected"].tolist()
    y = np.concatenate([(examples["label"].to_numpy(float) >= 0.5), np.ones(len(pairs)), np.zeros(len(pairs))]).astype(int)
    return prompts, texts, y


def fit_baselines(examples: pd.DataFrame, pairs: pd.DataFrame, *, seed: int = 0) -> dict[str, Scorer]:
    """``length``: logistic regression on log response length. ``tfidf_lr``: TF-IDF (1-2 grams) + LR."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    _, texts, y = baseline_rows(examples, pairs)
    feat = lambda rs: np.log1p(np.array([len(r) for r in rs], dtype=float)).reshape(-1, 1)
    length = LogisticRegression().fit(feat(texts), y)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50_000, sublinear_tf=True)
    tfidf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(vec.fit_transform(texts), y)
    return {
        "length": lambda p, r: length.predict_proba(feat(r))[:, 1],
        "tfidf_lr": lambda p, r: tfidf.predict_proba(vec.transform(r))[:, 1],
    }


def full_report(scorer: Scorer, train: tuple[pd.DataFrame, pd.DataFrame], evalset: tuple[pd.DataFrame, pd.DataFrame], *, n_boot: int = 1000, seed: int = 0) -> EvalReport:
    ex_eval, pr_eval = evalset[0], evalset[1][~evalset[1]["is_tie"].astype(bool)].reset_index(drop=True)
    report = evaluate(scorer, ex_eval, pr_eval, n_boot=n_boot, seed=seed)
    for name, base in fit_baselines(*train, seed=seed).items():
        report.baselines[name] = evaluate(base, ex_eval, pr_eval, n_boot=n_boot, seed=seed).metrics
    return report


DEFAULT_LIMITATIONS = """- Labels come from a small set of annotators on one QA task; scores do not transfer to other apps without new feedback.
- Inputs are truncated to the training max_length (the prompt first): the encoder reads a long prompt's beginning and a long answer's beginning.
- The head sees the answer's length (characters), so the model can prefer shorter/longer answers: check the length slices.
- The head sees the answer's lexical support by its prompt (share of its word bigrams found there): with retrieved passages in the prompt that rewards restating them, and a correct answer in other words scores lower.
- Small slices have wide intervals; do not read differences inside the interval as real."""


def _fmt(e: Estimate) -> str:
    return f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]" if math.isfinite(e.value) else "n/a"


def model_card(report: EvalReport, *, name: str, lineage: dict[str, str], gate: str = "", limitations: str = "") -> str:
    metric_names = list(report.metrics)
    rows = "\n".join(f"| {m} | {_fmt(report.metrics[m])} | " + " | ".join(_fmt(b[m]) for b in report.baselines.values()) + " | n=" + str(report.metrics[m].n) + " |" for m in metric_names)
    head = "| metric | model | " + " | ".join(report.baselines) + " | n |\n|---|---|" + "---|" * (len(report.baselines) + 1)
    slices = "\n".join(f"| {k.split('|')[0]} | {k.split('|')[1]} | {v:.3f} | {n} |" for k, (v, n) in sorted(report.slices.items()) if math.isfinite(v))
    data = "\n".join(f"- `{k}`: {v}" for k, v in sorted(lineage.items()))
    return f"""# Model card: {name}

Reward model: P(user satisfied | prompt, response) from a transformer encoder with a scalar head, trained
with pointwise BCE on feedback labels and Bradley-Terry on preference pairs.

## Data (pinned Delta versions)
{data}

## Metrics on the eval split (bootstrap 95% intervals)
{head}
{rows}

## Slices
| metric | slice | value | n |
|---|---|---|---|
{slices}

## Gate
{gate or "not evaluated"}

## Limitations
{limitations or DEFAULT_LIMITATIONS}
"""
