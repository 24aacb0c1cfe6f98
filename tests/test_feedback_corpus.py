"""A corpus of malformed feedback records (>= 35 kinds) and what each must be rejected for.

The corpus is also what the Kafka tests publish (tests/test_feedback_ingest.py, test_feedback_crash.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from feedback.events import validate_event
from feedback.validation import Invalid, Valid


def valid_event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A small valid v1 thumbs event; ``overrides`` replace fields (None removes one)."""
    event = {
        "event_id": f"evt-{i:07d}",
        "event_type": "thumbs",
        "occurred_at": f"2026-01-{5 + i % 3:02d}T10:{i % 60:02d}:00+02:00",
        "app_id": "test-app",
        "user_id": f"user-{i % 17}",
        "conversation_id": f"conv-{i % 101}",
        "response_id": f"resp-{i}",
        "model_name": "m",
        "model_version": "1",
        "prompt": f"question {i}?",
        "response": f"answer {i}.",
        "value": 1 if i % 2 else -1,
    }
    for k, v in overrides.items():
        if v is None:
            event.pop(k, None)
        else:
            event[k] = v
    return event


def dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Bad:
    kind: str
    raw: bytes
    stage: str
    reason: str  # a fragment the reason must contain
    schema: bool = True  # a JSON Schema can express the rule (False: it depends on the ingest time)


