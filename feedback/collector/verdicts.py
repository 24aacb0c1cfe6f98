"""A request body -> its events -> a verdict per event, with the ingestor's own check of each record.

The body is one event (a JSON object), a JSON array of events, or ``{"events": [...]}`` (an object whose only
member is ``events``). Each event is cut out of the body byte for byte (``msgspec.Raw``) and judged by
``Stream.to_row``, the very function the ingestor uses to decide between a bronze row and a dead letter;
what passes is published exactly as sent, so the ingestor sees the bytes that were judged.

Reasons go back to the sender and never echo what it sent: ``public_reason`` keeps the ingestor's stage and
says what is wrong (field, rule, limit) without values, keys or timestamps from the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec
from pydantic import ValidationError

from feedback.bronze import FEEDBACK_ROW_COLUMNS
from infra.api_keys import Caller
from feedback.events import EVENT_ADAPTER, EVENT_TYPES
from feedback.streams import Stream
from feedback.validation import Invalid

_EVENT_ID, _APP_ID, _CONVERSATION_ID = (FEEDBACK_ROW_COLUMNS.index(c) for c in ("event_id", "app_id", "conversation_id"))
_WHITESPACE = b" \t\r\n"
BODY_FORMS = 'one event (a JSON object), a JSON array of events, or {"events": [...]}'


class BodyError(Exception):
    """The request as a whole is refused (400 or 413), before any event is judged."""

    def __init__(self, status: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


_decode_array = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_batch = msgspec.json.Decoder(_Batch).decode


def split_body(body: bytes, *, max_events: int) -> list[bytes]:
    """The raw bytes of each event in ``body``; BodyError when it holds none, too many, or is no JSON array."""
    body = body.strip(_WHITESPACE)
    if not body:
        raise BodyError(400, "the request body is empty", f"send {BODY_FORMS}")
    if body[:1] == b"[":
        try:
            raws = _decode_array(body)
        except msgspec.DecodeError:
            raise BodyError(400, "the request body is not valid JSON", f"send {BODY_FORMS}") from None
        events = [bytes(r) for r in raws]
    elif body[:1] == b"{" and body.find(b'"events"') >= 0 and (batch := _batch(body)) is not None:
        events = batch
    else:
        events = [body]  # one event; the ingestor's check says what is wrong with it, if anything
    if not events:
        raise BodyError(400, "the request holds no events", f"send {BODY_FORMS}")
    if len(events) > max_events:
        raise BodyError(413, f"the request holds {len(events)} events, over the limit of {max_events}",
                        "send smaller batches (LAKELOOP_COLLECTOR_MAX_BATCH_EVENTS sets the limit)")
    return events


def _batch(body: bytes) -> list[bytes] | None:
    try:
        return [bytes(r) for r in _decode_batch(body).events]
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # not the {"events": [...]} form: one event


@dataclass(frozen=True, slots=True)
class Publishable:
    """An event the ingestor will land in bronze: its id, Kafka key and the bytes to publish."""

    event_id: str
    key: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event refused for good (retrying the same bytes cannot help): stage and a reason without its values."""

    stage: str  # the ingestor's (decode / validate / size), or forbidden (the key may not send for its app_id)
    reason: str


def check_events(stream: Stream, raws: list[bytes], caller: Caller, *,
                 now: datetime | None = None) -> list[Publishable | Rejected]:
    """One verdict per raw event, in order: what the ingestor would do with it, then the caller's app scope."""
    out: list[Publishable | Rejected] = []
    for raw in raws:
        result = stream.to_row(raw, now)
        if isinstance(result, Invalid):
            out.append(Rejected(result.stage, public_reason(result, raw, stream)))
            continue
        row = result[0]
        if not caller.may_send_for(row[_APP_ID]):
            out.append(Rejected("forbidden", "this API key may not send events for the event's app_id"))
            continue
        key = row[_CONVERSATION_ID] or row[_EVENT_ID]  # an erasure request has no conversation
        out.append(Publishable(row[_EVENT_ID], key.encode("utf-8"), raw))
    return out


# ---- reasons without input ---------------------------------------------------------------------------------
_DECODE_FIXED = {
    "duplicate key": "duplicate key in an object (JSON readers disagree on which value counts, so lakeloop refuses it)",
    "the number ": "a number overflows a double",
}
_TAGS = frozenset(EVENT_TYPES)


def public_reason(invalid: Invalid, raw: bytes, stream: Stream) -> str:
    """The ingestor's reason for ``invalid`` without anything taken from the record (values, keys, times)."""
    reason = invalid.reason
    if invalid.stage == "size":
        return reason  # sizes and the limit only
    if invalid.stage == "decode":
        for prefix, fixed in _DECODE_FIXED.items():
            if reason.startswith(prefix):
                return fixed
        return reason  # empty, UTF-8 / NUL positions, parser messages, NaN / Infinity: nothing of the record
    schema = _schema_problems(raw)
    if schema is not None:
        return schema
    if reason.startswith("an object has "):
        return reason  # a member count
    if "text contains the NUL character" in reason:
        return f"{reason.split('.', 1)[0].split(':', 1)[0]}: text contains the NUL character (\\u0000)"
    if reason.startswith(f"{stream.time_column}: "):
        bounds = stream.bounds
        if "is before" in reason:
            return (f"{stream.time_column} is before {bounds.earliest.date().isoformat()}, the earliest event time "
                    "accepted (LAKELOOP_EVENT_TIME_EARLIEST)")
        hours = bounds.max_future.total_seconds() / 3600
        return (f"{stream.time_column} is more than {hours:g} h in the future "
                "(LAKELOOP_EVENT_TIME_MAX_FUTURE_HOURS)")
    return "the event could not be checked against schema v1"  # an unexpected failure: its text may quote the record


def _schema_problems(raw: bytes) -> str | None:
    """What the v1 model refuses in ``raw``, by field and rule (never the value); None if the model takes it."""
    try:
        EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
    except Exception:  # noqa: BLE001 - whatever else the record triggers; the ingestor's reason is not shown
        return "the event could not be checked against schema v1"
    else:
        return None
    parts = [_describe(e) for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _describe(err: dict) -> str:
    kind, loc = err["type"], [str(p) for p in err["loc"]]
    if kind == "union_tag_invalid":
        return f"event_type: unknown value (expected one of {', '.join(EVENT_TYPES)})"
    if kind == "union_tag_not_found":
        return "missing required field 'event_type' (or it is not a string)"
    if loc and loc[0] in _TAGS:
        loc = loc[1:]
    if "metadata" in loc:  # what follows is a key of the sender's
        loc = loc[: loc.index("metadata") + 1]
    if not loc:
        return "expected a JSON object" if kind in ("dict_type", "model_type", "model_attributes_type") else err["msg"]
    field = ".".join(loc)
    if kind == "missing":
        return f"missing required field {field!r}"
    return f"{field}: {err['msg']}"
