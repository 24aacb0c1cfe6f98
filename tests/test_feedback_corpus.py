"""A corpus of malformed feedback records (>= 15 kinds) and what each must be rejected for.

The corpus is also what the Kafka tests publish (tests/test_feedback_ingest.py, test_feedback_crash.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


def malformed_corpus(max_bytes: int = 1024 * 1024) -> list[Bad]:
    e = valid_event(1)
    deep = dumps(e)[:-1] + b', "metadata": ' + b'{"k": ' * 300 + b'"x"' + b"}" * 300 + b"}"
    return [
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
    ]


CORPUS = malformed_corpus()


def test_corpus_has_at_least_15_kinds() -> None:
    assert len({b.kind for b in CORPUS}) >= 15
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
    ],
)
def test_valid_variants_are_accepted(overrides: dict[str, Any]) -> None:
    raw = dumps(valid_event(3, **overrides))
    result = validate_event(raw)
    assert isinstance(result, Valid), result
    assert result.text == raw.decode()  # the raw payload is kept verbatim, extra fields included
