"""What the ingestor holds between two flushes, and when it flushes (a pure decision).

A ``RawBatch`` is what the consumer loop holds: the records as received (value bytes and Kafka
coordinates), so the loop does no per-record parsing; ``RawBatch.validated`` turns it into a ``Batch``
where the flush runs (the writer thread or a worker process, see ``feedback/flush.py``).

A ``Batch`` keeps valid rows and dead letters column-wise plus, per partition, the last offset it
covers. ``flush_reason`` says whether the batch is due: whichever of latency, records or bytes comes
first (kafka-delta-ingest's rule).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pyarrow as pa

from feedback import bronze
from feedback.packed import PackedValues
from feedback.validation import Invalid

FlushReason = Literal["latency", "records", "bytes"]


@dataclass(frozen=True)
class FlushPolicy:
    latency_s: float = 1.0
    max_records: int = 12_500
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.latency_s <= 0 or self.max_records < 1 or self.max_bytes < 1:
            raise ValueError(f"flush policy needs positive limits, got {self}")


def flush_reason(policy: FlushPolicy, *, records: int, nbytes: int, age_s: float) -> FlushReason | None:
    """Why a batch of ``records`` records / ``nbytes`` bytes, opened ``age_s`` ago, must flush now (or None)."""
    if records == 0:
        return None
    if records >= policy.max_records:
        return "records"
    if nbytes >= policy.max_bytes:
        return "bytes"
    if age_s >= policy.latency_s:
        return "latency"
    return None


RowOrInvalid = Callable[[bytes | None], "tuple[tuple, str] | Invalid"]


@dataclass
class RawBatch:
    """Records of one topic since the last flush, as received, in offset order per partition."""

    topic: str
    parts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    stamps: list[int | None] = field(default_factory=list)
    # a list while the loop adds records; packed (feedback.packed) once it has crossed to a worker
    values: list[bytes | None] | PackedValues = field(default_factory=list)
    last_offset: dict[int, int] = field(default_factory=dict)
    nbytes: int = 0
    opened_at: float | None = None  # monotonic time of the first record
    # Per partition: the offset this batch follows (the last of the previous batch, or the stored one it
    # was seeked from; None: nothing stored). The commit refuses a batch whose predecessor did not land.
    after: dict[int, int | None] = field(default_factory=dict)
    topic_fingerprint: int | None = None  # the topic's identity (feedback.offsets), stored with the offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, partition: int, offset: int, timestamp_ms: int | None, value: bytes | None) -> None:
        if type(self.values) is not list:
            self.values = list(self.values)
        self.parts.append(partition)
        self.offsets.append(offset)
        self.stamps.append(timestamp_ms)
        self.values.append(value)
        self.last_offset[partition] = offset
        self.nbytes += len(value) if value else 0

    def extend(self, partition: int, offsets: Sequence[int], stamps: list[int | None], values: list[bytes | None]) -> None:
        """A run of records of one partition, offsets ascending (a list, or a ``range`` for a run without gaps)."""
        if not offsets:
            return
        if type(self.values) is not list:
            self.values = list(self.values)
        self.parts.extend([partition] * len(offsets))
        self.offsets.extend(offsets)
        self.stamps.extend(stamps)
        self.values.extend(values)
        self.last_offset[partition] = offsets[-1]
        self.nbytes += sum(map(len, filter(None, values)))

    def without(self, taken: list[int]) -> RawBatch:
        """The records not at the (ascending) positions ``taken``; covers the same offsets (``last_offset``)."""
        rest = RawBatch(self.topic, opened_at=self.opened_at)
        rest.last_offset = dict(self.last_offset)
        if len(taken) == len(self.offsets):  # the common case: the fast path took every record
            return rest
        gone = set(taken)
        keep = [i for i in range(len(self.offsets)) if i not in gone]
        rest.parts = [self.parts[i] for i in keep]
        rest.offsets = [self.offsets[i] for i in keep]
        rest.stamps = [self.stamps[i] for i in keep]
        rest.values = [self.values[i] for i in keep]
        rest.nbytes = sum(len(v) for v in rest.values if v)
        return rest

    def pick(self, positions: list[int]) -> tuple[list[int], list[int], list[int | None]]:
        """(partitions, offsets, timestamps) of the records at ``positions``."""
        if len(positions) == len(self.offsets):
            return self.parts, self.offsets, self.stamps
        return ([self.parts[i] for i in positions], [self.offsets[i] for i in positions],
                [self.stamps[i] for i in positions])

    def __getstate__(self) -> dict:
        """Pickled for the worker process as one blob plus lengths, and the Kafka coordinates as int64
        arrays: a few copies of bytes instead of an object per record."""
        state = dict(self.__dict__)
        state["blob"], state["lengths"] = PackedValues.encode(state.pop("values"))
        for name in ("parts", "offsets", "stamps"):
            try:
                state[name] = array("q", state[name])
            except TypeError:  # a record without a timestamp (None): as a list
                pass
        return state

    def __setstate__(self, state: dict) -> None:
        """The values stay packed (``PackedValues``): a record's bytes are made only when asked for."""
        values = PackedValues.from_lengths(state.pop("blob"), state.pop("lengths"))
        for name in ("parts", "offsets", "stamps"):
            if isinstance(state[name], array):
                state[name] = state[name].tolist()
        self.__dict__.update(state, values=values)

    def validated(self, to_row: RowOrInvalid) -> Batch:
        """Check every record with ``to_row``: valid rows and dead letters, same offsets covered."""
        batch = Batch(self.topic, opened_at=self.opened_at)
        add_valid, add_dead = batch.add_valid, batch.add_dead
        for partition, offset, stamp, value in zip(self.parts, self.offsets, self.stamps, self.values):
            try:
                result = to_row(value)
            except Exception as exc:  # noqa: BLE001 - to_row never raises; if it did, this record alone is dead
                result = Invalid("validate", f"the record could not be checked: {type(exc).__name__}")
            if type(result) is tuple:
                row, text = result
                add_valid(partition, offset, stamp, row, text, len(value))
            else:
                add_dead(partition, offset, stamp, value, result)
        batch.last_offset = dict(self.last_offset)
        return batch


