"""A fast path for the common case: a batch of well-formed v1 feedback events straight to bronze columns.

``fast_feedback_columns`` decodes each record with msgspec into per-type structs that carry the
pydantic model's types and bounds (``feedback.events``; a reference event leaves out prompt, response and
model, all four, else the model judges it), then checks the timestamps and builds the
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
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Annotated, ClassVar, Literal, Union

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from msgspec import UNSET, UnsetType

from feedback.events import REFERENCE_FIELDS, SIGNAL_NAME
from feedback.packed import PackedValues
from feedback.validation import MAX_MEMBERS

_EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_SIGNAL_NAME = SIGNAL_NAME.removesuffix("$") + r"\Z"  # Python's $ also matches before a final newline; the model's does not
_DOUBLE_MAX = sys.float_info.max
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
    # all four (a full event) or none (a reference event; bronze holds ""): checked in fast_feedback_columns
    model_name: Union[_Ident, UnsetType] = UNSET
    model_version: Union[_Ident, UnsetType] = UNSET
    prompt: Union[str, UnsetType] = UNSET
    response: Union[str, UnsetType] = UNSET
    # UNSET when absent: a key the record has counts, one it lacks does not (duplicate-key check)
    comment: Union[str, None, UnsetType] = UNSET
    metadata: Union[Annotated[dict[str, str], msgspec.Meta(max_length=MAX_MEMBERS)], None, UnsetType] = UNSET
    schema_version: Union[Literal[1], UnsetType] = UNSET

    def keys(self) -> int:
        """How many keys the record has: its required ones, the optional ones present, metadata's."""
        n = self.required_keys
        if self.model_name is not UNSET:
            n += 4  # a full event (fast_feedback_columns leaves any other mix to the model)
        if self.comment is not UNSET:
            n += 1
        meta = self.metadata
        if meta is not UNSET:
            n += 1 + (len(meta) if meta else 0)
        return n if self.schema_version is UNSET else n + 1


_BASE_KEYS = 7  # event_type and the 6 required fields of _Base (+ 4 in a full event)


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
    required_keys: ClassVar[int] = _BASE_KEYS + 2  # + 4: a preference is always a full event (required here)
    model_name: _Ident
    model_version: _Ident
    prompt: str
    response: str
    response_b: str
    preferred: Literal["a", "b", "tie"]


class _Signal(_Base, tag="signal"):
    kind: ClassVar[str] = "signal"
    required_keys: ClassVar[int] = _BASE_KEYS + 2
    name: Annotated[str, msgspec.Meta(pattern=_SIGNAL_NAME)]  # no column: bronze keeps it in raw
    value: Annotated[float, msgspec.Meta(ge=-_DOUBLE_MAX, le=_DOUBLE_MAX)]  # finite, as the model's allow_inf_nan=False


# Unknown fields are refused here (the model takes them: it alone must judge how deep they nest), and
# so is a field of another event type (the model ignores it). msgspec also refuses invalid UTF-8, raw
# control characters (NUL included) and lone surrogates, all of which the model rejects or judges.
_decode = msgspec.json.Decoder(Union[_Thumbs, _Rating, _Correction, _Preference, _Signal]).decode
_encode_json = msgspec.json.Encoder().encode
_KEY_END = re.compile(rb'"[ \t\n\r]*:')  # what ends a key (counted per record by _screen)
_SPACES_COLON = re.compile(rb"[ \t\n\r]+:")  # the rest of a key end after a quote and whitespace

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


def _binary_array(values: PackedValues) -> pa.Array:
    """Every value as one binary array over the blob's memory (a None is an empty value here)."""
    blob, offsets = values.blob, values.offsets
    if len(blob) < 2**31:
        bounds = pa.py_buffer(offsets.astype(np.int32))
        return pa.Array.from_buffers(pa.binary(), len(values), [None, bounds, pa.py_buffer(blob)])
    return pa.Array.from_buffers(pa.large_binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(blob)])


