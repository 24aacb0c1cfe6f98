"""Pictures of an evaluation, as PNG bytes: the gate's comparison and the reliability diagram.

Pure functions of plain values (``trainers.evaluate``'s report), drawn with matplotlib's Agg renderer on a
``Figure`` of our own (never pyplot's global state), with fixed style and no timestamp in the file: the same
numbers give the same bytes. ``render`` is shared with ``monitors.charts``. ``trainers.candidate`` logs them to
the run (``trainers.tracking.log_run_png``); the model card and the model version's description show them by
their http artifact URL.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trainers.evaluate import EvalReport, Estimate, ReliabilityBin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STYLE = {"font.family": "DejaVu Sans", "font.size": 8.5, "axes.titlesize": 9.5, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 7.5, "legend.frameon": False,
         "savefig.dpi": 100, "figure.dpi": 100}
CANDIDATE, CHAMPION, BASELINE, OTHER = "#d95f02", "#1b6ca8", "#7f7f7f", "#b8b8b8"
GATE_METRICS = ("pairwise_accuracy", "auc")


def render(size: tuple[float, float], draw: Callable[[Any], None]) -> bytes:
    """``draw(figure)`` on a fresh Agg figure of ``size`` inches (constrained layout), as PNG bytes."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        from infra.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib is not installed (it draws lakeloop's pictures)", hint="pip install matplotlib") from exc
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # a user's matplotlibrc must not change the bytes; undone when the context ends
        matplotlib.rcParams.update(STYLE)
        fig = Figure(figsize=size, layout="constrained")
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same numbers, same bytes
    return buf.getvalue()