@dataclass
class Batch:
    """Records of one topic since the last flush; rows and dead letters kept apart, in offset order."""

    topic: str
    rows: list[tuple] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    parts: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    stamps: list[int | None] = field(default_factory=list)
    dead_raw: list[bytes] = field(default_factory=list)
    dead_stage: list[str] = field(default_factory=list)
    dead_reason: list[str] = field(default_factory=list)
    dead_parts: list[int] = field(default_factory=list)
    dead_offsets: list[int] = field(default_factory=list)
    dead_stamps: list[int | None] = field(default_factory=list)
    last_offset: dict[int, int] = field(default_factory=dict)
    nbytes: int = 0
    opened_at: float | None = None  # monotonic time of the first record

    def __len__(self) -> int:
        return len(self.offsets) + len(self.dead_offsets)

    def add_valid(self, partition: int, offset: int, timestamp_ms: int | None, row: tuple, text: str, size: int) -> None:
        self.rows.append(row)
        self.texts.append(text)
        self.parts.append(partition)
        self.offsets.append(offset)
        self.stamps.append(timestamp_ms)
        self.last_offset[partition] = offset
        self.nbytes += size

    def add_dead(self, partition: int, offset: int, timestamp_ms: int | None, raw: bytes | None, bad: Invalid) -> None:
        self.dead_raw.append(raw or b"")
        self.dead_stage.append(bad.stage)
        self.dead_reason.append(bad.reason)
        self.dead_parts.append(partition)
        self.dead_offsets.append(offset)
        self.dead_stamps.append(timestamp_ms)
        self.last_offset[partition] = offset
        self.nbytes += len(raw or b"")

    def dead_last_offsets(self) -> dict[int, int]:
        """Per partition holding dead letters: the last offset of the batch (not of the dead letters)."""
        return {p: self.last_offset[p] for p in set(self.dead_parts)}

    def valid_table(self, schema: pa.Schema, row_columns: tuple[str, ...], time_column: str, ingested_at: datetime) -> pa.Table:
        return bronze.rows_table(
            schema, row_columns, time_column, self.rows, self.texts, topic=self.topic, partitions=self.parts,
            offsets=self.offsets, timestamps_ms=self.stamps, ingested_at=ingested_at,
        )

    def dead_table(self, ingested_at: datetime) -> pa.Table:
        return bronze.dead_letters_table(
            self.dead_raw, self.dead_stage, self.dead_reason, topic=self.topic, partitions=self.dead_parts,
            offsets=self.dead_offsets, timestamps_ms=self.dead_stamps, ingested_at=ingested_at,
        )
