"""Validation of one raw Kafka record against a pydantic model: a typed result or a readable reason.

Shared by every stream (feedback events, predictions). The checks run in the order of the dead-letter
stages: ``size`` (too many bytes), ``decode`` (empty, not UTF-8, NUL bytes, not JSON, JSON that parsers
read differently: duplicate keys, NaN / Infinity, numbers that overflow a double), ``validate`` (JSON that
does not fit the model, objects with more than ``MAX_MEMBERS`` members, a time outside ``TimeBounds``).
Nothing a producer sends makes it raise: any exception while checking or converting one record becomes
that record's ``Invalid``, so one bad record never stops a batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

Stage = Literal["decode", "validate", "size"]
M = TypeVar("M", bound=BaseModel)

# At most this many members in any JSON object of a record (the event itself, ``metadata``, unknown
# fields): an object of 100k keys under the size limit is an attack on readers, not feedback.
MAX_MEMBERS = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_JSON_KINDS = {"[": "an array", '"': "a string", "t": "a boolean", "f": "a boolean", "n": "null"}


@dataclass(frozen=True, slots=True)
class Valid(Generic[M]):
    """A record that fits the model. ``text`` is the raw payload as sent (unknown fields included)."""

    model: M
    text: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that does not fit, with the stage that rejected it and why, in words."""

    stage: Stage
    reason: str


