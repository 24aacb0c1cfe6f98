"""Erasure requests from apps: the ``erasure_request`` events the ingestor lands in ``governance/erasure_requests``.

An app sends ``{"event_type": "erasure_request", "user_id": ...}`` on the feedback topic (``feedback.events``); the
ingestor stores it exactly once with its Kafka coordinates. ``fulfil`` runs ``forget`` (the code path of
``lakeloop forget``) for every user with a pending request; ``forget`` deletes the user's requests last, with the rest
of their rows (``footprint.REQUESTS``), and vacuums the files that held them after the grace. So a request is pending
exactly until its erasure is done, and the raw id it carries lives no longer than the user's other rows.

The Dagster side (``orchestration.assets.governance``): ``erasure_requests_sensor`` asks for ``erasure_job`` while
requests are pending; nothing identifying travels in a run's config or tags (Dagster keeps them), the job reads the
table itself.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from features import lake
from features.erasure import footprint as F
from features.erasure.erase import ModelLookup, forget
from features.erasure.record import ErasureRecord
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri


def pending(settings: Settings) -> pl.DataFrame:
    """The pending requests (current version of ``governance/erasure_requests``), oldest first: one row per request,
    with the raw ``user_id`` (use it only to erase)."""
    df = lake.read(table_uri(settings, F.REQUESTS), columns=["event_id", "occurred_at", "app_id", "user_id", *F.BRONZE_KEY],
                   storage_options=storage_options(settings))
    if df is None:
        return pl.DataFrame(schema={"event_id": pl.String, "occurred_at": pl.Datetime("us", "UTC"), "app_id": pl.String,
                                    "user_id": pl.String, "kafka_topic": pl.String, "kafka_partition": pl.Int32,
                                    "kafka_offset": pl.Int64})
    return df.sort(["occurred_at", "kafka_partition", "kafka_offset"])


def pending_count(settings: Settings) -> tuple[int, int | None]:
    """(pending requests, the table's version; None before the first request)."""
    uri = table_uri(settings, F.REQUESTS)
    version = lake.version(uri, storage_options=storage_options(settings))
    if version is None:
        return 0, None
    return pending(settings).height, version


def fulfil(settings: Settings, *, key: bytes, grace_hours: float | None = None, models: ModelLookup | None = None,
           say: Callable[[str], None] = lambda m: None) -> list[ErasureRecord]:
    """Erase every user with a pending request, oldest request first, through ``forget``; returns the records.

    A failure (MLflow silent, a wrong key) stops here and leaves the remaining requests pending for the next run; the
    erasures done before it stay done. Messages name requests by event id and the records by pseudonym, never the
    raw id."""
    rows = pending(settings)
    users = rows.unique(subset=["user_id"], keep="first", maintain_order=True)
    out = []
    for user, event_id in zip(users["user_id"].to_list(), users["event_id"].to_list()):
        asked = rows.filter(pl.col("user_id") == user)["event_id"].to_list()
        say(f"erasure request {event_id}" + (f" (+{len(asked) - 1} more of the same user)" if len(asked) > 1 else ""))
        lookup = {} if models is None else {"models": models}
        out.append(forget(settings, user, key=key, grace_hours=grace_hours, say=say, **lookup))
    return out
