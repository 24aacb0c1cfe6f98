"""Pictures of monitoring, as PNG bytes: drift per column over the last windows, and the canary's story.

Pure functions of plain values, drawn like ``trainers.charts`` (its ``render``: Agg, fixed style, no timestamp
in the file, so the same numbers give the same bytes). ``monitors.drift_job`` and ``monitors.canary_job`` log
them to MLflow; Dagster metadata shows them by their http artifact URL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from monitors.canary import DEFAULT_COMPARISON, ComparisonConfig
from monitors.drift import EMBEDDING_FEATURES, FEEDBACK_FLAGS, TEXT_DESCRIPTORS
from monitors.sequential import Counts, Paired, confidence_sequence_path, paired_sequence_path, proportion_sequence_path
from monitors.streak import judge_streak
from trainers.charts import CANDIDATE, CHAMPION, message, render

DRIFTED, ALERT, THRESHOLD = "#fdd9b5", "#c0392b", "#555555"
COLUMN_ORDER = (*TEXT_DESCRIPTORS, *EMBEDDING_FEATURES, "score", *FEEDBACK_FLAGS)  # data, prediction, feedback


# ---- drift ----------------------------------------------------------------------------------------------
def _latest_computation(rows: pd.DataFrame) -> pd.DataFrame:
    """Per window, the rows of its latest computation (a window checked twice keeps its second verdict); one row
    per (window, metric)."""
    if "computed_at" in rows.columns and len(rows):
        rows = rows[rows["computed_at"] == rows.groupby("window_id")["computed_at"].transform("max")]
    return rows.drop_duplicates(["window_id", "metric"], keep="last")


def drift_chart(rows: pd.DataFrame, *, required: int, last: int = 24, title: str = "") -> bytes:
    """Each monitored column's drift score per window against its threshold (size-aware, so it moves with the
    window), over the last ``last`` windows. ``rows``: ``monitoring/drift_metrics`` rows (window_id, window_end,
    metric, group, value, threshold, drifted; computed_at optional), oldest windows may come first only to
    count streaks. Drifted windows are shaded; a window where ``required`` drifted windows in a row raised the
    alert is marked with a red line (a longer streak stays shaded: the alert is not repeated)."""
    rows = _latest_computation(rows)
    order = rows.groupby("window_id")["window_end"].max().sort_values()
    window_ids = list(order.index)
    verdicts = rows[rows["metric"] == "window_drifted"].set_index("window_id")["drifted"]
    flags = [_flag(verdicts.get(w)) for w in window_ids]
    actions = [judge_streak(flags[: i + 1], required=required).action for i in range(len(flags))]
    first = max(len(window_ids) - last, 0)
    shown, flags, actions = window_ids[first:], flags[first:], actions[first:]
    cols = rows[(rows["group"] != "window") & rows["window_id"].isin(shown)]
    columns = sorted(set(cols["metric"]), key=lambda c: (COLUMN_ORDER.index(c) if c in COLUMN_ORDER else len(COLUMN_ORDER), c))
    ncols = 2 if len(columns) > 1 else 1
    nrows = max(math.ceil(len(columns) / ncols), 1)
    labels = [pd.Timestamp(order[w]).strftime("%m-%d %H:%M") for w in shown]

    def draw(fig: Any) -> None:
        head = title or "Drift per column: score vs threshold"
        fig.suptitle(f"{head} (last {len(shown)} windows; shaded: drifted window; red line: alert, {required} in a row)", fontsize=9.5)
        if not columns:
            message(fig.subplots(), "no drift windows recorded yet" if not shown else "no column could be judged in these windows")
            return
        axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
        x = np.arange(len(shown))
        for i, column in enumerate(columns):
            ax = axes[i // ncols][i % ncols]
            mine = cols[cols["metric"] == column].set_index("window_id")
            value = np.array([_num(mine, w, "value") for w in shown])
            threshold = np.array([_num(mine, w, "threshold") for w in shown])
            hot = np.array([_flag(mine["drifted"].get(w)) for w in shown], dtype=bool)
            for j, (drifted, action) in enumerate(zip(flags, actions, strict=True)):
                if drifted:
                    ax.axvspan(j - 0.5, j + 0.5, color=DRIFTED, lw=0)
                if action == "alert":
                    ax.axvline(j, color=ALERT, lw=2)
            ax.plot(x, threshold, drawstyle="steps-mid", color=THRESHOLD, ls="--", lw=1, label="threshold")
            ax.plot(x, value, "-", color=CHAMPION, lw=1, label="score")
            ax.plot(x[~hot], value[~hot], "o", color=CHAMPION, ms=3.5)
            ax.plot(x[hot], value[hot], "o", color=ALERT, ms=4.5, label="over threshold")
            group = str(mine["group"].iloc[0]) if len(mine) else ""
            method = str(mine["method"].iloc[0]) if len(mine) and "method" in mine.columns else ""
            ax.set_title(f"{column} ({group}, {method})" if method else f"{column} ({group})", loc="left")
            if np.isnan(value).all():
                ax.text(0.5, 0.5, "not judged", ha="center", va="center", transform=ax.transAxes, color="#888888")
            ax.set_xlim(-0.5, len(shown) - 0.5)
            ax.set_ylim(bottom=0)
        for j in range(len(columns), nrows * ncols):
            axes[j // ncols][j % ncols].set_axis_off()
        axes[0][0].legend(loc="upper left")
        step = max(1, math.ceil(len(shown) / 8))
        for ax in axes[-1]:
            ax.set_xticks(x[::step], labels[::step], rotation=30, ha="right")
            ax.tick_params(labelbottom=True)

    return render((10.0, 1.2 + 1.9 * nrows), draw)


def _flag(value: object) -> bool:
    """A stored drifted flag; a missing one (None, NaN) is not drifted."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _num(frame: pd.DataFrame, window_id: str, column: str) -> float:
    if window_id not in frame.index:
        return float("nan")
    value = frame[column].get(window_id)
    return float(value) if value is not None and not pd.isna(value) else float("nan")


