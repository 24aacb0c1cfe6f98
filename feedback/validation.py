"""Validation of one raw Kafka record against a pydantic model: a typed result or a readable reason.

Shared by every stream (feedback events, predictions). The checks run in the order of the dead-letter
stages: ``size`` (too many bytes), ``decode`` (empty, not UTF-8, NUL bytes, not JSON), ``validate``
(JSON that does not fit the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

Stage = Literal["decode", "validate", "size"]
M = TypeVar("M", bound=BaseModel)

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


def validate_record(
    adapter: TypeAdapter[M], raw: bytes | None, *, max_bytes: int, tags: frozenset[str] = frozenset()
) -> Valid[M] | Invalid:
    """Check ``raw`` (the Kafka record value) and parse it with ``adapter``; never raises on bad input.

    ``tags``: discriminator values of a tagged union; pydantic puts them first in an error's location,
    and reasons drop them (``thumbs.value`` reads ``value``).
    """
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
    except RecursionError:  # pragma: no cover - pydantic-core limits depth itself
        return Invalid("decode", "JSON nested too deeply")
    if "\\u0000" in text:
        field = _field_with_nul(model)
        if field is not None:
            return Invalid("validate", f"{field}: text contains the NUL character (\\u0000)")
    return Valid(model, text)


def record_row(raw: bytes | None, *, validate: Callable[[bytes | None], Valid | Invalid],
               row: Callable[[Any], tuple]) -> tuple[tuple, str] | Invalid:
    """(row values, raw text) of a valid record, else its ``Invalid``: what the ingestor keeps per record."""
    result = validate(raw)
    if type(result) is Valid:
        return row(result.model), result.text
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
    field = ".".join(loc[1:] if len(loc) > 1 and loc[0] in tags else loc) or "record"
    if kind == "missing":
        return f"missing required field {field!r}"
    shown = repr(err.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{field}: {err['msg']} (got {shown})"