def _many_keys(n: int) -> bytes:
    """``n`` distinct 4-character keys with value 0: 9 bytes each (100k keys: 0.9 MB)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    keys = (digits[i // 46656 % 36] + digits[i // 1296 % 36] + digits[i // 36 % 36] + digits[i % 36] for i in range(n))
    return b",".join(b'"%s":0' % k.encode() for k in keys)


def malformed_corpus(max_bytes: int = 1024 * 1024) -> list[Bad]:
    """The corpus; kinds whose record would not fit ``max_bytes`` are rejected at ``size`` instead."""
    e = valid_event(1)
    body = dumps(e)[:-1]
    deep = body + b', "metadata": ' + b'{"k": ' * 300 + b'"x"' + b"}" * 300 + b"}"
    soon = datetime.now(timezone.utc) + timedelta(days=30)
    rating = body.replace(b'"thumbs"', b'"rating"')
    corpus = [
        Bad("not_json", b"this is not json", "decode", "not valid JSON"),
        Bad("truncated_json", dumps(e)[:40], "decode", "not valid JSON"),
        Bad("invalid_utf8", b'{"event_id": "\xff\xfe\xfa"}', "decode", "not valid UTF-8"),
        Bad("empty", b"", "decode", "empty record"),
        Bad("utf8_bom", b"\xef\xbb\xbf" + dumps(e), "decode", "not valid JSON"),
        Bad("raw_nul_byte", dumps(e)[:-1] + b"\x00}", "decode", "NUL byte"),
        Bad("deeply_nested", deep, "decode", "nested too deeply"),
        Bad("json_array", b"[1, 2, 3]", "validate", "expected a JSON object, got an array"),
        Bad("json_string", b'"thumbs up"', "validate", "got a string"),
        Bad("json_number", b"42", "validate", "got a number"),
        Bad("json_null", b"null", "validate", "got null"),
        Bad("missing_required", dumps(valid_event(1, prompt=None)), "validate", "missing required field 'prompt'"),
        Bad("missing_event_type", dumps(valid_event(1, event_type=None)), "validate", "missing required field 'event_type'"),
        Bad("wrong_type", dumps(valid_event(1, event_id=12345)), "validate", "event_id"),
        Bad("unknown_event_type", dumps(valid_event(1, event_type="smile")), "validate", "unknown value 'smile'"),
        Bad("thumbs_out_of_range", dumps(valid_event(1, value=0)), "validate", "value"),
        Bad("thumbs_boolean", dumps(valid_event(1, value=True)), "validate", "boolean"),
        Bad("rating_out_of_range", dumps(valid_event(1, event_type="rating", value=7)), "validate", "less than or equal to 5"),
        Bad("rating_nan", dumps(e).replace(b'"value": 1', b'"value": NaN').replace(b'"thumbs"', b'"rating"'), "validate", "value"),
        Bad("bad_timestamp", dumps(valid_event(1, occurred_at="yesterday")), "validate", "occurred_at"),
        Bad("timestamp_without_offset", dumps(valid_event(1, occurred_at="2026-01-05T10:00:00")), "validate", "timezone"),
        Bad("timestamp_as_number", dumps(valid_event(1, occurred_at=1767607200)), "validate", "occurred_at"),
        Bad("preference_bad_choice", dumps(valid_event(1, event_type="preference", value=None, response_b="b", preferred="c")),
            "validate", "preferred"),
        Bad("correction_without_text", dumps(valid_event(1, event_type="correction", value=None)), "validate",
            "corrected_response"),
        Bad("metadata_not_strings", dumps(valid_event(1, metadata={"n": 3})), "validate", "metadata.n"),
        Bad("event_id_too_long", dumps(valid_event(1, event_id="e" * 129)), "validate", "event_id"),
        Bad("schema_version_2", dumps(valid_event(1, schema_version=2)), "validate", "schema_version"),
        Bad("nul_char_in_text", dumps(valid_event(1, prompt="a\u0000b")), "validate", "NUL character"),
        Bad("oversized", dumps(valid_event(1, prompt="x" * (max_bytes + 10))), "size", "over the limit"),
        # nesting 5,000 deep: as the first key, inside a typed field, inside metadata (array and object)
        Bad("deep_first_key", b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b", " + dumps(e)[1:], "decode", "nested too deeply"),
        Bad("deep_typed_field", body.replace(b'"prompt": "question 1?"', b'"prompt": ' + b"[" * 5000 + b"]" * 5000) + b"}",
            "decode", "nested too deeply"),
        Bad("deep_metadata_array", body + b', "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", "decode", "nested too deeply"),
        Bad("deep_metadata_object", body + b', "metadata": ' + b'{"k": ' * 5000 + b"1" + b"}" * 5001, "decode",
            "nested too deeply"),
        # NaN / Infinity literals and numbers that overflow
        Bad("infinity_literal", rating.replace(b'"value": 1', b'"value": Infinity') + b"}", "validate", "finite number"),
        Bad("nan_in_unknown_field", body + b', "extra": NaN}', "decode", "NaN is not a JSON number"),
        Bad("minus_infinity_in_metadata", body + b', "x": {"y": -Infinity}}', "decode", "-Infinity is not a JSON number"),
        Bad("float_overflow", rating.replace(b'"value": 1', b'"value": 1e400') + b"}", "validate", "finite number"),
        Bad("float_overflow_unknown_field", body + b', "extra": 1e400}', "decode", "overflows a double"),
        Bad("thumbs_beyond_int64", body.replace(b'"value": 1', b'"value": %d' % 2**64) + b"}", "validate", "value"),
        Bad("rating_beyond_int64", rating.replace(b'"value": 1', b'"value": %d' % 2**63) + b"}", "validate", "value"),
        # duplicate keys: refused (JSON readers disagree on which one counts)
        Bad("duplicate_key", body.replace(b'"value": 1', b'"value": 1, "value": -1') + b"}", "decode", "duplicate key 'value'"),
        Bad("duplicate_key_same_value", body + b', "app_id": "test-app"}', "decode", "duplicate key 'app_id'"),
        Bad("duplicate_metadata_key", body + b', "metadata": {"k": "1", "k": "2"}}', "decode", "duplicate key 'k'"),
        # strings that cannot be UTF-8
        Bad("lone_high_surrogate", body.replace(b'"prompt": "', b'"prompt": "\\ud800 ') + b"}", "decode", "surrogate"),
        Bad("lone_low_surrogate", body.replace(b'"prompt": "', b'"prompt": "\\udc00') + b"}", "decode", "surrogate"),
        Bad("surrogate_as_utf8_bytes", body.replace(b"question", b"\xed\xa0\x80") + b"}", "decode", "not valid UTF-8"),
        Bad("overlong_utf8", body.replace(b"question", b"\xc0\xaf") + b"}", "decode", "not valid UTF-8"),
        Bad("latin1_bytes", body.replace(b"question", "quéstion".encode("latin-1")) + b"}", "decode", "not valid UTF-8"),
        # 100k keys under the size limit: at the top level, in metadata
        Bad("many_keys", body + b", " + _many_keys(100_000) + b"}", "validate", "more than 256"),
        Bad("many_metadata_keys", body + b', "metadata": {' + _many_keys(50_000).replace(b":0", b':"v"') + b"}}",
            "validate", "metadata"),
        # occurred_at: offsets beyond +-24 h, and times outside the bounds (year 9999 / 0001, far future / past)
        Bad("offset_plus_24h", dumps(valid_event(1, occurred_at="2026-01-05T10:00:00+24:00")), "validate", "occurred_at"),
        Bad("offset_minus_25h", dumps(valid_event(1, occurred_at="2026-01-05T10:00:00-25:00")), "validate", "occurred_at"),
        Bad("year_9999", dumps(valid_event(1, occurred_at="9999-12-31T23:59:59-23:59")), "validate", "after the ingest time",
            schema=False),
        Bad("year_0001", dumps(valid_event(1, occurred_at="0001-01-01T00:00:00+23:59")), "validate", "before 2000-01-01",
            schema=False),
        Bad("next_month", dumps(valid_event(1, occurred_at=soon.isoformat())), "validate", "after the ingest time",
            schema=False),
        Bad("last_century", dumps(valid_event(1, occurred_at="1999-12-31T23:59:59Z")), "validate", "before 2000-01-01",
            schema=False),
    ]
    return [b if len(b.raw) <= max_bytes or b.stage == "size" else Bad(b.kind, b.raw, "size", "over the limit", b.schema)
            for b in corpus]


CORPUS = malformed_corpus()


def test_corpus_has_at_least_35_kinds() -> None:
    assert len({b.kind for b in CORPUS}) == len(CORPUS) >= 35
    assert {b.stage for b in CORPUS} == {"decode", "validate", "size"}


@pytest.mark.parametrize("bad", CORPUS, ids=[b.kind for b in CORPUS])
def test_each_malformed_kind_is_rejected_at_its_stage_with_a_reason(bad: Bad) -> None:
    result = validate_event(bad.raw)
    assert isinstance(result, Invalid), f"{bad.kind} was accepted"
    assert result.stage == bad.stage, result
    assert bad.reason in result.reason, result.reason
    assert len(result.reason) < 400


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"value": -1},
        {"event_type": "rating", "value": 4.5},
        {"event_type": "rating", "value": 1},
        {"event_type": "correction", "value": None, "corrected_response": "better"},
        {"event_type": "preference", "value": None, "response_b": "other", "preferred": "tie"},
        {"occurred_at": "2026-01-05T10:00:00Z"},
        {"occurred_at": "2026-01-05T10:00:00.123456-07:30"},
        {"comment": "great", "metadata": {"k": "v"}, "schema_version": 1},
        {"unknown_extra_field": {"kept": "in raw"}},
        {"prompt": "", "response": ""},
        {"prompt": "ünïcödé ✓ 中文"},
        # a reference event: no prompt, response or model (curation fills them from the prediction record)
        {"prompt": None, "response": None, "model_name": None, "model_version": None},
        {"event_type": "correction", "value": None, "corrected_response": "better", "prompt": None, "response": None,
         "model_name": None, "model_version": None},
        {"event_type": "signal", "name": "copy", "value": 1},
        {"event_type": "signal", "name": "dwell", "value": 12.5, "prompt": None, "response": None, "model_name": None,
         "model_version": None},
    ],
)
def test_valid_variants_are_accepted(overrides: dict[str, Any]) -> None:
    raw = dumps(valid_event(3, **overrides))
    result = validate_event(raw)
    assert isinstance(result, Valid), result
    assert result.text == raw.decode()  # the raw payload is kept verbatim, extra fields included


# ---- the batch fast path (feedback.fast_events) agrees with the model ------------------------------
_LIMIT = 1024 * 1024


def _fast_answers(raws: list[bytes]) -> list[int]:
    """Positions of the records the fast path takes (the rest go to the model)."""
    from feedback.fast_events import fast_feedback_columns
    from feedback.validation import TimeBounds

    return fast_feedback_columns(raws, _LIMIT, window_us=TimeBounds().window_us(datetime.now(timezone.utc)))[0]


def _prepared(raws: list[bytes]) -> list:
    """What the ingestor's flush makes of ``raws``, per record: (row values, raw text) or ``Invalid``."""
    from feedback import bronze
    from feedback.batch import RawBatch
    from feedback.flush import prepare
    from feedback.streams import get_stream
    from infra.settings import Settings

    stream = get_stream(Settings(max_event_bytes=_LIMIT), "feedback", topic="t")
    batch = RawBatch("t")
    batch.extend(0, list(range(len(raws))), [0] * len(raws), list(raws))
    out = prepare(stream, batch)
    assert out.last_offsets == {0: len(raws) - 1}
    found: dict[int, Any] = {}
    for row in out.valid.to_pylist():
        values = tuple(bronze.epoch_us(row[c]) if c == "occurred_at" else row[c] for c in bronze.FEEDBACK_ROW_COLUMNS)
        found[row["kafka_offset"]] = (values, row["raw"])
    for row in (out.dead.to_pylist() if out.dead is not None else []):
        found[row["kafka_offset"]] = Invalid(row["stage"], row["reason"])
    assert sorted(found) == list(range(len(raws)))  # every record is a row or a dead letter, once
    assert [r["kafka_offset"] for r in out.valid.to_pylist()] == sorted(r["kafka_offset"] for r in out.valid.to_pylist())
    return [found[i] for i in range(len(raws))]


