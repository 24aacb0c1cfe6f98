"""What the ingestor holds between two flushes, and when it flushes (a pure decision).

A ``Batch`` keeps valid rows and dead letters column-wise plus, per partition, the last offset it
covers. ``flush_reason`` says whether the batch is due: whichever of latency, records or bytes comes
first (kafka-delta-ingest's rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pyarrow as pa

from feedback import bronze
from feedback.validation import Invalid

FlushReason = Literal["latency", "records", "bytes"]


@dataclass(frozen=True)
class FlushPolicy:
    latency_s: float = 1.0
    max_records: int = 100_000
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
