"""Issue 17: raw retention. Bronze feedback events and predictions keep the raw text ``raw_retention_days`` after
ingestion, dead letters ``dead_letter_retention_days``; then ``redact_expired`` (the autopilot's
``raw_retention_schedule``) replaces it with the PII-redacted text. Real Delta tables, tiny retentions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
from deltalake import DeltaTable, write_deltalake

from feedback import bronze as B
from feedback.events import validate_event
from feedback.retention import redact_expired, stored_cutoff
from infra.settings import Settings, load_settings
from infra.tables import table_uri
from tests.test_feedback_corpus import valid_event

NOW = datetime.now(timezone.utc).replace(microsecond=0)
EMAIL = "jane.doe@example.com"


def _feedback(s: Settings, ages_h: list[float]) -> None:
    """One event per age (hours since ingestion); even ones carry an email in prompt and comment."""
    for n, age in enumerate(ages_h):
        extra = {"prompt": f"mail me at {EMAIL} please", "comment": f"I am {EMAIL}"} if n % 2 == 0 else {}
        text = json.dumps(valid_event(n, **extra))
        verdict = validate_event(text)
        row = B.feedback_row(verdict.model)  # type: ignore[union-attr]
        write_deltalake(table_uri(s, "bronze/feedback_events"), B.rows_table(
            B.FEEDBACK_EVENTS_SCHEMA, B.FEEDBACK_ROW_COLUMNS, "occurred_at", [row], [text], topic="fb", partitions=[0],
            offsets=[n], timestamps_ms=[None], ingested_at=NOW - timedelta(hours=age)), mode="append", partition_by=["event_date"])


def _dead(s: Settings, ages_h: list[float]) -> None:
    for n, age in enumerate(ages_h):
        raw = json.dumps({"user_id": "u1", "prompt": f"call +44 20 7946 0958 or {EMAIL}", "value": 9}).encode()
        write_deltalake(table_uri(s, "bronze/dead_letters"), B.dead_letters_table(
            [raw], ["validate"], ["value: too big"], topic="fb", partitions=[1], offsets=[n], timestamps_ms=[None],
            ingested_at=NOW - timedelta(hours=age)), mode="append")


def _rows(s: Settings, table: str) -> dict[int, dict]:
    return {r["kafka_offset"]: r for r in DeltaTable(table_uri(s, table)).to_pyarrow_table().to_pylist()}


def test_raw_text_past_its_retention_is_replaced_by_the_redacted_text(settings: Settings) -> None:
    s = load_settings(**{**settings.model_dump(), "raw_retention_days": 1.0, "dead_letter_retention_days": 0.25})
    _feedback(s, [48, 47, 30, 2, 2])  # 0 and 2 (emails) are past 1 day, 1 has no PII; 3 (none) and 4 (email) are recent
    _dead(s, [10, 1])  # past 6 h, and not
    before = _rows(s, "bronze/feedback_events")

    said: list[str] = []
    done = {r.table: r for r in redact_expired(s, now=NOW, say=said.append)}
    fb = _rows(s, "bronze/feedback_events")
    assert done["bronze/feedback_events"].scanned == 3 and done["bronze/feedback_events"].redacted == 2
    for n in (0, 2):
        assert EMAIL not in fb[n]["raw"] and EMAIL not in fb[n]["prompt"] and EMAIL not in fb[n]["comment"]
        assert "[EMAIL]" in fb[n]["prompt"] and "[EMAIL]" in fb[n]["raw"]
        assert json.loads(fb[n]["raw"])["event_id"] == before[n]["event_id"]  # still the event, ids as sent
        assert {k: fb[n][k] for k in ("event_id", "user_id", "response_id", "conversation_id", "ingested_at")} == \
               {k: before[n][k] for k in ("event_id", "user_id", "response_id", "conversation_id", "ingested_at")}
    assert fb[1] == before[1]  # past the retention, nothing to redact
    assert EMAIL in fb[4]["raw"] and EMAIL in fb[4]["prompt"] and fb[3] == before[3]  # within the retention: as sent
    dead = _rows(s, "bronze/dead_letters")
    assert EMAIL.encode() not in dead[0]["raw"] and b"[EMAIL]" in dead[0]["raw"] and b"[PHONE]" in dead[0]["raw"]
    assert EMAIL.encode() in dead[1]["raw"]
    assert done["bronze/dead_letters"].redacted == 1 and "bronze/predictions" not in done  # no table yet: skipped
    assert said and not any(EMAIL in m for m in said)

    # the cutoff is stored in the table's log with the rewrite; running again at the same time is a no-op
    uri = table_uri(s, "bronze/feedback_events")
    assert stored_cutoff(DeltaTable(uri), "bronze/feedback_events") == NOW - timedelta(days=1)
    version = DeltaTable(uri).version()
    again = {r.table: r for r in redact_expired(s, now=NOW)}
    assert again["bronze/feedback_events"].version is None and DeltaTable(uri).version() == version

    # later, only the rows that newly passed the retention are read; a run with nothing to redact still moves the cutoff
    later = {r.table: r for r in redact_expired(s, now=NOW + timedelta(hours=20))}
    assert later["bronze/feedback_events"].scanned == 0 and stored_cutoff(DeltaTable(uri), "bronze/feedback_events") == \
        NOW - timedelta(hours=4)
    last = {r.table: r for r in redact_expired(s, now=NOW + timedelta(hours=23))}
    assert (last["bronze/feedback_events"].scanned, last["bronze/feedback_events"].redacted) == (2, 1)  # 3 and 4
    fb = _rows(s, "bronze/feedback_events")
    assert fb[3] == before[3] and EMAIL not in fb[4]["raw"] and "[EMAIL]" in fb[4]["comment"]
    assert _rows(s, "bronze/dead_letters")[1]["raw"].count(b"[EMAIL]") == 1


def test_the_retention_job_runs_in_dagster(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestration.assets.governance.retention import raw_retention_job
    from orchestration.resources import LakeloopSettings
    from tests.pinned_settings import PinnedSettings

    _feedback(settings, [24 * 40])
    monkeypatch.setenv("LAKELOOP_RAW_RETENTION_DAYS", "30")
    result = raw_retention_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"lakeloop": PinnedSettings(home=str(settings.home), lake_root=settings.lake)})
    assert result.success and result.output_for_node("redact_expired_raw") == 1
    assert EMAIL not in _rows(settings, "bronze/feedback_events")[0]["raw"]