def _kept(mask: pa.Array, idx: list[int], events: list[_Base], *arrays: pa.Array) -> tuple:
    """(idx, events, *arrays) without the records where ``mask`` is false."""
    keep = mask.to_pylist()
    return ([i for i, k in zip(idx, keep) if k], [e for e, k in zip(events, keep) if k],
            *(a.filter(mask) for a in arrays))


_SCREEN_BYTES = 1 << 20  # _screen scans whole records about this many bytes at a time (temporaries stay in cache)


def _screen(values: PackedValues, max_bytes: int) -> tuple[list[int], list[int]]:
    """(positions of the records worth decoding, per record its count of key ends), for a whole batch at once.

    A record is worth decoding when it is non-empty, at most ``max_bytes`` and holds no escaped NUL
    (``\\u0000``: the model names the field that holds it). A key end is a quote, whitespace, a colon
    (``_KEY_END``), counted only within its record: the same counts as ``_KEY_END.findall`` per record,
    from a few vector passes over the batch's bytes instead of a regex scan per record.
    """
    blob, offsets = values.blob, values.offsets
    n, starts, ends = len(values), offsets[:-1], offsets[1:]
    sizes = np.diff(offsets)
    ok = (sizes > 0) & (sizes <= max_bytes)
    if values.nones:
        ok[list(values.nones)] = False
    data = np.frombuffer(blob, dtype=np.uint8)
    # One pass finds every byte of interest: a quote before a colon or whitespace (or another control
    # byte), and a backslash. Runs of whole records of about _SCREEN_BYTES keep the temporaries in cache.
    cuts = offsets[np.unique(np.searchsorted(offsets, np.arange(_SCREEN_BYTES, data.size, _SCREEN_BYTES)))].tolist()
    found = []
    for lo, hi in zip([0, *cuts], [*cuts, data.size]):
        if hi - lo >= 2:
            run = data[lo:hi]
            after = run[1:]
            hit = (run[:-1] == 0x22) & ((after == 0x3A) | (after <= 0x20))
            hit |= run[:-1] == 0x5C
            found.append(np.flatnonzero(hit) + lo)
    at = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    nxt = data[at + 1]
    quote = data[at] == 0x22
    key_ends = at[quote & (nxt == 0x3A)]  # ascending
    # a quote and a colon in the same record: key_ends[j] + 1 < ends[r]
    counts = np.maximum(np.searchsorted(key_ends, ends - 1) - np.searchsorted(key_ends, starts), 0)
    # a quote then whitespace: a key end if the whitespace runs up to a colon within the record
    spaced = at[quote & (nxt != 0x3A)]
    if spaced.size:
        ends_list, match = ends.tolist(), _SPACES_COLON.match
        rec = [r for q, r in zip(spaced.tolist(), np.searchsorted(ends, spaced, side="right").tolist())
               if match(blob, q + 1, ends_list[r])]
        if rec:
            counts += np.bincount(rec, minlength=n)
    # escaped NULs: a backslash, then u0000, all inside one record
    slash = at[~quote]
    slash = slash[slash + 6 <= data.size]
    if slash.size:
        nul = slash[(data[slash + 1] == 0x75) & (data[slash + 2] == 0x30) & (data[slash + 3] == 0x30)
                    & (data[slash + 4] == 0x30) & (data[slash + 5] == 0x30)]
        if nul.size:
            rec = np.searchsorted(ends, nul, side="right")
            ok[rec[nul + 6 <= ends[rec]]] = False
    return np.flatnonzero(ok).tolist(), counts.tolist()


_DECODE_RUN = 1024  # records decoded per call of map (a record that fails sends its run to the careful loop)


