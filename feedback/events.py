"""Feedback event schema v1: the typed model, its JSON Schema, and validation of raw bytes.

An event is a JSON object (UTF-8). Fields common to every type live on ``_EventBase``; each
``event_type`` adds its own (``thumbs``/``rating``: ``value``; ``correction``: ``corrected_response``;
``preference``: ``response_b`` + ``preferred``; ``signal``: an implicit signal's ``name`` + numeric ``value``).
``erasure_request`` is no feedback: an app asks that everything of ``user_id`` be erased (``ErasureRequestEvent``, the
identifying fields only; the ingestor lands it in ``governance/erasure_requests``, not in ``bronze/feedback_events``).
Unknown extra fields are accepted and ignored by the model; the ingestor keeps them in the ``raw`` column.

A *reference* event (all feedback types but ``preference``) leaves out ``prompt``, ``response``, ``model_name`` and
``model_version``: its ``response_id`` is the response id (or request id) that ``lakeloop serve`` returned, and
curation fills the four from ``bronze/predictions`` (``features.references``). A full event carries all four;
an event with some of them is refused. In bronze a reference event's four columns hold "" (``model_name`` of a
full event is never empty, so ``model_name == ""`` marks a reference row). ``feedback/event_schema_v1.json`` is generated
from these models (``write_json_schema``) and a test keeps the two in sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from feedback.validation import DEFAULT_BOUNDS, MAX_MEMBERS, Invalid, TimeBounds, Valid, validate_record

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("event_schema_v1.json")
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
EVENT_TYPES = ("thumbs", "rating", "correction", "preference", "signal", "erasure_request")
EventType = Literal["thumbs", "rating", "correction", "preference", "signal", "erasure_request"]
#: What a reference event leaves out and curation fills from the prediction record.
REFERENCE_FIELDS = ("prompt", "response", "model_name", "model_version")
#: Names of the implicit signals lakeloop knows; an app may send others of the same form.
SIGNAL_NAMES = ("copy", "regenerate", "dwell", "abandon")
SIGNAL_NAME = r"^[a-z][a-z0-9_.-]{0,63}$"

# RFC 3339 date-time with a mandatory offset, for JSON Schema validators that skip `format`.
RFC3339 = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Ident = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Timestamp = Annotated[AwareDatetime, Field(json_schema_extra={"pattern": RFC3339})]
# Optional in the model (None: left out), but never JSON null: the schema states them as plain strings.
_Text = Annotated[str | None, WithJsonSchema({"type": "string"})]
_OptIdent = Annotated[Ident | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 256})]
_REFERENCE_NOTE = " Left out of a reference event (filled from the prediction record); a full event has all four."


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # the model's None means "left out", not a JSON null default


# JSON Schema: whoever sends one of the four sends all of them (a full event); none of them is a reference event
_ALL_OR_NONE = {f: [g for g in REFERENCE_FIELDS if g != f] for f in REFERENCE_FIELDS}


class _EventBase(BaseModel):
    # maxProperties: the schema states the member limit that validation enforces on every object
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False,
                              json_schema_extra={"maxProperties": MAX_MEMBERS, "dependentRequired": _ALL_OR_NONE})

    event_id: EventId = Field(description="Idempotency key chosen by the sender (1..128 chars).")
    occurred_at: Timestamp = Field(description="When the user gave the feedback: RFC 3339 with an offset.")
    app_id: Ident
    user_id: Ident
    conversation_id: Ident = Field(description="Also the Kafka message key.")
    response_id: Ident = Field(description="The model response the feedback is about; in a reference event, the "
                               "response_id or request_id that the scoring service returned.")
    model_name: _OptIdent = Field(None, description="Model that wrote the response." + _REFERENCE_NOTE,
                                  json_schema_extra=_no_default)
    model_version: _OptIdent = Field(None, description="Its version." + _REFERENCE_NOTE, json_schema_extra=_no_default)
    prompt: _Text = Field(None, description="What the user asked." + _REFERENCE_NOTE, json_schema_extra=_no_default)
    response: _Text = Field(None, description="What the model answered." + _REFERENCE_NOTE,
                            json_schema_extra=_no_default)
    comment: str | None = None
    metadata: dict[str, str] | None = Field(None, max_length=MAX_MEMBERS,
                                            description=f"Free-form string -> string map (at most {MAX_MEMBERS} keys).")
    schema_version: Literal[1] = 1

    @field_validator(*REFERENCE_FIELDS, mode="before")
    @classmethod
    def _not_null(cls, v: object) -> object:
        if v is None:  # None is how the model says "left out"; JSON null is not a value of these fields
            raise ValueError("Input should be a valid string, not null (leave the field out instead)")
        return v

    @model_validator(mode="after")
    def _all_or_none(self) -> "_EventBase":
        present = [f for f in REFERENCE_FIELDS if getattr(self, f) is not None]
        if 0 < len(present) < len(REFERENCE_FIELDS):
            missing = [f for f in REFERENCE_FIELDS if f not in present]
            raise ValueError(f"missing required field {', '.join(map(repr, missing))} (a full event carries all of "
                             f"{', '.join(REFERENCE_FIELDS)}; a reference event none of them)")
        return self

    @property
    def is_reference(self) -> bool:
        """No prompt, response, model: curation fills them from the prediction record of ``response_id``."""
        return self.model_name is None


class ThumbsEvent(_EventBase):
    event_type: Literal["thumbs"]
    value: Literal[-1, 1] = Field(description="-1 thumbs down, 1 thumbs up.")

    @field_validator("value", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        if isinstance(v, bool):  # JSON true == 1 in Python; the schema says -1 or 1
            raise ValueError("Input should be -1 or 1, not a boolean")
        return v


class RatingEvent(_EventBase):
    event_type: Literal["rating"]
    value: float = Field(ge=1, le=5, description="Stars, 1..5.")


class CorrectionEvent(_EventBase):
    event_type: Literal["correction"]
    corrected_response: str = Field(description="The response as the user corrected it.")


class PreferenceEvent(_EventBase):
    """Always a full event: the two responses are what the user compared."""

    model_config = ConfigDict(json_schema_extra={"maxProperties": MAX_MEMBERS})

    event_type: Literal["preference"]
    model_name: Ident  # type: ignore[assignment]
    model_version: Ident  # type: ignore[assignment]
    prompt: str  # type: ignore[assignment]
    response: str  # type: ignore[assignment]
    response_b: str = Field(description="The other response shown; `response` is response a.")
    preferred: Literal["a", "b", "tie"]


class SignalEvent(_EventBase):
    """An implicit signal: what the user did with the response rather than what they said about it."""

    event_type: Literal["signal"]
    name: Annotated[str, StringConstraints(pattern=SIGNAL_NAME)] = Field(
        description=f"Which signal: {', '.join(SIGNAL_NAMES)} or an app's own (lowercase, 1..64 of a-z 0-9 _ . -).")
    value: float = Field(description="Its measure: 1 for an act (copy, regenerate, abandon), seconds for dwell.")


class ErasureRequestEvent(BaseModel):
    """An app asks that every row of ``user_id`` be erased (``lakeloop forget``, run by the autopilot's
    ``erasure_requests_sensor``). Same rules as the feedback events; none of their conversation fields."""

    model_config = _EventBase.model_config

    event_type: Literal["erasure_request"]
    event_id: EventId = Field(description="Idempotency key chosen by the sender (1..128 chars).")
    occurred_at: Timestamp = Field(description="When the user asked: RFC 3339 with an offset.")
    app_id: Ident
    user_id: Ident = Field(description="The user to erase, exactly as the app sends it in feedback events.")
    schema_version: Literal[1] = 1


FeedbackEvent = Annotated[
    Union[ThumbsEvent, RatingEvent, CorrectionEvent, PreferenceEvent, SignalEvent, ErasureRequestEvent],
    Field(discriminator="event_type"),
]
EVENT_ADAPTER: TypeAdapter[FeedbackEvent] = TypeAdapter(FeedbackEvent)
_TAGS = frozenset(EVENT_TYPES)


def validate_event(raw: bytes | str | dict[str, Any] | None, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                   bounds: TimeBounds | None = DEFAULT_BOUNDS) -> Valid | Invalid:
    """A ``Valid`` (typed event + raw text) or an ``Invalid`` (stage + reason). Never raises.

    ``raw`` is normally the Kafka record value; a ``str`` is encoded as UTF-8 and a ``dict`` serialized
    (convenient for producers that want to check before sending). ``bounds``: the accepted range of
    ``occurred_at`` at the current time (the ingestor's defaults; None checks the schema alone).
    """
    if isinstance(raw, dict):
        raw = json.dumps(raw, ensure_ascii=False)
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")  # a lone surrogate is the record's fault, not ours
    return validate_record(EVENT_ADAPTER, raw, max_bytes=max_bytes, tags=_TAGS, time_field="occurred_at",
                           bounds=bounds)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a v1 event, generated from the models."""
    schema = EVENT_ADAPTER.json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lakeloop.dev/schemas/feedback-event-v1.json",
        "title": "lakeloop feedback event v1",
        "description": (
            "One user feedback event on an LLM response, as published to Kafka (UTF-8 JSON, at most "
            f"{DEFAULT_MAX_EVENT_BYTES} bytes by default; text fields must not contain U+0000). "
            "Unknown extra fields are allowed and kept in the raw payload. New in v1 without a version change "
            "(every earlier event stays valid): a reference event leaves out prompt, response, model_name and "
            "model_version (all four, or it is a full event with all four; never for a preference), and curation "
            "fills them from the prediction record whose response_id or request_id equals its response_id; and "
            "event_type signal (an implicit signal: name, numeric value); and event_type erasure_request (no "
            "feedback: an app asks that every row of user_id be erased; landed in governance/erasure_requests). "
            "Refused although a JSON Schema "
            "cannot say so: duplicate keys, NaN / Infinity, numbers beyond a double, more than "
            f"{MAX_MEMBERS} members in any object, occurred_at before 2000-01-01 or more than 24 h "
            "after ingestion (the defaults of LAKELOOP_EVENT_TIME_EARLIEST / _MAX_FUTURE_HOURS)."
        ),
        **schema,
    }


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Regenerate ``event_schema_v1.json`` from the models (run after changing them)."""
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return path


def load_json_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())
