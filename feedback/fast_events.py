"""A fast path for the common case: a batch of well-formed v1 feedback events straight to bronze columns.

``fast_feedback_columns`` decodes each record with msgspec into per-type structs that carry the
pydantic model's types and bounds (``feedback.events``), then checks the timestamps and builds the
Arrow columns for the whole batch at once (Arrow kernels, no row tuples). It may be *more* cautious
than the model, never less: whenever anything is unusual (a wrong type, an out-of-range value, an
unknown field, a timestamp outside the plain ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+hh:mm)`` form, an
escaped NUL, ...) it leaves the record out, and the caller runs the model on it, which gives the
verdict and the reason exactly as before. ``tests/test_feedback_corpus.py`` proves the two agree on
the malformed corpus, on valid and edge-case variants and on the qa_feedback events.

Duplicate keys: msgspec, like pydantic, keeps the last value; the model refuses them. The fast path
takes a record only when its count of quote-whitespace-colon sequences equals the number of keys it
decoded (optional fields default to ``UNSET``, so their presence is known). Every key ends in such a
sequence, and inside a string one can only appear after an escaped quote, which only raises the count:
so a duplicate key always makes the counts differ, and an odd string merely sends a record to the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Annotated, ClassVar, Literal, Union

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from msgspec import UNSET, UnsetType
from pydantic_core import to_json

from feedback.validation import MAX_MEMBERS

_EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


# gc=False: the structs hold only strings, numbers and a str->str dict, never a cycle, so the collector
# need not track 100k of them per batch.
class _Base(msgspec.Struct, tag_field="event_type", forbid_unknown_fields=True, kw_only=True, gc=False):
    """The fields of ``feedback.events._EventBase``, same types and bounds (msgspec counts characters too)."""

    # Class attributes, not fields: the columns another event type fills read None here. A field of
    # another type in the JSON is still refused (unknown field), so the model judges it.
    kind: ClassVar[str]
    required_keys: ClassVar[int]  # keys every record of the type has: the fields below, plus event_type
    value: ClassVar[float | None] = None
    corrected_response: ClassVar[str | None] = None
    response_b: ClassVar[str | None] = None
    preferred: ClassVar[str | None] = None

    event_id: _EventId
    occurred_at: str  # checked for the whole batch in fast_feedback_columns
    app_id: _Ident
    user_id: _Ident
    conversation_id: _Ident
    response_id: _Ident
    model_name: _Ident
    model_version: _Ident
    prompt: str
    response: str
    # UNSET when absent: a key the record has counts, one it lacks does not (duplicate-key check)
    comment: Union[str, None, UnsetType] = UNSET
    metadata: Union[Annotated[dict[str, str], msgspec.Meta(max_length=MAX_MEMBERS)], None, UnsetType] = UNSET
    schema_version: Union[Literal[1], UnsetType] = UNSET

    def keys(self) -> int:
        """How many keys the record has: its required ones, the optional ones present, metadata's."""
        n = self.required_keys
        if self.comment is not UNSET:
            n += 1
        meta = self.metadata
        if meta is not UNSET:
            n += 1 + (len(meta) if meta else 0)
        return n if self.schema_version is UNSET else n + 1


_BASE_KEYS = 11  # event_type and the 10 required fields of _Base


class _Thumbs(_Base, tag="thumbs"):
    kind: ClassVar[str] = "thumbs"
    required_keys: ClassVar[int] = _BASE_KEYS + 1
    value: Literal[-1, 1]  # msgspec never takes a JSON boolean or float for an int


class _Rating(_Base, tag="rating"):
    kind: ClassVar[str] = "rating"
    required_keys: ClassVar[int] = _BASE_KEYS + 1
    value: Annotated[float, msgspec.Meta(ge=1, le=5)]  # JSON ints become floats, as in pydantic's strict float


class _Correction(_Base, tag="correction"):
    kind: ClassVar[str] = "correction"
    required_keys: ClassVar[int] = _BASE_KEYS + 1
    corrected_response: str


class _Preference(_Base, tag="preference"):
    kind: ClassVar[str] = "preference"
    required_keys: ClassVar[int] = _BASE_KEYS + 2
    response_b: str
    preferred: Literal["a", "b", "tie"]


# Unknown fields are refused here (the model takes them: it alone must judge how deep they nest), and
# so is a field of another event type (the model ignores it). msgspec also refuses invalid UTF-8, raw
# control characters (NUL included) and lone surrogates, all of which the model rejects or judges.
_decode = msgspec.json.Decoder(Union[_Thumbs, _Rating, _Correction, _Preference]).decode
_KEY_END = re.compile(rb'"[ \t\n\r]*:')

