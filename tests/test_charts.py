"""The pictures (issue 21): each chart function gives a PNG that decodes, the same bytes for the same numbers, from
small made-up inputs and their edge cases (one window, NaN scores, no champion, nothing yet); the numbers behind
them (reliability bins, per-look intervals, served shares, the drift rows read back); a card that fits a model
version's description."""

from __future__ import annotations

import io
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from infra.settings import Settings
from monitors import drift_store
from monitors.canary import served_shares
from monitors.charts import ALERT, CanaryEvent, CanaryLook, canary_chart, drift_chart
from monitors.drift import ColumnDrift, DriftVerdict
from monitors.sequential import Counts, confidence_sequence, confidence_sequence_path, proportion_sequence_path
from trainers import evaluate as E
from trainers.charts import PNG_SIGNATURE, calibration_chart, gate_chart
from trainers.registry import DESCRIPTION_LIMIT, fit_description

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NAN = float("nan")


def decode(png: bytes) -> np.ndarray:
    """The picture's pixels (RGBA floats); fails unless ``png`` is a PNG that decodes."""
    import matplotlib.image

    assert png[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels


def red_pixels(pixels: np.ndarray, *, tol: float = 0.05) -> np.ndarray:
    """Pixels in the alert colour, counted per column of the picture."""
    rgb = np.array([int(ALERT[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return (np.abs(pixels[..., :3] - rgb).max(axis=-1) < tol).sum(axis=0)


# ---- drift ----------------------------------------------------------------------------------------------
def drift_rows(scores: list[dict[str, float]], *, threshold: float = 0.1, start: datetime = T0) -> pd.DataFrame:
    """monitoring/drift_metrics rows, one window per entry of ``scores`` (column -> score); a window drifted when
    any score reaches the threshold."""
    rows = []
    for i, cols in enumerate(scores):
        ws, we = start + timedelta(hours=i), start + timedelta(hours=i + 1)
        wid = f"{ws.isoformat()}/{we.isoformat()}"
        drifted = any(v >= threshold for v in cols.values() if not math.isnan(v))
        for col, v in cols.items():
            group = "feedback" if col == "thumbs_down" else "prediction" if col == "score" else "data"
            rows.append(dict(window_id=wid, window_end=we, metric=col, group=group, method="wasserstein", value=v,
                             threshold=threshold, drifted=not math.isnan(v) and v >= threshold))
        rows.append(dict(window_id=wid, window_end=we, metric="window_drifted", group="window", method="verdict",
                         value=float(drifted), threshold=NAN, drifted=drifted))
    return pd.DataFrame(rows)


CALM = {"prompt_chars": 0.03, "response_chars": 0.05, "score": 0.04, "thumbs_down": 0.02}
HOT = {**CALM, "prompt_chars": 0.3, "response_chars": 0.25}


@pytest.mark.parametrize("scores", [
    pytest.param([CALM] * 5 + [HOT] * 4 + [CALM] * 3, id="streak-then-calm"),
    pytest.param([CALM], id="one-window"),
    pytest.param([{**CALM, "score": NAN}, {**CALM, "thumbs_down": NAN}, {k: NAN for k in CALM}], id="nan-scores"),
    pytest.param([CALM, {"prompt_chars": 0.02}], id="a-column-missing-in-a-window"),
    pytest.param([{"prompt_chars": 0.02}], id="one-column"),
])
def test_drift_chart_is_a_deterministic_png(scores: list[dict[str, float]]) -> None:
    rows = drift_rows(scores)
    png = drift_chart(rows, required=3)
    decode(png)
    assert drift_chart(rows, required=3) == png


def test_drift_chart_of_nothing_yet_says_so() -> None:
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in ("window_id", "window_end", "metric", "group", "value", "threshold", "drifted")})
    decode(drift_chart(empty, required=3))


def test_drift_chart_marks_the_alert_window_only_when_a_streak_reaches_required() -> None:
    alerting = decode(drift_chart(drift_rows([CALM] * 3 + [HOT] * 3), required=3))
    short = decode(drift_chart(drift_rows([CALM] * 3 + [{**CALM, "score": 0.5}] * 2), required=3))
    calm = decode(drift_chart(drift_rows([CALM] * 6), required=3))
    # red: the legend's marker; + points over the threshold; + the alert line, a red column through the panels
    assert red_pixels(calm).sum() < red_pixels(short).sum() < red_pixels(alerting).sum()
    assert red_pixels(alerting).max() > 300 and red_pixels(short).max() < 30


def test_drift_chart_shows_the_last_windows_and_counts_streaks_before_them() -> None:
    rows = drift_rows([CALM] * 30 + [HOT] * 2)
    decode(drift_chart(rows, required=3, last=24))
    assert drift_chart(rows, required=3, last=24) != drift_chart(rows, required=3, last=4)


def _verdict(score: float) -> DriftVerdict:
    col = ColumnDrift("prompt_chars", "data", "wasserstein", score, 0.1, score >= 0.1)
    return DriftVerdict(columns=(col,), groups={"data": score >= 0.1}, n_reference=100, n_current=60, n_current_feedback=0, rates={})


def test_recent_rows_reads_the_last_windows_latest_computation(settings: Settings) -> None:
    assert drift_store.recent_rows(settings).empty
    for i, score in enumerate([0.01, 0.02, 0.3, 0.4]):
        rows = drift_store.verdict_rows(_verdict(score), window_start=T0 + timedelta(hours=i), window_end=T0 + timedelta(hours=i + 1),
                                        model_version="1", report_uri=None, run_id=None)
        drift_store.append_verdict(settings, rows)
    again = drift_store.verdict_rows(_verdict(0.05), window_start=T0 + timedelta(hours=3), window_end=T0 + timedelta(hours=4),
                                     model_version="1", report_uri=None, run_id=None)  # the last window checked again
    drift_store.append_verdict(settings, again)
    got = drift_store.recent_rows(settings, windows=3)
    cols = got[got["metric"] == "prompt_chars"]
    assert cols["value"].tolist() == [0.02, 0.3, 0.05]  # oldest first, the recomputation wins
    decode(drift_chart(got, required=2))


# ---- canary ---------------------------------------------------------------------------------------------
def canary_looks(n_looks: int, *, canary: float = 0.7, champion: float = 0.8, per_look: int = 40) -> list[CanaryLook]:
    looks = []
    for i in range(1, n_looks + 1):
        n_a, n_b = per_look * i // 5, per_look * i
        looks.append(CanaryLook(T0 + timedelta(minutes=15 * i), Counts(int(canary * n_a), n_a, int(champion * n_b), n_b),
                                0.1 if i < n_looks // 2 else 0.5))
    return looks


@pytest.mark.parametrize("looks", [
    pytest.param(canary_looks(12), id="steps"),
    pytest.param(canary_looks(1), id="one-look"),
    pytest.param([CanaryLook(T0, Counts(0, 0, 0, 0), None), CanaryLook(T0 + timedelta(minutes=15), Counts(0, 0, 3, 5), 0.1)],
                 id="no-labels-yet"),
    pytest.param(canary_looks(120), id="more-looks-than-drawn"),
    pytest.param([], id="no-looks"),
])
def test_canary_chart_is_a_deterministic_png(looks: list[CanaryLook]) -> None:
    events = [CanaryEvent(T0, "canary start"), CanaryEvent(T0 + timedelta(hours=3), "Rollback")]
    png = canary_chart(looks, events=events)
    decode(png)
    assert canary_chart(looks, events=events) == png


def test_canary_chart_draws_the_paired_difference_when_the_rollout_read_it() -> None:
    from monitors.sequential import Paired

    looks = canary_looks(6)
    paired = [Paired(-0.1 * 30 * i, 0.3 * 30 * i, 30 * i) for i in range(1, 7)]
    png = canary_chart(looks, paired=paired)
    decode(png)
    assert png != canary_chart(looks)
    with pytest.raises(ValueError, match="paired looks"):
        canary_chart(looks, paired=paired[:2])


def test_per_look_intervals_narrow_and_end_where_the_tests_end() -> None:
    looks = [c.counts for c in canary_looks(20)]
    path = confidence_sequence_path(looks, alpha=0.05)
    assert path[-1] == confidence_sequence(looks, alpha=0.05)
    widths = [hi - lo for lo, hi in path]
    assert all(b <= a + 1e-12 for a, b in zip(widths, widths[1:]))  # a running intersection never widens
    arm = proportion_sequence_path([c.hits_b for c in looks], [c.n_b for c in looks], alpha=0.05)
    assert arm[0] == (0.0, 1.0) or arm[0][0] <= 0.8 <= arm[0][1]
    assert all(lo <= 0.8 <= hi for lo, hi in arm) and arm[-1][1] - arm[-1][0] < 0.2
    assert proportion_sequence_path([3], [5], alpha=0.05) == [(0.0, 1.0)]  # below min_count: nothing said


def test_served_shares_per_window_between_looks() -> None:
    served = [T0 + timedelta(minutes=m) for m in (1, 2, 3, 16, 17, 18, 19, 40)]
    versions = ["1", "1", "2", "1", "2", "2", "3", "1"]  # "3" is neither arm
    predictions = pd.DataFrame({"served_at": [t.isoformat() for t in served], "model_version": versions})
    looks = [T0 + timedelta(minutes=15), T0 + timedelta(minutes=30), T0 + timedelta(minutes=35)]
    assert served_shares(predictions, champion_version="1", canary_version="2", look_times=looks) == [1 / 3, 2 / 3, None]


# ---- gate and calibration -------------------------------------------------------------------------------
def est(v: float, w: float = 0.05, n: int = 80) -> E.Estimate:
    return E.Estimate(v, v - w, v + w, n) if not math.isnan(v) else E.Estimate(NAN, NAN, NAN, n)


def report(*, champion: bool = True, pairwise: float = 0.68, auc: float = 0.71, slices: bool = True) -> E.EvalReport:
    metrics = {"pairwise_accuracy": est(pairwise), "auc": est(auc), "log_loss": est(0.6), "calibration_error": est(0.05)}
    sl = {"pairwise_accuracy|app_id=qa-web": (0.7, 40), "pairwise_accuracy|app_id=qa-mobile": (0.66, 31),
          "auc|event_type=thumbs": (0.72, 45), "auc|length=xlong>=1200c": (NAN, 2)} if slices else {}
    r = E.EvalReport(metrics, sl, baselines={"constant": {"pairwise_accuracy": est(0.5, 0), "auc": est(0.5, 0)},
                                             "length": {"pairwise_accuracy": est(0.6), "auc": est(0.62)},
                                             "tfidf_lr": {"pairwise_accuracy": est(0.66), "auc": est(NAN)}},
                     others={"hybrid": {"pairwise_accuracy": est(0.64), "auc": est(0.65)}})
    if champion:
        r.champion = E.EvalReport({"pairwise_accuracy": est(0.65), "auc": est(0.69)}, {"pairwise_accuracy|app_id=qa-web": (0.62, 40)})
    return r


@pytest.mark.parametrize("rep", [
    pytest.param(report(), id="with-champion"),
    pytest.param(report(champion=False), id="no-champion"),
    pytest.param(report(champion=False, pairwise=NAN), id="thumbs-only-stream"),
    pytest.param(report(auc=NAN, slices=False), id="preferences-only-no-slices"),
    pytest.param(E.EvalReport({}, {}), id="nothing-measured"),
])
def test_gate_chart_is_a_deterministic_png(rep: E.EvalReport) -> None:
    png = gate_chart(rep, verdict="FAIL: pairwise_accuracy does not beat baseline length: " + "x" * 300)
    decode(png)
    assert gate_chart(rep, verdict="FAIL: pairwise_accuracy does not beat baseline length: " + "x" * 300) == png


def test_reliability_bins_give_the_calibration_error() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(500) < 0.4).astype(float)
    probs = np.clip(0.3 * labels + 0.6 * rng.random(500), 0, 1)
    bins = E.reliability(labels, probs)
    assert sum(b.n for b in bins) == 500 and all(b.lo <= b.mean_score <= b.hi for b in bins)
    ece = sum(b.n * abs(b.mean_score - b.observed) for b in bins) / 500
    assert ece == pytest.approx(E.calibration_error(labels, probs))
    assert E.reliability(np.array([1.0]), np.array([1.0])) == (E.ReliabilityBin(0.9, 1.0, 1.0, 1.0, 1),)  # a score of 1: last bin


@pytest.mark.parametrize("curves", [
    pytest.param({"candidate": E.reliability(np.array([0, 1, 1, 0, 1.0]), np.array([0.1, 0.8, 0.6, 0.3, 0.95]))}, id="no-champion"),
    pytest.param({"candidate": E.reliability(np.array([1.0, 0.0]), np.array([0.5, 0.52])),
                  "champion": E.reliability(np.array([1.0, 0.0]), np.array([0.9, 0.1]))}, id="one-bin-and-champion"),
    pytest.param({"candidate": ()}, id="no-pointwise-verdicts"),
    pytest.param({}, id="nothing"),
])
def test_calibration_chart_is_a_deterministic_png(curves: dict[str, tuple[E.ReliabilityBin, ...]]) -> None:
    png = calibration_chart(curves)
    decode(png)
    assert calibration_chart(curves) == png


# ---- the card as a model version's description ----------------------------------------------------------
def test_the_card_shows_its_pictures_under_the_title() -> None:
    rep = report()
    rep.metrics = {k: rep.metrics[k] for k in ("pairwise_accuracy", "auc")}  # what every baseline has
    plain = E.model_card(rep, name="m", lineage={"lakeloop.train_examples.version": "3"})
    url = "http://mlflow.example:5000/get-artifact?path=evaluation%2Fgate.png&run_uuid=abc"
    card = E.model_card(rep, name="m", lineage={"lakeloop.train_examples.version": "3"}, pictures={"gate picture": url})
    assert "![" not in plain and f"![gate picture]({url})" in card
    assert card.index(url) < card.index("## Selection") and card.replace(f"\n![gate picture]({url})\n", "") == plain


def test_a_long_card_is_cut_at_a_line_end_below_mlflows_limit_keeping_the_picture() -> None:
    picture = "![gate picture](http://mlflow.example:5000/get-artifact?path=evaluation%2Fgate.png&run_uuid=abc)"
    card = "# Model card: m\n\n" + picture + "\n\n" + "\n".join(f"| slice {i} | 0.{i:03d} | 40 |" for i in range(600))
    assert len(card) > DESCRIPTION_LIMIT
    more = "the whole card: [model_card.md](http://mlflow.example:5000/get-artifact?path=model_card.md&run_uuid=abc)"
    fitted = fit_description(card, more=more)
    assert len(fitted) <= DESCRIPTION_LIMIT and picture in fitted and fitted.rstrip().endswith(more + "*")
    body = fitted[: fitted.index("\n\n*Cut to fit")]
    assert card.startswith(body) and card[len(body)] == "\n"  # cut where a line ends
    assert fit_description("# short card\n", more=more) == "# short card\n"