def epoch_us(ts: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch, exact, for any year 1..9999 and any offset.

    Plain ``ts - epoch`` converts to UTC first and overflows for 9999-12-31T23:59-23:59 or
    0001-01-01T00:00+23:59; integers do not.
    """
    offset = ts.utcoffset() or timedelta(0)
    return (ts.replace(tzinfo=timezone.utc) - _EPOCH) // _US - offset // _US


@dataclass(frozen=True)
class TimeBounds:
    """The event times the lake accepts: not before ``earliest``, not more than ``max_future`` after now.

    Without a bound one event could create an ``event_date`` partition in year 9999 or 0001.
    Settings: ``LAKELOOP_EVENT_TIME_EARLIEST``, ``LAKELOOP_EVENT_TIME_MAX_FUTURE_HOURS``.
    """

    earliest: datetime = datetime(2000, 1, 1, tzinfo=timezone.utc)
    max_future: timedelta = timedelta(hours=24)

    def window_us(self, now: datetime) -> tuple[int, int]:
        """[lowest, highest] accepted epoch microseconds at ingest time ``now``."""
        return epoch_us(self.earliest), epoch_us(now) + self.max_future // _US

    def violation(self, name: str, value: datetime, now: datetime) -> str | None:
        """Why ``value`` (field ``name``) is out of bounds at ``now``, or None."""
        lo, hi = self.window_us(now)
        us = epoch_us(value)
        if us < lo:
            return (f"{name}: {value.isoformat()} is before {self.earliest.date().isoformat()}, the earliest event "
                    "time accepted (LAKELOOP_EVENT_TIME_EARLIEST)")
        if us > hi:
            hours = self.max_future / timedelta(hours=1)
            return (f"{name}: {value.isoformat()} is more than {hours:g} h after the ingest time "
                    f"{now.isoformat(timespec='seconds')} (LAKELOOP_EVENT_TIME_MAX_FUTURE_HOURS)")
        return None


DEFAULT_BOUNDS = TimeBounds()  # the settings' defaults


def validate_record(
    adapter: TypeAdapter[M], raw: bytes | None, *, max_bytes: int, tags: frozenset[str] = frozenset(),
    time_field: str | None = None, bounds: TimeBounds | None = None, now: datetime | None = None,
) -> Valid[M] | Invalid:
    """Check ``raw`` (the Kafka record value) and parse it with ``adapter``; never raises.

    ``tags``: discriminator values of a tagged union; pydantic puts them first in an error's location,
    and reasons drop them (``thumbs.value`` reads ``value``). With ``bounds``, the model's ``time_field``
    must lie within them at ``now`` (default: the current time).
    """
    try:
        return _validate_record(adapter, raw, max_bytes=max_bytes, tags=tags, time_field=time_field, bounds=bounds,
                                now=now)
    except Exception as exc:  # noqa: BLE001 - anything else a record triggers is that record's fault
        return Invalid("validate", f"the record could not be checked: {_exception_text(exc)}")


def _validate_record(adapter: TypeAdapter[M], raw: bytes | None, *, max_bytes: int, tags: frozenset[str],
                     time_field: str | None, bounds: TimeBounds | None, now: datetime | None) -> Valid[M] | Invalid:
    if raw is None or len(raw) == 0:
        return Invalid("decode", "empty record (no bytes)")
    if len(raw) > max_bytes:
        return Invalid("size", f"record is {len(raw)} bytes, over the limit of {max_bytes} (LAKELOOP_MAX_EVENT_BYTES)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid("decode", f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at position {exc.start}")
    nul = text.find("\x00")
    if nul >= 0:
        return Invalid("decode", f"raw NUL byte at position {nul} (not allowed in JSON text)")
    try:
        model = adapter.validate_json(raw)
    except ValidationError as exc:
        return _invalid_from(exc, text, tags)
    except RecursionError:  # pydantic-core limits depth itself; kept for older versions
        return Invalid("decode", "JSON nested too deeply")
    problem = strict_json_problem(text)
    if problem is not None:
        return problem
    if "\\u0000" in text:
        name = _field_with_nul(model)
        if name is not None:
            return Invalid("validate", f"{name}: text contains the NUL character (\\u0000)")
    if bounds is not None and time_field is not None:
        late = bounds.violation(time_field, getattr(model, time_field), now or datetime.now(timezone.utc))
        if late is not None:
            return Invalid("validate", late)
    return Valid(model, text)


class _Refused(Exception):
    def __init__(self, invalid: Invalid) -> None:
        super().__init__(invalid.reason)
        self.invalid = invalid


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_MEMBERS:
        raise _Refused(Invalid("validate", f"an object has {len(pairs):,} members, more than {MAX_MEMBERS} "
                                           "(nested objects and metadata included)"))
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(Invalid("decode", f"duplicate key {_short(dup)} in an object (JSON readers disagree on "
                                         "which value counts, so lakeloop refuses it)"))
    return out


def _constant(name: str) -> float:
    raise _Refused(Invalid("decode", f"{name} is not a JSON number (RFC 8259 has no NaN or Infinity)"))


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(Invalid("decode", f"the number {_short(text)} overflows a double"))
    return value


_STRICT = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def strict_json_problem(text: str) -> Invalid | None:
    """Why ``text`` (JSON that pydantic accepted) is refused anyway, or None.

    pydantic (like most parsers) takes the last of duplicate keys, accepts NaN / Infinity and reads
    1e400 as infinity; readers downstream (Spark, polars, other languages) may not. Refused: duplicate
    keys anywhere, NaN / Infinity literals anywhere, numbers beyond a double's range, and objects of more
    than ``MAX_MEMBERS`` members (stage ``validate``).
    """
    try:
        _STRICT.decode(text)
    except _Refused as exc:
        return exc.invalid
    except RecursionError:
        return Invalid("decode", "JSON nested too deeply")
    except ValueError as exc:  # pydantic accepted what json refuses: say so rather than guess
        return Invalid("decode", f"not valid JSON: {_short(str(exc), 120)}")
    return None


def _short(value: object, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` of an unexpected exception, short (never the whole record)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_row(raw: bytes | None, *, validate: Callable[[bytes | None], Valid | Invalid],
               row: Callable[[Any], tuple]) -> tuple[tuple, str] | Invalid:
    """(row values, raw text) of a valid record, else its ``Invalid``: what the ingestor keeps per record."""
    result = validate(raw)
    if type(result) is Valid:
        try:
            return row(result.model), result.text
        except Exception as exc:  # noqa: BLE001 - a record the model took but the row builder cannot
            return Invalid("validate", f"the record could not be converted to a row: {_exception_text(exc)}")
    return result


def _field_with_nul(model: BaseModel) -> str | None:
    for name, value in model.__dict__.items():
        if isinstance(value, str) and "\x00" in value:
            return name
        if isinstance(value, dict):
            for k, v in value.items():
                if "\x00" in k or (isinstance(v, str) and "\x00" in v):
                    return f"{name}.{k!r}"

    return None


def _invalid_from(exc: ValidationError, text: str, tags: frozenset[str]) -> Invalid:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = first["msg"].removeprefix("Invalid JSON: ")
        if "recursion limit" in detail:
            return Invalid("decode", f"JSON nested too deeply ({detail})")
        if "surrogate" in detail or "hex escape" in detail:
            return Invalid("decode", f"not valid JSON: {detail} (a lone UTF-16 surrogate \\ud800-\\udfff is not text "
                                     "and cannot be stored as UTF-8)")
        return Invalid("decode", f"not valid JSON: {detail}")
    if not first["loc"] and first["type"] in ("dict_type", "model_type", "model_attributes_type"):
        kind = _JSON_KINDS.get(text.lstrip()[:1], "a number")
        return Invalid("validate", f"expected a JSON object, got {kind}")
    parts = [_describe(e, tags) for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return Invalid("validate", "; ".join(parts) + more)


def _describe(err: dict, tags: frozenset[str]) -> str:
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    tag_field = str(ctx.get("discriminator", "?")).strip("'")
    if kind == "union_tag_not_found":
        return f"missing required field {tag_field!r} (or it is not a string)"
    if kind == "union_tag_invalid":
        return f"{tag_field}: unknown value {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    field = ".".join(loc[1:] if loc and loc[0] in tags else loc) or "record"
    if kind == "missing":
        return f"missing required field {field!r}"
    if field == "record":  # a rule over several fields (the model's own check): its message says it all
        return str(err["msg"]).removeprefix("Value error, ")
    shown = repr(err.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{field}: {err['msg']} (got {shown})"
