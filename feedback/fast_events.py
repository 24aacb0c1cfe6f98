"""A fast path for the common case: a well-formed v1 feedback event straight to its bronze row.

``fast_feedback_row`` decodes with msgspec into per-type structs that carry the pydantic model's
types and bounds (``feedback.events``) and checks the timestamp by hand. It may be *more* cautious
than the model, never less: whenever anything is unusual (a wrong type, an out-of-range value, an
unknown field, a timestamp outside the plain ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+hh:mm)`` form, an
escaped NUL, ...) it answers ``None`` and the caller runs the model, which gives the verdict and the
reason exactly as before. ``tests/test_feedback_corpus.py`` proves the two agree on the malformed
corpus, on valid and edge-case variants and on the qa_feedback events.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal, Union

import msgspec
from pydantic_core import to_json

_fromisoformat = datetime.fromisoformat
_EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Base(msgspec.Struct, tag_field="event_type", forbid_unknown_fields=True, kw_only=True):
    """The fields of ``feedback.events._EventBase``, same types and bounds (msgspec counts characters too)."""

    event_id: _EventId
    occurred_at: str  # checked by epoch_us_rfc3339
    app_id: _Ident
    user_id: _Ident
    conversation_id: _Ident
    response_id: _Ident
    model_name: _Ident
    model_version: _Ident
    prompt: str
    response: str
    comment: Union[str, None] = None
    metadata: Union[dict[str, str], None] = None
    schema_version: Literal[1] = 1


class _Thumbs(_Base, tag="thumbs"):
    value: Literal[-1, 1]  # msgspec never takes a JSON boolean or float for an int


class _Rating(_Base, tag="rating"):
    value: Annotated[float, msgspec.Meta(ge=1, le=5)]  # JSON ints become floats, as in pydantic's strict float


class _Correction(_Base, tag="correction"):
    corrected_response: str


class _Preference(_Base, tag="preference"):
    response_b: str
    preferred: Literal["a", "b", "tie"]


# Unknown fields are refused here (the model takes them: it alone must judge how deep they nest), and
# so is a field of another event type (the model ignores it).
_decode = msgspec.json.Decoder(Union[_Thumbs, _Rating, _Correction, _Preference]).decode
_DecodeError = msgspec.DecodeError  # ValidationError is a subclass

_TS = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})", re.ASCII
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def epoch_us_rfc3339(value: object) -> int | None:
    """Microseconds since the epoch of a plain RFC 3339 timestamp with an offset, or None if not plain.

    The pattern admits only the plain form; ``datetime.fromisoformat`` then rejects impossible dates,
    hours, leap seconds and offsets (None: the model decides).
    """
    if type(value) is not str or _TS.fullmatch(value) is None:
        return None
    try:
        ts = _fromisoformat(value)
    except ValueError:
        return None
    return (ts - _EPOCH) // _US


def fast_feedback_row(raw: bytes, text: str) -> tuple | None:
    """The row of ``bronze.FEEDBACK_ROW_COLUMNS`` for a plainly valid event, else None (ask the model).

    ``raw`` is already known to be non-empty, within the size limit, valid UTF-8 (``text``) and free of
    raw NUL bytes.
    """
    if "\\u0000" in text:
        return None
    try:
        e = _decode(raw)
    except _DecodeError:
        return None
    occurred = epoch_us_rfc3339(e.occurred_at)
    if occurred is None:
        return None
    meta = e.metadata
    cls = type(e)
    value = corrected = response_b = preferred = None
    if cls is _Thumbs or cls is _Rating:
        value = float(e.value)
    elif cls is _Correction:
        corrected = e.corrected_response
    else:
        response_b, preferred = e.response_b, e.preferred
    return (
        e.event_id, _TAGS[cls], occurred, e.app_id, e.user_id, e.conversation_id, e.response_id, e.model_name,
        e.model_version, e.prompt, e.response, value, corrected, response_b, preferred, e.comment,
        None if meta is None else to_json(meta).decode(), 1,
    )


_TAGS = {_Thumbs: "thumbs", _Rating: "rating", _Correction: "correction", _Preference: "preference"}
