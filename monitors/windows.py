"""Windows of traffic for drift and canary analysis: predictions joined with the feedback that followed.

Sources: "lake" reads bronze/predictions and bronze/feedback_events (durable, what the ingestor landed);
"kafka" reads the predictions and feedback topics by timestamp (fresh, before the lake catches up), and
checks each record with the ingestor's validator: what the ingestor would dead-letter is skipped and counted.
The reference for drift is the champion's data (the gold tables at the Delta versions it was trained on: its train
split and the split held out from it), scored by the champion on the held-out rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from feedback.streams import StreamName, get_stream
from infra.errors import DataError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri
from monitors.drift import SIGNAL_FLAGS
from monitors.predictions import COLUMNS, TopicRead, Validator, predictions_frame, read_topic

Source = Literal["lake", "kafka"]
log = logging.getLogger("lakeloop.monitors.windows")
FEEDBACK_COLUMNS = ["event_id", "event_type", "response_id", "value", "occurred_at", "preferred", "response_b", "name"]


def _lake_rows(settings: Settings, name: str, columns: list[str], time_col: str, since: datetime, until: datetime) -> pd.DataFrame:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(settings, name), storage_options=storage_options(settings))
    except TableNotFoundError:
        return pd.DataFrame(columns=columns)
    have = [c for c in columns if c in {f.name for f in dt.schema().fields}]
    df = dt.to_pandas(columns=have)
    ts = pd.to_datetime(df[time_col], utc=True, format="ISO8601")
    return df[(ts >= pd.Timestamp(since)) & (ts < pd.Timestamp(until))].reset_index(drop=True)


def _read_kafka(settings: Settings, topic: str, validate: Validator, since: datetime, until: datetime) -> TopicRead:
    read = read_topic(settings, topic, since=since, until=until, validate=validate)
    if read.invalid:
        log.warning("%s: %d invalid records skipped (%s); first: %s", topic, read.invalid,
                    ", ".join(f"{k}: {v}" for k, v in sorted(read.invalid_by_stage.items())), read.first_invalid)
    return read


def _validator(settings: Settings, stream: StreamName) -> Validator:
    """The ingestor's own check of a record of ``stream`` (``validate_prediction`` / ``validate_event`` with the
    size and time limits of the settings), so a Kafka window keeps exactly what the lake would."""
    return get_stream(settings, stream).validate


def _predictions(settings: Settings, since: datetime, until: datetime, source: Source) -> tuple[pd.DataFrame, int]:
    if source == "kafka":
        read = _read_kafka(settings, settings.predictions_topic, _validator(settings, "predictions"), since, until)
        return predictions_frame(read.records), read.invalid
    rows = _lake_rows(settings, "bronze/predictions", list(COLUMNS), "served_at", since, until)
    return predictions_frame(rows.to_dict("records")), 0


def _feedback(settings: Settings, since: datetime, until: datetime, source: Source) -> tuple[pd.DataFrame, int]:
    if source == "kafka":
        read = _read_kafka(settings, settings.feedback_topic, _validator(settings, "feedback"), since, until)
        # erasure requests share the topic but are no feedback: the ingestor lands them in governance/erasure_requests
        feedback = [r for r in read.records if r.get("event_type") != "erasure_request"]
        return pd.DataFrame.from_records(feedback, columns=FEEDBACK_COLUMNS), read.invalid
    return _with_signal_names(settings, _lake_rows(settings, "bronze/feedback_events", FEEDBACK_COLUMNS, "occurred_at", since, until)), 0


def _with_signal_names(settings: Settings, feedback: pd.DataFrame) -> pd.DataFrame:
    """Bronze keeps a signal's ``name`` in its raw payload only: read it for the window's signal events (their raw
    column alone, none when the window has no signal)."""
    from deltalake import DeltaTable

    signals = feedback["event_type"].astype(str) == "signal" if len(feedback) else pd.Series(dtype=bool)
    if not signals.any():
        return feedback.assign(name=None)
    raw = DeltaTable(table_uri(settings, "bronze/feedback_events"), storage_options=storage_options(settings)).to_pandas(
        columns=["event_id", "raw"], filters=[("event_type", "=", "signal")])
    names = {e: json.loads(r).get("name") for e, r in zip(raw["event_id"], raw["raw"], strict=True)}
    return feedback.assign(name=feedback["event_id"].map(names).where(signals, None))


def load_predictions(settings: Settings, *, since: datetime, until: datetime, source: Source = "lake") -> pd.DataFrame:
    """Predictions served in [since, until). From Kafka, records the ingestor would reject are skipped and
    logged; ``load_window`` also returns their count."""
    return _predictions(settings, since, until, source)[0]


def load_feedback(settings: Settings, *, since: datetime, until: datetime, source: Source = "lake") -> pd.DataFrame:
    """Feedback events of [since, until) (``FEEDBACK_COLUMNS``); invalid Kafka records as in ``load_predictions``."""
    return _feedback(settings, since, until, source)[0]


@dataclass(frozen=True)
class Window:
    """Predictions and the feedback on them, with the records skipped as invalid, per topic.

    The lake holds only what the ingestor validated, so a lake window skips nothing; a Kafka window applies
    the ingestor's validators (``validate_prediction``, ``validate_event``) and skips what they reject.
    """

    predictions: pd.DataFrame
    feedback: pd.DataFrame
    invalid: Mapping[str, int]  # topic -> records skipped

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def summary(self) -> str:
        counts = ", ".join(f"{topic}: {n}" for topic, n in self.invalid.items())
        return f"{len(self.predictions)} predictions, {len(self.feedback)} feedback events, {self.invalid_total} invalid records skipped ({counts})"


def load_window(
    settings: Settings, *, since: datetime, until: datetime, feedback_until: datetime | None = None, source: Source = "lake",
) -> Window:
    """Predictions served in [since, until) and feedback up to ``feedback_until`` (default ``until``)."""
    preds, bad_preds = _predictions(settings, since, until, source)
    fb, bad_fb = _feedback(settings, since, feedback_until or until, source)
    return Window(preds, fb, {settings.predictions_topic: bad_preds, settings.feedback_topic: bad_fb})


POINTWISE = ("thumbs", "rating", "correction")  # feedback that is a verdict on one response


def event_labels(event_type: pd.Series, value: pd.Series) -> pd.Series:
    """The curation label of a thumbs (-1/1 -> 0/1) or rating (1..5 -> 0..1) event; NaN otherwise."""
    v = pd.to_numeric(value, errors="coerce")
    thumbs = (event_type == "thumbs") & v.isin([-1.0, 1.0])
    rating = (event_type == "rating") & v.between(1.0, 5.0)
    return pd.Series(np.where(thumbs, (v + 1.0) / 2.0, np.where(rating, (v - 1.0) / 4.0, np.nan)), index=v.index)


FLAG_COLUMNS = ["response_id", "thumbs_down", "corrected", *SIGNAL_FLAGS]


def feedback_flags(feedback: pd.DataFrame) -> pd.DataFrame:
    """Per response with pointwise feedback (thumbs, rating or correction), as the reference defines them
    (``training_reference``): thumbs_down = the mean thumbs/rating label is below 0.5 (NaN without thumbs or
    rating), corrected = 1 if a correction, else 0, and per implicit signal ``signal_<name>`` = 1 if the response got
    one (its ``name`` column), else 0. Responses with preference feedback only are left out (NaN flags after the
    join), as preference-pair responses are in the reference."""
    if feedback.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    fb = feedback.assign(response_id=feedback["response_id"].astype(str))
    signals = fb[fb["event_type"] == "signal"]
    fb = fb[fb["event_type"].isin(POINTWISE)]
    if fb.empty:
        return pd.DataFrame(columns=FLAG_COLUMNS)
    fb = fb.assign(label=event_labels(fb["event_type"], fb["value"]), is_correction=(fb["event_type"] == "correction").astype(float))
    per = fb.groupby("response_id", sort=False).agg(label=("label", "mean"), corrected=("is_correction", "max"))
    thumbs_down = np.where(per["label"].notna(), (per["label"] < 0.5).astype(float), np.nan)
    out = pd.DataFrame({"response_id": per.index.to_numpy(), "thumbs_down": thumbs_down, "corrected": per["corrected"].to_numpy()})
    named = set(zip(signals["response_id"], signals["name"])) if "name" in signals.columns else set()
    for flag in SIGNAL_FLAGS:
        name = flag.removeprefix("signal_")
        out[flag] = [float((r, name) in named) for r in out["response_id"]]
    return out


def current_frame(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """prompt, response, score, model_version, thumbs_down, corrected: one row per prediction."""
    flags = feedback_flags(feedback)
    df = predictions[["response_id", "prompt", "response", "score", "model_version"]].copy()
    df["response_id"] = df["response_id"].astype(str)
    return df.merge(flags, on="response_id", how="left")


def training_reference(settings: Settings, *, sample: int = 5000, seed: int = 0, version: str | None = None) -> pd.DataFrame:
    """prompt, response, thumbs_down, corrected, split: the model's responses in the gold tables, the train split and
    the held-out (eval) split, each sampled to at most ``sample`` rows.

    With ``version`` (a registered model version, e.g. the champion's), the gold tables are read at the Delta
    versions that version was trained on (``model_store.training_pins``: its lineage tags, else its run's
    params); a table whose version is not recorded, or cannot be read any more (vacuumed, or the recorded
    table is gone), is read at its latest version, with a logged warning. Without ``version``: the latest.

    Both splits are what the apps' traffic looked like, so both describe the text and the feedback; the score
    reference is the held-out rows alone (``score_frame``): a model scores the rows it was fitted to unlike new
    prompts, and live traffic is new prompts.

    Feedback flags are defined, as in live windows (``feedback_flags``), for responses with pointwise feedback:
    pointwise examples carry thumbs_down (``label < 0.5``) and corrected (1 when a correction pair rejected that
    response); a response only corrected has corrected = 1 and no thumbs_down. The chosen and rejected
    responses of preference pairs are responses the model is trained on too (and what live traffic looks like:
    every answer is scored, not only rated ones), with NaN flags, as preference-only live responses have. The
    human-written side of a correction (its chosen text) is left out: the model never serves it.
    """
    from monitors import model_store

    pins = model_store.training_pins(settings, version) if version is not None else {}
    df = _gold(settings, "gold/training_examples", ["prompt", "response", "label", "split", "signals"], pins.get("gold/training_examples"),
               version)
    if df is None:
        raise DataError(
            "gold/training_examples does not exist, so there is no drift reference",
            hint="materialize the curation assets first (`lakeloop curate`), or pass a reference frame",
        )
    pair_cols = ["prompt", "chosen", "rejected", "source", "split"]
    pairs = _gold(settings, "gold/preference_pairs", pair_cols, pins.get("gold/preference_pairs"), version)
    if pairs is None:
        pairs = pd.DataFrame(columns=pair_cols)
    return reference_rows(df, pairs, sample=sample, seed=seed)


def _gold(settings: Settings, name: str, columns: list[str], pin: Any, model_version: str | None) -> pd.DataFrame | None:
    """``name`` at the pinned Delta version, else (with a warning when a model version was asked for) the latest;
    None when the table does not exist. Of ``columns``, those the version has (an older one may lack a newer column)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    def read(dt: DeltaTable) -> pd.DataFrame:
        have = {f.name for f in dt.schema().fields}
        return dt.to_pandas(columns=[c for c in columns if c in have])

    if pin is not None:
        uri = pin.uri or table_uri(settings, name)
        try:
            return read(DeltaTable(uri, version=pin.version, storage_options=storage_options(settings, uri=uri)))
        except (DeltaError, OSError, pa.ArrowException) as exc:  # vacuumed files, expired log, table moved
            log.warning("drift reference: %s at Delta version %d (what model v%s was trained on) cannot be read (%s); "
                        "using the latest version instead", uri, pin.version, model_version, str(exc).splitlines()[0][:200])
    elif model_version is not None:
        log.warning("drift reference: model v%s records no Delta version of %s; using the latest version instead", model_version, name)
    try:
        return read(DeltaTable(table_uri(settings, name), storage_options=storage_options(settings)))
    except TableNotFoundError:
        return None


TRAIN = "train"
HELD_OUT_MIN_ROWS = 50  # held-out reference rows needed to take the score reference from them alone


def reference_rows(examples: pd.DataFrame, pairs: pd.DataFrame, *, sample: int = 5000, seed: int = 0) -> pd.DataFrame:
    """The drift reference from gold rows (``examples``: prompt, response, label, split; ``pairs``: prompt, chosen,
    rejected, source, split; without ``split``, every row is a training row): see ``training_reference``. Each
    split is sampled to at most ``sample`` rows."""
    def split_of(frame: pd.DataFrame) -> np.ndarray:
        return frame["split"].fillna(TRAIN).astype(str).to_numpy() if "split" in frame.columns else np.full(len(frame), TRAIN)

    corrections = pairs[pairs["source"] == "correction"]
    corrected = set(zip(corrections["prompt"], corrections["rejected"], strict=True))
    seen = (examples["signals"].fillna("").astype(str).str.split(",") if "signals" in examples.columns
            else pd.Series([[]] * len(examples), index=examples.index))
    frames = [pd.DataFrame({
        "prompt": examples["prompt"].to_numpy(),
        "response": examples["response"].to_numpy(),
        "thumbs_down": (pd.to_numeric(examples["label"]) < 0.5).astype(float).to_numpy(),
        "corrected": [float((p, r) in corrected) for p, r in zip(examples["prompt"], examples["response"], strict=True)],
        **{flag: [float(flag.removeprefix("signal_") in names) for names in seen] for flag in SIGNAL_FLAGS},
        "split": split_of(examples),
    })]
    for col in ("rejected", "chosen"):
        side = pairs if col == "rejected" else pairs[pairs["source"] != "correction"]
        side = side.sort_values("source", key=lambda src: src != "correction", kind="stable")  # corrections win
        frames.append(pd.DataFrame({
            "prompt": side["prompt"].to_numpy(), "response": side[col].to_numpy(), "thumbs_down": np.nan,
            "corrected": np.where(side["source"] == "correction", 1.0, np.nan) if col == "rejected" else np.nan,
            "split": split_of(side),
        }))
    out = pd.concat(frames, ignore_index=True).dropna(subset=["prompt", "response"])
    out = out.drop_duplicates(subset=["prompt", "response"]).reset_index(drop=True)  # pointwise rows first: they win
    parts = [part if len(part) <= sample else part.sample(sample, random_state=seed) for _, part in out.groupby("split", sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else out


def score_frame(model: Any, frame: pd.DataFrame, *, batch: int = 512) -> np.ndarray:
    """The champion's scores on a reference frame (the reference's score distribution): on its held-out rows
    (``split`` other than "train") alone, NaN on the rows it was trained on, when at least ``HELD_OUT_MIN_ROWS``
    are held out; else (or without a ``split`` column) on every row, with a logged warning when the frame has
    training rows. A model scores the rows it was fitted to unlike new prompts (docs/design/rollout.md, "Drift", has
    the figures), and live traffic is new prompts: a training-row reference would flag it."""
    todo = np.ones(len(frame), dtype=bool)
    if "split" in frame.columns:
        held_out = (frame["split"].astype(str) != TRAIN).to_numpy()
        if held_out.sum() >= HELD_OUT_MIN_ROWS:
            todo = held_out
        elif not held_out.all():
            log.warning("drift reference: %d held-out rows (fewer than %d), so the score reference includes the rows the model "
                        "was trained on; it may score them unlike new prompts", int(held_out.sum()), HELD_OUT_MIN_ROWS)
    rows = frame.loc[todo, ["prompt", "response"]].reset_index(drop=True)
    out = []
    for i in range(0, len(rows), batch):
        part = model.predict(rows.iloc[i : i + batch].reset_index(drop=True))
        out.append(np.asarray(part["score"] if isinstance(part, pd.DataFrame) else part, dtype=float).reshape(-1))
    scores = np.full(len(frame), np.nan)
    scores[todo] = np.concatenate(out) if out else np.zeros(0)
    return scores


MAX_DRIFT_WINDOWS_PER_REPORT = 4  # a report behind slow checks covers at most this many windows (the latest ones)


def drift_cursor(since: datetime, tick: datetime) -> str:
    """The drift sensor's cursor: where the next window starts and when the sensor last looked."""
    return json.dumps({"since": since.isoformat(), "tick": tick.isoformat()})


def parse_drift_cursor(cursor: str | None) -> tuple[datetime | None, datetime | None]:
    """(window start, last tick) from a cursor; an older cursor (a bare timestamp) has no tick."""
    if not cursor:
        return None, None
    if not cursor.lstrip().startswith("{"):
        return datetime.fromisoformat(cursor), None
    c = json.loads(cursor)
    return (datetime.fromisoformat(c["since"]) if c.get("since") else None,
            datetime.fromisoformat(c["tick"]) if c.get("tick") else None)


def drift_window_start(now: datetime, since: datetime | None, last_tick: datetime | None, window: timedelta) -> datetime:
    """Where the window to judge next starts. Windows follow each other without gaps while the sensor keeps ticking,
    also when a drift check in flight holds the next one back (the next report then covers the traffic since the last
    one, up to ``MAX_DRIFT_WINDOWS_PER_REPORT`` windows). After a pause (the sensor stopped, the daemon down, for
    longer than 3 windows) only the latest window is judged: traffic from before the pause is not news any more."""
    if since is None:
        return now - window
    paused = last_tick is None or now - last_tick > 3 * window
    if paused and now - since > 3 * window:
        return now - window
    return max(since, now - MAX_DRIFT_WINDOWS_PER_REPORT * window)
