"""Windows of traffic for drift and canary analysis: predictions joined with the feedback that followed.

Sources: "lake" reads bronze/predictions and bronze/feedback_events (durable, what the ingestor landed);
"kafka" reads the predictions and feedback topics by timestamp (fresh, before the lake catches up).
The reference for drift is the champion's training set (gold/training_examples) scored by the champion.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from infra.errors import DataError
from infra.settings import Settings
from infra.tables import table_uri
from monitors.predictions import predictions_frame, read_topic

Source = Literal["lake", "kafka"]
FEEDBACK_COLUMNS = ["event_id", "event_type", "response_id", "value", "occurred_at"]


def _lake_rows(settings: Settings, name: str, columns: list[str], time_col: str, since: datetime, until: datetime) -> pd.DataFrame:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(settings, name))
    except TableNotFoundError:
        return pd.DataFrame(columns=columns)
    have = [c for c in columns if c in {f.name for f in dt.schema().fields}]
    df = dt.to_pandas(columns=have)
    ts = pd.to_datetime(df[time_col], utc=True, format="ISO8601")
    return df[(ts >= pd.Timestamp(since)) & (ts < pd.Timestamp(until))].reset_index(drop=True)


def load_predictions(settings: Settings, *, since: datetime, until: datetime, source: Source = "lake") -> pd.DataFrame:
    if source == "kafka":
        return predictions_frame(read_topic(settings, settings.predictions_topic, since=since, until=until))
    from monitors.predictions import COLUMNS

    return predictions_frame(_lake_rows(settings, "bronze/predictions", list(COLUMNS), "served_at", since, until).to_dict("records"))


def load_feedback(settings: Settings, *, since: datetime, until: datetime, source: Source = "lake") -> pd.DataFrame:
    if source == "kafka":
        rows: list[dict[str, Any]] = read_topic(settings, settings.feedback_topic, since=since, until=until)
        return pd.DataFrame.from_records(rows, columns=FEEDBACK_COLUMNS)
    return _lake_rows(settings, "bronze/feedback_events", FEEDBACK_COLUMNS, "occurred_at", since, until)


def feedback_flags(feedback: pd.DataFrame) -> pd.DataFrame:
    """Per response: thumbs_down (latest thumbs, 1/0, NaN without thumbs) and corrected (1 if any
    correction, 0 if other feedback only)."""
    if feedback.empty:
        return pd.DataFrame(columns=["response_id", "thumbs_down", "corrected"])
    fb = feedback.assign(
        response_id=feedback["response_id"].astype(str),
        occurred_at=pd.to_datetime(feedback["occurred_at"], utc=True, format="ISO8601"),
        value=pd.to_numeric(feedback["value"], errors="coerce"),
    ).sort_values("occurred_at")
    thumbs = fb[fb["event_type"] == "thumbs"].drop_duplicates("response_id", keep="last")
    out = pd.DataFrame({"response_id": fb["response_id"].unique()})
    out = out.merge(thumbs.assign(thumbs_down=(thumbs["value"] < 0).astype(float))[["response_id", "thumbs_down"]], how="left")
    corrected = set(fb.loc[fb["event_type"] == "correction", "response_id"])
    out["corrected"] = out["response_id"].isin(corrected).astype(float)
    return out


def current_frame(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """prompt, response, score, model_version, thumbs_down, corrected: one row per prediction."""
    flags = feedback_flags(feedback)
    df = predictions[["response_id", "prompt", "response", "score", "model_version"]].copy()
    df["response_id"] = df["response_id"].astype(str)
    return df.merge(flags, on="response_id", how="left")


def training_reference(settings: Settings, *, sample: int = 5000, seed: int = 0) -> pd.DataFrame:
    """prompt, response, thumbs_down, corrected: the responses of the training set (train split), sampled.

    Pointwise examples carry their feedback flags; the chosen and rejected responses of preference pairs
    are responses the model is trained on too (and what live traffic looks like: every answer is scored,
    not only rated ones), with no thumbs (NaN), as unrated live responses have none.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(settings, "gold/training_examples"))
    except TableNotFoundError:
        raise DataError(
            "gold/training_examples does not exist, so there is no drift reference",
            hint="materialize the curation assets first (`lakeloop curate`), or pass a reference frame",
        ) from None
    df = dt.to_pandas(columns=["prompt", "response", "label", "event_types", "split"])
    df = df[df["split"] == "train"]
    frames = [pd.DataFrame({
        "prompt": df["prompt"].to_numpy(),
        "response": df["response"].to_numpy(),
        "thumbs_down": (df["label"] < 0.5).astype(float).to_numpy(),
        "corrected": df["event_types"].fillna("").str.contains("correction").astype(float).to_numpy(),
    })]
    try:
        pairs = DeltaTable(table_uri(settings, "gold/preference_pairs")).to_pandas(columns=["prompt", "chosen", "rejected", "split"])
    except TableNotFoundError:
        pairs = pd.DataFrame(columns=["prompt", "chosen", "rejected", "split"])
    pairs = pairs[pairs["split"] == "train"]
    for col in ("chosen", "rejected"):
        frames.append(pd.DataFrame({"prompt": pairs["prompt"].to_numpy(), "response": pairs[col].to_numpy(),
                                    "thumbs_down": np.nan, "corrected": np.nan}))
    out = pd.concat(frames, ignore_index=True).drop_duplicates(subset=["prompt", "response"]).reset_index(drop=True)
    if len(out) > sample:
        out = out.sample(sample, random_state=seed).reset_index(drop=True)
    return out


def score_frame(model: Any, frame: pd.DataFrame, *, batch: int = 512) -> np.ndarray:
    """The champion's scores on a frame (the reference's score distribution)."""
    out = []
    for i in range(0, len(frame), batch):
        part = model.predict(frame[["prompt", "response"]].iloc[i : i + batch].reset_index(drop=True))
        out.append(np.asarray(part["score"] if isinstance(part, pd.DataFrame) else part, dtype=float).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0)
