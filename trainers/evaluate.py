"""Evaluation on the pinned eval split: pairwise accuracy (preference pairs), AUC, log-loss and
calibration error (pointwise labels), each with a 95% interval from a bootstrap over prompt CLUSTERS (a prompt's
rows move together), per slice, beside the baselines (a constant; response length; the strong TF-IDF pairwise
logistic regression), the champion and the candidates that lost the selection, all on the same resamples so that
differences are paired; and a markdown model card. Any scorer works: all are ``(prompts, responses) -> P(satisfied)``."""

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
    others: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # the candidates that lost the selection
    paired: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # "length" | "champion" | family -> candidate minus it
    class_counts: tuple[int, int] = (0, 0)  # eval examples labelled positive, negative
    champion: "EvalReport | None" = None
    reliability: dict[str, tuple["ReliabilityBin", ...]] = field(default_factory=dict)  # "candidate" | "champion" -> bins
    scored: dict[str, "Scored"] = field(default_factory=dict, repr=False)  # every scorer's eval-split scores (not saved)
    pooled: "Pooled | None" = None  # a first model's eval split + the recipe cross-fit on the train split (trainers.crossfit)

    def flat(self, prefix: str = "eval") -> dict[str, float]:
        """Finite numbers only, for MLflow (a failed metric is absent, never 0.0)."""
        out: dict[str, float] = {}
        for name, e in self.metrics.items():
            out.update({f"{prefix}.{name}": e.value, f"{prefix}.{name}.lo": e.lo, f"{prefix}.{name}.hi": e.hi})
        for b, ms in self.baselines.items():
            out.update({f"baseline.{b}.{name}": e.value for name, e in ms.items()})
        for c, ms in self.others.items():
            out.update({f"{prefix}.candidate.{c}.{name}": e.value for name, e in ms.items()})
        for ref, ms in self.paired.items():
            for name, e in ms.items():
                out.update({f"paired.{ref}.{name}": e.value, f"paired.{ref}.{name}.lo": e.lo, f"paired.{ref}.{name}.hi": e.hi})
        if self.pooled is not None:
            for name, e in self.pooled.metrics.items():
                out.update({f"pooled.{name}": e.value, f"pooled.{name}.lo": e.lo, f"pooled.{name}.hi": e.hi})
            for ref, ms in self.pooled.paired.items():
                for name, e in ms.items():
                    out.update({f"pooled.paired.{ref}.{name}": e.value, f"pooled.paired.{ref}.{name}.lo": e.lo,
                                f"pooled.paired.{ref}.{name}.hi": e.hi})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def to_dict(self) -> dict[str, Any]:
        table = lambda d: {b: {k: asdict(v) for k, v in ms.items()} for b, ms in d.items()}
        return {"metrics": {k: asdict(v) for k, v in self.metrics.items()}, "slices": {k: list(v) for k, v in self.slices.items()},
                "baselines": table(self.baselines), "others": table(self.others), "paired": table(self.paired),
                "class_counts": list(self.class_counts),
                "reliability": {k: [asdict(b) for b in bins] for k, bins in self.reliability.items()},
                "pooled": None if self.pooled is None else asdict(self.pooled)}


@dataclass
class Pooled:
    """A first model's evidence from both splits (``trainers.crossfit``): the eval split scored by the shipped model and
    the train split's folds scored out of fold by the same recipe, every prompt cluster of both resampled alike."""

    metrics: dict[str, Estimate]
    baselines: dict[str, dict[str, Estimate]]
    paired: dict[str, dict[str, Estimate]]  # baseline name -> candidate minus it
    class_counts: tuple[int, int]
    eval_clusters: int
    train_clusters: int  # the train split's prompt clusters scored out of fold
    folds: int
    winners: tuple[str, ...]  # the family the recipe picked in each fold

    def evidence(self) -> str:
        return (f"the eval split ({self.eval_clusters} prompts) and the train split's {self.train_clusters} prompts scored out of "
                f"fold by the same recipe ({self.folds}-fold nested cross-fit; fold winners {', '.join(self.winners)})")