def _model(raw: bytes):
    """The model's verdict alone (no fast path): (row values, raw text) or ``Invalid``."""
    from feedback import bronze
    from feedback.events import EVENT_ADAPTER, EVENT_TYPES
    from feedback.validation import TimeBounds, record_row, validate_record

    tags = frozenset(EVENT_TYPES)
    return record_row(raw, validate=lambda r: validate_record(EVENT_ADAPTER, r, max_bytes=_LIMIT, tags=tags,
                                                              time_field="occurred_at", bounds=TimeBounds()),
                      row=bronze.feedback_row)


def _both_paths(raw: bytes):
    """(what the flush makes of ``raw``, the model's verdict alone)."""
    return _prepared([raw])[0], _model(raw)


@pytest.mark.parametrize("bad", CORPUS, ids=[b.kind for b in CORPUS])
def test_fast_path_defers_every_malformed_kind_to_the_model(bad: Bad) -> None:
    assert _fast_answers([bad.raw]) == [], bad.kind  # never says "valid" to a bad record
    fast, model = _both_paths(bad.raw)
    assert fast == model and isinstance(fast, Invalid)  # same stage, same reason


def test_a_mixed_batch_keeps_every_record_in_offset_order() -> None:
    """Good and bad records interleaved: the fast rows and the model's verdicts merge in offset order."""
    good = [dumps(valid_event(i)) for i in range(40)]
    raws = [b for pair in zip(good, [c.raw for c in CORPUS] * 2) for b in pair]
    assert _prepared(raws) == [_model(r) for r in raws]


