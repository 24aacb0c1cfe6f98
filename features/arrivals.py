"""New bronze rows per event day, and when a day is due for curation (the debounce), as plain functions.

Rows per day come from the bronze Delta log (``num_records`` of each file's add action, grouped by the
``event_date`` partition value): no data file is read. Bronze is append-only and compaction keeps the
counts, so "rows now minus rows when the day was last curated" is exactly what arrived since.

The debounce: a day whose count grew is curated at once when ``min_new_rows`` arrived, else once the
first of its pending rows waited ``debounce_s`` and the day was not curated in the last ``debounce_s``.
Late data for an old day makes only that day due.

A day whose bronze holds reference feedback (``features.references``: ``model_name == ""``, seen in the log's
per-file minimum of ``model_name``) also counts the rows of ``bronze/predictions`` of that day, so a prediction that
lands after its feedback makes the day due again and the waiting references are joined.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field


def rows_per_day(uri: str, *, column: str = "event_date", storage_options: dict[str, str] | None = None) -> dict[str, int]:
    """Rows per partition value of ``column`` at the table's latest version ({} when it does not exist)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        actions = DeltaTable(uri, storage_options=storage_options).get_add_actions(flatten=True)
    except TableNotFoundError:
        return {}
    days = actions.column(f"partition.{column}").to_pylist()
    counts = actions.column("num_records").to_pylist()
    out: dict[str, int] = {}
    for day, n in zip(days, counts, strict=True):
        if day is not None:
            out[str(day)] = out.get(str(day), 0) + int(n or 0)
    return out


def reference_days(uri: str, *, storage_options: dict[str, str] | None = None) -> set[str]:
    """Event days with a file whose smallest ``model_name`` is "": a reference event (from the log's statistics; a file
    without them counts as none)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        actions = DeltaTable(uri, storage_options=storage_options).get_add_actions(flatten=True)
    except TableNotFoundError:
        return set()
    if "min.model_name" not in actions.column_names:
        return set()
    days = actions.column("partition.event_date").to_pylist()
    mins = actions.column("min.model_name").to_pylist()
    return {str(d) for d, m in zip(days, mins, strict=True) if d is not None and m == ""}


def with_predictions(feedback_rows: Mapping[str, int], prediction_rows: Mapping[str, int],
                     days: set[str]) -> dict[str, int]:
    """Rows per day as the sensor counts them: feedback rows, plus the day's prediction rows for ``days``."""
    return {d: n + (prediction_rows.get(d, 0) if d in days else 0) for d, n in feedback_rows.items()}


@dataclass
class DayState:
    curated_rows: int = 0  # bronze rows of the day when its last curation was requested
    pending_since: float | None = None  # when rows beyond curated_rows were first seen
    last_request: float | None = None  # when a curation of the day was last requested


@dataclass
class ArrivalState:
    """The curation sensor's cursor: per event day, what was curated and what waits."""

    days: dict[str, DayState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({d: [s.curated_rows, s.pending_since, s.last_request] for d, s in sorted(self.days.items())})

    @classmethod
    def from_json(cls, text: str | None) -> ArrivalState:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls({d: DayState(int(v[0]), v[1], v[2]) for d, v in raw.items()})


@dataclass(frozen=True)
class Due:
    day: str
    new_rows: int
    why: str


def due_days(state: ArrivalState, rows_now: Mapping[str, int], *, now: float, min_new_rows: int,
             debounce_s: float) -> tuple[list[Due], list[str]]:
    """Which days to curate now, and a line per day that waits. Updates ``state.pending_since`` only;
    the caller calls ``requested`` for each day it actually asked to curate."""
    due: list[Due] = []
    waiting: list[str] = []
    for day in sorted(rows_now):
        s = state.days.setdefault(day, DayState())
        new = rows_now[day] - s.curated_rows
        if new <= 0:
            s.pending_since = None
            continue
        if s.pending_since is None:
            s.pending_since = now
        if new >= min_new_rows:
            due.append(Due(day, new, f"{new} new rows >= {min_new_rows}"))
            continue
        waited = now - s.pending_since
        since_last = None if s.last_request is None else now - s.last_request
        if waited >= debounce_s and (since_last is None or since_last >= debounce_s):
            due.append(Due(day, new, f"{new} new rows waited {waited:.0f}s"))
        else:
            left = max(debounce_s - waited, 0.0 if since_last is None else debounce_s - since_last)
            waiting.append(f"{day}: {new} new rows, due in {left:.0f}s")
    return due, waiting


def requested(state: ArrivalState, day: str, rows: int, *, now: float) -> None:
    """Record that a curation of ``day`` covering ``rows`` bronze rows was requested at ``now``."""
    s = state.days.setdefault(day, DayState())
    s.curated_rows, s.pending_since, s.last_request = rows, None, now