# ---- metrics (each takes optional row weights: a cluster bootstrap draw is a weight per row) ---------------
def pairwise_accuracy(chosen: np.ndarray, rejected: np.ndarray, w: np.ndarray | None = None) -> float:
    if not len(chosen):
        return float("nan")
    hit = (chosen > rejected) + 0.5 * (chosen == rejected)
    return float(np.average(hit, weights=w)) if w is None or w.sum() > 0 else float("nan")


def auc(labels: np.ndarray, probs: np.ndarray, w: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    y = labels >= 0.5
    if w is not None:
        keep = w > 0
        y, probs, w = y[keep], probs[keep], w[keep]
    return float(roc_auc_score(y, probs, sample_weight=w)) if 0 < y.sum() < len(y) else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray, w: np.ndarray | None = None) -> float:
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    if not len(p) or (w is not None and w.sum() <= 0):
        return float("nan")
    return float(-np.average(labels * np.log(p) + (1 - labels) * np.log(1 - p), weights=w))


def calibration_error(labels: np.ndarray, probs: np.ndarray, w: np.ndarray | None = None, *, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    if not len(probs):
        return float("nan")
    w = np.ones(len(probs)) if w is None else w
    if w.sum() <= 0:
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    return float(sum(abs(np.sum(w[which == b] * (probs[which == b] - labels[which == b]))) for b in range(bins)) / w.sum())


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: the answers scored in [lo, hi), their mean score and mean label."""

    lo: float
    hi: float
    mean_score: float
    observed: float  # mean label (the share satisfied)
    n: int


def reliability(labels: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> tuple[ReliabilityBin, ...]:
    """The reliability diagram's points over ``calibration_error``'s equal-width bins (empty bins left out): the
    count-weighted mean of |mean_score - observed| over the bins is that expected calibration error."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    return tuple(ReliabilityBin(b / bins, (b + 1) / bins, float(probs[which == b].mean()), float(labels[which == b].mean()),
                                int((which == b).sum())) for b in range(bins) if (which == b).any())


def bootstrap(fn: Callable[..., float], arrays: tuple[np.ndarray, ...], *, n_boot: int, seed: int) -> Estimate:
    """``fn(*arrays)`` with a 95% interval from ``n_boot`` resamples of ROWS (kept for row-level diagnostics; the
    reports use ``cluster_bootstrap``, which resamples prompt clusters)."""
    n = len(arrays[0])
    value = fn(*arrays) if n else float("nan")
    if n < 2 or not math.isfinite(value):
        return Estimate(value, float("nan"), float("nan"), n)
    rng = np.random.default_rng(seed)
    draws = [fn(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, size=(n_boot, n))]
    draws = [d for d in draws if math.isfinite(d)]
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (float("nan"), float("nan"))
    return Estimate(float(value), float(lo), float(hi), n)


@dataclass(frozen=True)
class Scored:
    """One scorer's outputs on an eval set: P(satisfied) per labelled example, scores of each pair's two sides."""

    probs: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray


METRICS: dict[str, tuple[Callable[..., float], str]] = {
    "pairwise_accuracy": (pairwise_accuracy, "pairs"), "auc": (auc, "examples"),
    "log_loss": (log_loss, "examples"), "calibration_error": (calibration_error, "examples"),
}


def _clusters(frame: pd.DataFrame) -> np.ndarray:
    return frame["cluster_id"].astype(str).to_numpy() if "cluster_id" in frame.columns else frame["prompt"].astype(str).to_numpy()


def why_not_measured(metric: str) -> str:
    """Why ``metric`` has no value on an eval split (the stream's shape): pairs for pairwise accuracy, pointwise
    verdicts for the rest."""
    if METRICS.get(metric, (None, ""))[1] == "pairs":
        return "no preference pairs in the eval split: the stream sends no preferences or corrections"
    return "no pointwise verdicts of both kinds in the eval split: the stream sends no thumbs or ratings, or only one kind"