# An offset of 00:00..23:59 (pydantic refuses minutes >= 60 that fromisoformat would carry into hours).
_TS_FORM = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_TS = re.compile(_TS_FORM, re.ASCII)
# The same form for Arrow (RE2), minus year 0000, which Arrow parses and Python refuses.
_TS_ARROW = f"^(?:{_TS_FORM})$"
_TS_TYPE = pa.timestamp("us", tz="UTC")
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
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (ts - _EPOCH) // _US


def _kept(mask: pa.Array, idx: list[int], events: list[_Base], *arrays: pa.Array) -> tuple:
    """(idx, events, *arrays) without the records where ``mask`` is false."""
    keep = mask.to_pylist()
    return ([i for i, k in zip(idx, keep) if k], [e for e, k in zip(events, keep) if k],
            *(a.filter(mask) for a in arrays))


def fast_feedback_columns(values: Sequence[bytes | None], max_bytes: int, *,
                          window_us: tuple[int, int] | None = None) -> tuple[list[int], dict[str, pa.Array]]:
    """(indices of the plainly valid records, their columns): ``bronze.FEEDBACK_ROW_COLUMNS`` plus ``raw``.

    Every record left out (empty, over ``max_bytes``, an ``occurred_at`` outside ``window_us``, anything
    unusual) is for the model to judge.
    """
    decode, key_ends = _decode, _KEY_END.findall
    idx: list[int] = []
    events: list[_Base] = []
    add_idx, add_event = idx.append, events.append
    for i, raw in enumerate(values):
        # an escaped NUL: the model names the field that holds it
        if raw and len(raw) <= max_bytes and b"\\u0000" not in raw:
            try:
                event = decode(raw)
            except Exception:  # noqa: BLE001 - anything (RecursionError, MemoryError, ...): the model judges it
                continue
            # duplicate keys: a quote, whitespace, a colon ends every key (and an escaped quote before a
            # colon inside a string): more of them than keys decoded means a duplicate, or just caution
            if len(key_ends(raw)) != event.keys():
                continue
            add_event(event)
            add_idx(i)
    if not events:
        return [], {}
    raws = pa.array(values if len(idx) == len(values) else [values[i] for i in idx], pa.binary())
    stamps = pa.array([e.occurred_at for e in events], pa.string())
    plain = pc.and_(pc.match_substring_regex(stamps, _TS_ARROW), pc.invert(pc.starts_with(stamps, "0000")))
    if not pc.all(plain).as_py():
        idx, events, raws, stamps = _kept(plain, idx, events, raws, stamps)
        if not events:
            return [], {}
    try:
        occurred = stamps.cast(_TS_TYPE)  # rejects impossible dates, hours, leap seconds, offsets >= 24h
    except pa.ArrowInvalid:  # one such record spoils the cast: check each one the slow way
        epochs = [epoch_us_rfc3339(e.occurred_at) for e in events]
        idx, events, raws = _kept(pa.array([t is not None for t in epochs]), idx, events, raws)
        occurred = pa.array([t for t in epochs if t is not None], pa.int64()).cast(_TS_TYPE)
        if not events:
            return [], {}
    if window_us is not None:  # out of bounds: the model says why
        us = occurred.cast(pa.int64())
        inside = pc.and_(pc.greater_equal(us, window_us[0]), pc.less_equal(us, window_us[1]))
        if not pc.all(inside).as_py():
            idx, events, raws, occurred = _kept(inside, idx, events, raws, occurred)
            if not events:
                return [], {}
    string = pa.string()
    cols: dict[str, pa.Array] = {
        name: pa.array(list(map(attrgetter(name), events)), string)
        for name in ("event_id", "app_id", "user_id", "conversation_id", "response_id", "model_name", "model_version",
                     "prompt", "response", "corrected_response", "response_b", "preferred")
    }
    cols["event_type"] = pa.array([e.kind for e in events], string)
    cols["occurred_at"] = occurred
    cols["value"] = pa.array([e.value for e in events], pa.float64())
    cols["comment"] = pa.array([None if e.comment is UNSET else e.comment for e in events], string)
    cols["metadata"] = pa.array([None if e.metadata is None or e.metadata is UNSET else to_json(e.metadata).decode()
                                 for e in events], string)
    cols["schema_version"] = pa.array([1] * len(events), pa.int32())
    cols["raw"] = raws.cast(string)  # valid UTF-8: msgspec decoded it
    return idx, cols
