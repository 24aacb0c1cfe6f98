"""Reference feedback: events that name a scored response instead of carrying it, joined to its prediction.

``lakeloop serve`` publishes one prediction record per scored response, landed in ``bronze/predictions``. A
reference event (``feedback.events``: no prompt, response or model; in bronze ``model_name == ""``) gets the
prompt, response, model name and version of the prediction whose ``response_id``, or else ``request_id``, equals
its ``response_id`` (its ``response_id`` becomes the prediction's, so all feedback on one response meets in one
example). The texts then go through silver's normalization and PII redaction like every other event's.

A reference event whose prediction has not landed yet is *pending*: it stays in bronze, is left out of silver,
and is tried again at the next curation of its day (the arrival sensor makes the day due when its predictions
grow: ``features.arrivals.reference_days``). Pending longer than ``reference_wait_minutes`` after it was
ingested it is *late*: reported (metadata, a warning, an asset check), never dropped without a word.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import polars as pl

from features import lake
from infra.settings import Settings
from infra.storage import StorageOptions, storage_options
from infra.tables import table_uri

#: The columns a reference event lacks and its prediction fills.
FILLED = ("prompt", "response", "model_name", "model_version")
#: Which of several predictions with one id counts: the first served (then the first Kafka record).
PREDICTION_ORDER = ("served_at", "kafka_partition", "kafka_offset")


def is_reference() -> pl.Expr:
    """A bronze row of a reference event (a full event's model_name is never empty)."""
    return pl.col("model_name") == ""


@dataclass(frozen=True)
class Resolved:
    """Events ready for silver (full ones and joined references), and the references still waiting."""

    events: pl.DataFrame
    joined: int
    pending: pl.DataFrame  # reference rows without a prediction yet
    late: int  # of the pending, those ingested longer than the wait ago

    def stats(self) -> dict[str, int]:
        return {"reference_joined": self.joined, "reference_pending": self.pending.height, "reference_late": self.late}


def reference_ids(events: pl.DataFrame) -> list[str]:
    """The ids the reference events name (response ids or request ids), sorted, once each."""
    return sorted(set(events.filter(is_reference())["response_id"].to_list()))


def _lookup(predictions: pl.DataFrame) -> pl.DataFrame:
    """One prediction per id: key -> (prediction's response_id, the filled columns); a response_id match wins."""
    cols = [pl.col("response_id").alias("_response_id"), *FILLED]
    order = [c for c in PREDICTION_ORDER if c in predictions.columns]
    by_response = predictions.select(pl.col("response_id").alias("_key"), *cols, *order, pl.lit(0).alias("_rank"))
    by_request = predictions.select(pl.col("request_id").alias("_key"), *cols, *order, pl.lit(1).alias("_rank"))
    both = pl.concat([by_response, by_request]).sort(["_key", "_rank", *order])
    return both.filter(pl.col("_key").is_first_distinct()).select("_key", "_response_id", *FILLED)


def resolve_references(events: pl.DataFrame, predictions: pl.DataFrame | None, *, now: datetime,
                       wait: timedelta) -> Resolved:
    """Fill the reference events of ``events`` from ``predictions`` (rows of bronze/predictions); see the module."""
    ref = events.filter(is_reference())
    if ref.height == 0:
        return Resolved(events, 0, ref, 0)
    full = events.filter(~is_reference())
    if predictions is None or predictions.height == 0:
        found, pending = ref.head(0), ref
    else:
        joined = ref.drop(*FILLED).join(_lookup(predictions), left_on="response_id", right_on="_key", how="left")
        hit = pl.col("_response_id").is_not_null()
        found = (joined.filter(hit).with_columns(pl.col("_response_id").alias("response_id"))
                 .drop("_response_id").select(events.columns))
        pending = ref.join(found.select("event_id"), on="event_id", how="anti")
    late = int((pending["ingested_at"] < now - wait).sum()) if pending.height else 0
    return Resolved(pl.concat([full, found]), found.height, pending, late)


def read_predictions(predictions_uri: str, ids: list[str], *, storage_options: StorageOptions | None = None) -> pl.DataFrame | None:
    """The rows of bronze/predictions whose response_id or request_id is one of ``ids`` (None: no such table)."""
    if not ids:
        return None
    cols = ["request_id", "response_id", *FILLED, *PREDICTION_ORDER]
    parts = [lake.read(predictions_uri, filters=[(col, "in", ids)], columns=cols, storage_options=storage_options) for col in ("response_id", "request_id")]
    found = [p for p in parts if p is not None]
    return pl.concat(found).unique(maintain_order=True) if found else None


def resolve_day_references(settings: Settings, events: pl.DataFrame, *, wait_minutes: float,
                           now: datetime | None = None) -> Resolved:
    """``events`` (bronze rows) with their reference events joined to bronze/predictions; the rest pending."""
    preds = read_predictions(table_uri(settings, "bronze/predictions"), reference_ids(events), storage_options=storage_options(settings))
    return resolve_references(events, preds, now=now or datetime.now(timezone.utc), wait=timedelta(minutes=wait_minutes))


def late_line(day: str, late: int, pending: int, wait_minutes: float) -> str:
    """The log line (and check description) for references that waited too long."""
    return (f"{day}: {late} reference feedback event(s) waited over {wait_minutes:g} min for their prediction "
            f"(bronze/predictions has no response_id or request_id equal to theirs; {pending} pending in all). They stay "
            "in bronze and are tried again at each curation of the day; check that the app sends the ids that "
            "`lakeloop serve` returned and that the predictions topic is ingested (LAKELOOP_REFERENCE_WAIT_MINUTES).")