def _decoded(values: PackedValues, candidates: list[int], key_counts: list[int]) -> tuple[list[int], list[_Base]]:
    """(positions, events) of the candidates that decode and whose key count matches (no duplicate key)."""
    decode, keys, bounds, view = _decode, _Base.keys, values.offsets.tolist(), memoryview(values.blob)
    idx: list[int] = []
    events: list[_Base] = []
    for lo in range(0, len(candidates), _DECODE_RUN):
        run = candidates[lo:lo + _DECODE_RUN]
        try:
            decoded = list(map(decode, [view[bounds[i]:bounds[i + 1]] for i in run]))
        except Exception:  # noqa: BLE001 - one record of the run is not plain: take them one by one
            decoded = []
            for i in run:
                try:
                    decoded.append(decode(view[bounds[i]:bounds[i + 1]]))
                except Exception:  # noqa: BLE001 - anything (RecursionError, MemoryError, ...): the model judges it
                    decoded.append(None)
        # duplicate keys: a quote, whitespace, a colon ends every key (and an escaped quote before a
        # colon inside a string): more of them than keys decoded means a duplicate, or just caution
        for i, event in zip(run, decoded):
            if event is not None and key_counts[i] == keys(event):
                idx.append(i)
                events.append(event)
    return idx, events


def fast_feedback_columns(values: Sequence[bytes | None], max_bytes: int, *,
                          window_us: tuple[int, int] | None = None) -> tuple[list[int], dict[str, pa.Array]]:
    """(indices of the plainly valid records, their columns): ``bronze.FEEDBACK_ROW_COLUMNS`` plus ``raw``.

    Every record left out (empty, over ``max_bytes``, an ``occurred_at`` outside ``window_us``, anything
    unusual) is for the model to judge. ``values``: a list, or a batch's ``PackedValues`` (no copy).
    """
    packed = PackedValues.pack(values)
    if not len(packed):
        return [], {}
    candidates, key_counts = _screen(packed, max_bytes)
    idx, events = _decoded(packed, candidates, key_counts)
    if not events:
        return [], {}
    raws = _binary_array(packed)
    if len(idx) != len(packed):
        raws = raws.take(pa.array(idx, pa.int64()))
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
    texts = {name: list(map(attrgetter(name), events)) for name in REFERENCE_FIELDS}
    if any(UNSET in values for values in texts.values()):  # reference events: all four absent, or the model judges
        absent = [[v is UNSET for v in texts[name]] for name in REFERENCE_FIELDS]
        whole = pa.array([all(a) or not any(a) for a in zip(*absent)])
        if not pc.all(whole).as_py():
            idx, events, raws, occurred = _kept(whole, idx, events, raws, occurred)
            if not events:
                return [], {}
        # a reference event's: "" (feedback.bronze.feedback_row does the same)
        texts = {name: ["" if v is UNSET else v for v in map(attrgetter(name), events)] for name in REFERENCE_FIELDS}
    string = pa.string()
    cols: dict[str, pa.Array] = {
        name: pa.array(list(map(attrgetter(name), events)), string)
        for name in ("event_id", "app_id", "user_id", "conversation_id", "response_id", "corrected_response",
                     "response_b", "preferred")
    }
    for name, values in texts.items():
        cols[name] = pa.array(values, string)
    cols["event_type"] = pa.array([e.kind for e in events], string)
    cols["occurred_at"] = occurred
    cols["value"] = pa.array([e.value for e in events], pa.float64())
    cols["comment"] = pa.array([None if e.comment is UNSET else e.comment for e in events], string)
    # msgspec writes a str -> str dict byte for byte as the model's row does (pydantic_core.to_json: same
    # escapes, non-ASCII as UTF-8; checked for every code point), in a third of the time; the bytes go
    # to Arrow as they are (the cast checks them), no str made only to be encoded again
    meta = _encode_json
    cols["metadata"] = pa.array([None if e.metadata is None or e.metadata is UNSET else meta(e.metadata)
                                 for e in events], pa.binary()).cast(string)
    cols["schema_version"] = pa.array([1] * len(events), pa.int32())
    cols["raw"] = raws.cast(string)  # valid UTF-8: msgspec decoded it
    return idx, cols