def cluster_weights(ex_clusters: np.ndarray, pr_clusters: np.ndarray, *, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_boot`` cluster-bootstrap draws as row weights: each draw resamples the prompt clusters with replacement
    (all clusters of examples and pairs together), and a row weighs as often as its cluster was drawn. The same
    draws serve every scorer, so differences between scorers are paired."""
    names, inverse = np.unique(np.concatenate([ex_clusters, pr_clusters]).astype(str), return_inverse=True)
    if not len(names):
        return np.zeros((n_boot, 0)), np.zeros((n_boot, 0))
    counts = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=n_boot).astype(float)
    return counts[:, inverse[: len(ex_clusters)]], counts[:, inverse[len(ex_clusters) :]]


def _draws(metric: str, y: np.ndarray, s: Scored, w_ex: np.ndarray, w_pr: np.ndarray) -> tuple[float, np.ndarray]:
    fn, on = METRICS[metric]
    if on == "pairs":
        value = fn(s.chosen, s.rejected)
        if not math.isfinite(value):
            return value, np.full(len(w_pr), np.nan)
        if metric == "pairwise_accuracy":  # vectorized
            hit = (s.chosen > s.rejected) + 0.5 * (s.chosen == s.rejected)
            tot = w_pr.sum(1)
            return value, np.where(tot > 0, w_pr @ hit / np.where(tot > 0, tot, 1), np.nan)
        return value, np.array([fn(s.chosen, s.rejected, w) for w in w_pr])
    value = fn(y, s.probs)
    if not math.isfinite(value):
        return value, np.full(len(w_ex), np.nan)
    if metric == "auc":
        return value, auc_draws(y, s.probs, w_ex)
    return value, np.array([fn(y, s.probs, w) for w in w_ex])


def auc_draws(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted AUC for each row of ``weights`` (draws x rows) at once: per distinct score, the weight of positives
    times the weight of negatives scored below (ties count half), over all positive-negative weight."""
    from scipy import sparse

    pos = labels >= 0.5
    uniq, group = np.unique(probs, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(probs)), (np.arange(len(probs)), group)), shape=(len(probs), len(uniq)))
    p = np.asarray((onehot.T @ (weights * pos).T).T)
    n = np.asarray((onehot.T @ (weights * ~pos).T).T)
    below = np.cumsum(n, axis=1) - n
    den = p.sum(1) * n.sum(1)
    return np.where(den > 0, (p * (below + 0.5 * n)).sum(1) / np.where(den > 0, den, 1), np.nan)


def _interval(value: float, draws: np.ndarray, n: int) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if not math.isfinite(value) or len(draws) < 2:
        return Estimate(float(value), float("nan"), float("nan"), n)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return Estimate(float(value), float(lo), float(hi), n)


def paired_metrics(scored: dict[str, Scored], labels: np.ndarray, ex_clusters: np.ndarray, pr_clusters: np.ndarray, *,
                   reference: str, n_boot: int = 1000, seed: int = 0) -> tuple[dict[str, dict[str, Estimate]], dict[str, dict[str, Estimate]]]:
    """Every scorer's metrics with cluster-bootstrap 95% intervals, and ``reference`` minus every other scorer
    per metric on the same draws (paired intervals). Returns (metrics by scorer, differences by other scorer)."""
    w_ex, w_pr = cluster_weights(ex_clusters, pr_clusters, n_boot=n_boot, seed=seed)
    n = {"pairs": len(pr_clusters), "examples": len(ex_clusters)}
    metrics: dict[str, dict[str, Estimate]] = {name: {} for name in scored}
    diffs: dict[str, dict[str, Estimate]] = {name: {} for name in scored if name != reference}
    for metric, (_, on) in METRICS.items():
        got = {name: _draws(metric, labels, s, w_ex, w_pr) for name, s in scored.items()}
        for name, (value, draws) in got.items():
            metrics[name][metric] = _interval(value, draws, n[on])
        ref_value, ref_draws = got[reference]
        for name in diffs:
            value, draws = got[name]
            diffs[name][metric] = _interval(ref_value - value, ref_draws - draws, n[on])
    return metrics, diffs


def length_bucket(text: str) -> str:
    return next(name for lo, hi, name in LENGTH_BUCKETS if lo <= len(text) < hi)


