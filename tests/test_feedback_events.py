"""Unit tests (no services): schema file in sync with the model, the qa_feedback loader, bronze rows,
prediction records, and the pure decisions (flush policy, lag)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import jsonschema
import pytest

from feedback import bronze
from feedback.batch import Batch, FlushPolicy, flush_reason
from feedback.catch_up import lag
from feedback.events import SCHEMA_PATH, json_schema, load_json_schema, validate_event
from feedback.predictions import validate_prediction
from feedback.qa_feedback import load_events
from infra.errors import DataError
from feedback.validation import Invalid, Valid
from tests.test_feedback_corpus import CORPUS, dumps, valid_event


# ---- JSON Schema <-> model ---------------------------------------------------------------------
def test_schema_file_is_generated_from_the_model() -> None:
    assert load_json_schema() == json_schema(), f"regenerate with: python -c 'from feedback.events import write_json_schema; write_json_schema()' ({SCHEMA_PATH})"
    jsonschema.Draft202012Validator.check_schema(load_json_schema())


_SCHEMA_CASES = [b for b in CORPUS if b.stage == "validate" and b.schema
                 and b.kind not in {"nul_char_in_text", "rating_nan"}]


@pytest.mark.parametrize("bad", _SCHEMA_CASES, ids=[b.kind for b in _SCHEMA_CASES])
def test_schema_file_rejects_what_the_model_rejects(bad) -> None:
    validator = jsonschema.Draft202012Validator(load_json_schema())
    assert not validator.is_valid(json.loads(bad.raw)), bad.kind


def test_schema_file_accepts_every_qa_feedback_event(qa_feedback_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(load_json_schema())
    events = load_events(qa_feedback_path, limit=400)
    assert all(validator.is_valid(e) for e in events)
    assert all(isinstance(validate_event(e), Valid) for e in events)


_REF = {"prompt": None, "response": None, "model_name": None, "model_version": None}


@pytest.mark.parametrize(("overrides", "ok"), [
    (_REF, True),  # a reference event
    ({**_REF, "event_type": "rating", "value": 4}, True),
    ({**_REF, "event_type": "correction", "value": None, "corrected_response": "better"}, True),
    ({"event_type": "signal", "name": "copy", "value": 1}, True),  # a full signal
    ({**_REF, "event_type": "signal", "name": "dwell", "value": 8.5}, True),  # a reference signal
    ({"prompt": None, "response": None}, False),  # neither full nor reference
    ({"model_version": None}, False),
    ({**_REF, "event_type": "preference", "value": None, "response_b": "o", "preferred": "a"}, False),
    ({"event_type": "signal", "name": "Copy", "value": 1}, False),
    ({"event_type": "signal", "name": "copy", "value": None}, False),
])
def test_schema_file_and_model_agree_on_reference_events_and_signals(overrides: dict, ok: bool) -> None:
    event = valid_event(2, **overrides)
    assert jsonschema.Draft202012Validator(load_json_schema()).is_valid(event) is ok
    assert isinstance(validate_event(event), Valid) is ok


def test_a_reference_event_lands_in_bronze_with_empty_texts_and_model() -> None:
    result = validate_event(valid_event(2, **_REF))
    assert isinstance(result, Valid) and result.model.is_reference
    row = dict(zip(bronze.FEEDBACK_ROW_COLUMNS, bronze.feedback_row(result.model)))
    assert (row["prompt"], row["response"], row["model_name"], row["model_version"]) == ("", "", "", "")
    assert row["response_id"] == "resp-2" and row["value"] == -1.0
    partial = validate_event(valid_event(2, prompt=None, response=None))
    assert isinstance(partial, Invalid) and "missing required field 'prompt', 'response'" in partial.reason


# ---- qa_feedback loader ------------------------------------------------------------------------
def test_qa_feedback_loader_maps_the_real_data(qa_feedback_path: Path) -> None:
    events = load_events(qa_feedback_path)
    kinds = [e["event_type"] for e in events]
    assert kinds.count("thumbs") == 500 and kinds.count("preference") == 3000
    assert 450 < kinds.count("correction") <= 500
    assert len({e["event_id"] for e in events}) == len(events)
    raw = json.loads(qa_feedback_path.read_text())
    thumbs = [e for e in events if e["event_type"] == "thumbs"]
    assert [t["value"] for t in thumbs] == [-1 if q["feedback"]["errors"] else 1 for q in raw]
    assert sum(t["value"] == 1 for t in thumbs) == 36  # README: 36 of 500 answers have no error
    prefs = [e["preferred"] for e in events if e["event_type"] == "preference"]
    assert prefs.count("a") == 1577 and prefs.count("b") == 1039 and prefs.count("tie") == 384
    days = {datetime.fromisoformat(e["occurred_at"]).astimezone(timezone.utc).date() for e in events}
    assert len(days) >= 5  # spread over several days


def test_qa_feedback_loader_is_deterministic_and_scales(qa_feedback_path: Path) -> None:
    a = load_events(qa_feedback_path, limit=50)
    assert a == load_events(qa_feedback_path, limit=50)
    big = load_events(qa_feedback_path, copies=2)
    assert len(big) == 2 * len(load_events(qa_feedback_path))
    assert len({e["event_id"] for e in big}) == len(big)


def test_qa_feedback_rag_prompts_carry_the_questions_passages(qa_feedback_path: Path) -> None:
    raw = json.loads(qa_feedback_path.read_text())
    plain, rag = load_events(qa_feedback_path, limit=40), load_events(qa_feedback_path, limit=40, passages=True)
    assert [{**e, "prompt": None} for e in plain] == [{**e, "prompt": None} for e in rag]  # only the prompt differs
    q = raw[0]
    first = rag[0]["prompt"]
    assert plain[0]["prompt"] == q["question"] and first.startswith(q["question"] + "\n\nPassages:\n[1] ")
    for k, passage in enumerate(q["passages"], start=1):  # each passage numbered, its sentences in order
        assert f"[{k}] " + " ".join(s.strip() for s in passage[1:]) in first
    validator = jsonschema.Draft202012Validator(load_json_schema())
    assert all(validator.is_valid(e) and isinstance(validate_event(e), Valid) for e in rag)


def test_qa_feedback_one_kind_streams(qa_feedback_path: Path) -> None:
    """The thumbs-only app thumbs every answer whose comparisons were not a draw by its human comparisons (up: won more
    than it lost); the preference-only app sends the comparisons alone, as the mixed stream does; both validate."""
    from feedback.qa_feedback import comparison_record

    raw = json.loads(qa_feedback_path.read_text())
    thumbs = load_events(qa_feedback_path, shape="thumbs", passages=True)
    assert {e["event_type"] for e in thumbs} == {"thumbs"} and len(thumbs) == 1874  # of 2,000 answers, 126 drew
    first = [e for e in thumbs if e["metadata"]["question_index"] == "0"]
    expected = {k: 1 if w > lost else -1 for k, (w, lost) in comparison_record(raw[0]).items() if w != lost}
    assert {int(e["response_id"].rsplit("-p", 1)[1]): e["value"] for e in first} == expected
    assert all(e["response"] == raw[0][f"prediction {e['response_id'][-1]}"] for e in first)
    assert sum(e["value"] == 1 for e in thumbs) == 949
    prefs = load_events(qa_feedback_path, shape="preferences")
    assert prefs == [e for e in load_events(qa_feedback_path) if e["event_type"] == "preference"]
    validator = jsonschema.Draft202012Validator(load_json_schema())
    assert all(validator.is_valid(e) and isinstance(validate_event(e), Valid) for e in thumbs[:300])
    with pytest.raises(DataError, match="unknown qa_feedback stream shape"):
        load_events(qa_feedback_path, shape="ratings")  # type: ignore[arg-type]


# ---- bronze rows -------------------------------------------------------------------------------
def test_feedback_rows_become_typed_utc_columns() -> None:
    raws = [
        dumps(valid_event(1, occurred_at="2026-01-05T23:30:00-02:00", metadata={"b": "2", "a": "1"})),
        dumps(valid_event(2, event_type="preference", value=None, response_b="B", preferred="b",
                          occurred_at="2026-01-06T00:30:00+02:00")),
    ]
    batch = Batch("t")
    for off, raw in enumerate(raws):
        res = validate_event(raw)
        batch.add_valid(3, 10 + off, 1_767_600_000_000, bronze.feedback_row(res.model), res.text, len(raw))
    batch.add_dead(3, 12, None, b"\xff", Invalid("decode", "not valid UTF-8"))
    now = datetime(2026, 1, 7, tzinfo=timezone.utc)
    table = batch.valid_table(bronze.FEEDBACK_EVENTS_SCHEMA, bronze.FEEDBACK_ROW_COLUMNS, "occurred_at", now)
    assert table.schema == bronze.FEEDBACK_EVENTS_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["occurred_at"] == datetime(2026, 1, 6, 1, 30, tzinfo=timezone.utc)
    assert rows[0]["event_date"] == date(2026, 1, 6)  # the UTC date, not the sender's
    assert rows[1]["event_date"] == date(2026, 1, 5)
    assert rows[0]["value"] == 1.0 and rows[1]["value"] is None and rows[1]["preferred"] == "b"
    assert json.loads(rows[0]["metadata"]) == {"a": "1", "b": "2"}
    assert rows[0]["raw"] == raws[0].decode() and rows[0]["schema_version"] == 1
    assert (rows[1]["kafka_partition"], rows[1]["kafka_offset"]) == (3, 11)
    assert rows[0]["kafka_timestamp"] == datetime.fromtimestamp(1_767_600_000, tz=timezone.utc)
    dead = batch.dead_table(now).to_pylist()
    assert dead == [{"raw": b"\xff", "stage": "decode", "reason": "not valid UTF-8", "kafka_topic": "t", "kafka_partition": 3,
                     "kafka_offset": 12, "kafka_timestamp": None, "ingested_at": now}]
    assert batch.dead_last_offsets() == {3: 12} and batch.last_offset == {3: 12}


def prediction(**overrides) -> dict:
    rec = {"request_id": "rq1", "response_id": "r1", "conversation_id": "c1", "model_name": "lakeloop-reward",
           "model_version": "3", "alias": "canary", "score": 0.7, "latency_ms": 12.5, "prompt": "p", "response": "r",
           "served_at": "2026-01-05T10:00:00Z"}
    rec.update(overrides)
    return rec


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [({}, True), ({"alias": "champion"}, True), ({"alias": "challenger"}, False), ({"score": 1.5}, False),
     ({"latency_ms": -1}, False), ({"served_at": "2026-01-05 10:00"}, False), ({"request_id": ""}, False)],
)
def test_prediction_records(overrides: dict, ok: bool) -> None:
    assert isinstance(validate_prediction(prediction(**overrides)), Valid) is ok


def test_prediction_rows() -> None:
    res = validate_prediction(prediction())
    batch = Batch("predictions")
    batch.add_valid(0, 0, None, bronze.prediction_row(res.model), res.text, 10)
    row = batch.valid_table(bronze.PREDICTIONS_SCHEMA, bronze.PREDICTION_ROW_COLUMNS, "served_at",
                            datetime.now(timezone.utc)).to_pylist()[0]
    assert row["served_at"] == datetime(2026, 1, 5, 10, tzinfo=timezone.utc) and row["event_date"] == date(2026, 1, 5)
    assert row["alias"] == "canary" and row["score"] == 0.7


# ---- pure decisions ----------------------------------------------------------------------------
P = FlushPolicy(latency_s=1.0, max_records=100, max_bytes=1000)


@pytest.mark.parametrize(
    ("records", "nbytes", "age", "want"),
    [
        (0, 0, 99.0, None),  # an empty batch never flushes
        (1, 10, 0.1, None),
        (1, 10, 1.0, "latency"),
        (100, 10, 0.0, "records"),
        (5, 1000, 0.0, "bytes"),
        (100, 1000, 5.0, "records"),  # records is checked first
        (99, 999, 0.99, None),
    ],
)
def test_flush_reason(records: int, nbytes: int, age: float, want: str | None) -> None:
    assert flush_reason(P, records=records, nbytes=nbytes, age_s=age) == want


def test_flush_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        FlushPolicy(latency_s=0)


@pytest.mark.parametrize(
    ("end", "stored", "want"),
    [
        ({0: 10, 1: 0}, {}, {0: 10, 1: 0}),
        ({0: 10}, {0: 9}, {0: 0}),
        ({0: 10}, {0: 4}, {0: 5}),
        ({0: 10, 1: 3}, {0: None, 1: 2}, {0: 10, 1: 0}),
    ],
)
def test_lag(end: dict, stored: dict, want: dict) -> None:
    assert lag(end, stored) == want


def test_many_copies_of_the_qa_feedback_events_lie_in_the_past(qa_feedback_path: Path) -> None:
    """`produce --qa-feedback --copies N` and the benchmark: the last copy covers the default week, so no copy
    is timed beyond the ingestor's bound (copies run forward from their start)."""
    from datetime import timedelta

    from feedback.qa_feedback import DEFAULT_START, iter_events, past_start

    assert past_start(1) == DEFAULT_START and past_start(60) + timedelta(days=7 * 59) == DEFAULT_START
    first_of_last_copy = next(e for e in iter_events(qa_feedback_path, copies=3, start=past_start(3))
                              if e["event_id"].startswith("qaf1-2-"))
    assert isinstance(validate_event(first_of_last_copy), Valid)
    assert datetime.fromisoformat(first_of_last_copy["occurred_at"]) < datetime.now(timezone.utc)