def test_one_impossible_timestamp_does_not_spoil_the_batch() -> None:
    """Arrow's batch cast fails on 30 February; the fast path then checks each timestamp itself."""
    odd = {5: "2026-02-30T10:00:00Z", 9: "0000-01-01T00:00:00Z", 11: "2026-01-05T10:00:60Z"}
    raws = [dumps(valid_event(i, **({"occurred_at": odd[i]} if i in odd else {}))) for i in range(20)]
    assert _fast_answers(raws) == [i for i in range(20) if i not in odd]
    assert _prepared(raws) == [_model(r) for r in raws]


_EDGE_CASES = {
    # plainly valid: the fast path answers, and must build the model's row
    **{f"valid_{i}": o for i, o in enumerate([
        {}, {"value": -1}, {"event_type": "rating", "value": 4.5}, {"event_type": "rating", "value": 1},
        {"event_type": "rating", "value": 5.0}, {"event_type": "correction", "value": None, "corrected_response": "x"},
        {"event_type": "preference", "value": None, "response_b": "o", "preferred": "tie"},
        {"occurred_at": "2026-01-05T10:00:00Z"}, {"occurred_at": "2026-01-05T10:00:00.123456-07:30"},
        {"occurred_at": "2026-01-05T10:00:00.1+00:00"}, {"occurred_at": "2024-02-29T23:59:59-23:59"},
        {"comment": "great", "metadata": {"k": "v", "ü": "✓"}, "schema_version": 1}, {"comment": None, "metadata": None},
        {"metadata": {}}, {"prompt": "", "response": ""}, {"prompt": "ünïcödé ✓ 中文 \U0001f600"},
        {"event_id": "e" * 128, "app_id": "a" * 256}, {"event_id": "é" * 128, "app_id": "\U0001f600" * 256},
        {"event_type": "signal", "name": "copy", "value": 1}, {"event_type": "signal", "name": "dwell", "value": 1e308},
        {"event_type": "signal", "name": "my_app.scroll-depth", "value": -0.5},
        # reference events: no prompt, response or model (bronze holds "")
        {"prompt": None, "response": None, "model_name": None, "model_version": None},
        {"prompt": None, "response": None, "model_name": None, "model_version": None, "comment": "ok", "metadata": {"k": "v"}},
        {"prompt": None, "response": None, "model_name": None, "model_version": None, "event_type": "correction",
         "value": None, "corrected_response": "x"},
        {"prompt": None, "response": None, "model_name": None, "model_version": None, "event_type": "signal",
         "name": "dwell", "value": 3.5},
    ])},
    # unusual: the fast path must defer, and the answer is the model's
    **{f"edge_{i}": o for i, o in enumerate([
        {"occurred_at": "2026-01-05t10:00:00Z"}, {"occurred_at": "2026-01-05 10:00:00Z"},
        {"occurred_at": "2026-01-05T10:00:00.1234567Z"}, {"occurred_at": "2026-01-05T10:00:60Z"},
        {"occurred_at": "2026-02-30T10:00:00Z"}, {"occurred_at": "2026-01-05T24:00:00Z"},
        {"occurred_at": "2026-01-05T10:00:00+24:00"}, {"occurred_at": "2026-01-05T10:00:00z"},
        {"occurred_at": "2026-01-05T10:00:00+0200"}, {"occurred_at": "2026-01-05T10:00Z"},
        {"occurred_at": "２０２６-01-05T10:00:00Z"}, {"occurred_at": "2026-01-05T10:00:00-00:00"},
        {"occurred_at": "0000-01-01T00:00:00Z"}, {"occurred_at": "2026-01-05T10:00:00+00:60"},
        {"value": 1.0}, {"value": True}, {"value": -1.0}, {"event_type": "rating", "value": True},
        {"event_type": "rating", "value": 0.999}, {"event_type": "rating", "value": 10**30},
        {"event_type": "rating", "value": "4"}, {"schema_version": 1.0}, {"schema_version": None},
        {"schema_version": True}, {"metadata": {"k": None}}, {"metadata": []}, {"comment": 3},
        {"event_id": ""}, {"event_id": "e" * 129}, {"app_id": "a" * 257}, {"user_id": None}, {"event_type": 1},
        {"event_type": "preference", "value": None, "response_b": "o", "preferred": "A"},
        {"event_type": "preference", "value": None, "preferred": "a"},
        {"prompt": "nul \u0000 inside"}, {"unknown": "nul \u0000 in an unknown field"},
        {"unknown": json.loads("[" * 150 + "]" * 150)}, {"unknown": json.loads("[" * 40 + "]" * 40)},
        {"unknown": {"kept": ["in", "raw"]}}, {"event_type": "thumbs", "corrected_response": "ignored", "preferred": "z"},
        {"event_type": "correction", "value": "ignored", "corrected_response": ""}, {"event_id": "é" * 129},
        {"app_id": "\U0001f600" * 257},
        # what is neither a full nor a reference event, a reference preference, nulls
        {"prompt": None, "response": None}, {"model_name": None}, {"prompt": None, "response": None, "model_name": None},
        {"prompt": None, "response": None, "model_name": None, "model_version": None, "event_type": "preference",
         "response_b": "o", "preferred": "a"},
        {"prompt": None}, {"model_version": None, "event_type": "signal", "name": "copy", "value": 1},
        {"model_name": ""}, {"model_version": ""}, {"model_name": "m" * 257}, {"model_version": "\U0001f600" * 257},
        {"prompt": None, "response": None, "model_name": None, "model_version": None, "unknown": "x"},
        {"model_name": "", "prompt": None, "response": None, "model_version": None},
        # signals the fast path must leave to the model
        {"event_type": "signal", "name": "Copy", "value": 1}, {"event_type": "signal", "name": "copy\n", "value": 1},
        {"event_type": "signal", "name": "", "value": 1}, {"event_type": "signal", "name": "c" * 65, "value": 1},
        {"event_type": "signal", "value": 1}, {"event_type": "signal", "name": "copy"},
        {"event_type": "signal", "name": "copy", "value": True}, {"event_type": "signal", "name": "copy", "value": "1"},
        {"event_type": "signal", "name": 3, "value": 1},
    ])},
}