def score_eval(scorer: Scorer, examples: pd.DataFrame, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scorer call over every text: pointwise probs, chosen scores, rejected scores."""
    prompts = examples["prompt"].tolist() + pairs["prompt"].tolist() * 2
    responses = examples["response"].tolist() + pairs["chosen"].tolist() + pairs["rejected"].tolist()
    s = np.asarray(scorer(prompts, responses), dtype=float) if responses else np.zeros(0)
    n, m = len(examples), len(pairs)
    return s[:n], s[n : n + m], s[n + m :]


def slices_of(s: Scored, examples: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, tuple[float, int]]:
    slices: dict[str, tuple[float, int]] = {}
    ex = examples.assign(_p=s.probs, length=examples["response"].map(length_bucket), event_type=examples["event_types"])
    dims = ["event_type", "app_id", "model_name", "length"]
    if "signals" in ex.columns:  # gold made before implicit signals has no such column
        ex = ex.assign(signal=ex["signals"].fillna("none"))
        dims.append("signal")
    for dim in dims:
        for val, g in ex.groupby(dim):
            labels = g["label"].to_numpy(float)
            # an AUC is only as precise as its smaller class allows: n is that class's count (9 positives among 89
            # rows move the AUC like 9 observations do, not 89), so the gate's size rules see the real evidence
            n_pos = int((labels > 0.5).sum())
            slices[f"auc|{dim}={val}"] = (auc(labels, g["_p"].to_numpy()), min(n_pos, len(g) - n_pos))
    pr = pairs.assign(_c=s.chosen, _r=s.rejected, length=pairs["chosen"].map(length_bucket), event_type=pairs["source"])
    for dim in ("event_type", "app_id", "model_name", "length"):
        for val, g in pr.groupby(dim):
            # n: the slice's prompt clusters (a prompt's pairs rise and fall together, so they are one observation)
            slices[f"pairwise_accuracy|{dim}={val}"] = (pairwise_accuracy(g["_c"].to_numpy(), g["_r"].to_numpy()),
                                                        len(set(_clusters(g))))
    return slices


def evaluate(scorer: Scorer, examples: pd.DataFrame, pairs: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> EvalReport:
    """Metrics with cluster-bootstrap intervals and per-slice values; ``pairs`` should hold non-tie pairs only."""
    s = Scored(*score_eval(scorer, examples, pairs))
    metrics, _ = paired_metrics({"model": s}, examples["label"].to_numpy(dtype=float), _clusters(examples), _clusters(pairs),
                                reference="model", n_boot=n_boot, seed=seed)
    return EvalReport(metrics["model"], slices_of(s, examples, pairs))


# ---- baselines ----------------------------------------------------------------------------------------
def baseline_rows(examples: pd.DataFrame, pairs: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    """Pointwise labels plus every non-tie pair as chosen=1, rejected=0 (the length baseline's training set)."""
    pairs = pairs[~pairs["is_tie"].astype(bool)]
    prompts = examples["prompt"].tolist() + pairs["prompt"].tolist() * 2
    texts = examples["response"].tolist() + pairs["chosen"].tolist() + pairs["rejected"].tolist()
    y = np.concatenate([(examples["label"].to_numpy(float) >= 0.5), np.ones(len(pairs)), np.zeros(len(pairs))]).astype(int)
    return prompts, texts, y


def fit_baselines(examples: pd.DataFrame, pairs: pd.DataFrame, *, seed: int = 0) -> dict[str, Scorer]:
    """``constant``: the training thumbs' base rate (every pair a tie: pairwise 0.5). ``length``: logistic regression
    on log response length. ``tfidf_lr``: the strong TF-IDF baseline, ``trainers.lexical``'s pairwise logistic
    regression (Bradley-Terry on the two answers' TF-IDF difference + the thumbs), its C chosen on a validation split
    carved from these training rows by prompt cluster (``trainers.selection``)."""
    from sklearn.linear_model import LogisticRegression

    from trainers import selection

    _, texts, y = baseline_rows(examples, pairs)
    labels = examples["label"].to_numpy(float) >= 0.5
    rate = float(labels.mean()) if len(labels) else 0.5
    out: dict[str, Scorer] = {"constant": lambda p, r: np.full(len(r), rate)}
    feat = lambda rs: np.log1p(np.array([len(r) for r in rs], dtype=float)).reshape(-1, 1)
    if len(set(y)) > 1:
        length = LogisticRegression().fit(feat(texts), y)
        out["length"] = lambda p, r: length.predict_proba(feat(r))[:, 1]
    out["tfidf_lr"] = selection.tuned("tfidf_pairwise", examples, pairs, seed=seed)
    return out


def full_report(scorer: Scorer, train: tuple[pd.DataFrame, pd.DataFrame], evalset: tuple[pd.DataFrame, pd.DataFrame], *, n_boot: int = 1000,
                seed: int = 0, champion: Scorer | None = None, others: dict[str, Scorer] | None = None) -> EvalReport:
    """The candidate, the baselines (fit on ``train``), the champion and ``others`` (the candidates that lost the
    selection) scored on the eval split, all with cluster-bootstrap intervals on the same draws; ``paired`` holds
    candidate minus each of them."""
    ex_eval, pr_eval = evalset[0].reset_index(drop=True), evalset[1][~evalset[1]["is_tie"].astype(bool)].reset_index(drop=True)
    scorers: dict[str, Scorer] = {"candidate": scorer, **{f"baseline:{b}": s for b, s in fit_baselines(*train, seed=seed).items()}}
    if champion is not None:
        scorers["champion"] = champion
    scorers.update({f"other:{k}": s for k, s in (others or {}).items()})
    scored = {name: Scored(*score_eval(s, ex_eval, pr_eval)) for name, s in scorers.items()}
    labels = ex_eval["label"].to_numpy(dtype=float)
    metrics, diffs = paired_metrics(scored, labels, _clusters(ex_eval), _clusters(pr_eval), reference="candidate", n_boot=n_boot, seed=seed)
    report = EvalReport(metrics["candidate"], slices_of(scored["candidate"], ex_eval, pr_eval))
    report.baselines = {k.split(":", 1)[1]: v for k, v in metrics.items() if k.startswith("baseline:")}
    report.others = {k.split(":", 1)[1]: v for k, v in metrics.items() if k.startswith("other:")}
    report.paired = {k.split(":", 1)[-1]: v for k, v in diffs.items()}
    report.class_counts = (int((labels >= 0.5).sum()), int((labels < 0.5).sum()))
    if champion is not None:
        report.champion = EvalReport(metrics["champion"], slices_of(scored["champion"], ex_eval, pr_eval))
    report.reliability = {name: reliability(labels, scored[name].probs) for name in ("candidate", "champion") if name in scored}
    report.scored = scored
    return report


def champion_comparison(candidate: Scorer, champion: Scorer, evalset: tuple[pd.DataFrame, pd.DataFrame], *, n_boot: int = 1000,
                        seed: int = 0) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """Candidate and champion alone on ``evalset`` (the gate uses the champion's own pinned eval split: rows that
    were there when the champion was trained, so labels a newer stretch of feedback brought cannot vouch for a
    model trained on them): the champion's metrics and candidate minus champion, paired on the same cluster draws."""
    ex_eval, pr_eval = evalset[0].reset_index(drop=True), evalset[1][~evalset[1]["is_tie"].astype(bool)].reset_index(drop=True)
    scored = {name: Scored(*score_eval(s, ex_eval, pr_eval)) for name, s in (("candidate", candidate), ("champion", champion))}
    metrics, diffs = paired_metrics(scored, ex_eval["label"].to_numpy(dtype=float), _clusters(ex_eval), _clusters(pr_eval),
                                    reference="candidate", n_boot=n_boot, seed=seed)
    return metrics["champion"], diffs["champion"]


DEFAULT_LIMITATIONS = """- Labels come from a small set of annotators on one QA task; scores do not transfer to other apps without new feedback.
- Inputs are truncated to the training max_length (the prompt first): the encoder reads a long prompt's beginning (a dialogue's last turns) and a long answer's beginning.
- The head sees the answer's length (characters), so the model can prefer shorter/longer answers: check the length slices.
- The head sees the answer's lexical support by its prompt (share of its word bigrams found there): with retrieved passages in the prompt that rewards restating them, and a correct answer in other words scores lower.
- Small slices have wide intervals; do not read differences inside the interval as real."""


def _fmt(e: Estimate) -> str:
    return f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]" if math.isfinite(e.value) else "n/a"


def _dfmt(e: Estimate) -> str:
    return f"{e.value:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]" if math.isfinite(e.value) else "n/a"


FAMILY_TEXT = {
    "encoder": "a transformer encoder with a scalar head (+ the answer's length and lexical support), trained with pointwise "
               "BCE on feedback labels and Bradley-Terry on preference pairs",
    "tfidf_pairwise": "a logistic head over the answer's TF-IDF (word 1-2 grams), trained as Bradley-Terry on the two answers' "
                      "difference and on the thumbs",
    "length_support": "a logistic head over the answer's log length and lexical support by its prompt, trained as Bradley-Terry "
                      "on the two answers' difference and on the thumbs",
    "hybrid": "a logistic head over the answer's TF-IDF beside its log length and lexical support, trained as Bradley-Terry on "
              "the two answers' difference and on the thumbs",
    "hybrid_encoder": "the hybrid's logistic head with the frozen base encoder's embedding of the prompt's end and the answer "
                      "beside the TF-IDF, length and support, trained as Bradley-Terry on the two answers' difference and on the thumbs",
}


def _pooled_section(report: EvalReport) -> str:
    p = report.pooled
    if p is None:
        return ""
    refs = list(p.paired)
    rows = "\n".join(f"| {m} | {_fmt(p.metrics[m])} | " + " | ".join(_dfmt(p.paired[r][m]) for r in refs) + " |" for m in ("pairwise_accuracy", "auc"))
    return (f"A first model is gated on more prompts: {p.evidence()}. The eval split never chose anything.\n\n"
            "| metric | pooled | " + " | ".join(f"model - {r}" for r in refs) + " |\n|---|---|" + "---|" * len(refs) + f"\n{rows}\n\n")


def model_card(report: EvalReport, *, name: str, lineage: dict[str, str], gate: str = "", limitations: str = "",
               family: str = "encoder", selection: str = "", pictures: dict[str, str] | None = None) -> str:
    """The card in markdown. ``pictures``: alt text -> http URL of a PNG (``trainers.tracking.artifact_url``), shown
    under the title, so they survive when the card is cut to fit a model version's description."""
    metric_names = list(report.metrics)
    rows = "\n".join(f"| {m} | {_fmt(report.metrics[m])} | " + " | ".join(_fmt(b[m]) for b in report.baselines.values()) + " | n=" + str(report.metrics[m].n) + " |" for m in metric_names)
    head = "| metric | model | " + " | ".join(report.baselines) + " | n |\n|---|---|" + "---|" * (len(report.baselines) + 1)
    refs = list(report.paired)
    paired = "\n".join(f"| {m} | " + " | ".join(_dfmt(report.paired[r][m]) for r in refs) + " |" for m in ("pairwise_accuracy", "auc"))
    paired_head = "| metric | " + " | ".join(f"model - {r}" for r in refs) + " |\n|---|" + "---|" * len(refs)
    others = "\n".join(f"| {c} | {_fmt(ms['pairwise_accuracy'])} | {_fmt(ms['auc'])} |" for c, ms in report.others.items())
    slices = "\n".join(f"| {k.split('|')[0]} | {k.split('|')[1]} | {v:.3f} | {n} |" for k, (v, n) in sorted(report.slices.items()) if math.isfinite(v))
    data = "\n".join(f"- `{k}`: {v}" for k, v in sorted(lineage.items()))
    images = "".join(f"\n![{alt}]({url})\n" for alt, url in (pictures or {}).items())
    return f"""# Model card: {name}

Reward model (family `{family}`): P(user satisfied | prompt, response) from {FAMILY_TEXT.get(family, family)}.
{images}
## Selection (on a validation split carved from the train split by prompt cluster; the eval split is never used)
{selection or "not recorded"}

## Data (pinned Delta versions)
{data}

## Metrics on the eval split (95% intervals: bootstrap over prompt clusters)
{head}
{rows}

Paired differences (the same cluster resamples for every scorer):

{paired_head}
{paired}

{_pooled_section(report)}The candidates that lost the selection, on the same eval split:

| candidate | pairwise_accuracy | auc |
|---|---|---|
{others or "| (none) | | |"}

## Slices
n: prompt clusters for pairwise accuracy (a prompt's pairs move together); for AUC the smaller class's answers (what
limits its precision).

| metric | slice | value | n |
|---|---|---|---|
{slices}

## Gate
{gate or "not evaluated"}

## Limitations
{limitations or DEFAULT_LIMITATIONS}
"""