# ---- canary ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryLook:
    """One analysis of the canary: when, the cumulative agreement counts the tests read (canary = arm a), and the
    canary's share of the predictions served in the window that ended there (None: nothing served)."""

    at: datetime
    counts: Counts
    canary_share: float | None = None


@dataclass(frozen=True)
class CanaryEvent:
    """A decision point to mark: when, and what happened (``canary start``, ``Promote to 50%``, ``Rollback``)."""

    at: datetime
    label: str


def _utc(t: datetime) -> datetime:
    """Naive UTC, what matplotlib's date axis reads the same whatever the machine's time zone."""
    return (t.astimezone(UTC) if t.tzinfo else t).replace(tzinfo=None)


def canary_chart(looks: Sequence[CanaryLook], *, events: Sequence[CanaryEvent] = (), config: ComparisonConfig = DEFAULT_COMPARISON,
                 last: int = 48, title: str = "", paired: Sequence[Paired] | None = None) -> bytes:
    """Agreement with users per arm, each with its always-valid interval (``proportion_sequence_path``), at each
    look; the canary-minus-champion difference with the confidence sequence the rollout reads and the
    non-inferiority margin; and the canary's share of served predictions per window (its traffic steps).
    ``events`` are marked on every panel (those well before the drawn looks left out). The intervals run over all
    ``looks``; the last ``last`` are drawn. ``paired`` (one per look): the rollout read the paired design, and the
    difference panel shows it (both models on the same labels) instead of the arms' difference."""
    if paired is not None and len(paired) != len(looks):
        raise ValueError(f"{len(paired)} paired looks for {len(looks)} looks")
    kw = {"alpha": config.alpha, "tau": config.tau, "min_count": config.min_count}
    canary_cs = proportion_sequence_path([c.counts.hits_a for c in looks], [c.counts.n_a for c in looks], **kw)
    champion_cs = proportion_sequence_path([c.counts.hits_b for c in looks], [c.counts.n_b for c in looks], **kw)
    diff_cs = paired_sequence_path(paired, **kw) if paired is not None else confidence_sequence_path([c.counts for c in looks], **kw)
    keep = slice(max(len(looks) - last, 0), None)
    looks, canary_cs, champion_cs, diff_cs = list(looks)[keep], canary_cs[keep], champion_cs[keep], diff_cs[keep]
    paired = list(paired)[keep] if paired is not None else None
    t = [_utc(c.at) for c in looks]
    valid = lambda n: [m >= max(config.min_count, 1) for m in n]  # noqa: E731

    def draw(fig: Any) -> None:
        head = title or "Canary vs champion: agreement with later user feedback"
        fig.suptitle(f"{head} ({1 - config.alpha:.0%} always-valid intervals)", fontsize=9.5)
        if not looks:
            message(fig.subplots(), "no canary analysis yet")
            return
        agree, diff, share = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2, 1.3])
        for name, hits, n, cs, color, shift in (
            ("canary", [c.counts.hits_a for c in looks], [c.counts.n_a for c in looks], canary_cs, CANDIDATE, 1),
            ("champion", [c.counts.hits_b for c in looks], [c.counts.n_b for c in looks], champion_cs, CHAMPION, -1),
        ):
            p = np.array([h / m if m else np.nan for h, m in zip(hits, n, strict=True)])
            lo, hi = _band(cs, valid(n), p)
            agree.errorbar(_shifted(t, shift), p, yerr=[p - lo, hi - p], fmt="o-", color=color, capsize=2, ms=3.5, lw=1,
                           label=f"{name} (n={n[-1]} labelled)")
        agree.set_ylim(-0.02, 1.02)
        agree.set_ylabel("agreement")
        agree.legend(loc="best")
        if paired is not None:
            d = np.array([p.difference if p.difference is not None else np.nan for p in paired])
            ok, label = valid([p.n for p in paired]), f"canary - champion on the same labels (n={paired[-1].n} conversations)"
        else:
            d = np.array([c.counts.difference if c.counts.difference is not None else np.nan for c in looks])
            ok = [a and b for a, b in zip(valid([c.counts.n_a for c in looks]), valid([c.counts.n_b for c in looks]), strict=True)]
            label = "canary - champion"
        lo, hi = _band(diff_cs, ok, d)
        diff.errorbar(t, d, yerr=[d - lo, hi - d], fmt="o-", color=CANDIDATE, capsize=2, ms=3.5, lw=1, label=label)
        diff.axhline(0, color="#999999", lw=0.8)
        diff.axhline(-config.margin, color=ALERT, lw=0.8, ls="--", label=f"non-inferiority margin -{config.margin:g}")
        diff.set_ylabel("difference")
        diff.legend(loc="best")
        shares = np.array([c.canary_share if c.canary_share is not None else np.nan for c in looks])
        share.step(t, shares * 100, where="pre", color=CANDIDATE, lw=1.2)
        share.plot(t, shares * 100, "o", color=CANDIDATE, ms=3)
        share.set_ylim(0, 105)
        share.set_ylabel("canary % served")
        step = pd.Series(t).diff().median() if len(t) > 1 else pd.Timedelta(0)
        shown = [e for e in events if _utc(e.at) >= t[0] - step]  # one before the drawn looks keeps the axis to them
        for ax in (agree, diff, share):
            for e in shown:
                ax.axvline(_utc(e.at), color=ALERT if "Rollback" in e.label else "#444444", lw=0.9, ls=":")
        for e in shown:
            agree.annotate(e.label[:40], (_utc(e.at), 1.0), xytext=(3, -10), textcoords="offset points", fontsize=7, rotation=0)
        _date_axis(share)

    return render((9.0, 7.0), draw)


def _band(cs: Sequence[tuple[float, float]], valid: Sequence[bool], centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends where the interval is informative (NaN: no whisker), never on the wrong side of the
    point (a running intersection can sit beside the current estimate)."""
    lo = np.array([low if ok else np.nan for (low, _), ok in zip(cs, valid, strict=True)])
    hi = np.array([high if ok else np.nan for (_, high), ok in zip(cs, valid, strict=True)])
    with np.errstate(invalid="ignore"):
        return np.fmin(lo, centre), np.fmax(hi, centre)


def _shifted(t: Sequence[datetime], direction: int) -> list[Any]:
    """The arms a little apart, so their whiskers do not hide each other (a 50th of the median step)."""
    if len(t) < 2:
        return list(t)
    step = (pd.Series(t).diff().median() / 50).to_pytimedelta()
    return [x + direction * step for x in t]


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