@pytest.mark.parametrize("kind", list(_EDGE_CASES))
def test_fast_path_and_model_agree_on_edge_cases(kind: str) -> None:
    answered = 0
    for event_type in ("thumbs", "rating"):
        raw = dumps(valid_event(3, **{"event_type": event_type, **_EDGE_CASES[kind]}))
        fast, model = _both_paths(raw)
        assert fast == model, (fast, model)
        answered += _fast_answers([raw]) == [0]
    if kind.startswith("valid"):
        assert answered, "the fast path should answer for plainly valid events"


@pytest.mark.parametrize("raw", [
    b'{"event_id": "a", "event_id": "b"}', b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1e400}', b" [] ",
    dumps(valid_event(4)).replace(b'"value": -1', b'"value": -1, "value": 1'),
    dumps(valid_event(4)).replace(b'"value": -1', b'"value": 2, "value": -1'),
    dumps(valid_event(4, metadata={"k": "1"})).replace(b'{"k": "1"}', b'{"k": "1", "j": "2", "k": "3"}'),
    dumps(valid_event(4)).replace(b'"prompt": "', b'"prompt": "\\ud83d\\ude00 '),
    dumps(valid_event(4)).replace(b'"prompt": "', b'"prompt": "\\ud800 '),
    dumps(valid_event(4)) + b" \n\t", dumps(valid_event(4)) + b" x",
    # duplicate keys hidden from a plain count of '":' by whitespace before the colon, or beside escaped quotes
    dumps(valid_event(4)).replace(b'"value": -1', b'"value": -1, "value" : 1'),
    dumps(valid_event(4)).replace(b'"value": -1', b'"value"\n:-1, "value"\t: -1'),
    dumps(valid_event(4, metadata={"k": "1"})).replace(b'{"k": "1"}', b'{"k": "1", "k"\r\n : "1"}'),
    dumps(valid_event(4, prompt='say \"x\": y')).replace(b'"value": -1', b'"value": -1, "value" : -1'),
    dumps(valid_event(4, prompt='a quote then a colon \": is text')), dumps(valid_event(4, prompt="ratio 3 : 1")),
    dumps(valid_event(4, metadata={'k"': 'v":'})),
    # JSON null for a field a reference event leaves out; a reference event with a field twice
    dumps(valid_event(4)).replace(b'"prompt": "question 4?"', b'"prompt": null'),
    dumps(valid_event(4, prompt=None, response=None, model_name=None, model_version=None)).replace(
        b'"value": -1', b'"value": -1, "response_id": "resp-4"'),
])
def test_fast_path_and_model_agree_on_odd_json(raw: bytes) -> None:
    fast, model = _both_paths(raw)
    assert fast == model, (fast, model)


def test_fast_path_answers_for_the_real_events_with_the_models_rows(qa_feedback_path) -> None:
    from feedback.qa_feedback import load_events

    raws = [dumps(event) for event in load_events(qa_feedback_path, copies=1)]
    assert _fast_answers(raws) == list(range(len(raws)))  # one batch, every record taken
    assert _prepared(raws) == [_model(r) for r in raws]