def message(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555", wrap=True)


def _finite(e: Estimate | None) -> bool:
    return e is not None and math.isfinite(e.value)


def _scorers(report: EvalReport) -> list[tuple[str, Mapping[str, Estimate], str]]:
    rows: list[tuple[str, Mapping[str, Estimate], str]] = [("candidate", report.metrics, CANDIDATE)]
    if report.champion is not None:
        rows.append(("champion", report.champion.metrics, CHAMPION))
    rows += [(f"baseline {b}", ms, BASELINE) for b, ms in report.baselines.items()]
    rows += [(f"lost selection: {c}", ms, OTHER) for c, ms in report.others.items()]
    return rows


def _interval_panel(ax: Any, metric: str, rows: Sequence[tuple[str, Mapping[str, Estimate], str]]) -> None:
    labels = []
    for y, (name, metrics, color) in enumerate(rows):
        e = metrics.get(metric)
        labels.append(name)
        if not _finite(e):
            ax.text(0.5, y, "not measured", ha="center", va="center", color="#888888", fontsize=7.5)
            continue
        assert e is not None
        if math.isfinite(e.lo) and math.isfinite(e.hi):
            ax.errorbar([e.value], [y], xerr=[[e.value - e.lo], [e.hi - e.value]], fmt="o", color=color, capsize=3, ms=5)
        else:
            ax.plot([e.value], [y], "o", color=color, ms=5)
        ax.annotate(f"{e.value:.3f}", (e.value, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=7)
    ax.axvline(0.5, color="#999999", lw=0.8, ls=":")
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.7)
    ax.set_xlim(0.0, 1.0)
    n = next((m[metric].n for _, m, _ in rows if metric in m), 0)
    ax.set_title(f"{metric} (95% interval, n={n})")


def _slice_panel(ax: Any, metric: str, report: EvalReport) -> None:
    """Candidate and champion per slice, each +- 1.96 binomial standard errors of its n independent units (the
    approximation the gate's slice rule uses: ``trainers.gate.slice_margin``)."""
    keys = sorted(k for k, (v, _) in report.slices.items() if k.startswith(f"{metric}|") and math.isfinite(v))
    if not keys:
        message(ax, f"{metric}: no slices measured")
        return
    champ = report.champion.slices if report.champion is not None else {}
    labelled: set[str] = set()
    for y, key in enumerate(keys):
        for name, offset, (value, n), color in (("candidate", -0.15, report.slices[key], CANDIDATE),
                                                ("champion", 0.15, champ.get(key, (math.nan, 0)), CHAMPION)):
            if not math.isfinite(value):
                continue
            p = min(max(value, 0.0), 1.0)
            se = 1.96 * math.sqrt(p * (1 - p) / max(n, 1))
            ax.errorbar([value], [y + offset], xerr=[[se]], fmt="o", color=color, capsize=2, ms=4,
                        label=None if name in labelled else name)
            labelled.add(name)
    ax.legend(loc="lower left")
    ax.set_yticks(range(len(keys)), [f"{k.split('|', 1)[1]} (n={report.slices[k][1]})" for k in keys])
    ax.set_ylim(len(keys) - 0.5, -0.5)
    ax.set_xlim(0.0, 1.0)
    ax.axvline(0.5, color="#999999", lw=0.8, ls=":")
    ax.set_title(f"{metric} per slice (+-1.96 SE of n units)")


def gate_chart(report: EvalReport, *, verdict: str = "", title: str = "") -> bytes:
    """Candidate vs champion vs baselines (and the candidates that lost the selection) on pairwise accuracy and
    AUC with their cluster-bootstrap 95% intervals; below, both metrics per slice, candidate beside champion."""
    rows = _scorers(report)
    n_slices = max((sum(1 for k in report.slices if k.startswith(f"{m}|")) for m in GATE_METRICS), default=0)
    height = 1.6 + 0.32 * len(rows) + 0.26 * max(n_slices, 2)

    def draw(fig: Any) -> None:
        axes = fig.subplots(2, 2, height_ratios=[len(rows) + 1, max(n_slices, 2) + 1], squeeze=False)
        for col, metric in enumerate(GATE_METRICS):
            _interval_panel(axes[0][col], metric, rows)
            _slice_panel(axes[1][col], metric, report)
        axes[0][1].tick_params(labelleft=False)
        head = title or "Gate: candidate vs champion vs baselines (eval split)"
        fig.suptitle(f"{head}\n{verdict[:150]}" if verdict else head, fontsize=10)

    return render((10.0, height), draw)


def calibration_chart(curves: Mapping[str, Sequence[ReliabilityBin]], *, title: str = "") -> bytes:
    """The reliability diagram on the eval split: per scorer, mean label against mean score in each bin (marker
    area by count), with the expected calibration error; below, how many answers fall in each bin."""
    colors = {"candidate": CANDIDATE, "champion": CHAMPION}

    def draw(fig: Any) -> None:
        top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
        if not any(curves.values()):
            message(top, "no pointwise verdicts in the eval split:\nnothing to calibrate against")
            bottom.set_axis_off()
        else:
            top.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--", label="perfectly calibrated")
            width = 0.8 / max(len(curves), 1) / 10
            for i, (name, bins) in enumerate(curves.items()):
                if not bins:
                    continue
                total = sum(b.n for b in bins)
                ece = sum(b.n * abs(b.mean_score - b.observed) for b in bins) / total
                color = colors.get(name, OTHER)
                top.plot([b.mean_score for b in bins], [b.observed for b in bins], "-", color=color, lw=1.2,
                         label=f"{name}: ECE {ece:.3f} (n={total})")
                top.scatter([b.mean_score for b in bins], [b.observed for b in bins], s=[12 + 150 * b.n / total for b in bins],
                            color=color, zorder=3)
                bottom.bar([b.lo + 0.01 + i * width for b in bins], [b.n for b in bins], width=width, align="edge", color=color)
            top.set_xlim(0, 1)
            top.set_ylim(-0.02, 1.02)
            top.set_ylabel("share satisfied (mean label)")
            top.legend(loc="upper left")
            bottom.set_xlabel("score (10 equal-width bins)")
            bottom.set_ylabel("answers")
        top.set_title(title or "Calibration on the eval split")

    return render((6.0, 6.0), draw)
